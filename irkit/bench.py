"""``irkit bench``: latency of a compiled model against anchors, in one process.

irkit runs through :class:`irkit.runtime.CompiledModel` (its input checks included).
Anchors: ``onnxruntime`` is ONNX Runtime's own ``InferenceSession.run`` on the same model,
inputs and thread count, with no irkit code around it (what a user of ORT would call);
``torch`` is eager PyTorch (:mod:`irkit.bench_torch`). After warm-up, rounds alternate
irkit and the anchor so drift and noise from other processes hit both; each round times
``inner`` calls, and the table reports medians over rounds and the irkit/anchor ratio
(below 1 = irkit faster).

Models: a Graph, an ONNX path, an ``.irk`` spec (its first pipeline's model), or a
built-in name: ``mlp`` (64-256-256-10), ``gemm512`` (x @ W, 512x512), ``resnet``
(ResNet-style CNN, 3x32x32), ``mobilenet`` (depthwise-separable CNN, 3x96x96),
``transformer`` (2-layer encoder, d=128, seq 64) and ``minilm`` (all-MiniLM-L6-v2's BERT,
batch and sequence symbolic; run at sequence ``SEQUENCE``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

BUILTIN_MODELS = ("mlp", "gemm512", "resnet", "mobilenet", "transformer", "minilm")
# Sequence length of models with a second symbolic dim (MiniLM: batch N, sequence S).
SEQUENCE = 32
_CACHE = Path(tempfile.gettempdir()) / "irkit_bench_models"


@dataclass
class BenchRow:
    model: str
    batch: int
    threads: int
    irkit_ms: float
    other_ms: float
    against: str = "onnxruntime"
    arch: str = "native"
    # Other kernel backends timed in the same rounds (``also``): backend -> ms.
    extra_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.irkit_ms / self.other_ms if self.other_ms else float("nan")


@dataclass
class BenchResult:
    rows: list[BenchRow] = field(default_factory=list)
    matmul: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        extras = sorted({name for r in self.rows for name in r.extra_ms})
        head = (f"{'model':<12} {'arch':<10} {'batch':>5} {'thr':>3} {'irkit ms':>10} "
                f"{'anchor':>11} {'anchor ms':>10} {'ratio':>6}")
        for name in extras:  # e.g. numba ms, numba/irkit, numba/anchor
            head += f" {name + ' ms':>10} {'/irkit':>6} {'/anchor':>7}"
        lines = [cpu_description(), head, "-" * len(head)]
        for r in self.rows:
            line = (f"{r.model:<12} {r.arch:<10} {r.batch:>5} {r.threads:>3} "
                    f"{r.irkit_ms:>10.4f} {r.against:>11} {r.other_ms:>10.4f} "
                    f"{r.ratio:>6.2f}")
            for name in extras:
                ms = r.extra_ms.get(name)
                line += (f" {ms:>10.4f} {ms / r.irkit_ms:>6.2f} {ms / r.other_ms:>7.2f}"
                         if ms else f" {'-':>10} {'-':>6} {'-':>7}")
            lines.append(line)
        if self.matmul:
            m = self.matmul
            lines.append(
                f"matmul 1024^3 (1 thread): irkit {m['irkit_gflops']:.1f} GFLOP/s, numpy "
                f"{m['numpy_gflops']:.1f} GFLOP/s ({m['irkit_gflops'] / m['numpy_gflops']:.0%}"
                " of numpy)")
        return "\n".join(lines)


def cpu_description() -> str:
    """The CPU the numbers come from: model name and the flags that change the code
    irkit and ONNX Runtime pick (avx2, avx512f, avx512_vnni, avx_vnni)."""
    model, flags = "unknown CPU", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    marks = [f"{f} {'yes' if f in flags else 'no'}"
             for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni")]
    return f"CPU: {model} ({', '.join(marks)})"


def _matmul_onnx(m: int | str, k: int, n: int, seed: int = 0) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32) * 0.05
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [x], [y], [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def mlp_onnx(dims: Sequence[int] = (64, 256, 256, 10), seed: int = 0) -> Any:
    """A Gemm+Relu MLP over f32[N, dims[0]]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(len(dims) - 1):
        w = (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        b = rng.standard_normal(dims[i + 1]).astype(np.float32) * 0.1
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(dims) - 2
        out = "y" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            prev = f"r{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dims[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dims[-1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def mobilenet_onnx(seed: int = 0) -> Any:
    """A MobileNet-style CNN over f32[N, 3, 96, 96]: a strided 3x3 stem, five depthwise
    3x3 + pointwise 1x1 blocks (BatchNorm folded into bias, ReLU6 as Clip), global
    average pooling and a 10-way Gemm."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits: list[Any] = []
    nodes: list[Any] = []

    def const(name: str, *shape: int, scale: float = 1.0) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        value = rng.standard_normal(shape) * scale / np.sqrt(fan_in)
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv(x: str, name: str, cin: int, cout: int, k: int, stride: int, group: int) -> str:
        w = const(f"{name}_w", cout, cin // group, k, k)
        b = const(f"{name}_b", cout, scale=0.1)
        nodes.append(helper.make_node("Conv", [x, w, b], [f"{name}_c"], group=group,
                                      kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[k // 2] * 4))
        nodes.append(helper.make_node("Clip", [f"{name}_c", "zero", "six"], [name]))
        return name

    inits += [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
              numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    x = conv("x", "stem", 3, 16, 3, 2, 1)
    channels = 16
    for i, (cout, stride) in enumerate([(32, 1), (64, 2), (64, 1), (128, 2), (128, 1)]):
        x = conv(x, f"dw{i}", channels, channels, 3, stride, channels)
        x = conv(x, f"pw{i}", channels, cout, 1, 1, 1)
        channels = cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    nodes.append(helper.make_node("Gemm", ["flat", const("fc_w", 10, channels), "fc_b"],
                                  ["y"], transB=1))
    inits.append(numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"))
    graph = helper.make_graph(
        nodes, "mobilenet", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                           ["N", 3, 96, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def builtin_model(name: str) -> Any:
    """The Graph of a built-in benchmark model (torch exports are cached on disk)."""
    import irkit

    if name == "mlp":
        return irkit.load_model(mlp_onnx())
    if name == "gemm512":
        return irkit.load_model(_matmul_onnx("N", 512, 512))
    if name == "mobilenet":
        return irkit.load_model(mobilenet_onnx())
    if name == "minilm":
        from irkit.testing.models import export_minilm_onnx

        path = _CACHE / "minilm.onnx"
        if not path.exists():
            export_minilm_onnx(path)
        return irkit.load_model(path)
    if name in ("resnet", "transformer"):
        import torch

        from irkit.testing.models import export_onnx, make_resnet_cnn, make_transformer_encoder

        path = _CACHE / f"{name}.onnx"
        if not path.exists():
            if name == "resnet":
                module, example = make_resnet_cnn(), torch.randn(2, 3, 32, 32)
            else:
                module, example = make_transformer_encoder(), torch.randn(2, 64, 128)
            export_onnx(module, (example,), path)
        return irkit.load_model(path)
    raise ValueError(f"unknown benchmark model {name!r}; built-ins: {', '.join(BUILTIN_MODELS)}")


def _resolve_model(model: Any) -> tuple[str, Any, Any]:
    """(name, graph, torch source or None) for a built-in name, a spec, a path or a Graph."""
    import irkit

    if isinstance(model, str) and model in BUILTIN_MODELS:
        return model, builtin_model(model), None
    if isinstance(model, str | Path) and str(model).endswith(".irk"):
        from irkit.builder import load_pipeline_model
        from irkit.spec import parse_spec

        pipeline = parse_spec(Path(model)).pipeline()
        source = pipeline.model.factory if pipeline.model.kind == "torch" else None
        return pipeline.name, load_pipeline_model(pipeline), source
    graph = model if hasattr(model, "nodes") else irkit.load_model(model)
    from irkit.frontends.torch import FACTORY_RE

    # a torch factory ("pkg.module:fn") is its own torch source
    source = model if isinstance(model, str) and FACTORY_RE.match(model) and \
        not Path(model).exists() else None
    return getattr(graph, "name", "model") or "model", graph, source


def _inputs(graph: Any, batch: int, seed: int = 0, sequence: int = SEQUENCE
            ) -> dict[str, np.ndarray]:
    """Random inputs: the first symbolic dim is ``batch``, any other ``sequence``;
    integer inputs are token ids (``*ids``: small ids, else masks of ones / zeros)."""
    rng = np.random.default_rng(seed)
    symbols = [d for v in graph.inputs for d in v.type.shape if isinstance(d, str)]
    out = {}
    for value in graph.inputs:
        shape = tuple((batch if d == symbols[0] else sequence) if isinstance(d, str) else d
                      for d in value.type.shape)
        dtype = np.dtype(value.type.dtype.numpy)
        if dtype.kind in "iu":
            if value.name.endswith("ids") and "type" not in value.name:
                out[value.name] = rng.integers(0, 1000, shape).astype(dtype)
            else:
                fill = 1 if "mask" in value.name else 0
                out[value.name] = np.full(shape, fill, dtype)
        else:
            out[value.name] = rng.standard_normal(shape).astype(dtype)
    return out


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter,
                                          "cpu": time.process_time}
"""``wall``: elapsed time; ``cpu``: CPU time of the whole process (every thread of both
sides counted), steadier on a shared machine where other work only delays a call."""


def _time_calls(fn: Callable[[], Any], inner: int, clock: str = "wall") -> float:
    now = CLOCKS[clock]
    start = now()
    for _ in range(inner):
        fn()
    return (now() - start) / inner


def alternate(fa: Callable[[], Any], fb: Callable[[], Any], repeats: int,
              budget_s: float = 2.0, clock: str = "wall") -> tuple[float, float]:
    """Median seconds per call of ``fa`` and ``fb`` over alternating rounds, by ``clock``
    (see :data:`CLOCKS`)."""
    ta, tb = interleave([fa, fb], repeats, budget_s, clock)
    return ta, tb


def interleave(fns: Sequence[Callable[[], Any]], repeats: int, budget_s: float = 2.0,
               clock: str = "wall") -> list[float]:
    """Median seconds per call of each of ``fns`` over rounds that run all of them, the
    order rotating from round to round (two: alternating), by ``clock``."""
    for _ in range(3):
        for fn in fns:
            fn()
    one = max(*(_time_calls(fn, 1) for fn in fns), 1e-6)
    inner = max(1, min(200, int(budget_s / max(repeats, 1) / len(fns) / one)))
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        shift = r % len(fns)
        for k in [*range(shift, len(fns)), *range(shift)]:
            times[k].append(_time_calls(fns[k], inner, clock))
    return [float(np.median(t)) for t in times]


def matmul_gflops(size: int = 1024, repeats: int = 5) -> dict[str, float]:
    """1-thread GFLOP/s of an irkit-compiled ``x @ W`` and of numpy's BLAS, same run."""
    import irkit
    import irkit.runtime

    graph = irkit.load_model(_matmul_onnx("N", size, size))
    with tempfile.TemporaryDirectory() as tmp:
        irkit.compile(graph, target="llvm", threads=1).save(Path(tmp) / "mm")
        model = irkit.runtime.load(Path(tmp) / "mm", threads=1)
    x = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    w = np.asarray(graph.constants["w"].const)
    try:
        from threadpoolctl import threadpool_limits

        limiter: Any = threadpool_limits(1)
    except ImportError:  # numpy then uses its default thread count
        limiter = None
    try:
        t_irkit, t_numpy = alternate(lambda: model(x=x), lambda: x @ w, repeats, budget_s=3.0)
    finally:
        if limiter is not None:
            limiter.unregister() if hasattr(limiter, "unregister") else limiter.restore_original_limits()
    flops = 2.0 * size**3
    return {"irkit_gflops": flops / t_irkit / 1e9, "numpy_gflops": flops / t_numpy / 1e9}


def run_bench(
    model_or_spec: Any,
    against: Sequence[str] = ("onnxruntime",),
    batches: Sequence[int] = (1, 64),
    threads: Sequence[int] = (1, 2),
    repeats: int = 15,
    target: str = "llvm",
    matmul: bool = True,
    verbose: bool = True,
    arches: Sequence[str] = ("native",),
    also: Sequence[str] = (),
    clock: str = "wall",
) -> BenchResult:
    """Benchmark ``model_or_spec`` compiled for ``target`` (for each of ``arches`` when
    it is a kernel backend: ``native``, ``x86-64-v3``…) against each anchor in
    ``against`` (``onnxruntime``: ORT's own ``InferenceSession.run``; ``torch``: eager
    PyTorch, see :mod:`irkit.bench_torch`); prints and returns the table (plus the 1024^3
    matmul line when ``matmul``). Backends in ``also`` (``numba``) are compiled too and
    timed in the same rounds, a column each with its ratio to irkit and to the anchor.
    ``clock``: ``wall`` or ``cpu`` (:data:`CLOCKS`)."""
    import irkit
    import irkit.runtime

    anchors = ["onnxruntime" if a == "ort" else a for a in against]
    unknown = [a for a in anchors if a not in ("onnxruntime", "torch")]
    if unknown or not anchors:
        raise ValueError(f"cannot benchmark against {unknown or 'nothing'}; "
                         "supported: onnxruntime, torch")
    names = model_or_spec if isinstance(model_or_spec, list | tuple) else [model_or_spec]
    result = BenchResult()
    takes_arch = "arch" in _backend_options(target)
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; choose one of {', '.join(CLOCKS)}")
    if verbose:
        print(cpu_description() + ("" if clock == "wall" else f"; {clock} time"), flush=True)
    for item in names:
        name, graph, source = _resolve_model(item)
        module = _torch_module(name, graph, source, verbose) if "torch" in anchors else None
        for thr, arch in [(t, a) for t in threads for a in (arches if takes_arch else ["-"])]:
            options = {"threads": thr, **({"arch": arch} if takes_arch else {})}
            with tempfile.TemporaryDirectory() as tmp:
                irkit.compile(graph, target=target, **options).save(Path(tmp) / "a")
                ours = irkit.runtime.load(Path(tmp) / "a", threads=thr)
            others = {name: _extra_backend(graph, name, thr, verbose) for name in also}
            # The anchor is ONNX Runtime's own call, without irkit's input checks around it.
            session = _ort_session(irkit.compile(graph, target="ort").files["model.onnx"], thr)
            ort_run = partial(session.run, [v.name for v in graph.outputs])
            for batch in batches:
                feeds = _inputs(graph, batch)
                calls: dict[str, Callable[[], Any]] = {}
                if "onnxruntime" in anchors:
                    calls["onnxruntime"] = partial(ort_run, feeds)
                if module is not None:
                    from irkit.bench_torch import max_difference, torch_call

                    calls["torch"] = torch_call(module, graph, feeds, thr)
                    diff = max_difference(calls["torch"](), ours.run(feeds))
                    if verbose:
                        print(f"  {name} batch {batch}: torch and irkit outputs differ by at "
                              f"most {diff:.2g}", flush=True)
                for anchor, call in calls.items():
                    extra = [partial(m.run, feeds) for m in others.values()]
                    t_ours, t_anchor, *t_extra = interleave(
                        [partial(ours.run, feeds), call, *extra], repeats, clock=clock)
                    row = BenchRow(name, batch, thr, t_ours * 1e3, t_anchor * 1e3, anchor,
                                   arch, {n: t * 1e3 for n, t in zip(others, t_extra)})
                    result.rows.append(row)
                    if verbose:
                        more = "".join(f", {n} {ms:.4f} ms ({ms / row.irkit_ms:.2f}x irkit)"
                                       for n, ms in row.extra_ms.items())
                        print(f"  {name} [{arch}] batch {batch} threads {thr}: irkit "
                              f"{row.irkit_ms:.4f} ms, {anchor} {row.other_ms:.4f} ms, "
                              f"ratio {row.ratio:.2f}{more}", flush=True)
            ours.close()
            for other in others.values():
                other.close()
    if matmul:
        result.matmul = matmul_gflops()
    if verbose:
        print(result.table())
    return result


def _extra_backend(graph: Any, backend: str, threads: int, verbose: bool) -> Any:
    """``graph`` compiled by ``backend`` and loaded with ``threads`` (its own default
    arch); a numba artifact's first load compiles it, which is timed and reported."""
    import irkit
    import irkit.runtime

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        irkit.compile(graph, target=backend, threads=threads).save(Path(tmp) / "x")
        model = irkit.runtime.load(Path(tmp) / "x", threads=threads)
    if verbose:
        print(f"  {backend}: compiled and loaded in {time.perf_counter() - start:.1f} s",
              flush=True)
    return model


def _backend_options(backend: str) -> dict[str, Any]:
    from irkit.plugins import get_registry

    return get_registry().get("backends", backend).options


def _ort_session(model: bytes, threads: int) -> Any:
    """ONNX Runtime on ``threads`` intra-op threads, all graph optimizations.

    With more than one thread its workers stop spinning when a run ends: spinning, they
    keep the cores busy for a while after each call, and in one process on a host with
    as many cores as threads that lands on irkit's next call (ResNet at batch 64 and 2
    threads: irkit 7.3 ms next to spinning workers, 4.2 ms otherwise), while ORT's own
    time moves by under 5%.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 1:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _torch_module(name: str, graph: Any, source: Any, verbose: bool) -> Any:
    from irkit.bench_torch import TorchUnavailable, torch_module

    try:
        return torch_module(name, graph, source)
    except TorchUnavailable as exc:
        if verbose:
            print(f"  {name}: no torch anchor: {exc}", flush=True)
        return None
