"""irkit-domain ops: each decomposition (its reference semantics) checked against torch or
an independent numpy formula."""

from __future__ import annotations

import numpy as np
import pytest

from irkit.ir import Graph
from irkit.ir.dtypes import DType
from irkit.ir.types import TensorType
from irkit.ops.registry import is_irkit_op
from irkit.passes.manager import evaluate_graph

torch = pytest.importorskip("torch")

F32 = DType.FLOAT32


def _single_op(op: str, inputs: list, attrs: dict, out_shape: tuple) -> Graph:
    """A graph running one irkit op; arrays become constants except input 0 (``x``)."""
    graph = Graph("t")
    values = []
    for i, item in enumerate(inputs):
        if item is None:
            values.append(None)
        elif i == 0 or (isinstance(item, tuple) and item[0] == "input"):
            array = item[1] if isinstance(item, tuple) else item
            name = "x" if i == 0 else f"in{i}"
            values.append(graph.add_input(name, TensorType(F32, array.shape)))
        else:
            values.append(graph.add_constant(f"c{i}", item))
    graph.opset_imports["irkit"] = 1
    node = graph.add_node(op, values, attrs, domain="irkit",
                          types=[TensorType(F32, out_shape)])
    graph.set_outputs([node.output])
    return graph


def _run(graph: Graph, **feeds: np.ndarray) -> np.ndarray:
    (out,) = evaluate_graph(graph, feeds).values()
    return np.asarray(out)


ACTS = {
    "none": lambda t: t,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": torch.nn.functional.gelu,
    "gelu_tanh": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
}


@pytest.mark.parametrize("act", list(ACTS))
def test_matmul_bias_act_matches_torch(act: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 7, 6)).astype(np.float32)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    r = rng.standard_normal((5, 7, 4)).astype(np.float32)
    graph = _single_op("MatMulBiasAct", [x, w, b, ("input", r)], {"act": act}, (5, 7, 4))
    got = _run(graph, x=x, in3=r)
    want = ACTS[act](torch.from_numpy(x) @ torch.from_numpy(w) + torch.from_numpy(b)
                     + torch.from_numpy(r)).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_conv_bias_act_matches_torch() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    r = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "act": "relu"}
    graph = _single_op("ConvBiasAct", [x, w, b, ("input", r)], attrs, (2, 4, 5, 5))
    got = _run(graph, x=x, in3=r)
    conv = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                      torch.from_numpy(b), stride=2, padding=1)
    want = torch.relu(conv + torch.from_numpy(r)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_torch(approximate: str) -> None:
    x = np.linspace(-6, 6, 97, dtype=np.float32).reshape(1, 97)
    graph = _single_op("Gelu", [x], {"approximate": approximate}, (1, 97))
    want = torch.nn.functional.gelu(torch.from_numpy(x), approximate=approximate).numpy()
    np.testing.assert_allclose(_run(graph, x=x), want, atol=1e-6)


def _fake_quant(x: np.ndarray, scale: float, zero: int, lo: int, hi: int) -> np.ndarray:
    # round half to even, as QuantizeLinear does
    return (np.clip(np.rint(x / scale) + zero, lo, hi) - zero) * scale


def test_qlinear_matmul_int8_is_int8_arithmetic() -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 3, (8, 16)).astype(np.float32)
    w_q = rng.integers(-127, 128, (16, 5)).astype(np.int8)
    w_scale = rng.uniform(0.001, 0.01, 5).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    x_scale, x_zp = np.float32(4.0 / 255), np.uint8(64)
    graph = _single_op(
        "QLinearMatMulInt8",
        [x, np.array(x_scale), np.array(x_zp), w_q, w_scale, np.zeros(5, np.int8), bias],
        {"act": "relu", "w_axis": 1}, (8, 5))
    got = _run(graph, x=x)
    # integer formulation: (xq - zp) @ wq in int32, rescaled by x_scale * w_scale
    xq = np.clip(np.rint(x / x_scale) + 64, 0, 255).astype(np.int32) - 64
    acc = xq @ w_q.astype(np.int32)
    want = np.maximum(acc * (x_scale * w_scale) + bias, 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_qlinear_conv_int8_matches_dequantized_torch() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    w_q = rng.integers(-127, 128, (3, 2, 3, 3)).astype(np.int8)
    w_scale = np.array([0.01, 0.02, 0.03], np.float32)
    x_scale = np.float32(0.05)
    graph = _single_op(
        "QLinearConvInt8",
        [x, np.array(x_scale), np.array(0, np.int8), w_q, w_scale, np.zeros(3, np.int8)],
        {"act": "none", "w_axis": 0, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, (2, 3, 6, 6))
    xd = _fake_quant(x, float(x_scale), 0, -128, 127).astype(np.float32)
    wd = (w_q.astype(np.float32) * w_scale[:, None, None, None])
    want = torch.nn.functional.conv2d(torch.from_numpy(xd), torch.from_numpy(wd), padding=1)
    np.testing.assert_allclose(_run(graph, x=x), want.numpy(), atol=1e-4)


def test_dynamic_quant_matmul_uses_per_call_range() -> None:
    rng = np.random.default_rng(5)
    w_q = rng.integers(-127, 128, (4, 3)).astype(np.int8)
    graph = _single_op("DynamicQuantMatMulInt8",
                       [np.zeros((2, 4), np.float32), w_q, np.array(0.1, np.float32),
                        np.array(0, np.int8)], {"act": "none", "w_axis": 1}, (2, 3))
    for amplitude in (0.01, 100.0):  # both ranges stay accurate: the scale follows the input
        x = (rng.uniform(-1, 1, (2, 4)) * amplitude).astype(np.float32)
        want = x @ (w_q.astype(np.float32) * 0.1)
        np.testing.assert_allclose(_run(graph, x=x), want, rtol=0.02,
                                   atol=0.02 * amplitude * 12.7)


def test_every_op_the_passes_emit_is_registered() -> None:
    for op in ("MatMulBiasAct", "ConvBiasAct", "Gelu", "QLinearMatMulInt8", "QLinearConvInt8",
               "DynamicQuantMatMulInt8"):
        assert is_irkit_op(op)


@pytest.mark.parametrize("op", ["MatMulBiasAct", "Gelu", "DynamicQuantMatMulInt8"])
def test_exported_graph_keeps_the_output_name(op: str) -> None:
    """An irkit op producing a graph output: the ONNX model still has that output name, so
    plain ``irkit.evaluate`` and exported artifacts work on optimized graphs."""
    import irkit

    x = np.ones((2, 4), np.float32)
    inputs: dict[str, list] = {
        "MatMulBiasAct": [x, np.eye(4, dtype=np.float32)],
        "Gelu": [x],
        "DynamicQuantMatMulInt8": [x, np.eye(4, dtype=np.int8), np.array(0.5, np.float32),
                                   np.array(0, np.int8)],
    }
    graph = _single_op(op, inputs[op], {}, (2, 4))
    assert [o.name for o in irkit.to_onnx(graph).graph.output] == [graph.outputs[0].name]
    assert list(irkit.evaluate(graph, {"x": x})) == [graph.outputs[0].name]
