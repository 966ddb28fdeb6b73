"""Data-dependent output shapes on the llvm backend (irkit.lower.dynamic,
irkit.runtime.dynamic): NonZero, Compress with a run-time condition, Unique and
NonMaxSuppression compiled as kernel segments that write an upper-bound output and a
count; outputs come back cut to their true size and the ops after them run for any
count without recompiling.

Every output is a selection or copy of input values or an index, so the tests ask for
exact equality with ONNX Runtime (and with the kernel-IR interpreter, the oracle of the
compiled code); the detection model's float outputs: rtol 1e-4, atol 1e-5."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

from onnx import TensorProto as T  # noqa: E402
from onnx import helper  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

import irkit.runtime  # noqa: E402
from irkit import api  # noqa: E402
from irkit.errors import UnsupportedOpsError  # noqa: E402
from irkit.runtime.artifact import ArtifactError  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


def _model(nodes: list[Any], inputs: list[Any], outputs: list[tuple[str, int]],
           inits: list[Any] = ()) -> onnx.ModelProto:  # type: ignore[assignment]
    graph = helper.make_graph(nodes, "dyn", inputs,
                              [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
                              list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _compile(model: onnx.ModelProto, tmp_path: Path, **options: Any) -> Any:
    artifact = api.compile(api.load_model(model), target="llvm", threads=1)
    return irkit.runtime.load(artifact.save(tmp_path / "artifact"), threads=1, **options)


def _ort(model: onnx.ModelProto) -> Any:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(None, feeds)))


def ops_model() -> onnx.ModelProto:
    """One graph holding each data-dependent op in the forms ONNX defines."""
    n, vi = helper.make_node, helper.make_tensor_value_info
    nodes = [
        n("NonZero", ["m"], ["nz"]),
        n("Compress", ["x", "c"], ["cx_axis0"], axis=0),
        n("Compress", ["x", "c3"], ["cx_axis1"], axis=-1),
        n("Compress", ["x", "c"], ["cx_flat"]),
        n("Unique", ["u"], ["uy", "ui", "uinv", "uc"], sorted=1),
        n("Unique", ["v"], ["vy", "vi", "vinv", "vc"], sorted=0, axis=1),
        n("Unique", ["v"], ["wy", "wi", "winv", "wc"], sorted=1, axis=0),
        n("NonMaxSuppression", ["boxes", "scores", "limit", "iou", "sthr"], ["sel"]),
        n("NonMaxSuppression", ["cboxes", "scores", "limit"], ["csel"], center_point_box=1),
    ]
    inputs = [
        vi("m", T.FLOAT, ["A", 3, 2]), vi("x", T.FLOAT, ["B", 3]), vi("c", T.BOOL, ["L"]),
        vi("c3", T.BOOL, [3]), vi("u", T.INT64, ["U"]), vi("v", T.FLOAT, [3, "V"]),
        vi("boxes", T.FLOAT, ["NB", "S", 4]), vi("cboxes", T.FLOAT, ["NB", "S", 4]),
        vi("scores", T.FLOAT, ["NB", 2, "S"]), vi("limit", T.INT64, [1]),
        vi("iou", T.FLOAT, [1]), vi("sthr", T.FLOAT, [1]),
    ]
    outputs = [("nz", T.INT64), ("cx_axis0", T.FLOAT), ("cx_axis1", T.FLOAT),
               ("cx_flat", T.FLOAT), ("sel", T.INT64), ("csel", T.INT64)]
    for prefix, dtype in (("u", T.INT64), ("v", T.FLOAT), ("w", T.FLOAT)):
        outputs += [(f"{prefix}y", dtype), (f"{prefix}i", T.INT64), (f"{prefix}inv", T.INT64),
                    (f"{prefix}c", T.INT64)]
    return _model(nodes, inputs, outputs)


def ops_feeds(seed: int, a: int, b: int, s: int, limit: int, sthr: float, empty: bool = False
              ) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    corner = r.uniform(0, 10, (2, s, 2)).astype(np.float32)
    size = r.uniform(1, 6, (2, s, 2)).astype(np.float32)
    boxes = np.concatenate([corner, corner + size], axis=2)[..., [1, 0, 3, 2]]
    boxes[:, ::3] = boxes[:, ::3, [2, 3, 0, 1]]  # flipped corners: same box
    scores = r.uniform(0, 1, (2, 2, s)).astype(np.float32)
    scores[:, :, 1::4] = scores[:, :, :1]  # ties
    mask = r.integers(0, 3, (a, 3, 2)) * (0 if empty else 1)
    return {
        "m": mask.astype(np.float32), "x": r.standard_normal((b, 3)).astype(np.float32),
        "c": r.integers(0, 2, b + 1).astype(bool) & (not empty),
        "c3": np.array([True, False, True]) & (not empty),
        "u": r.integers(-2, 3, 2 * b + 1).astype(np.int64),
        "v": r.integers(0, 2, (3, b)).astype(np.float32),
        "boxes": boxes, "cboxes": np.concatenate([corner + size / 2, size], axis=2),
        "scores": scores, "limit": np.array([limit], np.int64),
        "iou": np.array([0.3], np.float32), "sthr": np.array([sthr], np.float32),
    }


FEEDS = [  # (seed, a, b, s, limit, score threshold, empty)
    (1, 4, 5, 9, 3, 0.2, False),
    (2, 7, 11, 16, 100, 0.0, False),
    (3, 1, 1, 1, 0, 0.9, True),  # nothing selected anywhere: every size 0
]


@pytest.fixture(scope="module")
def ops_compiled(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _compile(ops_model(), tmp_path_factory.mktemp("ops"))


def test_ops_match_onnxruntime(ops_compiled: Any) -> None:
    model, compiled = ops_model(), ops_compiled
    reference = _ort(model)
    sizes = set()
    for seed, a, b, s, limit, sthr, empty in FEEDS:
        feeds = ops_feeds(seed, a, b, s, limit, sthr, empty)
        want, got = reference(feeds), compiled.run(feeds)
        assert set(got) == set(want)
        for name, expected in want.items():
            assert got[name].dtype == expected.dtype, name
            np.testing.assert_array_equal(got[name], expected, err_msg=f"{name} (seed {seed})")
        sizes.add((got["nz"].shape[1], got["sel"].shape[0], got["uy"].shape[0]))
        if empty:
            assert got["nz"].shape == (3, 0) and got["cx_axis0"].shape == (0, 3)
            assert got["sel"].shape == (0, 3) and got["csel"].shape == (0, 3)
    assert len(sizes) == len(FEEDS)  # each feed gives other output sizes
    signature = {spec.name: spec.shape for spec in compiled.manifest.outputs}
    assert isinstance(signature["nz"][1], str) and isinstance(signature["sel"][0], str)
    assert signature["nz"][0] == 3 and signature["sel"][1] == 3


def test_interpreter_agrees_with_native_segments(tmp_path: Path) -> None:
    """The kernel-IR interpreter (the oracle of compiled code) runs each bounded kernel
    program; cut to its count, it gives ONNX Runtime's answer."""
    from irkit.lower.dynamic import lower_dynamic_graph, prepare_dynamic, split_dynamic
    from irkit.lower.interpret import interpret_lowered

    model = ops_model()
    graph = prepare_dynamic(api.load_model(model), "llvm", True, UnsupportedOpsError)
    feeds = ops_feeds(*FEEDS[0])
    want = _ort(model)(feeds)
    for part in split_dynamic(graph):
        assert part.dynamic and part.trim is not None
        lowered = lower_dynamic_graph(part.graph, "x86-64-v3")
        out = interpret_lowered(lowered, {k: feeds[k] for k in part.inputs})
        count = int(out[part.count][0])
        for name in part.outputs:
            axis = part.trim.get(name)
            got = out[name] if axis is None else out[name][(slice(None),) * axis +
                                                          (slice(0, count),)]
            np.testing.assert_array_equal(got, want[name], err_msg=name)


