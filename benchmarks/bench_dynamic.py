"""Data-dependent ops on the llvm backend against ONNX Runtime: Unique (1k-100k
elements), NonMaxSuppression (1k-10k boxes per class, 1-80 classes) and TopK (K=1-1,000
of 100-100k floats, and a batch of 64 rows), one thread each,
CPU time per call (``time.process_time``), medians over repeats. Every run's outputs are
checked equal to ONNX Runtime's before timing. The 8-box row shows each side's fixed cost
per call (irkit's includes its Python run path and the finite-input check).

    python benchmarks/bench_dynamic.py [--repeat 15] [--quick]
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


def _model(op: Any, inputs: list[Any], outputs: list[str]) -> Any:
    import onnx
    from onnx import helper

    graph = helper.make_graph([op], "bench", inputs,
                              [helper.make_tensor_value_info(n, 0, None) for n in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def unique_model(dtype: int) -> Any:
    from onnx import helper

    return _model(helper.make_node("Unique", ["x"], ["y", "i", "inv", "c"], sorted=1),
                  [helper.make_tensor_value_info("x", dtype, ["N"])], ["y", "i", "inv", "c"])


def nms_model() -> Any:
    from onnx import TensorProto as T
    from onnx import helper

    vi = helper.make_tensor_value_info
    return _model(helper.make_node("NonMaxSuppression",
                                   ["boxes", "scores", "limit", "iou", "thr"], ["sel"]),
                  [vi("boxes", T.FLOAT, [1, "S", 4]), vi("scores", T.FLOAT, [1, "C", "S"]),
                   vi("limit", T.INT64, [1]), vi("iou", T.FLOAT, [1]),
                   vi("thr", T.FLOAT, [1])], ["sel"])


def nms_feeds(boxes: int, classes: int, limit: int, thr: float, seed: int = 0
              ) -> dict[str, np.ndarray]:
    """Boxes scattered over a 640x640 image (sizes 8-100), scores ``u**4`` (most
    candidates score low, as a detector's do), ties included."""
    r = np.random.default_rng(seed)
    corner = r.uniform(0, 600, (1, boxes, 2)).astype(np.float32)
    size = r.uniform(8, 100, (1, boxes, 2)).astype(np.float32)
    scores = (r.uniform(0, 1, (1, classes, boxes)) ** 4).astype(np.float32)
    scores[:, :, 1::7] = scores[:, :, :1]  # ties
    return {"boxes": np.concatenate([corner, corner + size], axis=2),
            "scores": scores, "limit": np.array([limit], np.int64),
            "iou": np.array([0.5], np.float32), "thr": np.array([thr], np.float32)}


def topk_model(rows: int, n: int, k: int, largest: int = 1) -> Any:
    import onnx
    from onnx import TensorProto as T
    from onnx import helper

    op = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1, largest=largest)
    graph = helper.make_graph([op], "bench", [helper.make_tensor_value_info(
        "x", T.FLOAT, [rows, n])], [helper.make_tensor_value_info(o, 0, None) for o in "vi"],
        [helper.make_tensor("k", T.INT64, [1], [k])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def _cpu_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15, help="timed calls per case")
    parser.add_argument("--quick", action="store_true", help="the smaller sizes only")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        import onnxruntime as ort
        from onnx import TensorProto as T

        import irkit
        import irkit.runtime
    except ImportError as exc:
        print(f"bench_dynamic needs onnx, onnxruntime and llvmlite: {exc}", file=sys.stderr)
        return 2

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    r = np.random.default_rng(0)
    cases: list[tuple[str, Any, dict[str, np.ndarray]]] = []
    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    for n in sizes:
        cases.append((f"Unique int64 n={n:,} ({n // 4:,} distinct)", unique_model(T.INT64),
                      {"x": r.integers(0, n // 4, n).astype(np.int64)}))
    n = sizes[-1]
    cases.append((f"Unique float32 n={n:,} (~{n // 4:,} distinct)", unique_model(T.FLOAT),
                  {"x": r.integers(0, n // 4, n).astype(np.float32) / 8}))
    nms_sizes = [(8, 1), (1_000, 1), (10_000, 1), (1_000, 80)] + ([] if args.quick else [(10_000, 80)])
    for boxes, classes in nms_sizes:
        for thr in (0.0, 0.05) if boxes > 8 else (0.0,):  # 8 boxes: the per-call floor
            cases.append((f"NMS {boxes:,} boxes x {classes} classes, keep<=100, "
                          f"score>{thr:g}", nms_model(), nms_feeds(boxes, classes, 100, thr)))

    for n in (100, 1_000, 10_000) if args.quick else (100, 1_000, 10_000, 100_000):
        for k in (1, 5, 10, 100, 1_000):
            if k <= n:
                cases.append((f"TopK K={k:,} of n={n:,} floats", topk_model(1, n, k),
                              {"x": r.standard_normal((1, n)).astype(np.float32)}))
    cases.append(("TopK K=5 of 64x1,000 floats (smallest)", topk_model(64, 1_000, 5, 0),
                  {"x": r.standard_normal((64, 1_000)).astype(np.float32)}))

    print("| case | irkit llvm ms | ORT ms | irkit / ORT |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        compiled: dict[tuple[str, str | int], Any] = {}
        for label, model, feeds in cases:
            op = model.graph.node[0].op_type
            key = (op, label if op == "TopK" else  # one model per TopK case
                   model.graph.input[0].type.tensor_type.elem_type)
            if key not in compiled:
                artifact = irkit.compile(irkit.load_model(model), target="llvm", threads=1)
                compiled[key] = irkit.runtime.load(
                    artifact.save(Path(tmp) / f"m{len(compiled)}"), threads=1)
            ours = compiled[key]
            session = ort.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
            names = [o.name for o in session.get_outputs()]
            want = dict(zip(names, session.run(None, feeds)))
            got = ours.run(feeds)
            for name, value in want.items():
                np.testing.assert_array_equal(got[name], value, err_msg=f"{label}: {name}")
            t_ours = _cpu_ms(lambda: ours.run(feeds), args.repeat)  # noqa: B023
            t_ort = _cpu_ms(lambda: session.run(None, feeds), args.repeat)  # noqa: B023
            print(f"| {label} | {t_ours:.3f} | {t_ort:.3f} | {t_ours / t_ort:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
