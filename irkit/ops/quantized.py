"""Quantized irkit ops (float in, float out) and their decompositions.

An int8 kernel behind these ops quantizes its input, multiplies int8 by int8 into int32,
rescales by ``x_scale * w_scale`` and applies the float epilogue. The decomposition says
exactly that with QuantizeLinear/DequantizeLinear around the float op.

- ``irkit.QLinearMatMulInt8(x, x_scale, x_zp, w_q, w_scale, w_zp, bias?, residual?)
  {act, w_axis}``: static activation quantization; ``w_q`` is [K, N] int8.
- ``irkit.QLinearConvInt8(x, x_scale, x_zp, w_q, w_scale, w_zp, bias?, residual?)
  {act, w_axis, <Conv attrs>}``.
- ``irkit.DynamicQuantMatMulInt8(x, w_q, w_scale, w_zp, bias?, residual?) {act, w_axis}``:
  the input range is measured per call (DynamicQuantizeLinear, uint8 asymmetric).
"""

from __future__ import annotations

from collections.abc import Sequence

from irkit.ir import Graph, Node, Value
from irkit.ir.dtypes import DType
from irkit.ir.types import TensorType, ValueType
from irkit.ops.fused import CONV_ATTRS, emit_activation, keep_output_names
from irkit.ops.registry import register_irkit_op


def _add(graph: Graph, anchor: Node, op: str, inputs: Sequence[Value | None],
         type_: ValueType, attrs: dict | None = None, outputs: int = 1) -> Node:
    types = [type_] if outputs == 1 else None
    return graph.add_node(op, inputs, attrs, before=anchor, types=types, outputs=outputs)


def _like(value: Value, dtype: DType) -> TensorType:
    shape = value.shape
    return TensorType(dtype, shape)


def _input(node: Node, index: int) -> Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def dequantize_weight(graph: Graph, node: Node, w_q: Value, w_scale: Value,
                      w_zp: Value) -> Value:
    axis = node.attr("w_axis", 0)
    attrs = {"axis": axis} if w_scale.shape not in ((), None) else None
    return _add(graph, node, "DequantizeLinear", [w_q, w_scale, w_zp],
                _like(w_q, DType.FLOAT32), attrs).output


def fake_quantize(graph: Graph, node: Node, x: Value, scale: Value, zp: Value) -> Value:
    zp_dtype = zp.dtype or DType.UINT8
    q = _add(graph, node, "QuantizeLinear", [x, scale, zp], _like(x, zp_dtype)).output
    return _add(graph, node, "DequantizeLinear", [q, scale, zp], x.type).output


def _epilogue(graph: Graph, node: Node, y: Value, bias: Value | None,
              residual: Value | None) -> Value:
    out_type = node.outputs[0].type
    if bias is not None:
        y = _add(graph, node, "Add", [y, bias], out_type).output
    if residual is not None:
        y = _add(graph, node, "Add", [y, residual], out_type).output
    return emit_activation(graph, node, y, node.attr("act", "none"))


def _decompose_qmatmul(graph: Graph, node: Node) -> list[Value]:
    x, x_scale, x_zp, w_q, w_scale, w_zp = node.inputs[:6]
    assert x is not None and x_scale is not None and x_zp is not None
    assert w_q is not None and w_scale is not None and w_zp is not None
    xd = fake_quantize(graph, node, x, x_scale, x_zp)
    wd = dequantize_weight(graph, node, w_q, w_scale, w_zp)
    y = _add(graph, node, "MatMul", [xd, wd], node.outputs[0].type).output
    return keep_output_names(graph, node, [_epilogue(graph, node, y, _input(node, 6), _input(node, 7))])


def _decompose_qconv(graph: Graph, node: Node) -> list[Value]:
    x, x_scale, x_zp, w_q, w_scale, w_zp = node.inputs[:6]
    assert x is not None and x_scale is not None and x_zp is not None
    assert w_q is not None and w_scale is not None and w_zp is not None
    xd = fake_quantize(graph, node, x, x_scale, x_zp)
    wd = dequantize_weight(graph, node, w_q, w_scale, w_zp)
    attrs = {k: node.attrs[k] for k in CONV_ATTRS if k in node.attrs}
    inputs = [xd, wd]
    bias = _input(node, 6)
    if bias is not None:
        inputs.append(bias)
    y = _add(graph, node, "Conv", inputs, node.outputs[0].type, attrs).output
    return keep_output_names(graph, node, [_epilogue(graph, node, y, None, _input(node, 7))])


def _decompose_dynamic_qmatmul(graph: Graph, node: Node) -> list[Value]:
    x, w_q, w_scale, w_zp = node.inputs[:4]
    assert x is not None and w_q is not None and w_scale is not None and w_zp is not None
    dql = graph.add_node("DynamicQuantizeLinear", [x], before=node, outputs=3, types=[
        _like(x, DType.UINT8), TensorType(DType.FLOAT32, ()), TensorType(DType.UINT8, ())])
    q, scale, zp = dql.outputs
    xd = _add(graph, node, "DequantizeLinear", [q, scale, zp], x.type).output
    wd = dequantize_weight(graph, node, w_q, w_scale, w_zp)
    y = _add(graph, node, "MatMul", [xd, wd], node.outputs[0].type).output
    return keep_output_names(graph, node, [_epilogue(graph, node, y, _input(node, 4), _input(node, 5))])


register_irkit_op("QLinearMatMulInt8", _decompose_qmatmul,
                  "static int8: act(DQ(Q(x)) @ DQ(w_q) + bias + residual)")
register_irkit_op("QLinearConvInt8", _decompose_qconv,
                  "static int8: act(Conv(DQ(Q(x)), DQ(w_q), bias) + residual)")
register_irkit_op("DynamicQuantMatMulInt8", _decompose_dynamic_qmatmul,
                  "dynamic int8: act(DQ(DynamicQuantizeLinear(x)) @ DQ(w_q) + bias + residual)")