def detection_model() -> onnx.ModelProto:
    """A conv backbone, box decoding (center format), NonMaxSuppression over 3 classes,
    detections gathered by the NMS indices, then a score threshold with Compress and
    NonZero."""
    r = np.random.default_rng(0)
    classes = 3
    consts = {
        "w1": r.standard_normal((8, 3, 3, 3)) * 0.4, "b1": r.standard_normal(8) * 0.1,
        "w2": r.standard_normal((4 + classes, 8, 1, 1)) * 0.6,
        "flat": np.array([1, 4 + classes, -1]), "z": np.array([0]), "four": np.array([4]),
        "end": np.array([4 + classes]), "ax2": np.array([2]), "scale": np.array(16.0),
        "col2": np.array(2), "col1": np.array(1), "iou": np.array([0.3]),
    }
    inits = [nh.from_array(np.asarray(v, np.float32 if k in ("w1", "b1", "w2", "scale", "iou")
                                      else np.int64), k) for k, v in consts.items()]
    n, vi = helper.make_node, helper.make_tensor_value_info
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"]),
        n("Conv", ["r1", "w2"], ["head"]),
        n("Reshape", ["head", "flat"], ["hf"]),
        n("Transpose", ["hf"], ["ht"], perm=[0, 2, 1]),  # [1, A, 4+C]
        n("Slice", ["ht", "z", "four", "ax2"], ["deltas"]),
        n("Slice", ["ht", "four", "end", "ax2"], ["logits"]),
        n("Sigmoid", ["deltas"], ["sd"]),
        n("Mul", ["sd", "scale"], ["boxes"]),  # cx, cy, w, h
        n("Sigmoid", ["logits"], ["probs"]),
        n("Transpose", ["probs"], ["scores"], perm=[0, 2, 1]),  # [1, C, A]
        n("NonMaxSuppression", ["boxes", "scores", "limit", "iou", "thr"], ["sel"],
          center_point_box=1),
        n("Gather", ["sel", "col2"], ["box_idx"], axis=1),
        n("Gather", ["sel", "col1"], ["cls"], axis=1),
        n("GatherND", ["scores", "sel"], ["det_scores"]),
        n("Squeeze", ["boxes", "z"], ["boxes0"]),
        n("Gather", ["boxes0", "box_idx"], ["det_boxes"], axis=0),
        n("Greater", ["det_scores", "keep_thr"], ["keep"]),
        n("Compress", ["det_boxes", "keep"], ["final_boxes"], axis=0),
        n("Compress", ["cls", "keep"], ["final_cls"]),
        n("NonZero", ["keep"], ["kept_at"]),
    ]
    inputs = [vi("x", T.FLOAT, [1, 3, "H", "W"]), vi("limit", T.INT64, [1]),
              vi("thr", T.FLOAT, [1]), vi("keep_thr", T.FLOAT, [])]
    return _model(nodes, inputs, [("final_boxes", T.FLOAT), ("final_cls", T.INT64),
                                  ("kept_at", T.INT64), ("det_scores", T.FLOAT)], inits)


