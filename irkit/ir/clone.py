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
        attrs = clone_attrs(node, new, mapping)
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


def clone_attrs(node: Node, outer: Graph, mapping: dict) -> dict[str, Attr]:
    """``node``'s attributes, its body graphs copied as children of ``outer``."""
    attrs: dict[str, Attr] = {}
    for key, attr in node.attrs.items():
        if attr.kind is AttrKind.GRAPH:
            attrs[key] = Attr(attr.kind, clone_graph(attr.value, outer, mapping))
        elif attr.kind is AttrKind.GRAPHS:
            attrs[key] = Attr(attr.kind, tuple(clone_graph(g, outer, mapping)
                                               for g in attr.value))
        else:
            attrs[key] = attr
    return attrs


def remap(value: Value, mapping: dict) -> Value:
    return mapping.get(value, value)


def extract_subgraph(graph: Graph, nodes: list[Node], name: str, later: set[Value] | None = None
                     ) -> Graph:
    """``nodes`` (in order) of ``graph`` as a standalone graph: the values they read from
    elsewhere become its inputs (constants are copied), and the values they produce that
    ``later`` holds (default: all of them) its outputs."""
    sub = Graph(name, opset_imports=graph.opset_imports)
    produced = {v: None for n in nodes for v in n.outputs}  # ordered: outputs keep it
    mapping: dict[Value, Value] = {}
    for node in nodes:
        for value in node.inputs:
            if value is None or value in produced or value in mapping:
                continue
            if value.const is not None:
                mapping[value] = sub.add_constant(value.name, value.const, exact_name=True)
            else:
                mapping[value] = sub.add_input(value.name, value.type)
    for node in nodes:
        new = sub.add_node(
            node.op,
            [None if v is None else mapping[v] for v in node.inputs],
            dict(node.attrs),
            domain=node.domain,
            outputs=[None if o.absent else o.name for o in node.outputs],
            types=[o.type for o in node.outputs],
            name=node.name,
        )
        for old, value in zip(node.outputs, new.outputs):
            mapping[old] = value
    sub.set_outputs([mapping[v] for v in produced
                     if (later is None or v in later) and not v.absent])
    return sub
