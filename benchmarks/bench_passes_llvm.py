"""Do the optimization passes make models faster on irkit's own llvm backend?

    python benchmarks/bench_passes_llvm.py [--rounds 40] [--batch 64] [--tbatch 64]
        [--only mlp,cnn,resnet,transformer,gemm]

Each model's variants are compiled with the llvm backend (1 thread) and, as exported
ONNX, run by ONNX Runtime (1 thread; int8 variants in QDQ form so ORT uses its int8
kernels). All runners of one model take turns call by call for ``--rounds`` rounds and
the table shows medians, so load from other processes hits every variant alike. Ratios
compare each variant with the fp32 (or dense) baseline of the same backend, same run.

Quality columns: digits accuracy on specs/data/digits_eval.npz (all 360 images, irkit
llvm outputs); for the transformer and the GEMM the output error relative to the fp32
output (max |a - b| / max |b|; for pruning that is what pruning random weights changes,
not a kernel error); "vs ref" is the llvm output against ``irkit.evaluate`` of the same
optimized graph (the reference decomposition), i.e. the kernels' own error.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STATIC = "fuse,quantize{mode=static,per_channel=true}"
STATIC_QDQ = "fuse,quantize{mode=static,per_channel=true,format=qdq}"
DYNAMIC = "quantize{per_channel=true}"


# #5 asks that fuse make the CNN and the transformer "faster": at least 2% (the spread
# of round-to-round medians on a quiet host), so noise alone cannot pass it.
FASTER = 1.02


@dataclass
class Variant:
    label: str
    pipeline: str  # for irkit llvm
    ort_pipeline: str | None  # for ORT (QDQ form of int8), None: not run
    baseline: str  # label this variant's ratio is taken against
    target: float | None = None  # speedup target from the issue, for the verdict column
    results: dict[str, Any] = field(default_factory=dict)


@dataclass
class Model:
    name: str
    graph: Any
    feeds: dict[str, np.ndarray]
    calibration: list[dict[str, np.ndarray]]
    variants: list[Variant]
    eval_x: np.ndarray | None = None
    eval_y: np.ndarray | None = None


def llvm_model(graph: Any) -> Any:
    import irkit
    import irkit.runtime

    directory = Path(tempfile.mkdtemp(prefix="bench_llvm_")) / "model"
    irkit.compile(graph, target="llvm", threads=1).save(directory)
    return irkit.runtime.load(directory, threads=1)


def ort_session(graph: Any) -> Any:
    import onnxruntime as ort

    import irkit

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(irkit.to_onnx(graph).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def digits_models(batch: int) -> list[Model]:
    import irkit
    from irkit.testing.models import ensure_digits_models

    models_dir = ensure_digits_models()
    ev = np.load(ROOT / "specs" / "data" / "digits_eval.npz")
    cal = np.load(ROOT / "specs" / "data" / "digits_calib.npz")
    out = []
    for kind, key in (("mlp", "x"), ("cnn", "x_img")):
        graph = irkit.load_model(str(models_dir / f"digits_{kind}.onnx"))
        name = graph.inputs[0].name
        x = np.resize(ev[key], (batch, *ev[key].shape[1:])).astype(np.float32)
        variants = [
            Variant("fp32", "", "", "fp32"),
            # CNN: BatchNorm folded, Conv+ReLU+MaxPool pooled in the conv's tile epilogue.
            Variant("fuse", "fuse", "fuse", "fp32", FASTER if kind == "cnn" else None),
            Variant("int8 static per-channel", STATIC, STATIC_QDQ, "fp32", 1.5),
        ]
        if kind == "cnn":
            variants.append(Variant("structured prune 50%", "fuse,prune{sparsity=0.5,"
                                    "structured=true}", "fuse,prune{sparsity=0.5,"
                                    "structured=true}", "fuse", 1.6))
            # Same speed; channels ranked by calibration activations keep more accuracy.
            variants.append(Variant("structured prune 50% (activation criterion)",
                                    "fuse,prune{sparsity=0.5,structured=true,"
                                    "criterion=activation}", "fuse,prune{sparsity=0.5,"
                                    "structured=true,criterion=activation}", "fuse", 1.6))
        calib = [{name: cal[key][i:i + 32].astype(np.float32)}
                 for i in range(0, len(cal[key]), 32)]
        out.append(Model(f"digits {kind}", graph, {name: x}, calib, variants,
                         ev[key].astype(np.float32), ev["y"]))
    return out


def resnet_model(batch: int) -> Model:
    """The ResNet-style CNN (3x32x32, torch export: BatchNorm already folded into the
    convolutions by the exporter, so fuse has conv epilogues only)."""
    import torch  # noqa: F401  (before irkit.bench's export: torch.export import order)

    from irkit.bench import builtin_model

    x = np.random.default_rng(2).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    return Model("resnet cnn 3x32x32", builtin_model("resnet"), {"x": x}, [], [
        Variant("fp32", "", "", "fp32"),
        Variant("fuse", "fuse", "fuse", "fp32", FASTER),
    ])


def transformer_model(batch: int) -> Model:
    import torch

    import irkit
    from irkit.testing.models import export_onnx, make_transformer_encoder

    path = Path(tempfile.mkdtemp(prefix="bench_llvm_")) / "transformer.onnx"
    example = torch.randn(2, 64, 128, generator=torch.Generator().manual_seed(0))
    export_onnx(make_transformer_encoder(), (example,), path, input_names=["x"],
                output_names=["y"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 64, 128)).astype(np.float32)
    return Model("transformer d128 s64", irkit.load_model(str(path)), {"x": x}, [], [
        Variant("fp32", "", "", "fp32"),
        Variant("simplify", "simplify", "simplify", "fp32"),
        # fuse alone: against the simplified graph it runs on.
        Variant("fuse", "simplify,fuse", "simplify,fuse", "simplify", FASTER),
        Variant("int8 dynamic per-channel", "simplify,fuse," + DYNAMIC,
                "simplify,quantize{per_channel=true,format=qdq}", "fuse", 1.3),
    ])


def gemm_model(batch: int) -> Model:
    import irkit
    from irkit.bench import _matmul_onnx

    graph = irkit.load_model(_matmul_onnx("N", 512, 512))
    x = np.random.default_rng(1).standard_normal((batch, 512)).astype(np.float32)
    return Model("GEMM 512x512", graph, {"x": x}, [], [
        Variant("dense fp32", "", "", "dense fp32"),
        Variant("unstructured prune 90% (sparse)", "prune{sparsity=0.9}",
                "prune{sparsity=0.9}", "dense fp32", 1.0),
    ])


def prepare(model: Model) -> list[tuple[Variant, str, Callable[[], Any]]]:
    """Optimize, compile and check every variant; the runners to time."""
    import irkit

    runners: list[tuple[Variant, str, Callable[[], Any]]] = []
    for v in model.variants:
        graph = irkit.optimize(model.graph, v.pipeline, calibration=model.calibration) \
            if v.pipeline else model.graph
        try:
            compiled = llvm_model(graph)
            out = next(iter(compiled(**model.feeds).values()))
            ref = next(iter(irkit.evaluate(graph, model.feeds).values()))
            v.results["vs_ref"] = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))
            v.results["out"] = out
            if model.eval_x is not None:
                name = next(iter(model.feeds))
                logits = next(iter(compiled(**{name: model.eval_x}).values()))
                v.results["acc"] = float(np.mean(logits.argmax(-1) == model.eval_y))
            feeds = model.feeds
            runners.append((v, "llvm", lambda m=compiled, f=feeds: m(**f)))
        except Exception as exc:  # report, do not hide, a variant that fails
            v.results["llvm_error"] = f"{type(exc).__name__}: {exc}"[:120]
        if v.ort_pipeline is not None:
            ograph = irkit.optimize(model.graph, v.ort_pipeline, calibration=model.calibration) \
                if v.ort_pipeline else model.graph
            session = ort_session(ograph)
            runners.append((v, "ort", lambda s=session, f=model.feeds: s.run(None, f)))
    base = {v.label: v for v in model.variants}
    for v in model.variants:
        ref_out = base[v.baseline].results.get("out")
        if "out" in v.results and ref_out is not None:
            v.results["vs_base"] = float(np.abs(v.results["out"] - ref_out).max()
                                         / max(np.abs(ref_out).max(), 1e-12))
    return runners


def time_rounds(runners: list[tuple[Variant, str, Callable[[], Any]]], rounds: int) -> None:
    for _, _, run in runners:
        for _ in range(3):
            run()
    samples: list[list[float]] = [[] for _ in runners]
    for _ in range(rounds):
        for i, (_, _, run) in enumerate(runners):
            start = time.perf_counter()
            run()
            samples[i].append(time.perf_counter() - start)
    for (v, backend, _), times in zip(runners, samples):
        v.results[f"{backend}_ms"] = statistics.median(times) * 1e3


def table(models: list[Model]) -> str:
    lines = [
        "| model | variant | irkit llvm ms | ratio | target | ORT ms | ORT ratio | quality |"
        " vs ref |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        base = {v.label: v for v in model.variants}
        for v in model.variants:
            r, b = v.results, base[v.baseline].results
            llvm_ms, ort_ms = r.get("llvm_ms"), r.get("ort_ms")
            ratio = b["llvm_ms"] / llvm_ms if llvm_ms and b.get("llvm_ms") else None
            ort_ratio = b["ort_ms"] / ort_ms if ort_ms and b.get("ort_ms") else None
            target = "-"
            if v.target is not None and ratio is not None:
                if v.target == FASTER:  # the issue asks "faster", beyond round noise
                    verdict = "met" if ratio >= FASTER else "MISSED"
                    target = f"faster (>={FASTER:.2f}x) {verdict}"
                else:
                    verdict = "met" if ratio >= v.target else "MISSED"
                    target = f">={v.target:.1f}x {verdict}"
            if "acc" in r:
                quality = f"acc {100 * r['acc']:.1f}%"
            elif "vs_base" in r and v.label != v.baseline:
                quality = f"rel err {r['vs_base']:.1e} vs {v.baseline}"
            else:
                quality = "-"
            llvm_cell = f"{llvm_ms:.3f}" if llvm_ms else f"error: {r.get('llvm_error', '?')}"
            lines.append(
                f"| {model.name} | {v.label} | {llvm_cell} | "
                f"{f'{ratio:.2f}x' if ratio else '-'} | {target} | "
                f"{f'{ort_ms:.3f}' if ort_ms else '-'} | "
                f"{f'{ort_ratio:.2f}x' if ort_ratio else '-'} | {quality} | "
                f"{r['vs_ref']:.1e} |" if "vs_ref" in r else
                f"| {model.name} | {v.label} | {llvm_cell} | - | - | "
                f"{f'{ort_ms:.3f}' if ort_ms else '-'} | - | - | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tbatch", type=int, default=64, help="transformer batch")
    parser.add_argument("--only", default="",
                        help="comma list: mlp,cnn,resnet,transformer,gemm")
    args = parser.parse_args(argv)
    from irkit.bench import cpu_description

    wanted = set(filter(None, args.only.split(",")))
    models: list[Model] = []
    for model in digits_models(args.batch):
        if not wanted or model.name.split()[-1] in wanted:
            models.append(model)
    if not wanted or "resnet" in wanted:
        models.append(resnet_model(args.batch))
    if not wanted or "transformer" in wanted:
        models.append(transformer_model(args.tbatch))
    if not wanted or "gemm" in wanted:
        models.append(gemm_model(args.batch))
    for model in models:
        runners = prepare(model)
        time_rounds(runners, args.rounds)
        print(f"[{model.name}: {len(runners)} runners timed]", file=sys.stderr)
    print(f"{cpu_description()}; 1 thread; batch {args.batch} (transformer {args.tbatch} x 64 "
          f"tokens); medians of {args.rounds} alternating rounds; ratio = baseline time / "
          "variant time on the same backend (baseline: fp32; simplify for the "
          "transformer's fuse; fuse for prune and dynamic int8)\n")
    print(table(models))
    return 0


if __name__ == "__main__":
    sys.exit(main())