def test_detection_model_matches_onnxruntime(tmp_path: Path) -> None:
    model = detection_model()
    compiled = _compile(model, tmp_path)
    reference = _ort(model)
    seen = []
    for h, w, limit, thr, keep in [(16, 16, 4, 0.3, 0.6), (9, 13, 50, 0.45, 0.5),
                                   (8, 8, 5, 1.0, 0.5), (12, 10, 8, 0.2, 1.0),
                                   (1, 1, 2, 0.0, 0.0)]:
        feeds = {"x": np.random.default_rng(h * w).standard_normal((1, 3, h, w)
                                                                   ).astype(np.float32),
                 "limit": np.array([limit], np.int64), "thr": np.array([thr], np.float32),
                 "keep_thr": np.array(keep, np.float32)}
        want, got = reference(feeds), compiled.run(feeds)
        for name, expected in want.items():
            assert got[name].shape == expected.shape, (name, h, w)
            np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{name} at {h}x{w}")
        seen.append((len(want["det_scores"]), len(want["final_cls"])))
    assert (0, 0) in seen and any(k == 0 and d > 0 for d, k in seen)
    assert len({d for d, _ in seen if d}) >= 3  # several detection counts


def test_bad_inputs_and_other_backends(ops_compiled: Any, tmp_path: Path) -> None:
    from irkit.runtime.signature import InputError

    feeds = ops_feeds(*FEEDS[0])
    feeds["cboxes"] = feeds["cboxes"][:, :-1]  # 8 boxes for 9 scores per class
    with pytest.raises(InputError, match="'cboxes': dim 'S'"):
        ops_compiled.run(feeds)
    # Sizes the signature leaves free are checked by the kernel program's constraints.
    vi = helper.make_tensor_value_info
    nms = _model([helper.make_node("NonMaxSuppression", ["b", "s"], ["sel"])],
                 [vi("b", T.FLOAT, [1, "P", 4]), vi("s", T.FLOAT, [1, 1, "Q"])],
                 [("sel", T.INT64)])
    compiled = _compile(nms, tmp_path)
    boxes = np.zeros((1, 3, 4), np.float32)
    assert compiled.run({"b": boxes, "s": np.ones((1, 1, 3), np.float32)})["sel"].shape == (
        0, 3)  # max_output_boxes_per_class absent: 0
    with pytest.raises(ValueError, match="boxes and scores must agree on the number of boxes"):
        compiled.run({"b": boxes, "s": np.ones((1, 1, 4), np.float32)})
    with pytest.raises(UnsupportedOpsError, match=r"NonZero.*wasm backend does not compile"):
        api.compile(api.load_model(ops_model()), target="wasm")


