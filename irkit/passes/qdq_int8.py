"""``fuse-qdq``: QDQ-form int8 MatMul/Conv back to irkit's int8 ops.

A statically quantized model saved as ONNX (``irkit optimize -o``, ``irkit.to_onnx``, or
``onnxruntime.quantization`` in QDQ format) holds each int8 layer as
``Conv(DequantizeLinear(QuantizeLinear(x, s, zp), s, zp), DequantizeLinear(w_q, w_s, 0), b)``
(MatMul likewise, its bias in a following ``Add``; Gemm with its bias; dynamic int8 reads
``DequantizeLinear(DynamicQuantizeLinear(x))``). Run op by op, that is fp32 arithmetic
with two extra passes over every activation. This rewrite turns each such pattern into the
``irkit.QLinearConvInt8`` / ``irkit.QLinearMatMulInt8`` / ``irkit.DynamicQuantMatMulInt8``
node whose decomposition it is
(:mod:`irkit.ops.quantized`), so the backend's int8 kernels run it: the result is the same
by definition. Patterns the int8 kernels do not take (asymmetric or non-int8 weights,
per-channel scales on another axis, grouped or non-2-D Convs) stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from irkit.ir import Graph, Node, Value
from irkit.passes.base import (
    IRKIT_DOMAIN,
    drop_unused_constants,
    take_name,
    use_irkit_domain,
)
from irkit.passes.quantize import CONV_INT8_ATTRS, conv_int8_unsupported

Lowers = Callable[[str, str], bool]
_OPS = {"MatMul": "QLinearMatMulInt8", "Gemm": "QLinearMatMulInt8", "Conv": "QLinearConvInt8"}
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def _const(value: Value | None) -> np.ndarray | None:
    return None if value is None else value.const


def _producer(value: Value | None, op: str) -> Node | None:
    node = None if value is None else value.producer
    return node if node is not None and node.domain in ("", "ai.onnx") and node.op == op else None


def _same(a: Value | None, b: Value | None) -> bool:
    if a is b:
        return True
    ca, cb = _const(a), _const(b)
    return ca is not None and cb is not None and ca.dtype == cb.dtype and np.array_equal(ca, cb)


def _activation_qdq(value: Value | None) -> tuple[Value, Value, Value] | None:
    """(x, scale, zero point) of ``DQ(Q(x, s, zp), s, zp)`` with per-tensor constants."""
    dq = _producer(value, "DequantizeLinear")
    q = _producer(dq.inputs[0] if dq is not None else None, "QuantizeLinear")
    if dq is None or q is None or len(dq.inputs) < 3 or len(q.inputs) < 3:
        return None
    x, scale, zp = q.inputs[:3]
    s, z = _const(scale), _const(zp)
    if (x is None or scale is None or zp is None or s is None or z is None or s.size != 1
            or z.dtype not in (np.uint8, np.int8) or s.dtype != np.float32
            or not (_same(scale, dq.inputs[1]) and _same(zp, dq.inputs[2]))
            or any(k in q.attrs for k in ("block_size", "output_dtype"))):
        return None
    return x, scale, zp


def _dynamic_dq(value: Value | None) -> Value | None:
    """x of ``DQ(DynamicQuantizeLinear(x))`` (its three outputs in order)."""
    dq = _producer(value, "DequantizeLinear")
    dyn = _producer(dq.inputs[0] if dq is not None else None, "DynamicQuantizeLinear")
    if dq is None or dyn is None or len(dq.inputs) < 3 or \
            any(a is not b for a, b in zip(dq.inputs, dyn.outputs)):
        return None
    return dyn.inputs[0]


def _weight_dq(value: Value | None, axis: int, rank: int) -> tuple[Value, Value, Value] | None:
    """(w_q, scale, zero point) of ``DQ(w_q)`` with int8 weights and zero points of 0,
    per tensor or per channel along ``axis``."""
    dq = _producer(value, "DequantizeLinear")
    if dq is None or len(dq.inputs) < 3 or "block_size" in dq.attrs:
        return None
    w_q, scale, zp = dq.inputs[:3]
    w, s, z = _const(w_q), _const(scale), _const(zp)
    if (w_q is None or scale is None or zp is None or w is None or s is None or z is None
            or w.dtype != np.int8 or w.ndim != rank or s.dtype != np.float32
            or z.dtype != np.int8 or np.any(z != 0) or s.shape != z.shape):
        return None
    if s.size != 1 and (s.ndim != 1 or int(dq.attr("axis", 1)) % rank != axis
                        or s.shape[0] != w.shape[axis]):
        return None
    return w_q, scale, zp


class _NoBias(Exception):
    """The bias is neither a float constant nor an int32 one behind DequantizeLinear."""


def _float_bias(graph: Graph, value: Value | None, columns: int) -> Value | None:
    """A Conv/Gemm bias as a float [columns] constant (the constant itself or one computed
    from ``DQ(b_int32, b_scale)``), None without a bias; raises :class:`_NoBias` when it
    is neither."""
    if value is None:
        return None
    const = _const(value)
    b = const
    if b is None:
        dq = _producer(value, "DequantizeLinear")
        if dq is None:
            raise _NoBias
        bq, s = _const(dq.inputs[0]), _const(dq.inputs[1])
        z = _const(dq.inputs[2]) if len(dq.inputs) > 2 else None
        if bq is None or s is None or bq.dtype != np.int32 or (z is not None and np.any(z != 0)):
            raise _NoBias
        b = (bq.astype(np.float64) * s).astype(np.float32)
    if b.dtype != np.float32 or b.size != columns or b.ndim > 2:
        raise _NoBias
    if const is not None and b.shape == (columns,):
        return value
    return graph.add_constant(f"{value.name}_f32", np.ascontiguousarray(b.reshape(columns)))


def _matmul_bias(node: Node, columns: int) -> tuple[Node, Value] | None:
    """The ``Add(y, b)`` after MatMul ``node`` with a constant [N] bias, when it is the
    only reader of the MatMul's output."""
    out = node.outputs[0]
    if out.is_graph_output or len(out.uses) != 1:
        return None
    (add,) = out.users
    if add.op != "Add" or add.domain not in ("", "ai.onnx"):
        return None
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    b = _const(other)
    if other is None or b is None or b.dtype != np.float32 or b.shape != (columns,):
        return None
    return add, other


