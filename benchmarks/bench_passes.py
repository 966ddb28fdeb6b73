"""Speed of optimized graphs, as ratios against ONNX Runtime on the fp32 model in the same
run. Each row says which backend produced it.

    python benchmarks/bench_passes.py [--threads 1] [--batch 256] [--repeat 30]

Backends: ``ort`` runs the exported ONNX (QDQ int8 graphs hit ORT's int8 kernels);
``llvm`` runs irkit's own backend when it is installed and can lower the graph.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# (label, model, pipeline, backends). The llvm backend lowers standard ops only, so its
# rows use pipelines that leave no irkit-domain op behind.
CASES: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("fp32", "mlp", "", ("ort", "llvm")),
    ("int8 dynamic (QDQ)", "mlp", "quantize{format=qdq,per_channel=true}", ("ort",)),
    (
        "int8 static per-channel (QDQ)",
        "mlp",
        "fuse,quantize{mode=static,per_channel=true,format=qdq}",
        ("ort",),
    ),
    ("structured prune 50%", "mlp", "prune{mode=structured,sparsity=0.5,criterion=activation}",
     ("ort", "llvm")),
    ("fp32", "cnn", "", ("ort", "llvm")),
    ("fold BN", "cnn", "fuse{epilogues=false}", ("ort", "llvm")),
    (
        "int8 static per-channel (QDQ)",
        "cnn",
        "fuse,quantize{mode=static,per_channel=true,format=qdq}",
        ("ort",),
    ),
    (
        "structured prune 50%",
        "cnn",
        "fuse{epilogues=false},prune{mode=structured,sparsity=0.5,criterion=activation}",
        ("ort", "llvm"),
    ),
    ("fp32", "transformer", "", ("ort", "llvm")),
    ("fuse (LayerNorm/GELU/epilogues)", "transformer", "simplify,fuse", ("ort",)),
    ("int8 dynamic per-channel (QDQ)", "transformer",
     "simplify,quantize{format=qdq,per_channel=true}", ("ort",)),
    ("int8 static per-channel (QDQ)", "transformer",
     "simplify,quantize{mode=static,per_channel=true,format=qdq}", ("ort",)),
]


def time_call(run: Callable[[], Any], repeat: int, warmup: int = 3) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def ort_runner(graph: Any, feeds: dict[str, np.ndarray], threads: int) -> Callable[[], Any]:
    import onnxruntime as ort

    import irkit

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        irkit.to_onnx(graph).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return lambda: session.run(None, feeds)


def llvm_runner(graph: Any, feeds: dict[str, np.ndarray], threads: int) -> Callable[[], Any]:
    import irkit
    import irkit.runtime

    artifact = irkit.compile(graph, target="llvm")
    directory = Path(tempfile.mkdtemp(prefix="bench_passes_")) / "model"
    artifact.save(directory)
    model = irkit.runtime.load(directory)
    return lambda: model(**feeds)


RUNNERS = {"ort": ort_runner, "llvm": llvm_runner}


def load_digits() -> dict[str, dict[str, Any]]:
    import irkit
    from irkit.testing.models import ensure_digits_models

    models = ensure_digits_models()
    eval_set = np.load(ROOT / "specs" / "data" / "digits_eval.npz")
    calib = np.load(ROOT / "specs" / "data" / "digits_calib.npz")
    out = {}
    for kind, key in (("mlp", "x"), ("cnn", "x_img")):
        graph = irkit.load_model(str(models / f"digits_{kind}.onnx"))
        name = graph.inputs[0].name
        out[kind] = {
            "graph": graph,
            "x": eval_set[key],
            "name": name,
            "calibration": [{name: calib[key][i : i + 32]} for i in range(0, 128, 32)],
        }
    out["transformer"] = load_transformer()
    return out


def load_transformer(batch: int = 8) -> dict[str, Any]:
    """The seeded 2-layer encoder of irkit.testing (d=128, seq 64), exported to ONNX."""
    import torch

    import irkit
    from irkit.testing.models import export_onnx, make_transformer_encoder

    path = Path(tempfile.mkdtemp(prefix="bench_passes_")) / "transformer.onnx"
    example = torch.randn(2, 64, 128, generator=torch.Generator().manual_seed(0))
    export_onnx(make_transformer_encoder(), (example,), path, input_names=["x"],
                output_names=["y"])
    rng = np.random.default_rng(0)
    return {"graph": irkit.load_model(str(path)), "name": "x",
            "x": rng.standard_normal((batch, 64, 128)).astype(np.float32),
            "calibration": [{"x": rng.standard_normal((2, 64, 128)).astype(np.float32)}
                            for _ in range(4)]}


def run_benchmarks(batch: int = 256, repeat: int = 30, threads: int = 1) -> list[dict[str, Any]]:
    """Time every case; the runners of one model take turns call by call (round robin), so
    load from other processes on a shared machine hits all variants alike."""
    import irkit

    digits = load_digits()
    rows: list[dict[str, Any]] = []
    for kind in dict.fromkeys(case[1] for case in CASES):
        model = digits[kind]
        rows_wanted = batch if kind != "transformer" else model["x"].shape[0]
        x = np.resize(model["x"], (rows_wanted, *model["x"].shape[1:])).astype(np.float32)
        feeds = {model["name"]: x}
        runners: list[tuple[dict[str, Any], Callable[[], Any]]] = []
        for label, case_kind, pipeline, backends in CASES:
            if case_kind != kind:
                continue
            graph = irkit.optimize(model["graph"], pipeline, calibration=model["calibration"]) \
                if pipeline else model["graph"]
            for backend in backends:
                row: dict[str, Any] = {"model": kind, "variant": label, "pipeline": pipeline,
                                       "backend": backend}
                try:
                    runner = RUNNERS[backend](graph, feeds, threads)
                    runner()
                except Exception as exc:  # a backend that cannot run this graph: say so
                    row["error"] = f"{type(exc).__name__}: {exc}"[:160]
                    rows.append(row)
                    continue
                runners.append((row, runner))
        samples: list[list[float]] = [[] for _ in runners]
        for _ in range(repeat):
            for i, (_, runner) in enumerate(runners):
                start = time.perf_counter()
                runner()
                samples[i].append(time.perf_counter() - start)
        baseline = None
        for (row, _), times in zip(runners, samples):
            seconds = statistics.median(times)
            if not row["pipeline"] and row["backend"] == "ort":
                baseline = seconds
            row["ms"] = seconds * 1e3
            row["speedup_vs_ort_fp32"] = (baseline / seconds) if baseline else float("nan")
            rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]], batch: int, threads: int) -> str:
    lines = [
        f"batch {batch} (transformer: 8 x 64 tokens), {threads} thread(s); "
        "speedup = ORT fp32 time of the same model / this time",
        "",
        "| model | variant | backend | ms/batch | speedup vs ORT fp32 |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['variant']} | {r['backend']} | not run: {r['error']} | - |"
            )
        else:
            lines.append(
                f"| {r['model']} | {r['variant']} | {r['backend']} | {r['ms']:.3f} | "
                f"{r['speedup_vs_ort_fp32']:.2f}x |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    rows = run_benchmarks(args.batch, args.repeat, args.threads)
    print(format_rows(rows, args.batch, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