def test_trim_entry_is_checked() -> None:
    from irkit.runtime.dynamic import Trim

    outputs = ("y", "y__count")
    assert Trim.from_json({"count": "y__count", "outputs": {"y": 1}}, outputs, {"y": 2},
                          "seg").outputs == {"y": 1}
    for bad in ({"count": "z", "outputs": {"y": 1}}, {"count": "y__count", "outputs": {"y": 2}},
                {"count": "y__count", "outputs": {"y__count": 0}}, ["y"]):
        with pytest.raises(ArtifactError, match=r"seg\.trim"):
            Trim.from_json(bad, outputs, {"y": 2, "y__count": 1}, "seg")


def sort_model() -> onnx.ModelProto:
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("Unique", ["u"], ["uy", "ui", "uinv", "uc"], sorted=1),
             helper.make_node("Unique", ["f"], ["fy", "fi", "finv", "fc"], sorted=0),
             helper.make_node("NonMaxSuppression", ["boxes", "scores", "limit", "iou", "thr"],
                              ["sel"])]
    inputs = [vi("u", T.INT64, ["U"]), vi("f", T.FLOAT, ["F"]),
              vi("boxes", T.FLOAT, [1, "S", 4]), vi("scores", T.FLOAT, [1, "C", "S"]),
              vi("limit", T.INT64, [1]), vi("iou", T.FLOAT, [1]), vi("thr", T.FLOAT, [1])]
    outputs = [(f"{p}{s}", t if s == "y" else T.INT64)
               for p, t in (("u", T.INT64), ("f", T.FLOAT)) for s in ("y", "i", "inv", "c")]
    return _model(nodes, inputs, [*outputs, ("sel", T.INT64)])


def test_sorting_at_size_and_nan(tmp_path: Path) -> None:
    """Unique's merge sort over thousands of elements (many merge passes, long runs of
    ties) and NMS's heap over thousands of crowded boxes (many suppressed, the limit
    reached in some classes) give ONNX Runtime's exact answer; NaN is one group sorted
    last (Unique) and the lowest score (NMS)."""
    model = sort_model()
    compiled, reference = _compile(model, tmp_path, reject_nonfinite=False), _ort(model)
    r = np.random.default_rng(7)
    s = 3000
    corner = r.uniform(0, 60, (1, s, 2)).astype(np.float32)
    boxes = np.concatenate([corner, corner + r.uniform(4, 12, (1, s, 2))], axis=2)
    scores = r.uniform(0, 1, (1, 3, s)).astype(np.float32)
    scores[:, :, 5::9] = scores[:, :, 3:4]  # ties across the whole range
    scores[:, 2] = np.round(scores[:, 2], 2)  # many more ties
    scores[:, 1] *= 0.22  # few candidates: fewer kept than the limit
    feeds = {"u": r.integers(-900, 900, 5000), "f": r.integers(0, 300, 4001) / np.float32(4),
             "boxes": boxes.astype(np.float32), "scores": scores,
             "limit": np.array([150], np.int64), "iou": np.array([0.4], np.float32),
             "thr": np.array([0.2], np.float32)}
    feeds["f"] = feeds["f"].astype(np.float32)
    want, got = reference(feeds), compiled.run(feeds)
    for name, expected in want.items():
        np.testing.assert_array_equal(got[name], expected, err_msg=name)
    per_class = np.bincount(got["sel"][:, 1], minlength=3)
    assert per_class.max() == 150 and per_class.min() < 150  # limit hit, and not hit

    nan = np.float32("nan")
    feeds.update(f=np.array([2, nan, 1, nan, 2, -1], np.float32), thr=np.array([-1], np.float32))
    feeds["scores"] = np.full((1, 3, s), nan, np.float32)
    feeds["scores"][0, :, :3] = [0.5, 0.9, 0.7]
    feeds["boxes"][0, :3] = [[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]]
    got = compiled.run(feeds)
    np.testing.assert_array_equal(got["fy"], [2, nan, 1, -1])  # sorted=0: first occurrence
    np.testing.assert_array_equal(got["fi"], [0, 1, 2, 5])
    np.testing.assert_array_equal(got["finv"], [0, 1, 2, 1, 0, 3])
    np.testing.assert_array_equal(got["fc"], [2, 2, 1, 1])
    np.testing.assert_array_equal(got["sel"][:, 2], [1, 2, 0] * 3)  # NaN > -1 is false
    no_threshold = _model([helper.make_node("NonMaxSuppression", ["b", "s", "k"], ["sel"])],
                          [helper.make_tensor_value_info("b", T.FLOAT, [1, "S", 4]),
                           helper.make_tensor_value_info("s", T.FLOAT, [1, 1, "S"]),
                           helper.make_tensor_value_info("k", T.INT64, [1])], [("sel", T.INT64)])
    sel = _compile(no_threshold, tmp_path / "nt", reject_nonfinite=False).run(
        {"b": feeds["boxes"][:, :6], "s": feeds["scores"][:, :1, [3, 0, 4, 1, 5, 2]],
         "k": np.array([5], np.int64)})["sel"]
    np.testing.assert_array_equal(sel[:, 2], [3, 5, 1, 0, 2])  # NaN last, in box order


