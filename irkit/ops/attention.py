"""``irkit.ScaledDotProductAttention``: softmax attention as one op.

``irkit.ScaledDotProductAttention(q, k, v) {scale, perm?}``:
``Transpose(Softmax(scale * q @ k^T, axis=-1) @ v, perm)`` for q ``[..., Sq, D]``,
k ``[..., Sk, D]`` and v ``[..., Sk, Dv]`` with the same leading (batch, head) dims.
``perm`` (default: none) lays the result out the way its consumer reads it (heads merged
back next to the features, say), so a backend writes it there directly.
The fuse pass forms it from the MatMul-Softmax-MatMul chain exporters emit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from irkit.ir import Graph, Node, TensorType, Value
from irkit.ops.fused import keep_output_names
from irkit.ops.registry import register_irkit_op


def attention_shapes(q: Value, k: Value, v: Value) -> dict[str, tuple[Any, ...]] | None:
    """Shapes of the decomposition's intermediates (None when a rank is unknown)."""
    if q.shape is None or k.shape is None or v.shape is None or len(q.shape) < 2:
        return None
    lead = tuple(q.shape[:-2])
    kt = (*k.shape[:-2], k.shape[-1], k.shape[-2])
    scores = (*lead, q.shape[-2], k.shape[-2])
    out = (*lead, q.shape[-2], v.shape[-1])
    return {"kt": kt, "scores": scores, "out": out}


def _typed(like: Value, shape: tuple[Any, ...] | None) -> TensorType | None:
    if shape is None or like.dtype is None:
        return None
    return TensorType(like.dtype, shape)


def _decompose_attention(graph: Graph, node: Node) -> list[Value]:
    q, k, v = node.inputs[0], node.inputs[1], node.inputs[2]
    assert q is not None and k is not None and v is not None
    shapes = attention_shapes(q, k, v)
    rank = len(k.shape) if k.shape is not None else 4

    def emit(op: str, inputs: list[Value], attrs: dict[str, Any] | None, key: str) -> Value:
        shape = shapes[key] if shapes is not None else None
        return graph.add_node(op, inputs, attrs, before=node,
                              types=[_typed(q, shape)]).output

    perm_k = [*range(rank - 2), rank - 1, rank - 2]
    kt = emit("Transpose", [k], {"perm": perm_k}, "kt")
    scores = emit("MatMul", [q, kt], None, "scores")
    dtype = q.dtype.numpy if q.dtype is not None else np.dtype(np.float32)
    scale = graph.add_constant("attention_scale", np.array(node.attr("scale", 1.0), dtype))
    scores = emit("Mul", [scores, scale], None, "scores")
    probs = emit("Softmax", [scores], {"axis": -1}, "scores")
    out = emit("MatMul", [probs, v], None, "out")
    perm = node.attr("perm", None)
    if perm is not None and list(perm) != sorted(perm):
        out = graph.add_node("Transpose", [out], {"perm": list(perm)}, before=node,
                             types=[node.outputs[0].type]).output
    return keep_output_names(graph, node, [out])


register_irkit_op("ScaledDotProductAttention", _decompose_attention,
                  "Transpose(Softmax(scale * q @ k^T) @ v, perm); q[..,Sq,D], k[..,Sk,D], "
                  "v[..,Sk,Dv]")
