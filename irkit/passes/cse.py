"""Common subexpression elimination: merge nodes computing the same op on the same inputs
with the same attributes, and constants holding identical data."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from irkit.ir import Graph, Node, Value
from irkit.ir.attrs import AttrKind
from irkit.passes.base import Pass, PassContext

_IMPURE = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli",
})


def _node_key(node: Node, ids: dict[int, int]) -> tuple[Any, ...] | None:
    if node.op in _IMPURE or node.subgraphs():
        return None
    attrs = []
    for key, attr in sorted(node.attrs.items()):
        if attr.kind in (AttrKind.TENSOR, AttrKind.TENSORS):
            return None  # tensor attributes: not worth hashing
        attrs.append((key, attr.kind.value, repr(attr.value)))
    inputs = tuple(None if v is None else ids.setdefault(id(v), id(v)) for v in node.inputs)
    return (node.domain, node.op, inputs, tuple(attrs), len(node.outputs))


def _const_key(value: Value) -> tuple[Any, ...]:
    array = value.const
    assert array is not None
    digest = hashlib.sha1(array.tobytes()).hexdigest()
    return (array.dtype.str, array.shape, digest)


@dataclass(frozen=True)
class CommonSubexpressionElimination(Pass):
    """Merge duplicate nodes and duplicate constants (up to ``max_const_elements``)."""

    name = "cse"
    max_const_elements: int = 1 << 20

    def apply(self, graph: Graph, context: PassContext) -> tuple[bool, dict[str, Any]]:
        ids: dict[int, int] = {}
        const_seen: dict[tuple[Any, ...], Value] = {}
        constants_merged = 0
        for value in list(graph.constants.values()):
            if value.const is None or value.const.size > self.max_const_elements:
                continue
            const_key = _const_key(value)
            kept = const_seen.setdefault(const_key, value)
            if kept is not value:
                value.replace_all_uses_with(kept)
                if not value.is_used:
                    graph.remove_constant(value)
                    constants_merged += 1
        seen: dict[tuple[Any, ...], Node] = {}
        nodes_merged = 0
        for node in graph.nodes:
            node_key = _node_key(node, ids)
            if node_key is None:
                continue
            first = seen.setdefault(node_key, node)
            if first is node:
                continue
            if any(v.is_graph_output for v in node.outputs):
                continue  # keep the output's name
            for old, new in zip(node.outputs, first.outputs):
                old.replace_all_uses_with(new)
            graph.remove_node(node)
            nodes_merged += 1
        changed = bool(nodes_merged or constants_merged)
        return changed, {"nodes_merged": nodes_merged, "constants_merged": constants_merged}
