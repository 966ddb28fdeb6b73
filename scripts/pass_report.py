"""Figures for the optimization passes, as markdown tables (and JSON next to them).

    python scripts/pass_report.py [--out build/pass_report] [--skip-speed] [--minilm PATH]

1. static int8 per-channel accuracy on digits MLP/CNN vs fp32 (and the other int8 modes)
2. accuracy cost of structured (and unstructured) pruning on digits MLP/CNN
3. lowrank (energy 0.95/0.99, error budget; weight SVD vs output-whitened SVD) on the
   digits MLP, a transformer encoder (seeded random init, from irkit.testing) and MiniLM's
   trained encoder when an exported ONNX file is given with --minilm: params, MACs, error
4. speed, naming the backend of every number (benchmarks/bench_passes.py)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_passes",
                                                  ROOT / "benchmarks" / "bench_passes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dim(d: Any, dims: dict[str, int]) -> int:
    if isinstance(d, int):
        return d
    try:
        return int(eval(str(d), {"__builtins__": {}}, dims))  # symbolic dims like "4*N"
    except Exception:
        return 1


def linear_macs(graph: Any, dims: dict[str, int]) -> int:
    """Multiply-adds of MatMul/Gemm/Conv (plain, fused or int8) with symbols bound."""
    total = 0
    for node in graph.nodes:
        w_index = 3 if node.op in ("QLinearMatMulInt8", "QLinearConvInt8") else 1
        if node.op not in ("MatMul", "Gemm", "Conv", "MatMulBiasAct", "ConvBiasAct",
                           "QLinearMatMulInt8", "QLinearConvInt8", "DynamicQuantMatMulInt8"):
            continue
        w = node.inputs[w_index] if len(node.inputs) > w_index else None
        if w is not None and w.producer is not None and w.producer.op == "DequantizeLinear":
            w = w.producer.inputs[0]  # QDQ: the int8 weights behind DequantizeLinear
        out = node.outputs[0].shape
        if w is None or w.const is None or out is None:
            continue
        out_elems = int(np.prod([_dim(d, dims) for d in out]))
        if "Conv" in node.op:
            total += out_elems * int(np.prod(w.const.shape[1:]))
        else:
            k = w.const.shape[1] if (node.op == "Gemm" and node.attr("transB", 0)) \
                else w.const.shape[0]
            total += out_elems * k
    return total


def _digits() -> dict[str, Any]:
    return _bench_module().load_digits()


def accuracy_table(digits: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    import irkit

    variants = [
        ("fp32", ""),
        ("int8 static per-channel, minmax (irkit ops)", "fuse,quantize{mode=static,per_channel=true}"),
        ("int8 static per-channel, minmax (ONNX QDQ)",
         "fuse,quantize{mode=static,per_channel=true,format=qdq}"),
        ("int8 static per-channel, percentile 99.99",
         "fuse,quantize{mode=static,per_channel=true,calibrator=percentile}"),
        ("int8 static per-channel, entropy", "fuse,quantize{mode=static,per_channel=true,calibrator=entropy}"),
        ("int8 static per-tensor, symmetric", "fuse,quantize{mode=static,symmetric=true}"),
        ("int8 dynamic per-channel", "quantize{per_channel=true}"),
    ]
    return _variant_table(irkit, digits, variants)


def prune_table(digits: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    import irkit

    variants = [
        ("fp32", ""),
        ("structured 25% channels (L2 weight norm)",
         "fuse{epilogues=false},prune{mode=structured,sparsity=0.25,compensate=false}"),
        ("structured 50% channels (L2 weight norm)",
         "fuse{epilogues=false},prune{mode=structured,sparsity=0.5,compensate=false}"),
        ("structured 50% channels (L2 weight norm) + bias compensation",
         "fuse{epilogues=false},prune{mode=structured,sparsity=0.5}"),
        ("structured 50%, activation-ranked + bias compensation (calibration)",
         "fuse{epilogues=false},prune{mode=structured,sparsity=0.5,criterion=activation}"),
        ("unstructured 50% weights", "prune{sparsity=0.5}"),
        ("unstructured 80% weights, global", "prune{sparsity=0.8,scope=global}"),
    ]
    return _variant_table(irkit, digits, variants)


def _variant_table(irkit: Any, digits: dict[str, Any],
                   variants: list[tuple[str, str]]) -> tuple[str, list[dict[str, Any]]]:
    rows = []
    for kind in ("mlp", "cnn"):
        model = digits[kind]
        labels = np.load(ROOT / "specs" / "data" / "digits_eval.npz")["y"]
        feeds = {model["name"]: model["x"]}
        for label, pipeline in variants:
            graph = irkit.optimize(model["graph"], pipeline or "dce",
                                   calibration=model["calibration"], eval_data=feeds,
                                   labels=labels)
            last = graph.history[-1]
            rows.append({"model": kind, "variant": label, "pipeline": pipeline,
                         "accuracy": last.accuracy, "fp32_accuracy": last.baseline_accuracy,
                         "rel_error": last.rel_error, "params": last.params_after,
                         "weight_bytes": last.bytes_after,
                         "macs_per_sample": linear_macs(graph, {"N": 1})})
    lines = ["| model | variant | accuracy | Δ vs fp32 | rel. output error | params | "
             "weight bytes | MACs/sample |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['accuracy']:.4f} | "
            f"{100 * (r['accuracy'] - r['fp32_accuracy']):+.2f} pt | {r['rel_error']:.2e} | "
            f"{r['params']} | {r['weight_bytes']} | {r['macs_per_sample']} |")
    return "\n".join(lines), rows


LowRankModel = tuple[str, Any, dict[str, np.ndarray], list[dict[str, np.ndarray]],
                     dict[str, int], Any]
"""(label, graph, eval feeds, calibration batches, symbol sizes, labels or None)"""

LOWRANK_PIPELINES = (
    ("energy 0.95, weight SVD", "lowrank{energy=0.95,whiten=false}"),
    ("energy 0.95, output-whitened SVD", "lowrank{energy=0.95}"),
    ("energy 0.99, output-whitened SVD", "lowrank{energy=0.99}"),
    ("error budget 0.05, output-whitened SVD", "lowrank{error_budget=0.05}"),
)


def lowrank_table(models: list[LowRankModel]) -> tuple[str, list[dict[str, Any]]]:
    import irkit

    rows = []
    for label, graph, feeds, calibration, dims, labels in models:
        base = irkit.optimize(graph, "simplify,fuse{epilogues=false}")
        for variant, pipeline in LOWRANK_PIPELINES:
            out = irkit.optimize(base, pipeline, eval_data=feeds, calibration=calibration,
                                 labels=labels)
            report = out.history[-1]
            layers = report.details["layers"]
            rows.append({"model": label, "variant": variant, "pipeline": pipeline,
                         "factorized": len(layers), "skipped": len(report.details["skipped"]),
                         "params_before": report.params_before,
                         "params_after": report.params_after,
                         "macs_before": linear_macs(base, dims),
                         "macs_after": linear_macs(out, dims),
                         "rel_error": report.rel_error, "max_abs_error": report.max_abs_error,
                         "accuracy": report.accuracy,
                         "baseline_accuracy": report.baseline_accuracy,
                         "ranks": {k: f"{v['rank']}/{v['full_rank']}" for k, v in layers.items()}})
    lines = ["| model | variant | layers factorized / skipped | params | linear MACs | "
             "rel. output error (held-out) | accuracy |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else \
            f"{r['accuracy']:.4f} ({100 * (r['accuracy'] - r['baseline_accuracy']):+.2f} pt)"
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['factorized']} / {r['skipped']} | "
            f"{r['params_before']} -> {r['params_after']} "
            f"({r['params_after'] / r['params_before']:.2f}x) | {r['macs_before']} -> "
            f"{r['macs_after']} ({r['macs_after'] / max(r['macs_before'], 1):.2f}x) | "
            f"{r['rel_error']:.3e} | {acc} |")
    return "\n".join(lines), rows


def lowrank_models(digits: dict[str, Any], minilm: Path | None) -> list[LowRankModel]:
    """The digits MLP (accuracy measurable), the seeded random-init encoder and, when given,
    MiniLM. Calibration and evaluation data never overlap."""
    import torch

    import irkit
    from irkit.testing.models import export_onnx, make_transformer_encoder

    mlp = digits["mlp"]
    labels = np.load(ROOT / "specs" / "data" / "digits_eval.npz")["y"]
    out: list[LowRankModel] = [("digits MLP", mlp["graph"], {mlp["name"]: mlp["x"]},
                                mlp["calibration"], {"N": 1}, labels)]
    path = ROOT / "build" / "pass_report" / "transformer.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, 64, 128, generator=torch.Generator().manual_seed(0))
    export_onnx(make_transformer_encoder(), (example,), path, input_names=["x"],
                output_names=["y"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64, 128)).astype(np.float32)
    calibration = [{"x": rng.standard_normal((4, 64, 128)).astype(np.float32)}
                   for _ in range(4)]
    out.append(("encoder d=128 x2 (seeded random init)", irkit.load_model(str(path)),
                {"x": x}, calibration, {"N": 1}, None))
    if minilm is not None and minilm.exists():
        graph = irkit.load_model(str(minilm))

        def tokens(seed: int, batch: int, seq: int) -> dict[str, np.ndarray]:
            ids = np.random.default_rng(seed).integers(1000, 20000, (batch, seq))
            feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                     "token_type_ids": np.zeros_like(ids)}
            return {v.name: feeds[v.name].astype(np.int64) for v in graph.inputs}

        out.append(("MiniLM-L6 (trained; random token ids)", graph, tokens(0, 2, 32),
                    [tokens(s, 4, 128) for s in range(1, 4)], {"N": 1, "S": 32}, None))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "pass_report")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--minilm", type=Path, default=None,
                        help="an exported MiniLM ONNX (irkit.testing.models.export_minilm_onnx)")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    digits = _digits()
    sections: list[str] = ["# irkit pass report", ""]
    data: dict[str, Any] = {}
    for title, key, build in (
        ("1. Static int8 vs fp32 on digits (360 eval samples)", "int8", accuracy_table),
        ("2. Pruning accuracy cost on digits (no fine-tuning)", "prune", prune_table),
    ):
        table, rows = build(digits)
        sections += [f"## {title}", "", table, ""]
        data[key] = rows
        print(f"## {title}\n\n{table}\n", flush=True)
    table, rows = lowrank_table(lowrank_models(digits, args.minilm))
    sections += ["## 3. Low-rank factorization (rank from energy / error budget)", "", table, ""]
    data["lowrank"] = rows
    print(f"## 3. lowrank\n\n{table}\n", flush=True)
    if not args.skip_speed:
        bench = _bench_module()
        rows = bench.run_benchmarks(repeat=args.repeat)
        table = bench.format_rows(rows, 256, 1)
        sections += ["## 4. Speed (each row names the backend that ran it)", "", table, ""]
        data["speed"] = rows
        print(table, flush=True)
    (args.out / "report.md").write_text("\n".join(sections))
    (args.out / "report.json").write_text(json.dumps(data, indent=1, default=str))
    print(f"wrote {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
