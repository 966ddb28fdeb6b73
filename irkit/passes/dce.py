"""Dead code elimination: nodes whose outputs nobody reads, and unread constants."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from irkit.ir import Graph
from irkit.passes.base import Pass, PassContext, drop_unused_constants, remove_dead_nodes


@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Remove nodes that do not contribute to a graph output, then unused constants."""

    name = "dce"

    def apply(self, graph: Graph, context: PassContext) -> tuple[bool, dict[str, Any]]:
        nodes = 0
        while True:  # a sweep can expose producers of the nodes it removed
            removed = remove_dead_nodes(graph)
            nodes += removed
            if not removed:
                break
        constants = drop_unused_constants(graph)
        return bool(nodes or constants), {"nodes_removed": nodes, "constants_removed": constants}
