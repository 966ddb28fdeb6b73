"""Differential tests of the image, window and signal lowerings (pooling in 1-D/3-D,
LpPool, MaxPool indices, direct and transposed convolution, GridSample, RoiAlign, DFT,
Resize, Col2Im, MaxUnpool): small ONNX graphs compiled by the llvm backend against ONNX
Runtime at batch 1 and 3 (fp32: rtol 1e-4, atol 1e-5)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

from onnx import TensorProto, helper

import irkit
from irkit.errors import IrkitError
from irkit.testing.op_cases import (
    KERNEL_TARGETS,
    KernelTarget,
    OpCase,
    build_model,
    check_batches,
    compile_and_load,
    integers,
    node,
    onnx_element_type,
    onnxruntime_reference,
    uniform,
)

BATCHES = (1, 3)
RTOL, ATOL = 1e-4, 1e-5
F, U8 = np.float32, np.uint8
DRAW = uniform(-1.0, 1.0)  # inputs without their own draw
Case = partial(OpCase, opset=20)


R = np.random.default_rng(11)


def w(*shape: int) -> np.ndarray:
    return R.standard_normal(shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def f32(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


ROIS = f32(0.5, 0.5, 6.3, 5.1, 2.0, 1.0, 3.0, 7.5, -1.5, 0.0, 9.5, 4.0).reshape(3, 4)
RESIZE = "Resize"
CASES = [
    # pooling over 1-D and 3-D windows, LpPool, MaxPool's indices, uint8
    Case("maxpool_1d", [node("MaxPool", ["x"], kernel_shape=[3], strides=[2], pads=[1, 1])],
         {"x": (("N", 3, 11), F)}),
    Case("maxpool_3d_dilated_ceil", [node("MaxPool", ["x"], kernel_shape=[2, 2, 2],
                                          dilations=[2, 1, 1], strides=[2, 2, 1],
                                          ceil_mode=1)], {"x": (("N", 2, 6, 5, 4), F)}),
    Case("avgpool_1d_incl_pad", [node("AveragePool", ["x"], kernel_shape=[4], pads=[2, 1],
                                      count_include_pad=1)], {"x": (("N", 3, 9), F)}),
    Case("avgpool_3d_excl_pad", [node("AveragePool", ["x"], kernel_shape=[3, 2, 2],
                                      strides=[2, 1, 2], pads=[1, 0, 1, 1, 1, 0])],
         {"x": (("N", 2, 5, 4, 6), F)}),
    Case("avgpool_2d_ceil", [node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                  ceil_mode=1)], {"x": (("N", 2, 8, 7), F)}),
    Case("lppool_1d_p3", [node("LpPool", ["x"], kernel_shape=[3], p=3, strides=[2])],
         {"x": (("N", 3, 10), F)}),
    Case("lppool_2d_p2_pads", [node("LpPool", ["x"], kernel_shape=[3, 2], p=2,
                                    pads=[1, 1, 1, 0])], {"x": (("N", 2, 6, 5), F)}),
    Case("maxpool_indices", [node("MaxPool", ["x"], ["y", "z"], kernel_shape=[3, 3],
                                  strides=[2, 2], pads=[1, 1, 1, 1])],
         {"x": (("N", 3, 7, 6), F)}, outputs=("y", "z")),
    Case("maxpool_indices_col_major", [node("MaxPool", ["x"], ["y", "z"], kernel_shape=[2, 2],
                                            strides=[2, 2], storage_order=1)],
         {"x": (("N", 2, 6, 4), F)}, outputs=("y", "z")),
    Case("maxpool_uint8", [node("MaxPool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
         {"x": (("N", 2, 5, 5), U8, integers(0, 256))}),
    # convolution: weights at run time, 1-D and 3-D
    Case("conv_runtime_weights", [node("Conv", ["x", "k", "b"], group=2, strides=[2, 1],
                                       pads=[1, 0, 1, 2])],
         {"x": (("N", 4, 7, 6), F), "k": ((6, 2, 3, 3), F)}, {"b": w(6)}),
    Case("conv_1d_dilated", [node("Conv", ["x", "k"], dilations=[2], pads=[2, 1])],
         {"x": (("N", 3, 12), F)}, {"k": w(4, 3, 3)}),
    Case("conv_3d_same", [node("Conv", ["x", "k"], ["c"], auto_pad="SAME_UPPER",
                                strides=[2, 2, 1]), node("Relu", ["c"])],
         {"x": (("N", 2, 5, 6, 4), F)}, {"k": w(3, 2, 3, 2, 3)}),
    Case("convtranspose_2d", [node("ConvTranspose", ["x", "k", "b"], strides=[2, 3],
                                   pads=[1, 0, 0, 1], output_padding=[1, 2], group=2)],
         {"x": (("N", 4, 4, 3), F)}, {"k": w(4, 3, 3, 4), "b": w(6)}),
    Case("convtranspose_1d_runtime_weights", [node("ConvTranspose", ["x", "k"], strides=[2],
                                                   dilations=[2])],
         {"x": (("N", 2, 5), F), "k": ((2, 3, 3), F)}),
    Case("convtranspose_3d", [node("ConvTranspose", ["x", "k"], strides=[1, 2, 2])],
         {"x": (("N", 2, 3, 2, 3), F)}, {"k": w(2, 2, 2, 3, 2)}),
    Case("convtranspose_same_lower", [node("ConvTranspose", ["x", "k"], strides=[2, 2],
                                           auto_pad="SAME_LOWER")],
         {"x": (("N", 1, 3, 4), F)}, {"k": w(1, 2, 3, 3)}),
    Case("convtranspose_output_shape", [node("ConvTranspose", ["x", "k"], strides=[3, 2],
                                             output_shape=[10, 8])],
         {"x": (("N", 1, 3, 3), F)}, {"k": w(1, 2, 3, 3)}),
    # GridSample (grid slightly beyond [-1, 1] to exercise the padding modes)
    *[Case(f"gridsample_{mode}_{pad}_align{align}",
           [node("GridSample", ["x", "g"], mode=mode, padding_mode=pad, align_corners=align)],
           {"x": (("N", 2, 4, 5), F, uniform(-1.3, 1.3)),
            "g": (("N", 3, 6, 2), F, uniform(-1.3, 1.3))})
      for mode, pad, align in (("linear", "zeros", 0), ("linear", "border", 1),
                               ("linear", "reflection", 0), ("nearest", "zeros", 1),
                               ("nearest", "reflection", 1), ("cubic", "zeros", 0),
                               ("cubic", "border", 0), ("cubic", "reflection", 1))],
    Case("gridsample_3d_linear", [node("GridSample", ["x", "g"], mode="linear")],
         {"x": (("N", 2, 3, 4, 5), F, uniform(-1.2, 1.2)),
          "g": (("N", 2, 3, 4, 3), F, uniform(-1.2, 1.2))}),
    # RoiAlign (all regions on image 0, so any batch works)
    Case("roialign_avg_half_pixel", [node("RoiAlign", ["x", "r", "i"], output_height=3,
                                          output_width=4, sampling_ratio=2,
                                          spatial_scale=0.9)],
         {"x": (("N", 2, 8, 10), F)}, {"r": ROIS, "i": i64(0, 0, 0)}),
    Case("roialign_max_adaptive", [node("RoiAlign", ["x", "r", "i"], mode="max",
                                        output_height=2, output_width=3,
                                        coordinate_transformation_mode="output_half_pixel")],
         {"x": (("N", 2, 8, 10), F)}, {"r": ROIS, "i": i64(0, 0, 0)}),
    # DFT (opset 20: axis as a constant input)
    Case("dft_real_axis1", [node("DFT", ["x", "", "a"])], {"x": (("N", 6, 5, 1), F)},
         {"a": np.array(1, np.int64)}),
    Case("dft_complex_inverse_axis2", [node("DFT", ["x", "", "a"], inverse=1)],
         {"x": (("N", 3, 7, 2), F)}, {"a": np.array(-2, np.int64)}),
    Case("dft_rfft_length", [node("DFT", ["x", "n", "a"], onesided=1)],
         {"x": (("N", 6, 2, 1), F)}, {"n": np.array(8, np.int64), "a": np.array(1, np.int64)}),
    Case("dft_irfft", [node("DFT", ["x", "", "a"], inverse=1, onesided=1)],
         {"x": (("N", 5, 3, 2), F)}, {"a": np.array(1, np.int64)}),
    Case("dft_opset17_axis_attr", [node("DFT", ["x"], axis=2)], {"x": (("N", 3, 4, 2), F)},
         opset=17),
    # Resize with constant scales or sizes
    Case("resize_linear_half_pixel", [node(RESIZE, ["x", "", "s"], mode="linear")],
         {"x": (("N", 2, 4, 5), F)}, {"s": f32(1, 1, 1.5, 0.6)}),
    Case("resize_cubic_align_corners_sizes", [node(
        RESIZE, ["x", "", "", "z"], mode="cubic", coordinate_transformation_mode="align_corners",
        axes=[2, 3])], {"x": (("N", 2, 4, 5), F)}, {"z": i64(7, 3)}, opset=18),
    Case("resize_nearest_asymmetric_floor", [node(
        RESIZE, ["x", "", "s"], mode="nearest", coordinate_transformation_mode="asymmetric",
        nearest_mode="floor")], {"x": (("N", 3, 3, 4), F)}, {"s": f32(1, 1, 2, 2.5)}),
    Case("resize_nearest_axes_sizes_not_larger", [node(
        RESIZE, ["x", "", "", "z"], mode="nearest", axes=[3, 2],
        keep_aspect_ratio_policy="not_larger")], {"x": (("N", 2, 4, 6), F)},
        {"z": i64(9, 7)}),
    Case("resize_tf_crop_and_resize", [node(
        RESIZE, ["x", "roi", "", "z"], mode="linear",
        coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=3.0,
        axes=[2, 3])], {"x": (("N", 1, 5, 5), F)},
        {"roi": f32(-0.2, 0.3, 0.8, 1.3), "z": i64(4, 6)}),
    Case("resize_linear_antialias", [node(RESIZE, ["x", "", "s"], mode="linear", antialias=1)],
         {"x": (("N", 2, 8, 9), F)}, {"s": f32(1, 1, 0.5, 0.4)}),
    Case("resize_cubic_exclude_outside", [node(
        RESIZE, ["x", "", "s"], mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1)],
        {"x": (("N", 1, 4, 4), F)}, {"s": f32(1, 1, 1.75, 0.75)}),
    # Col2Im and MaxUnpool
    Case("col2im_strided_padded", [node("Col2Im", ["x", "img", "blk"], strides=[2, 1],
                                        pads=[1, 0, 1, 1], dilations=[1, 2])],
         {"x": (("N", 12, 12), F)}, {"img": i64(7, 6), "blk": i64(2, 3)}, opset=18),
    Case("maxunpool_of_maxpool", [node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2],
                                       strides=[2, 2]),
                                  node("MaxUnpool", ["p", "i"], kernel_shape=[2, 2],
                                       strides=[2, 2])],
         {"x": (("N", 2, 6, 4), F)}),
]


@pytest.mark.parametrize("target", KERNEL_TARGETS, ids=str)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_op_matches_onnxruntime(case: OpCase, target: KernelTarget, tmp_path: Path) -> None:
    model = build_model(case)
    compiled = compile_and_load(model, tmp_path, threads=2, target=target)
    reference = onnxruntime_reference(model, case.outputs)
    checked = check_batches(case, compiled, reference, BATCHES, rtol=RTOL, atol=ATOL, draw=DRAW)
    assert checked == len(BATCHES) * len(case.outputs)


REFUSED = [
    ("resize_runtime_scales", [node(RESIZE, ["x", "", "s"], mode="linear")],
     {"x": ((1, 2, 4, 4), F), "s": ((4,), F)}, "scales is a run-time value"),
    ("dft_runtime_axis_onesided", [node("DFT", ["x", "", "a"], onesided=1)],
     {"x": ((1, 4, 6, 1), F), "a": ((), np.int64)}, "axis must be a compile-time constant"),
]


@pytest.mark.parametrize("name,nodes,inputs,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_refuses_runtime_shapes(name: str, nodes: list[Any], inputs: dict[str, Any],
                                message: str) -> None:
    graph = helper.make_graph(nodes, name, [
        helper.make_tensor_value_info(n, onnx_element_type(dt), list(shape))
        for n, (shape, dt) in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    with pytest.raises(IrkitError, match=message):
        irkit.compile(irkit.load_model(model), target="llvm")


def test_dft_runtime_axis_matches_onnxruntime(tmp_path: Path) -> None:
    """A two-sided DFT's output shape does not depend on the axis, so a run-time axis
    is accepted and dispatched in the kernel."""
    graph = helper.make_graph([node("DFT", ["x", "", "a"])], "dft_axis", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6, 2]),
        helper.make_tensor_value_info("a", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 6, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    compiled = compile_and_load(model, tmp_path, threads=2)
    reference = onnxruntime_reference(model, ["y"])
    x = np.random.default_rng(3).standard_normal((2, 4, 6, 2)).astype(np.float32)
    for axis in (1, 2, -2, -3):
        a = np.array(axis, np.int64)
        np.testing.assert_allclose(compiled(x=x, a=a)["y"], reference({"x": x, "a": a})[0],
                                   rtol=RTOL, atol=ATOL, err_msg=f"axis {axis}")


def test_case_count() -> None:
    assert len(CASES) == 43
