"""Build what a spec pipeline declares: load the model, check the declared inputs, run the
passes (with eval and calibration data), compile every target and save the artifacts."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from irkit.errors import IrkitError
from irkit.ir import DType, Graph, TensorType

DATA_KEYS = ("input", "inputs")


def read_data(ref: Any) -> dict[str, np.ndarray]:
    """Arrays of a spec data reference (npz/npy/csv/parquet) by name. Never unpickles."""
    path = Path(ref.path)
    if not path.is_file():
        raise IrkitError(f"{path}: data file not found")
    fmt = ref.format
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if fmt == "npy":
        return {"": np.load(path, allow_pickle=False)}
    if fmt == "csv":
        return {"": np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)}
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return {"": np.stack([c.to_numpy() for c in table.columns], axis=1).astype(np.float32)}
    raise IrkitError(f"{path}: unsupported data format {fmt!r}")


def model_feeds(ref: Any, graph: Graph) -> dict[str, np.ndarray]:
    """Map a data reference onto the graph's inputs.

    ``input = "x"`` names the array for a single-input model; ``inputs = ["a", "b"]`` one
    array per model input in order; otherwise arrays whose names match the inputs are used.
    """
    arrays = read_data(ref)
    names = [v.name for v in graph.inputs]
    options = dict(ref.options)
    if "input" in options:
        keys = [options["input"]]
    elif "inputs" in options:
        keys = list(options["inputs"])
    elif "" in arrays:
        keys = [""]
    else:
        keys = names
    if len(keys) != len(names):
        raise IrkitError(f"{ref.path}: {len(keys)} arrays named for {len(names)} model inputs "
                         f"({', '.join(names)})")
    feeds = {}
    for name, key in zip(names, keys):
        if key not in arrays:
            raise IrkitError(f"{ref.path}: no array {key!r} (has: {', '.join(arrays)})")
        feeds[name] = arrays[key]
    return feeds


def labels_of(ref: Any) -> np.ndarray | None:
    key = dict(ref.options).get("labels")
    if key is None:
        return None
    arrays = read_data(ref)
    if key not in arrays:
        raise IrkitError(f"{ref.path}: no labels array {key!r} (has: {', '.join(arrays)})")
    return arrays[key]


def apply_input_decls(graph: Graph, decls: tuple[Any, ...], where: str) -> None:
    """Check declared inputs against the model and fill in dims the model left open."""
    by_name = {v.name: v for v in graph.inputs}
    for decl in decls:
        value = by_name.get(decl.name)
        if value is None:
            raise IrkitError(f"{where}:{decl.line}:{decl.column}: the model has no input "
                             f"{decl.name!r} (inputs: {', '.join(by_name)})")
        dtype = DType.from_short(decl.dtype)
        declared = TensorType(dtype, tuple(decl.shape))
        current = value.type
        if isinstance(current, TensorType):
            problems = current.dtype is not dtype or (
                current.shape is not None and len(current.shape) != len(decl.shape)
            )
            if not problems and current.shape is not None:
                problems = any(isinstance(a, int) and isinstance(b, int) and a != b
                               for a, b in zip(current.shape, decl.shape))
            if problems:
                raise IrkitError(
                    f"{where}:{decl.line}:{decl.column}: input {decl.name!r} is declared "
                    f"{declared} but the model has {current}"
                )
        value.type = declared


def _calibration(pass_spec: Any, graph: Graph) -> list[dict[str, np.ndarray]] | None:
    from irkit.spec import DataRef

    for value in pass_spec.options.values():
        if isinstance(value, DataRef):
            feeds = model_feeds(value, graph)
            count = len(next(iter(feeds.values())))
            step = 32
            return [{k: v[i : i + step] for k, v in feeds.items()} for i in range(0, count, step)]
    return None


def load_pipeline_model(pipeline: Any) -> Graph:
    from irkit.api import load_model

    source = pipeline.model
    if source.kind == "onnx":
        graph = load_model(source.path, frontend="onnx")
    else:
        options = dict(source.options)
        example = options.pop("example", None)
        example_inputs = None
        if example is not None:
            example_inputs = tuple(read_data(example).values())
        graph = load_model(source.factory, frontend=source.kind,
                           example_inputs=example_inputs, **options)
    apply_input_decls(graph, pipeline.inputs, pipeline.file)
    return graph


def pipeline_arches(pipeline: Any) -> list[Any]:
    """The CPU/GPU/wasm targets a pipeline compiles for (each kernel backend target's
    ``arch``, ``native`` when unset); passes such as quantize choose for them."""
    from irkit.plugins import get_registry

    arches: list[Any] = []
    for spec in pipeline.targets:
        try:
            options = get_registry().get("backends", spec.backend).options
        except IrkitError:
            continue
        if "arch" in options:
            arch = dict(spec.options).get("arch", options["arch"].default)
            # a string may name several (the wasm backend's default "wasm32-simd,wasm32")
            arches += arch.split(",") if isinstance(arch, str) else list(arch)
    return arches


def optimize_pipeline(pipeline: Any, graph: Graph) -> Graph:
    from irkit.api import optimize

    if not pipeline.passes:
        return graph
    eval_data = labels = train_data = train_labels = None
    if pipeline.eval is not None:
        eval_data = model_feeds(pipeline.eval, graph)
        labels = labels_of(pipeline.eval)
    if getattr(pipeline, "train", None) is not None:
        train_data = model_feeds(pipeline.train, graph)
        train_labels = labels_of(pipeline.train)
    calibration: list[Any] | None = None
    for spec in pipeline.passes:
        calibration = calibration or _calibration(spec, graph)
    if calibration is None and (train_data or eval_data) is not None:
        # No pass names its calibration data: static quantization (and search's
        # candidates) calibrate on the first training inputs, else the first eval inputs.
        from irkit.compress.search import default_calibration

        calibration = default_calibration(train_data or eval_data or {})
    arches = pipeline_arches(pipeline)
    # A build times the forms a pass may choose between on the pipeline's targets, so
    # an optimization that is slower there steps aside (and the report says so).
    return optimize(graph, pipeline.pass_pipeline_text(), calibration=calibration,
                    eval_data=eval_data, labels=labels, target=arches or None,
                    measure=bool(arches), train_data=train_data, train_labels=train_labels)


def build_pipeline(pipeline: Any, *, target: str | None = None, arch: Any = None,
                   log: Any = None) -> dict[str, Path]:
    """Build ``pipeline``'s targets (only ``target`` when given); ``arch`` overrides the
    targets' ``arch`` option. Progress goes to ``log`` (``sys.stderr`` as it is at call
    time by default)."""
    from irkit.api import compile as compile_graph

    log = sys.stderr if log is None else log
    start = time.perf_counter()
    targets = [pipeline.target(target)] if target else list(pipeline.targets)
    if not targets:
        raise IrkitError(f"{pipeline.file}: pipeline {pipeline.name!r} declares no target")
    graph = load_pipeline_model(pipeline)
    source = graph
    graph = optimize_pipeline(pipeline, graph)
    if graph.history:
        from irkit.passes.manager import format_report_table

        print(format_report_table(graph.history), file=log)
    graph.name = pipeline.name  # the served model's name (HTTP URLs, Kafka results)
    built: dict[str, Path] = {}
    for spec in targets:
        t0 = time.perf_counter()
        options = dict(spec.options)
        if arch is not None:
            options["arch"] = arch
        artifact = compile_graph(graph, target=spec.backend, **options)
        out = artifact.save(Path(pipeline.output) / spec.name)
        built[spec.name] = out
        print(f"irkit: built {pipeline.name}/{spec.name} ({spec.backend}) -> {out} "
              f"in {time.perf_counter() - t0:.2f} s", file=log)
        if pipeline.eval is not None:
            check_artifact(pipeline, spec.name, out, source, graph, log)
    print(f"irkit: pipeline {pipeline.name!r} done in {time.perf_counter() - start:.2f} s",
          file=log)
    return built


# The compiled artifact must compute what the report measured on the optimized graph:
# relative error (L2, over all outputs) between the two at most this, and accuracy at
# most this much lower. Beyond it the build fails.
ARTIFACT_REL_TOL = 0.02
ARTIFACT_ACC_DROP = 0.01


def check_artifact(pipeline: Any, name: str, path: Path, source: Graph, graph: Graph,
                   log: Any = sys.stderr) -> None:
    """Run the eval data through the saved artifact (what every adapter serves) and print
    its error against the source model and its accuracy beside the report's; raise
    IrkitError when the artifact disagrees with the optimized graph beyond the
    tolerances above. An artifact this machine cannot run is reported, not checked."""
    import irkit.runtime
    from irkit.api import evaluate
    from irkit.passes.manager import accuracy, compare_outputs

    where = f"{pipeline.name}/{name}"
    try:
        model = irkit.runtime.load(path, reject_nonfinite=False)  # measure, as evaluate does
    except (IrkitError, ImportError, OSError) as exc:
        print(f"irkit: {where}: not checked on the eval data: {exc}", file=log)
        return
    feeds = model_feeds(pipeline.eval, source)
    labels = labels_of(pipeline.eval)
    got = model.run(feeds)
    expected = evaluate(graph, feeds)
    want_source = expected if graph is source else evaluate(source, feeds)
    vs_source = compare_outputs(got, want_source)
    vs_graph = compare_outputs(got, expected)
    line = (f"irkit: {where} (the artifact) on the eval data: max|err| {vs_source.max_abs:.3g} "
            f"vs the source model, {vs_graph.max_abs:.3g} vs the optimized graph")
    acc_got = acc_want = None
    if labels is not None:
        acc_got = accuracy(got, graph, labels)
        acc_want = accuracy(expected, graph, labels)
        line += f"; accuracy {acc_got:.4f} (report {acc_want:.4f})"
    print(line, file=log)
    nonfinite = [k for k, v in got.items() if not np.all(np.isfinite(v))]
    problems = []
    if vs_graph.rel > ARTIFACT_REL_TOL:
        problems.append(f"relative error {vs_graph.rel:.3g} against the optimized graph "
                        f"(tolerance {ARTIFACT_REL_TOL})")
    if acc_got is not None and acc_want is not None and acc_got < acc_want - ARTIFACT_ACC_DROP:
        problems.append(f"accuracy {acc_got:.4f}, the report says {acc_want:.4f}")
    if nonfinite and all(np.all(np.isfinite(v)) for v in expected.values()):
        problems.append(f"non-finite values in {', '.join(nonfinite)}")
    if problems:
        hint = (" (ONNX Runtime's graph optimizations rewrite quantized math on some CPUs: "
                "try optimization_level = \"basic\" in the target)"
                if model.backend == "ort" else "")
        raise IrkitError(f"{where}: the compiled artifact does not compute what the report "
                         f"measured: {'; '.join(problems)}{hint}")


def build_spec(path: Path, pipeline: str | None = None, *, target: str | None = None,
               arch: Any = None, log: Any = None) -> dict[str, Path]:
    """Build one pipeline of a spec file (the only one when ``pipeline`` is None)."""
    from irkit.spec import parse_spec

    spec = parse_spec(path)
    return build_pipeline(spec.pipeline(pipeline), target=target, arch=arch, log=log)


def feeds_summary(feeds: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in feeds.items())
