"""Fused irkit ops on the llvm backend: back to the standard ops the lowering fuses.

``irkit.MatMulBiasAct``, ``irkit.ConvBiasAct`` and ``irkit.Gelu`` are decomposed into
their reference ops (MatMul/Conv, Add, activation); the driver then puts bias, residual
and activation in the GEMM epilogue again, so the kernels are the same as for the
unfused graph. Quantized irkit ops are left alone: they have int8 kernels.
"""

from __future__ import annotations

from irkit.ir import Graph
from irkit.ops import IRKIT_DOMAIN, get_irkit_op

FUSED_OPS = ("MatMulBiasAct", "ConvBiasAct", "Gelu")


def decompose_fused_ops(graph: Graph) -> Graph:
    """``graph`` itself when it has no fused irkit op, else a copy with them decomposed."""
    if not any(n.domain == IRKIT_DOMAIN and n.op in FUSED_OPS for n in graph.nodes):
        return graph
    graph = graph.clone()
    for node in list(graph.nodes):
        if node.domain != IRKIT_DOMAIN or node.op not in FUSED_OPS:
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


__all__ = ["FUSED_OPS", "decompose_fused_ops"]
