"""Conv kernel strategies against ONNX Runtime (fp32 rtol 1e-4, atol 1e-5, batch 1, 3
and 8): depthwise sliding windows (irkit.lower.depthwise) with bias, channel multipliers,
strides, dilations, asymmetric and automatic padding, images with no interior and fused
epilogues; 1x1 convs in both GEMM orientations; and im2col panels that start mid-row
and run over row ends (output widths that neither divide nor are divided by the panel
width)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("llvmlite")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from irkit.runtime.program import programs  # noqa: E402
from irkit.testing.op_cases import assert_output, compile_and_load  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
BATCHES = (1, 3, 8)


def conv_model(channels: int, hw: tuple[int, int], weight: tuple[int, ...], *,
               bias: bool = True, epilogue: str = "", **attrs: Any) -> Any:
    """x f32[N, channels, h, w] -> Conv(x, W[, b]) [-> Relu | + x-shaped residual]."""
    rng = np.random.default_rng(sum(weight) + channels)
    inits = [numpy_helper.from_array(rng.standard_normal(weight).astype(np.float32), "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(weight[0]).astype(
            np.float32), "b"))
        ins.append("b")
    nodes = [helper.make_node("Conv", ins, ["c" if epilogue else "y"], **attrs)]
    if epilogue == "relu":
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    elif epilogue == "residual":
        nodes += [helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Add", ["r", "x"], ["y"])]
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                      ["N", channels, *hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


DEPTHWISE = {
    "3x3_pad1": (16, (13, 11), (16, 1, 3, 3), {"pads": [1, 1, 1, 1]}),
    "3x3_stride2": (8, (15, 16), (8, 1, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    "5x5_asymmetric": (6, (12, 17), (6, 1, 5, 5), {"pads": [2, 0, 1, 3]}),
    "3x3_dilated": (4, (14, 14), (4, 1, 3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    "same_upper_stride2": (5, (9, 10), (5, 1, 3, 3), {"auto_pad": "SAME_UPPER",
                                                      "strides": [2, 2]}),
    "multiplier2": (4, (10, 10), (8, 1, 3, 3), {"pads": [1, 1, 1, 1]}),
    "no_interior": (3, (2, 2), (3, 1, 3, 3), {"pads": [1, 1, 1, 1]}),
    "valid_7x7": (4, (7, 9), (4, 1, 7, 7), {}),
    "stride_3_wide": (4, (8, 40), (4, 1, 3, 3), {"pads": [0, 1, 0, 1], "strides": [1, 3]}),
}


def run_against_ort(model: Any, channels: int, hw: tuple[int, int], tmp_path: Path,
                    where: str) -> Any:
    compiled = compile_and_load(model, tmp_path, threads=1)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for batch in BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch, channels, *hw)).astype(
            np.float32)
        assert_output(compiled(x=x)["y"], session.run(None, {"x": x})[0],
                      where=f"{where} batch {batch}", rtol=RTOL, atol=ATOL)
    return compiled


@pytest.mark.parametrize("name", sorted(DEPTHWISE))
@pytest.mark.parametrize("epilogue", ["", "relu"])
def test_depthwise_matches_onnxruntime(name: str, epilogue: str, tmp_path: Path) -> None:
    channels, hw, weight, attrs = DEPTHWISE[name]
    group = channels
    model = conv_model(channels, hw, weight, epilogue=epilogue, group=group, **attrs)
    compiled = run_against_ort(model, channels, hw, tmp_path, name)
    kernels = programs(compiled.manifest.entry)[0].kernels
    assert any(k.startswith("dwconv") for k in kernels), kernels


def test_depthwise_with_residual_and_no_bias(tmp_path: Path) -> None:
    model = conv_model(8, (9, 9), (8, 1, 3, 3), bias=False, epilogue="residual", group=8,
                       pads=[1, 1, 1, 1])
    run_against_ort(model, 8, (9, 9), tmp_path, "residual")


def test_grouped_conv_with_several_channels_per_group_keeps_the_gemm(tmp_path: Path) -> None:
    model = conv_model(8, (9, 9), (8, 2, 3, 3), group=4, pads=[1, 1, 1, 1])
    compiled = run_against_ort(model, 8, (9, 9), tmp_path, "group 4")
    assert not any(k.startswith("dwconv") for k in programs(compiled.manifest.entry)[0].kernels)


@pytest.mark.parametrize("hw", [(7, 7), (14, 14), (8, 8), (9, 5), (1, 1)], ids=str)
@pytest.mark.parametrize("epilogue", ["", "relu"])
def test_pointwise_matches_onnxruntime(hw: tuple[int, int], epilogue: str,
                                       tmp_path: Path) -> None:
    model = conv_model(48, hw, (40, 48, 1, 1), epilogue=epilogue)
    run_against_ort(model, 48, hw, tmp_path, f"1x1 {hw}")


def test_mobilenet_block_matches_onnxruntime(tmp_path: Path) -> None:
    """Depthwise 3x3 stride 2 + ReLU, then pointwise 1x1 + ReLU: the blocks of MobileNet."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("dw", rng.standard_normal((24, 1, 3, 3))), ("db", rng.standard_normal(24)),
        ("pw", rng.standard_normal((48, 24, 1, 1)) * 0.2), ("pb", rng.standard_normal(48)))]
    nodes = [helper.make_node("Conv", ["x", "dw", "db"], ["d"], group=24, pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Relu", ["d"], ["r"]),
             helper.make_node("Conv", ["r", "pw", "pb"], ["p"]),
             helper.make_node("Relu", ["p"], ["y"])]
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                       ["N", 24, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    run_against_ort(model, 24, (28, 28), tmp_path, "mobilenet block")


SPANNING = {
    "ow48_stride2": (3, (96, 96), (16, 3, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    "ow100_wider_than_panel": (2, (5, 100), (4, 2, 3, 3), {"pads": [1, 1, 1, 1]}),
    "ow13_dilated": (3, (15, 17), (5, 3, 3, 3), {"pads": [2, 0, 1, 2], "dilations": [2, 2]}),
    "ow7_5x5_stride3": (4, (19, 21), (6, 4, 5, 5), {"pads": [2, 2, 2, 2], "strides": [3, 3]}),
    # 144 pixels: 48-pixel panels of 4 whole rows with AVX-512 tiles (64 would pad).
    "ow12_5x5_odd_channels": (7, (12, 12), (9, 7, 5, 5), {"pads": [2, 2, 2, 2]}),
}


@pytest.mark.parametrize("name", sorted(SPANNING))
def test_panels_spanning_output_rows(name: str, tmp_path: Path) -> None:
    channels, hw, weight, attrs = SPANNING[name]
    model = conv_model(channels, hw, weight, epilogue="relu", **attrs)
    run_against_ort(model, channels, hw, tmp_path, name)


def test_conv_tile_fits_the_output_map() -> None:
    """The panel width wastes the least of the map (AVX-512: 48 pixels for a 12x12 map,
    not 64, which computes a third more), then crosses the fewest output rows; AVX2
    keeps its 24-pixel panels where they fit."""
    from irkit.lower.context import Tiles
    from irkit.target import get_target

    avx512, avx2 = (Tiles.for_target(get_target(a)) for a in ("x86-64-v4", "x86-64-v3"))
    picks = {w: (avx512.for_conv(w, w * w).nr, avx2.for_conv(w, w * w).nr)
             for w in (12, 24, 28, 56)}
    assert picks == {12: (48, 24), 24: (48, 24), 28: (48, 24), 56: (64, 24)}
    assert avx512.for_conv(None, 144).nr == 48  # a pointwise conv: waste only
    assert avx512.for_conv(None, 3136).nr == 64  # ties keep the default
