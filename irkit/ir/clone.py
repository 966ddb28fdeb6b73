"""Structural copies of graphs (weights arrays are shared: they are read-only)."""

from __future__ import annotations

from irkit.ir.attrs import Attr, AttrKind
from irkit.ir.graph import Graph, Node, Value


def clone_graph(graph: Graph, outer: Graph | None = None, mapping: dict | None = None) -> Graph:
    """Copy ``graph``; ``mapping`` (old Value -> new Value) resolves captured outer values."""
    mapping = {} if mapping is None else mapping
    new = Graph(graph.name, outer=outer, opset_imports=graph.opset_imports)
    new.meta = dict(graph.meta)
    new.history = list(graph.history)
    for value in graph.inputs:
        mapping[value] = new.add_input(value.name, value.type)
    for name, value in graph.constants.items():
        mapping[value] = new.add_constant(name, value.const, exact_name=True)
    for node in graph.nodes:
        attrs: dict[str, Attr] = {}
        for key, attr in node.attrs.items():
            if attr.kind is AttrKind.GRAPH:
                attrs[key] = Attr(attr.kind, clone_graph(attr.value, new, mapping))
            elif attr.kind is AttrKind.GRAPHS:
                attrs[key] = Attr(
                    attr.kind, tuple(clone_graph(g, new, mapping) for g in attr.value)
                )
            else:
                attrs[key] = attr
        inputs = [None if v is None else mapping.get(v, v) for v in node.inputs]
        copy = Node(
            node.op,
            inputs,
            attrs,
            domain=node.domain,
            outputs=[None if v.absent else v.name for v in node.outputs],
            types=[v.type for v in node.outputs],
            name=node.name,
        )
        new.append(copy)
        for old, fresh in zip(node.outputs, copy.outputs):
            mapping[old] = fresh
    new.set_outputs(mapping[v] for v in graph.outputs)
    return new


def remap(value: Value, mapping: dict) -> Value:
    return mapping.get(value, value)
