"""The ORT-fallback partitioner every kernel backend shares: split a graph into runs of
nodes the backend lowers and runs of nodes it cannot, which ONNX Runtime executes
(``fallback = "ort"``).

Nodes keep their topological order; consecutive nodes of one kind form a segment. Each
segment becomes a standalone Graph whose inputs are the values it reads from earlier
segments (or the model inputs) and whose outputs are the values later segments or the
model read. Constants are copied into the segments that use them.
"""

from __future__ import annotations

from dataclasses import dataclass

from irkit.ir import Graph, Node, Value
from irkit.ir.clone import extract_subgraph


@dataclass
class Segment:
    kind: str  # "kernels" or "ort"
    graph: Graph
    inputs: list[str]
    outputs: list[str]


def split_graph(graph: Graph, unsupported: set[Node]) -> list[Segment]:
    """Consecutive runs of supported / unsupported nodes as standalone graphs."""
    runs: list[tuple[str, list[Node]]] = []
    for node in graph.nodes:
        kind = "ort" if node in unsupported else "kernels"
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(node)
        else:
            runs.append((kind, [node]))
    segments: list[Segment] = []
    for index, (kind, nodes) in enumerate(runs):
        later: set[Value] = set(graph.outputs)
        for _, rest in runs[index + 1 :]:
            later.update(v for n in rest for v in n.inputs if v is not None)
        sub = extract_subgraph(graph, nodes, f"{graph.name or 'model'}_seg{index}", later)
        segments.append(Segment(kind, sub, [v.name for v in sub.inputs],
                                [v.name for v in sub.outputs]))
    return segments
