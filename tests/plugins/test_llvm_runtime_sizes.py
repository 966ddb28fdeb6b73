"""Ops whose size-setting inputs (pads, repeats, K, depth, Resize's scales,
sizes and roi, Slice's bounds, Col2Im's shapes, Range's bounds) are graph inputs: compiled
for the declared static output shape by the llvm backend, they match ONNX Runtime for
values that give that shape (fp32: rtol 1e-4, atol 1e-5), refuse other values with
InputError before native code runs, and refuse at compile time (the backend's
UnsupportedOpsError, from the lowering's LoweringError) a size input computed inside the
graph. (Compress's run-time condition gives an output of any size: test_llvm_dynamic.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

from onnx import helper

import irkit
from irkit.errors import UnsupportedOpsError
from irkit.runtime.signature import InputError
from irkit.testing.op_cases import (
    assert_output,
    compile_and_load,
    onnx_element_type,
    onnxruntime_reference,
)

RTOL, ATOL = 1e-4, 1e-5
R = np.random.default_rng(11)


def data(*shape: int) -> np.ndarray:
    return R.standard_normal(shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def f32(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


@dataclass
class Case:
    name: str
    op: str
    feeds: dict[str, np.ndarray]  # graph inputs, in node input order ("" skips one)
    outputs: dict[str, tuple[int, ...]]  # declared static output shapes
    bad: dict[str, np.ndarray]  # size inputs that give another output shape
    attrs: dict[str, Any] = field(default_factory=dict)
    out_dtypes: dict[str, Any] = field(default_factory=dict)
    opset: int = 19


def _given(name: str) -> bool:
    return bool(name) and not name.startswith("#")


def model(case: Case, computed: str | None = None) -> Any:
    """The one-node graph; ``computed`` names a size input that is instead computed in the
    graph (``Abs``, or ``Not`` for booleans, of the graph input)."""
    inputs = [helper.make_tensor_value_info(n, onnx_element_type(v.dtype), list(v.shape))
              for n, v in case.feeds.items() if _given(n)]
    outputs = [helper.make_tensor_value_info(
        n, onnx_element_type(case.out_dtypes.get(n, np.float32)), list(s))
        for n, s in case.outputs.items()]
    names = [n if n != computed else f"{n}_abs" for n in case.feeds]
    nodes = [] if computed is None else [helper.make_node(
        "Not" if case.feeds[computed].dtype == np.bool_ else "Abs", [computed],
        [f"{computed}_abs"])]
    nodes.append(helper.make_node(case.op, [n.split("#")[0] for n in names],
                                  list(case.outputs), **case.attrs))
    graph = helper.make_graph(nodes, case.name, inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])


def feeds(case: Case, overrides: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    values = {n: v for n, v in case.feeds.items() if _given(n)}
    values.update(overrides or {})
    return values


CASES = [
    Case("pad_pads", "Pad", {"x": data(2, 3), "pads": i64(1, 0, 0, 2)}, {"y": (3, 5)},
         {"pads": i64(1, 1, 0, 2)}, {"mode": "reflect"}),
    Case("pad_pads_axes", "Pad", {"x": data(2, 3, 4), "pads": i64(2, 1), "": np.empty(0),
                                  "axes": i64(-1)}, {"y": (2, 3, 7)},
         {"axes": i64(1)}, {"mode": "edge"}),
    Case("tile", "Tile", {"x": data(2, 3), "repeats": i64(2, 3)}, {"y": (4, 9)},
         {"repeats": i64(3, 2)}),
    Case("topk", "TopK", {"x": data(3, 8), "k": i64(3)}, {"values": (3, 3), "indices": (3, 3)},
         {"k": i64(4)}, out_dtypes={"indices": np.int64}),
    Case("onehot", "OneHot", {"indices": i64(0, 3, -1, 2), "depth": i64(5),
                              "values": f32(-1.0, 2.0)}, {"y": (4, 5)}, {"depth": i64(4)}),
    Case("resize_scales_nearest", "Resize",
         {"x": data(1, 2, 3, 4), "": np.empty(0), "scales": f32(1.0, 1.0, 2.0, 1.5)},
         {"y": (1, 2, 6, 6)}, {"scales": f32(1.0, 1.0, 2.0, 2.0)},
         {"mode": "nearest", "nearest_mode": "round_prefer_ceil"}),
    Case("resize_scales_linear", "Resize",
         {"x": data(1, 2, 4, 5), "": np.empty(0), "scales": f32(1.0, 1.0, 0.6, 1.7)},
         {"y": (1, 2, 2, 8)}, {"scales": f32(1.0, 1.0, 0.8, 1.7)}, {"mode": "linear"}),
    Case("resize_scales_cubic_align", "Resize",
         {"x": data(1, 1, 4, 4), "": np.empty(0), "scales": f32(1.0, 1.0, 1.5, 0.75)},
         {"y": (1, 1, 6, 3)}, {"scales": f32(1.0, 1.0, 1.5, 1.0)},
         {"mode": "cubic", "coordinate_transformation_mode": "align_corners"}),
    Case("resize_scales_cubic_exclude", "Resize",
         {"x": data(1, 1, 5, 4), "": np.empty(0), "scales": f32(2.0, 0.8)},
         {"y": (1, 1, 10, 3)}, {"scales": f32(2.0, 0.5)},
         {"mode": "cubic", "axes": [2, 3], "exclude_outside": 1, "cubic_coeff_a": -0.5}),
    Case("resize_sizes_linear", "Resize",
         {"x": data(1, 1, 4, 4), "": np.empty(0), "#": np.empty(0), "sizes": i64(1, 1, 3, 7)},
         {"y": (1, 1, 3, 7)}, {"sizes": i64(1, 1, 7, 3)},
         {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}),
    Case("resize_sizes_not_larger", "Resize",
         {"x": data(1, 1, 3, 4), "": np.empty(0), "#": np.empty(0), "sizes": i64(5, 9)},
         {"y": (1, 1, 5, 7)}, {"sizes": i64(9, 9)},
         {"mode": "nearest", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}),
    Case("resize_crop_roi", "Resize",
         {"x": data(1, 1, 4, 4), "roi": f32(0.0, 0.0, 0.2, 0.4, 1.0, 1.0, 0.7, 1.3),
          "#": np.empty(0), "sizes": i64(1, 1, 3, 3)},
         {"y": (1, 1, 3, 3)}, {"sizes": i64(1, 1, 3, 4)},
         {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
          "extrapolation_value": 5.0}),
    Case("slice", "Slice", {"x": data(6, 7, 5), "starts": i64(1, -2), "ends": i64(5, -100),
                            "axes": i64(0, -1), "steps": i64(2, -1)},
         {"y": (2, 7, 4)}, {"starts": i64(0, -2)}),
    Case("slice_default_axes", "Slice", {"x": data(6, 7), "starts": i64(-4, 100),
                                         "ends": i64(100, 100)},
         {"y": (4, 0)}, {"ends": i64(5, 100)}),
    Case("col2im", "Col2Im", {"x": data(1, 10, 12), "image_shape": i64(3, 4, 5),
                              "block_shape": i64(1, 1, 5)},
         {"y": (1, 2, 3, 4, 5)}, {"block_shape": i64(1, 5, 1)}, opset=18),
    Case("col2im_strided", "Col2Im", {"x": data(2, 9, 4), "image_shape": i64(5, 5),
                                      "block_shape": i64(3, 3)},
         {"y": (2, 1, 5, 5)}, {"image_shape": i64(6, 5)}, {"strides": [2, 2]}, opset=18),
    Case("range_float", "Range", {"start": np.array(0.5, np.float32),
                                  "limit": np.array(3.0, np.float32),
                                  "delta": np.array(0.75, np.float32)},
         {"y": (4,)}, {"limit": np.array(4.0, np.float32)}),
    Case("range_int", "Range", {"start": np.array(9, np.int64), "limit": np.array(1, np.int64),
                                "delta": np.array(-3, np.int64)},
         {"y": (3,)}, {"delta": np.array(-2, np.int64)}, out_dtypes={"y": np.int64}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_matches_onnxruntime_and_guards(case: Case, tmp_path: Path) -> None:
    onnx_model = model(case)
    compiled = compile_and_load(onnx_model, tmp_path, threads=1)
    inputs = feeds(case)
    reference = onnxruntime_reference(onnx_model, list(case.outputs))
    expected = dict(zip(case.outputs, reference(inputs)))
    got = compiled(**inputs)
    for name, shape in case.outputs.items():
        assert expected[name].shape == shape, "the case's declared shape is ONNX's"
        assert_output(got[name], expected[name], where=f"{case.name} output {name}",
                      rtol=RTOL, atol=ATOL)
    with pytest.raises(InputError) as info:
        compiled(**feeds(case, case.bad))
    assert case.op in str(info.value)
    again = compiled(**inputs)  # a refused call leaves the model usable
    for name in case.outputs:
        np.testing.assert_array_equal(again[name], got[name])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_size_input_computed_in_graph_is_refused(case: Case) -> None:
    role = next(iter(case.bad))
    with pytest.raises(UnsupportedOpsError, match="computed at run time"):
        irkit.compile(irkit.load_model(model(case, computed=role)), target="llvm")


def test_resize_antialias_with_runtime_scales_is_refused() -> None:
    case = Case("aa", "Resize", {"x": data(1, 1, 4, 4), "": np.empty(0),
                                 "scales": f32(1.0, 1.0, 0.6, 0.6)},
                {"y": (1, 1, 2, 2)}, {}, {"mode": "linear", "antialias": 1})
    with pytest.raises(UnsupportedOpsError, match="antialias"):
        irkit.compile(irkit.load_model(model(case)), target="llvm")


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceMean", "ReduceL2"])
def test_reduction_whose_declared_shape_fits_several_axes(op: str, tmp_path: Path) -> None:
    """keepdims=0 over [3, 2, 2] declared [3, 2]: axes 1 or 2 (or -1, -2) both fit, so
    the model holds a kernel per choice and the axes values pick one at run time."""
    case = Case("ambiguous", op, {"x": data(3, 2, 2), "axes": i64(1)}, {"y": (3, 2)},
                {"axes": i64(0)}, {"keepdims": 0}, opset=18)
    onnx_model = model(case)
    compiled = compile_and_load(onnx_model, tmp_path, threads=1)
    reference = onnxruntime_reference(onnx_model, ["y"])
    x = case.feeds["x"]
    for axes in ([1], [2], [-1], [-2]):
        inputs = {"x": x, "axes": i64(*axes)}
        expected = reference(inputs)[0]
        got = compiled(**inputs)["y"]
        assert_output(got, expected, where=f"{op} axes {axes}", rtol=RTOL, atol=ATOL)
    assert not np.allclose(compiled(x=x, axes=i64(1))["y"], compiled(x=x, axes=i64(2))["y"])
    with pytest.raises(InputError, match=op):
        compiled(x=x, axes=i64(0))  # [2, 2]: not the shape the kernels were built for


def test_two_axis_reduction_choices(tmp_path: Path) -> None:
    """[2, 3, 3, 3] declared [2, 3] with two run-time axes: three pairs fit."""
    case = Case("pairs", "ReduceSum", {"x": data(2, 3, 3, 3), "axes": i64(1, 2)},
                {"y": (2, 3)}, {"axes": i64(0, 1)}, {"keepdims": 0}, opset=18)
    onnx_model = model(case)
    compiled = compile_and_load(onnx_model, tmp_path, threads=1)
    reference = onnxruntime_reference(onnx_model, ["y"])
    x = case.feeds["x"]
    for axes in ([1, 2], [3, 1], [-1, 2], [2, 3]):
        inputs = {"x": x, "axes": i64(*axes)}
        assert_output(compiled(**inputs)["y"], reference(inputs)[0], where=f"axes {axes}",
                      rtol=RTOL, atol=ATOL)