def topk_model(n: int, ks: tuple[int, ...]) -> onnx.ModelProto:
    """TopK of ``x`` [3, n] along its rows (the heap in the outputs), each K both ways, and
    of ``xi`` (int64) at the first K, of ``xt`` [n, 3] along axis 0 (the heap in per-row
    scratch) at the others;
    every other K with ``sorted=0`` (each node costs LLVM ~0.4 s: few of them)."""
    vi, mk = helper.make_tensor_value_info, helper.make_node
    nodes, inits, outputs = [], [], []
    for j, k in enumerate(ks):
        inits.append(nh.from_array(np.array([k], np.int64), f"k{j}"))
        other = ("xi", 1, T.INT64) if j == 0 else ("xt", 0, T.FLOAT)
        for src, axis, dtype in (("x", 1, T.FLOAT), other):
            for largest in (0, 1):
                name = f"{src}{j}{largest}"
                nodes.append(mk("TopK", [src, f"k{j}"], [f"{name}v", f"{name}i"], axis=axis,
                                largest=largest, sorted=j % 2))
                outputs += [(f"{name}v", dtype), (f"{name}i", T.INT64)]
    inputs = [vi("x", T.FLOAT, [3, n]), vi("xt", T.FLOAT, [n, 3]), vi("xi", T.INT64, [3, n])]
    return _model(nodes, inputs, outputs, inits)


def topk_feeds(n: int, seed: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    x = r.integers(0, n // 8, (3, n)).astype(np.float32) / 4  # ~8 ties per value
    x[1] = np.sort(x[1])  # ascending: every element enters the largest-K heap
    x[2, ::2] = np.nan
    return {"x": x, "xt": np.ascontiguousarray(x[::-1].T),
            "xi": r.integers(-50, 50, (3, n)).astype(np.int64)}


def test_topk_heap_at_size_ties_and_nan(tmp_path: Path) -> None:
    """TopK's per-row heap over 5,000 elements (K=1, 17, 300; both ways; on the last axis
    and on axis 0; heavy ties, a sorted row, a row half NaN) gives ONNX Runtime's exact
    values and indices: ties to the lower index, NaN above every number."""
    model = topk_model(5000, (1, 17, 300))
    compiled = _compile(model, tmp_path, reject_nonfinite=False)
    feeds = topk_feeds(5000, 3)
    want, got = _ort(model)(feeds), compiled.run(feeds)
    _check_topk(model, got, want)


def _check_topk(model: onnx.ModelProto, got: dict[str, np.ndarray],
                want: dict[str, np.ndarray]) -> None:
    """Exact values and indices; ``sorted=0`` outputs (ONNX leaves their order open, ORT
    returns its heap's) compared as sets, both put in index order."""
    for op in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in op.attribute}
        (v, i), axis = op.output, int(attrs["axis"])
        got_v, got_i, want_v, want_i = got[v], got[i], want[v], want[i]
        if not attrs["sorted"]:
            mine, theirs = np.argsort(got_i, axis), np.argsort(want_i, axis)
            got_v, got_i = (np.take_along_axis(a, mine, axis) for a in (got_v, got_i))
            want_v, want_i = (np.take_along_axis(a, theirs, axis) for a in (want_v, want_i))
        np.testing.assert_array_equal(got_v, want_v, err_msg=v)
        np.testing.assert_array_equal(got_i, want_i, err_msg=i)


def test_topk_interpreter_agrees_with_onnxruntime() -> None:
    """The kernel-IR interpreter runs the same TopK kernels (small rows, a NaN row) and
    gives ONNX Runtime's answer."""
    from irkit.lower.interpret import interpret_lowered
    from irkit.testing.interpreted import lower_model

    model = topk_model(70, (5, 33))
    feeds = topk_feeds(70, 4)
    want, got = _ort(model)(feeds), interpret_lowered(lower_model(model), feeds)
    _check_topk(model, got, want)
