"""Graph analysis and drawing: networkx DiGraph and Graphviz DOT text."""

from __future__ import annotations

import json
from typing import Any

from irkit.ir.graph import Graph
from irkit.ir.printer import format_type


def to_networkx(graph: Graph) -> Any:
    """A DiGraph: one node per op node (``kind="op"``), input, constant and output;
    edges carry the value name and type."""
    import networkx as nx

    g = nx.DiGraph(name=graph.name)
    source: dict[int, str] = {}
    for value in graph.inputs:
        key = f"input:{value.name}"
        g.add_node(key, kind="input", label=value.name, type=format_type(value.type))
        source[id(value)] = key
    for name, value in graph.constants.items():
        key = f"const:{name}"
        g.add_node(key, kind="const", label=name, type=format_type(value.type))
        source[id(value)] = key
    for i, node in enumerate(graph.nodes):
        key = f"node:{i}"
        g.add_node(key, kind="op", label=node.qualified_op, op=node.op, domain=node.domain,
                   name=node.name)
        for arg in node.inputs:
            if arg is not None and id(arg) in source:
                g.add_edge(source[id(arg)], key, value=arg.name, type=format_type(arg.type))
        for value in node.outputs:
            source[id(value)] = key
    for value in graph.outputs:
        key = f"output:{value.name}"
        g.add_node(key, kind="output", label=value.name, type=format_type(value.type))
        if id(value) in source:
            g.add_edge(source[id(value)], key, value=value.name, type=format_type(value.type))
    return g


_SHAPES = {"input": "ellipse", "output": "ellipse", "const": "note", "op": "box"}


def to_dot(graph: Graph) -> str:
    """Graphviz DOT text for the graph (render with ``dot -Tsvg``)."""
    nxg = to_networkx(graph)
    lines = [f"digraph {json.dumps(graph.name)} {{", "  rankdir=TB;", "  node [fontsize=10];"]
    ids = {key: f"n{i}" for i, key in enumerate(nxg.nodes)}
    for key, data in nxg.nodes(data=True):
        # a real newline: json.dumps writes it as the \n escape Graphviz breaks lines at
        label = data["label"] if data["kind"] == "op" else f"{data['label']}\n{data['type']}"
        lines.append(
            f"  {ids[key]} [label={json.dumps(label, ensure_ascii=False)}, "
            f"shape={_SHAPES[data['kind']]}];"
        )
    for a, b, data in nxg.edges(data=True):
        lines.append(f"  {ids[a]} -> {ids[b]} [label={json.dumps(data['type'])}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
