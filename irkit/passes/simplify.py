"""``simplify``: the housekeeping passes run together to a fixed point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from irkit.ir import Graph
from irkit.passes.base import Pass, PassContext
from irkit.passes.cse import CommonSubexpressionElimination
from irkit.passes.dce import DeadCodeElimination
from irkit.passes.fold import FoldConstants
from irkit.passes.shapes import SimplifyShapes


@dataclass(frozen=True)
class Simplify(Pass):
    """shapes, fold, cse and dce, repeated until nothing changes (at most ``max_rounds``)."""

    name = "simplify"
    max_rounds: int = 8

    def apply(self, graph: Graph, context: PassContext) -> tuple[bool, dict[str, Any]]:
        steps: list[Pass] = [SimplifyShapes(), FoldConstants(), CommonSubexpressionElimination(),
                             DeadCodeElimination()]
        modified = False
        reports: dict[str, list[dict[str, Any]]] = {}
        for _ in range(self.max_rounds):
            changed = False
            for step in steps:
                step_changed, report = step.apply(graph, context)
                if step_changed:
                    reports.setdefault(step.name, []).append(report)
                changed |= step_changed
            modified |= changed
            if not changed:
                break
        return modified, {"steps": reports}
