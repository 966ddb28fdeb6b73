"""Fused irkit ops on the llvm backend: lowered directly where that saves work, else
back to the standard ops the lowering fuses.

- ``irkit.ScaledDotProductAttention``: one kernel (irkit/lower/attention.py) when its
  shapes are static and small enough, else decomposed.
- ``irkit.MatMulBiasAct`` with a GELU: the GEMM with bias and GELU in its epilogue
  (:func:`plan_matmul_bias_act`). Decomposed, the GELU's input has two readers, so the
  driver's epilogue fusion stops at the bias and the GELU costs a pass over memory.
- ``irkit.ConvBiasActPool``: the conv GEMM pooling its output tile in the epilogue
  (irkit/lower/conv_pool.py).
- other ``irkit.MatMulBiasAct``, ``irkit.ConvBiasAct`` and ``irkit.Gelu`` are decomposed
  into their reference ops (MatMul/Conv, Add, activation); the driver then puts bias,
  residual and activation in the GEMM epilogue again, so the kernels are the same as for
  the unfused graph.

Quantized irkit ops are left alone: they have int8 kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from irkit.ir import Graph, Node
from irkit.kir import Call, Const, Expr, Stmt
from irkit.lower.attention import attention_supported
from irkit.lower.context import LoweringContext
from irkit.lower.conv_pool import conv_pool_supported, plan_conv_bias_act_pool
from irkit.lower.heavy import Epilogue, HeavyPlan, plan_matmul
from irkit.lower.tensor import Index, LoweringError, TensorRef
from irkit.ops import IRKIT_DOMAIN, get_irkit_op

FUSED_OPS = ("MatMulBiasAct", "ConvBiasAct", "Gelu", "ScaledDotProductAttention",
             "ConvBiasActPool")
GELU_ACTS = ("gelu", "gelu_tanh")


def lowered_directly(node: Node) -> bool:
    """Whether the llvm lowering takes this fused irkit node as it is."""
    if node.domain != IRKIT_DOMAIN:
        return False
    if node.op == "ScaledDotProductAttention":
        return attention_supported(node)
    if node.op == "ConvBiasActPool":
        return conv_pool_supported(node)
    if node.op == "MatMulBiasAct" and node.attr("act", "none") in GELU_ACTS:
        x, w = node.inputs[0], node.inputs[1]
        return (x is not None and x.shape is not None and len(x.shape) >= 2
                and w is not None and w.const is not None and w.const.ndim == 2
                and x.dtype is not None and x.dtype.numpy == np.float32)
    return False


def _gelu(x: Expr, approximate: bool) -> Expr:
    """The same arithmetic as the decomposition (irkit.ops.fused.emit_gelu), so results
    match the decomposed graph's kernels."""
    def f32(value: float) -> Const:
        return Const(float(np.float32(value)), "f32")

    if approximate:
        inner = x + (x * (x * x)) * f32(0.044715)
        gate = Call("tanh", (inner * f32(math.sqrt(2 / math.pi)),))
    else:
        gate = Call("erf", (x / f32(math.sqrt(2.0)),))
    return (x * f32(0.5)) * (gate + f32(1.0))


def plan_matmul_bias_act(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                         ) -> HeavyPlan:
    """``act(x @ w + b + residual)`` with everything after the product in the epilogue."""
    act = node.attr("act", "none")
    if act not in ("none", *GELU_ACTS):
        raise LoweringError(f"MatMulBiasAct act={act!r} is lowered decomposed")
    bias = ins[2] if len(ins) > 2 else None
    residual = ins[3] if len(ins) > 3 else None
    inner = plan_matmul(ctx, node, ins[:2])

    def emit(epilogue: Epilogue) -> None:
        def fused(idx: Index, acc: Expr) -> Stmt:
            y = acc
            if bias is not None:
                y = y + bias.read((idx[-1],))
            if residual is not None:
                y = y + residual.read(idx[len(idx) - residual.rank:])
            if act != "none":
                y = _gelu(y, act == "gelu_tanh")
            return epilogue(idx, y)

        inner.emit(fused)

    return HeavyPlan(inner.shape, emit)


FUSED_HEAVY = {"MatMulBiasAct": plan_matmul_bias_act,
               "ConvBiasActPool": plan_conv_bias_act_pool}  # irkit/lower/conv_pool.py


def decompose_fused_ops(graph: Graph, lowers: Callable[[str, str], bool] | None = None
                        ) -> Graph:
    """``graph`` itself when it has no fused irkit op to decompose, else a copy with them
    decomposed (those :func:`lowered_directly` stay, unless ``lowers(op, domain)`` — the
    backend's capabilities for its target — says the backend does not take them)."""
    def keep(node: Node) -> bool:
        return lowered_directly(node) and (lowers is None or lowers(node.op, node.domain))

    if not any(n.domain == IRKIT_DOMAIN and n.op in FUSED_OPS and not keep(n)
               for n in graph.nodes):
        return graph
    graph = graph.clone()
    for node in list(graph.nodes):
        if node.domain != IRKIT_DOMAIN or node.op not in FUSED_OPS or keep(node):
            continue
        names = [v.name for v in node.outputs]
        new_outputs = get_irkit_op(node).decompose(graph, node)
        renames = []
        for old, new, name in zip(node.outputs, new_outputs, names):
            new.type = old.type
            old.replace_all_uses_with(new)
            if new.name != name and new.producer is not None:
                renames.append((new, name))
        graph.remove_node(node)
        for new, name in renames:  # graph outputs keep their names
            if name not in graph._names:
                graph._names.discard(new.name)
                graph._names.add(name)
                new.name = name
    return graph


__all__ = ["FUSED_HEAVY", "FUSED_OPS", "decompose_fused_ops", "lowered_directly",
           "plan_matmul_bias_act"]
