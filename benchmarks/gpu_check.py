"""The cuda backend on a GPU (H100/H200, sm_90), checked in one command in under 5 minutes.

    python benchmarks/gpu_check.py                    # on a machine with an NVIDIA GPU
    python benchmarks/gpu_check.py --simulator        # no GPU: the same steps, small, in
                                                      # numba-cuda's CUDA simulator
    python benchmarks/gpu_check.py --json gpu.json    # also write the results

Steps (a failing step is reported and the others still run):

1. environment: GPU, compute capability, numba-cuda, torch and whether it sees CUDA,
   ONNX Runtime's providers;
2. op conformance subset: ONNX node cases of the op families the GPU templates and the
   grid mapping cover, compiled by the cuda backend and run on the GPU against each
   case's expected outputs and tolerance;
3. the built-in models (mlp, resnet, transformer) against torch CUDA eager: the largest
   absolute difference at batch 4 (torch on the CPU, or ONNX Runtime, where torch has no
   CUDA);
4. latency at batch 1 and 64: irkit (numpy arrays in and out, copies included), torch
   CUDA eager (the same, and device tensors only) and ONNX Runtime's CUDA provider when
   installed; irkit's kernels alone (device-resident buffers) beside them;
5. a 4096^3 fp32 GEMM: irkit's kernel alone against ``torch.matmul`` on device tensors
   (TF32 off): TFLOP/s and the share (target >= 50%).

Artifacts are compiled in parallel worker processes first (numba-cuda's PTX compilation
is the slow part); then everything runs in this process on one GPU. The summary checks
the issue's targets: ResNet at batch 64 within 2x of torch CUDA eager; GEMM >= 50% of
torch.matmul.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

CONFORMANCE = (
    "test_add$", "test_mul_bcast$", "test_relu$", "test_sigmoid$", "test_tanh$", "test_erf$",
    "test_gelu_default_1$", "test_softmax_axis_1$", "test_softmax_large_number$",
    "test_logsoftmax_axis_2$", "test_layer_normalization_3d_axis_negative_1_epsilon$",
    "test_reduce_mean_default_axes_keepdims_example$", "test_reduce_sum_keepdims_random$",
    "test_reduce_max_do_not_keepdims_example$", "test_globalaveragepool$",
    "test_globalmaxpool$", "test_gemm_all_attributes$", "test_gemm_transposeB$",
    "test_matmul_3d$", "test_matmul_4d$", "test_conv_with_strides_padding$",
    "test_conv_with_autopad_same$", "test_basic_conv_with_padding$", "test_maxpool_2d_pads$",
    "test_averagepool_2d_strides$", "test_batchnorm_example$", "test_transpose_all_permutations_3$",
    "test_concat_3d_axis_1$", "test_gather_1$", "test_slice$", "test_reshape_reordered_all_dims$",
    "test_cast_FLOAT_to_FLOAT16$", "test_where_example$", "test_clip$", "test_div$",
    "test_mod_mixed_sign_int32$", "test_max_example$", "test_min_float32$", "test_argmax_keepdims_example$",
    "test_cumsum_1d$", "test_expand_dim_changed$", "test_constant_pad$", "test_resize_upsample_scales_nearest$",
    "test_einsum_batch_matmul$", "test_attention_4d$", "test_instancenorm_example$",
    "test_hardmax_example$", "test_top_k$", "test_onehot_with_axis$", "test_depthtospace_example$",
)  # fmt: skip
SIM_CONFORMANCE = CONFORMANCE[:8]
MODELS = ("mlp", "resnet", "transformer")


# -- building (worker processes) --------------------------------------------------------
def _build(job: tuple[str, str, str]) -> tuple[str, str, str]:
    """(kind, name, artifact dir) -> (kind, name, path or 'error: ...')."""
    kind, name, out = job
    try:
        import irkit

        if kind == "model":
            from irkit.bench import builtin_model

            graph = builtin_model(name)
        elif kind == "gemm":
            from irkit.bench import _matmul_onnx

            size = int(name)
            graph = irkit.load_model(_matmul_onnx("N", size, size))
        else:
            from irkit.conformance import load_cases

            (case,) = load_cases(pattern=f"^{name}$")
            graph = irkit.load_model(case.load_model())
        return kind, name, str(irkit.compile(graph, target="cuda").save(out))
    except Exception as exc:  # reported in the table, the other jobs go on
        return kind, name, f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def build_all(jobs: list[tuple[str, str, str]], workers: int) -> dict[tuple[str, str], str]:
    context = multiprocessing.get_context("spawn")  # CUDA and fork do not mix
    with context.Pool(workers) as pool:
        return {(k, n): p for k, n, p in pool.imap_unordered(_build, jobs)}


# -- measuring ------------------------------------------------------------------------
def median_ms(fn: Callable[[], Any], repeats: int, budget_s: float = 1.0) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    fn()
    one = max(time.perf_counter() - start, 1e-6)
    inner = max(1, min(100, int(budget_s / repeats / one)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return float(np.median(times)) * 1e3


def environment(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"device": device}
    try:
        import numba_cuda  # noqa: F401
        from numba import cuda

        info["numba_cuda"] = getattr(sys.modules.get("numba_cuda"), "__version__", "?")
        if device == "gpu":
            dev = cuda.get_current_device()
            info["gpu"] = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
            info["compute_capability"] = list(dev.compute_capability)
    except Exception as exc:
        info["numba_cuda_error"] = str(exc)
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = bool(torch.cuda.is_available())
    except ImportError:
        info["torch"] = None
    try:
        import onnxruntime as ort

        info["ort_providers"] = ort.get_available_providers()
    except ImportError:
        info["ort_providers"] = []
    return info


def conformance(paths: dict[tuple[str, str], str], names: list[str], device: str
                ) -> dict[str, Any]:
    import irkit.runtime
    from irkit.conformance import load_cases
    from irkit.conformance.runner import compare

    rows = {}
    for name in names:
        path = paths.get(("case", name), "error: not built")
        if path.startswith("error"):
            rows[name] = path
            continue
        (case,) = load_cases(pattern=f"^{name}$")
        # conformance cases hold NaN and inf on purpose: they test the backend's arithmetic
        model = irkit.runtime.load(path, device=device, reject_nonfinite=False)
        try:
            for inputs, expected in case.data_sets(case.load_model()):
                feeds = dict(zip([s.name for s in model.inputs], inputs))
                out = model.run(feeds)
                compare(expected, [out[s.name] for s in model.outputs], case.rtol, case.atol)
            rows[name] = "passed"
        except AssertionError as exc:
            rows[name] = f"wrong: {' '.join(str(exc).split())[:160]}"
    passed = sum(v == "passed" for v in rows.values())
    print(f"\nop conformance subset: {passed}/{len(rows)} passed")
    for name, outcome in rows.items():
        if outcome != "passed":
            print(f"  {name}: {outcome}")
    return {"passed": passed, "total": len(rows), "cases": rows}


def torch_reference(name: str, graph: Any, cuda_ok: bool) -> Any:
    """The eager torch module of a built-in model, on the GPU when torch has CUDA."""
    from irkit.bench_torch import EagerGraph, torch_module

    module = torch_module(name, graph)
    if cuda_ok:
        if isinstance(module, EagerGraph):
            module.consts = {k: v.cuda() for k, v in module.consts.items()}
        else:
            module = module.cuda()
    return module


def models(paths: dict[tuple[str, str], str], names: list[str], batches: tuple[int, ...],
           device: str, info: dict[str, Any], repeats: int) -> dict[str, Any]:
    import irkit.runtime
    from irkit.bench import _inputs, builtin_model

    results: dict[str, Any] = {}
    have_torch = info.get("torch") is not None
    cuda_ok = bool(info.get("torch_cuda")) and device == "gpu"
    ort_cuda = "CUDAExecutionProvider" in info.get("ort_providers", [])
    print(f"\n{'model':<12} {'batch':>5} {'irkit ms':>9} {'kernels':>9} {'torch ms':>9} "
          f"{'torch dev':>9} {'ort-cuda':>9} {'irkit/torch':>11} {'max |diff|':>10}")
    for name in names:
        path = paths.get(("model", name), "error: not built")
        if path.startswith("error"):
            results[name] = path
            print(f"{name:<12} {path}")
            continue
        graph = builtin_model(name)
        model = irkit.runtime.load(path, device=device)
        module = torch_reference(name, graph, cuda_ok) if have_torch else None
        session = _ort_cuda_session(graph) if ort_cuda and device == "gpu" else None
        for batch in batches:
            feeds = _inputs(graph, batch)
            row: dict[str, Any] = {"irkit_ms": median_ms(partial(model.run, feeds), repeats)}
            ours = model.run(feeds)
            if device == "gpu":
                from irkit.runtime.backends.cuda import device_launcher

                row["kernels_ms"] = median_ms(device_launcher(model), repeats)
            if module is not None:
                row.update(_torch_timings(module, graph, feeds, cuda_ok, repeats, ours))
            if session is not None:
                names_out = [v.name for v in graph.outputs]
                row["ort_cuda_ms"] = median_ms(partial(session.run, names_out, feeds),
                                               repeats)
            if row.get("torch_ms"):
                row["ratio_to_torch"] = row["irkit_ms"] / row["torch_ms"]
            results[f"{name}/{batch}"] = row
            print(f"{name:<12} {batch:>5} {row['irkit_ms']:>9.3f} "
                  f"{row.get('kernels_ms', float('nan')):>9.3f} "
                  f"{row.get('torch_ms', float('nan')):>9.3f} "
                  f"{row.get('torch_device_ms', float('nan')):>9.3f} "
                  f"{row.get('ort_cuda_ms', float('nan')):>9.3f} "
                  f"{row.get('ratio_to_torch', float('nan')):>11.2f} "
                  f"{row.get('max_abs_diff', float('nan')):>10.2g}", flush=True)
        model.close()
    return results


def _torch_timings(module: Any, graph: Any, feeds: dict[str, np.ndarray], cuda_ok: bool,
                   repeats: int, ours: dict[str, np.ndarray]) -> dict[str, float]:
    import torch

    host = [torch.from_numpy(np.ascontiguousarray(feeds[v.name])) for v in graph.inputs]
    device = [t.cuda() for t in host] if cuda_ok else host

    def first(out: Any) -> Any:
        return out[0] if isinstance(out, tuple | list) else out

    def end_to_end() -> Any:
        with torch.inference_mode():
            args = [t.cuda() for t in host] if cuda_ok else host
            return first(module(*args)).cpu()

    def device_only() -> None:
        with torch.inference_mode():
            module(*device)
        if cuda_ok:
            torch.cuda.synchronize()

    want = end_to_end().numpy()
    got = next(iter(ours.values()))
    diff = float(np.max(np.abs(want.astype(np.float64) - got))) if want.shape == got.shape \
        else float("inf")
    return {"torch_ms": median_ms(end_to_end, repeats),
            "torch_device_ms": median_ms(device_only, repeats), "max_abs_diff": diff}


def _ort_cuda_session(graph: Any) -> Any:
    import onnxruntime as ort

    import irkit

    model = irkit.compile(graph, target="ort").files["model.onnx"]
    return ort.InferenceSession(model, providers=["CUDAExecutionProvider"])


def gemm(paths: dict[tuple[str, str], str], size: int, device: str, info: dict[str, Any],
         repeats: int) -> dict[str, Any]:
    import irkit.runtime

    path = paths.get(("gemm", str(size)), "error: not built")
    if path.startswith("error"):
        print(f"\ngemm {size}^3: {path}")
        return {"error": path}
    model = irkit.runtime.load(path, device=device)
    x = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    out = model.run({"x": x})["y"]
    flops = 2.0 * size**3
    result: dict[str, Any] = {"size": size}
    if device == "gpu":
        from irkit.runtime.backends.cuda import device_launcher

        result["irkit_ms"] = median_ms(device_launcher(model), repeats)
    else:
        result["irkit_ms"] = median_ms(lambda: model.run({"x": x}), 3)
    result["irkit_tflops"] = flops / result["irkit_ms"] / 1e9
    if info.get("torch_cuda") and device == "gpu":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        a = torch.from_numpy(x).cuda()
        b = torch.from_numpy(_weights(size)).cuda()

        def mm() -> None:
            torch.matmul(a, b)
            torch.cuda.synchronize()

        result["torch_ms"] = median_ms(mm, repeats)
        result["torch_tflops"] = flops / result["torch_ms"] / 1e9
        result["share"] = result["irkit_tflops"] / result["torch_tflops"]
        ref = (a @ b).cpu().numpy()
        result["max_abs_diff"] = float(np.max(np.abs(ref - out)))
    print(f"\ngemm {size}^3 fp32: irkit {result['irkit_tflops']:.2f} TFLOP/s "
          f"({result['irkit_ms']:.3f} ms)" + (
              f", torch.matmul {result['torch_tflops']:.2f} TFLOP/s: {result['share']:.0%} "
              f"(target >= 50%), max |diff| {result['max_abs_diff']:.2g}"
              if "share" in result else ""))
    return result


def _weights(size: int) -> np.ndarray:
    """The GEMM model's weight matrix (the bench's seeded ``w``)."""
    import irkit
    from irkit.bench import _matmul_onnx

    graph = irkit.load_model(_matmul_onnx("N", size, size))
    return np.ascontiguousarray(graph.constants["w"].const, dtype=np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulator", action="store_true",
                        help="no GPU: run the steps small in numba-cuda's simulator")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--workers", type=int, default=0,
                        help="build processes (default: cores, at most 12)")
    args = parser.parse_args()
    device = "simulator" if args.simulator else "gpu"
    start = time.perf_counter()
    info = environment(device)
    print(json.dumps(info))
    if device == "gpu" and "gpu" not in info:
        print("no usable GPU: run with --simulator to try the steps without one")
        return 2
    cases = list(SIM_CONFORMANCE if args.simulator else CONFORMANCE)
    case_names = [c.rstrip("$") for c in cases]
    model_names = ["mlp"] if args.simulator else list(MODELS)
    size = 64 if args.simulator else 4096
    batches = (1, 2) if args.simulator else (1, 64)
    repeats = 3 if args.simulator else 15
    if info.get("torch") is not None:  # export the torch models once, before the workers
        from irkit.bench import builtin_model

        for name in model_names:
            builtin_model(name)
    workdir = Path(tempfile.mkdtemp(prefix="irkit-gpu-check-"))
    jobs = [("model", n, str(workdir / f"model_{n}")) for n in model_names]
    jobs += [("gemm", str(size), str(workdir / f"gemm_{size}" / "a"))]
    jobs += [("case", n, str(workdir / f"case_{n}")) for n in case_names]
    workers = args.workers or min(12, multiprocessing.cpu_count())
    paths = build_all(jobs, workers)
    print(f"built {len(paths)} artifacts in {time.perf_counter() - start:.0f} s")
    report: dict[str, Any] = {"environment": info}
    for step, run in (
        ("conformance", lambda: conformance(paths, case_names, device)),
        ("models", lambda: models(paths, model_names, batches, device, info, repeats)),
        ("gemm", lambda: gemm(paths, size, device, info, repeats)),
    ):
        try:
            report[step] = run()
        except Exception:  # one step's failure must not hide the others' results
            report[step] = {"error": traceback.format_exc(limit=3)}
            print(f"\n{step} failed:\n{report[step]['error']}")
    resnet = report.get("models", {}).get("resnet/64", {})
    share = report.get("gemm", {}).get("share")
    print("\ntargets:")
    if resnet.get("ratio_to_torch") is not None:
        ok = resnet["ratio_to_torch"] <= 2.0
        print(f"  resnet batch 64: {resnet['ratio_to_torch']:.2f}x torch CUDA eager "
              f"(target <= 2) {'met' if ok else 'MISSED'}")
    if share is not None:
        print(f"  gemm 4096^3: {share:.0%} of torch.matmul (target >= 50%) "
              f"{'met' if share >= 0.5 else 'MISSED'}")
    print(f"done in {time.perf_counter() - start:.0f} s on {info.get('gpu', device)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