def fuse_qdq(graph: Graph, lowers: Lowers | None = None) -> tuple[Graph, int]:
    """``graph`` (itself when nothing matched, else a rewritten copy) and how many int8
    nodes it now has in place of QDQ patterns; ``lowers(op, domain)`` says which irkit
    int8 ops the backend takes."""
    def wanted(node: Node) -> bool:
        op = _target_op(node)
        return op is not None and (lowers is None or lowers(op, IRKIT_DOMAIN))
    if not any(wanted(n) for n in graph.nodes):
        return graph, 0
    graph = graph.clone()
    fused = 0
    for node in list(graph.nodes):
        if wanted(node) and _rewrite(graph, node):
            fused += 1
    if fused:
        _drop_dead_qdq(graph)
        drop_unused_constants(graph)
    return graph, fused


def _target_op(node: Node) -> str | None:
    """The irkit int8 op ``node`` becomes when its input is in QDQ form."""
    if node.domain not in ("", "ai.onnx") or node.op not in _OPS:
        return None
    if _activation_qdq(node.inputs[0]) is not None:
        return _OPS[node.op]
    if node.op == "MatMul" and _dynamic_dq(node.inputs[0]) is not None:
        return "DynamicQuantMatMulInt8"
    return None


def _rewrite(graph: Graph, node: Node) -> bool:
    act = _activation_qdq(node.inputs[0])
    activation: list[Value | None] = (list(act) if act is not None
                                      else [_dynamic_dq(node.inputs[0])])
    if node.op == "Conv":
        parts = _conv_parts(graph, node)
    elif node.op == "Gemm":
        parts = _gemm_parts(graph, node)
    else:
        parts = _matmul_parts(node)
    if parts is None:
        return False
    weight, bias, attrs, tail = parts
    inputs: list[Value | None] = [*activation, *weight]
    if bias is not None:
        inputs.append(bias)
    use_irkit_domain(graph)
    out = tail.outputs[0]
    op = _OPS[node.op] if act is not None else "DynamicQuantMatMulInt8"
    new = graph.add_node(op, inputs, {"act": "none", **attrs}, domain=IRKIT_DOMAIN,
                         before=node, types=[out.type], name=node.name)
    out.replace_all_uses_with(new.output)
    name = out.name
    if tail is not node:
        graph.remove_node(tail)
    graph.remove_node(node)
    take_name(graph, new.output, name)
    return True


_Parts = tuple[tuple[Value, Value, Value], Value | None, dict[str, Any], Node]


def _conv_parts(graph: Graph, node: Node) -> _Parts | None:
    weight = _weight_dq(node.inputs[1], 0, 4)
    if weight is None:
        return None
    attrs: dict[str, Any] = {"w_axis": 0}
    attrs.update({k: node.attr(k) for k in CONV_INT8_ATTRS if k in node.attrs})
    w = _const(weight[0])
    assert w is not None
    if conv_int8_unsupported(w.ndim - 2, int(attrs.get("group", 1)), w.shape[0]):
        return None
    try:
        bias = _float_bias(graph, node.inputs[2] if len(node.inputs) > 2 else None, w.shape[0])
    except _NoBias:
        return None
    return weight, bias, attrs, node


def _matmul_parts(node: Node) -> _Parts | None:
    weight = _weight_dq(node.inputs[1], 1, 2)
    w = None if weight is None else _const(weight[0])
    if weight is None or w is None:
        return None
    found = _matmul_bias(node, w.shape[1])
    tail, bias = found if found is not None else (node, None)
    return weight, bias, {"w_axis": 1}, tail


def _gemm_parts(graph: Graph, node: Node) -> _Parts | None:
    """Gemm(x, DQ(w_q), C) with transA=0 and alpha=beta=1; transB=1 weights ([N, K],
    scales along axis 0) are stored transposed, as the int8 kernels read [K, N]."""
    if (node.attr("transA", 0) or float(node.attr("alpha", 1.0)) != 1.0
            or float(node.attr("beta", 1.0)) != 1.0):
        return None
    trans_b = bool(node.attr("transB", 0))
    weight = _weight_dq(node.inputs[1], 0 if trans_b else 1, 2)
    w = None if weight is None else _const(weight[0])
    if weight is None or w is None:
        return None
    w_q, scale, zp = weight
    if trans_b:
        w_q = graph.add_constant(f"{w_q.name}_kn", np.ascontiguousarray(w.T))
    try:
        bias = _float_bias(graph, node.inputs[2] if len(node.inputs) > 2 else None,
                           int(w.shape[0 if trans_b else 1]))
    except _NoBias:
        return None
    return (w_q, scale, zp), bias, {"w_axis": 1}, node


def _drop_dead_qdq(graph: Graph) -> None:
    """Remove the QuantizeLinear/DequantizeLinear nodes the rewrite left unread."""
    changed = True
    while changed:
        changed = False
        for node in reversed(graph.nodes):
            if (node.op in _QDQ_OPS and node.domain in ("", "ai.onnx")
                    and not any(v.is_used for v in node.outputs)):
                graph.remove_node(node)
                changed = True
