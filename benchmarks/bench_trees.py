"""Tree ensembles (ONNX-ML TreeEnsembleRegressor/Classifier) on the llvm backend against
ONNX Runtime's TreeEnsemble kernel: irkit's two lowerings (``walk``, the default, and
``gemm``), one thread each, CPU time per call (``time.process_time``), medians over
repeats, batch 1 and 1000. Each lowering's outputs are checked against ORT's (labels
equal, scores to 1e-4) before timing.

    python benchmarks/bench_trees.py                       # synthetic ensembles
    python benchmarks/bench_trees.py rf.onnx gbr.onnx      # your exports (f32 [N, F] input)
    python benchmarks/bench_trees.py --digits rf.onnx      # ... trained on sklearn's digits
    python benchmarks/bench_trees.py --arch native --repeat 11

Synthetic ensembles: perfect trees of random splits over 64 features (BRANCH_LEQ),
thresholds drawn from the same distribution as the inputs, one weight per leaf.
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

FEATURES = 64
SYNTHETIC = [(100, 1), (100, 3), (100, 6), (100, 8), (300, 8), (50, 12)]  # (trees, depth)


def synthetic(n_trees: int, depth: int, seed: int = 0) -> Any:
    """A TreeEnsembleRegressor of ``n_trees`` perfect trees of ``depth`` splits."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    splits, leaves = 2 ** depth - 1, 2 ** depth
    per_tree = splits + leaves
    attrs: dict[str, list[Any]] = {k: [] for k in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
        "nodes_truenodeids", "nodes_falsenodeids", "target_treeids", "target_nodeids",
        "target_ids", "target_weights")}
    for t in range(n_trees):
        for i in range(per_tree):
            leaf = i >= splits
            attrs["nodes_treeids"].append(t)
            attrs["nodes_nodeids"].append(i)
            attrs["nodes_featureids"].append(0 if leaf else int(rng.integers(FEATURES)))
            attrs["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            attrs["nodes_values"].append(0.0 if leaf else float(rng.normal()))
            attrs["nodes_truenodeids"].append(0 if leaf else 2 * i + 1)
            attrs["nodes_falsenodeids"].append(0 if leaf else 2 * i + 2)
            if leaf:
                for key, val in (("target_treeids", t), ("target_nodeids", i),
                                 ("target_ids", 0), ("target_weights", float(rng.normal()))):
                    attrs[key].append(val)
    node = helper.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml",
                            n_targets=1, **attrs)
    graph = helper.make_graph(
        [node], f"trees{n_trees}_d{depth}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 9
    return model


def cpu_median(fn: Callable[[], Any], repeat: int, inner: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(inner):
            fn()
        times.append((time.process_time() - start) / inner)
    return statistics.median(times)


def bench(name: str, model: Any, arch: str, repeat: int, work: Path,
          rows_from: np.ndarray | None = None) -> list[str]:
    import onnxruntime as ort

    import irkit
    import irkit.runtime

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    width = session.get_inputs()[0].shape[1]
    rng = np.random.default_rng(1)
    graph = irkit.load_model(model)
    rows = []
    for lowering in ("walk", "gemm"):
        legal = irkit.optimize(graph, f"legalize-onnx-ml{{trees={lowering}}}")
        if lowering == "gemm" and "GatherElements" in {n.op for n in legal.nodes}:
            rows.append(f"| {name} | gemm | - | (too large: walked) | | | |")
            continue
        start = time.perf_counter()
        art = irkit.compile(legal, target="llvm", arch=arch).save(work / f"{name}_{lowering}")
        seconds = time.perf_counter() - start
        compiled = irkit.runtime.load(art, threads=1)
        for batch in (1, 1000):
            x = (rng.normal(size=(batch, width)).astype(np.float32) if rows_from is None
                 else rows_from[rng.integers(0, len(rows_from), batch)])
            want = session.run(None, {input_name: x})
            got = compiled(**{input_name: x})
            for out, expected in zip(session.get_outputs(), want):
                if expected.dtype.kind in "iu":
                    np.testing.assert_array_equal(got[out.name], expected)
                else:
                    np.testing.assert_allclose(got[out.name], expected, rtol=1e-4, atol=1e-4)
            inner = 200 if batch == 1 else 3
            ours = cpu_median(lambda: compiled(**{input_name: x}), repeat, inner)  # noqa: B023
            theirs = cpu_median(lambda: session.run(None, {input_name: x}), repeat, inner)  # noqa: B023
            rows.append(f"| {name} | {lowering} | {batch} | {ours * 1e3:.3f} | "
                        f"{theirs * 1e3:.3f} | {theirs / ours:.2f} | {seconds:.1f} |")
        compiled.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="ONNX files with tree ensembles")
    parser.add_argument("--arch", default="x86-64-v3")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--digits", action="store_true",
                        help="inputs: rows of scikit-learn's digits (models trained on them)")
    args = parser.parse_args(argv)
    rows_from = None
    if args.digits:
        from sklearn.datasets import load_digits

        rows_from = load_digits().data.astype(np.float32)
    import onnx

    cases = [(Path(p).stem, onnx.load(p)) for p in args.models] or [
        (f"synthetic {t} trees depth {d}", synthetic(t, d)) for t, d in SYNTHETIC]
    print(f"| model | lowering | batch | irkit ms | ORT ms | ORT / irkit | compile s |\n"
          f"|---|---|---:|---:|---:|---:|---:|  (arch {args.arch}, 1 thread, CPU time)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in cases:
            for row in bench(name, model, args.arch, args.repeat, Path(tmp), rows_from):
                print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
