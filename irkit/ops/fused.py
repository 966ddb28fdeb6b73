"""Fused irkit ops and their decompositions (their reference semantics).

- ``irkit.MatMulBiasAct(x, w, b?, residual?) {act}``: ``act(x @ w + b + residual)``;
  ``w`` is [K, M] (Gemm's ``transB`` is folded into the weights when fusing).
- ``irkit.ConvBiasAct(x, w, b?, residual?) {act, <Conv attrs>}``:
  ``act(Conv(x, w, b) + residual)``.
- ``irkit.Gelu(x) {approximate="none"|"tanh"}``: ONNX opset-20 ``Gelu`` for older opsets.

``act`` is one of ``none``, ``relu``, ``sigmoid``, ``tanh``, ``gelu``, ``gelu_tanh``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from irkit.ir import Graph, Node, Value
from irkit.ops.registry import register_irkit_op

ACTIVATIONS = ("none", "relu", "sigmoid", "tanh", "gelu", "gelu_tanh")
CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _emit(graph: Graph, anchor: Node, op: str, inputs: Sequence[Value | None],
          attrs: dict[str, Any] | None = None) -> Value:
    """Insert a standard op before ``anchor`` typed like the anchor's first output."""
    node = graph.add_node(op, inputs, attrs, before=anchor, types=[anchor.outputs[0].type])
    return node.output


def keep_output_names(graph: Graph, node: Node, outputs: list[Value]) -> list[Value]:
    """Give a decomposition's results the names of ``node``'s outputs (the node gets fresh
    ones), so an exported graph keeps its output names when an irkit op produces them."""
    for old, new in zip(node.outputs, outputs):
        if new is old or new.producer is None or new.producer is node:
            continue
        name = old.name
        old.name = graph.unique_name(f"{name}_irkit")
        new.name = name
    return outputs


def _scalar(graph: Graph, value: float, like: Value) -> Value:
    dtype = like.dtype.numpy if like.dtype is not None else np.dtype(np.float32)
    return graph.add_constant("k", np.array(value, dtype=dtype))


def emit_gelu(graph: Graph, anchor: Node, x: Value, approximate: str = "none") -> Value:
    """GELU from standard opset-13 ops: the erf form, or the tanh approximation."""
    if approximate == "tanh":
        cube = _emit(graph, anchor, "Mul", [x, _emit(graph, anchor, "Mul", [x, x])])
        inner = _emit(graph, anchor, "Add",
                      [x, _emit(graph, anchor, "Mul", [cube, _scalar(graph, 0.044715, x)])])
        scaled = _emit(graph, anchor, "Mul", [inner, _scalar(graph, math.sqrt(2 / math.pi), x)])
        gate = _emit(graph, anchor, "Tanh", [scaled])
    else:
        gate = _emit(graph, anchor, "Erf",
                     [_emit(graph, anchor, "Div", [x, _scalar(graph, math.sqrt(2.0), x)])])
    one_plus = _emit(graph, anchor, "Add", [gate, _scalar(graph, 1.0, x)])
    half_x = _emit(graph, anchor, "Mul", [x, _scalar(graph, 0.5, x)])
    return _emit(graph, anchor, "Mul", [half_x, one_plus])


def emit_activation(graph: Graph, anchor: Node, x: Value, act: str) -> Value:
    if act == "none":
        return x
    if act == "relu":
        return _emit(graph, anchor, "Relu", [x])
    if act == "sigmoid":
        return _emit(graph, anchor, "Sigmoid", [x])
    if act == "tanh":
        return _emit(graph, anchor, "Tanh", [x])
    if act == "gelu":
        return emit_gelu(graph, anchor, x, "none")
    if act == "gelu_tanh":
        return emit_gelu(graph, anchor, x, "tanh")
    raise ValueError(f"{anchor.describe()}: unknown activation {act!r}; known: {ACTIVATIONS}")


def _input(node: Node, index: int) -> Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _decompose_matmul_bias_act(graph: Graph, node: Node) -> list[Value]:
    x, w = node.inputs[0], node.inputs[1]
    y = _emit(graph, node, "MatMul", [x, w])
    bias, residual = _input(node, 2), _input(node, 3)
    if bias is not None:
        y = _emit(graph, node, "Add", [y, bias])
    if residual is not None:
        y = _emit(graph, node, "Add", [y, residual])
    return keep_output_names(graph, node, [emit_activation(graph, node, y, node.attr("act", "none"))])


def _decompose_conv_bias_act(graph: Graph, node: Node) -> list[Value]:
    attrs = {k: node.attrs[k] for k in CONV_ATTRS if k in node.attrs}
    inputs = [node.inputs[0], node.inputs[1]]
    bias = _input(node, 2)
    if bias is not None:
        inputs.append(bias)
    y = _emit(graph, node, "Conv", inputs, attrs)
    residual = _input(node, 3)
    if residual is not None:
        y = _emit(graph, node, "Add", [y, residual])
    return keep_output_names(graph, node, [emit_activation(graph, node, y, node.attr("act", "none"))])


def _decompose_gelu(graph: Graph, node: Node) -> list[Value]:
    x = node.inputs[0]
    assert x is not None
    return keep_output_names(graph, node, [emit_gelu(graph, node, x, node.attr("approximate", "none"))])


register_irkit_op("MatMulBiasAct", _decompose_matmul_bias_act,
                  "act(x @ w + b + residual); inputs x, w[K,M], b[M]?, residual?")
register_irkit_op("ConvBiasAct", _decompose_conv_bias_act,
                  "act(Conv(x, w, b) + residual); Conv attributes plus act")
register_irkit_op("Gelu", _decompose_gelu, "ONNX opset-20 Gelu (approximate none|tanh)")
