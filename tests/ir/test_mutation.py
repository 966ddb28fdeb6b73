"""The mutation API keeps use lists right; direct edits of structure raise."""

from __future__ import annotations

import numpy as np
import pytest

from irkit.ir import Attr, AttrKind, DType, Graph, Node, TensorType, Use, print_graph, verify

F32_2 = TensorType(DType.FLOAT32, (2,))


def graph_with_capture() -> tuple[Graph, dict[str, object]]:
    """%a is read by a node, by an If's then-branch (a capture) and is a graph output."""
    g = Graph("main")
    cond = g.add_input("cond", TensorType(DType.BOOL, ()))
    x = g.add_input("x", F32_2)
    a = g.add_node("Relu", [x], outputs=["a"], types=[F32_2], name="relu").output
    b = g.add_node("Neg", [x], outputs=["b"], types=[F32_2], name="neg").output
    user = g.add_node("Abs", [a], outputs=["c"], types=[F32_2], name="abs")
    then_g = Graph("then", outer=g)
    captured = then_g.add_node("Sqrt", [a], outputs=["t"], types=[F32_2], name="sqrt")
    then_g.set_outputs([captured.output])
    else_g = Graph("else", outer=g)
    else_g.set_outputs([x])
    if_node = g.add_node("If", [cond], {"then_branch": then_g, "else_branch": else_g},
                         outputs=["out"], types=[F32_2], name="if")
    g.set_outputs([if_node.output, a, user.output])
    verify(g)
    return g, {"x": x, "a": a, "b": b, "user": user, "captured": captured, "then": then_g}


def test_structure_cannot_be_assigned() -> None:
    g, parts = graph_with_capture()
    node = parts["user"]
    with pytest.raises(AttributeError):
        node.inputs = (parts["b"],)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        node.outputs = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        g.nodes = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        g.outputs = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        parts["a"].producer = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        node.inputs[0] = parts["b"]  # type: ignore[index]
    with pytest.raises(TypeError):
        node.attrs["extra"] = Attr.infer(1)  # type: ignore[index]
    assert node.inputs == (parts["a"],)


def test_replace_all_uses_with_updates_nodes_outputs_and_captures() -> None:
    g, parts = graph_with_capture()
    a, b = parts["a"], parts["b"]
    a.replace_all_uses_with(b)
    assert parts["user"].inputs == (b,)
    assert parts["captured"].inputs == (b,)
    assert g.outputs[1] is b
    assert not a.is_used and a.uses == ()
    assert {u.node.name for u in b.uses} == {"abs", "sqrt"}
    assert Use(parts["captured"], 0) in b.uses
    assert b.is_graph_output and not a.is_graph_output
    verify(g)
    assert "%t = Sqrt(%b)" in print_graph(g)


def test_replace_all_uses_with_updates_subgraph_outputs() -> None:
    g, parts = graph_with_capture()
    x = parts["x"]
    else_g = g.nodes[-1].attr("else_branch")
    assert else_g.outputs == (x,)
    fresh = g.add_input("fresh", F32_2)
    x.replace_all_uses_with(fresh)
    assert else_g.outputs == (fresh,)
    assert parts["b"].producer.inputs == (fresh,)
    assert not x.is_used
    verify(g)


def test_replace_all_uses_with_itself_is_a_no_op() -> None:
    g, parts = graph_with_capture()
    a = parts["a"]
    before = a.uses
    a.replace_all_uses_with(a)
    assert a.uses == before and g.outputs[1] is a


def test_remove_node_refuses_while_outputs_are_used() -> None:
    g, parts = graph_with_capture()
    relu = parts["a"].producer
    with pytest.raises(ValueError, match=r"cannot remove node Relu 'relu' \(%a\): its output "
                                         r"%a is still used by node Abs 'abs' \(%c\), "
                                         r"node Sqrt 'sqrt' \(%t\)"):
        g.remove_node(relu)
    assert relu in g.nodes
    parts["user"].set_input(0, parts["x"])
    parts["captured"].set_input(0, parts["x"])
    with pytest.raises(ValueError, match="still used by a graph output"):
        g.remove_node(relu)
    g.set_outputs([g.outputs[0], parts["user"].output])
    g.remove_node(relu)
    assert relu not in g.nodes and relu.graph is None
    assert parts["x"].uses and all(u.node is not relu for u in parts["x"].uses)
    verify(g)
    # the name is free again
    assert g.add_input("a", F32_2).name == "a"


def test_remove_constant_and_input_refuse_while_used() -> None:
    g = Graph("main")
    x = g.add_input("x", F32_2)
    w = g.add_constant("w", np.zeros(2, np.float32))
    add = g.add_node("Add", [x, w], outputs=["y"], types=[F32_2])
    g.set_outputs([add.output])
    with pytest.raises(ValueError, match="cannot remove constant @w: it is still used"):
        g.remove_constant(w)
    with pytest.raises(ValueError, match="cannot remove input %x: it is still used"):
        g.remove_input(x)
    add.set_input(1, x)
    g.remove_constant(w)
    assert "w" not in g.constants
    verify(g)


def test_insertion_order_and_naming() -> None:
    g = Graph("main")
    x = g.add_input("x", F32_2)
    last = g.add_node("Neg", [x], outputs=["y"], types=[F32_2])
    first = g.add_node("Relu", [x], before=last)
    middle = g.add_node("Abs", [first.output], after=first)
    assert g.nodes == (first, middle, last)
    assert first.output.name == "relu" and middle.output.name == "abs"
    again = g.add_node("Relu", [x])
    assert again.output.name.startswith("relu_")
    with pytest.raises(ValueError, match=r"value name %x is already defined"):
        g.add_input("x")
    with pytest.raises(ValueError, match="already belongs to graph 'main'"):
        g.append(first)
    with pytest.raises(ValueError, match="is not in graph 'main'"):
        g.insert_before(Node("Abs", [x]), Node("Neg", [x]))
    with pytest.raises(ValueError, match="permutation"):
        g.reorder([first, middle])


def test_subgraph_shares_the_root_name_space() -> None:
    g = Graph("main")
    g.add_input("x", F32_2)
    body = Graph("body", outer=g)
    with pytest.raises(ValueError, match="%x is already defined"):
        body.add_input("x", F32_2)
    assert body.unique_name("x") != "x"


def test_set_input_moves_the_use() -> None:
    g = Graph("main")
    x = g.add_input("x", F32_2)
    y = g.add_input("y", F32_2)
    node = g.add_node("Add", [x, x])
    assert x.uses == (Use(node, 0), Use(node, 1)) and x.users == [node]
    node.set_input(1, y)
    assert x.uses == (Use(node, 0),) and y.uses == (Use(node, 1),)
    node.set_input(0, None)
    assert x.uses == () and node.inputs == (None, y)
    node.append_input(x)
    assert x.uses == (Use(node, 2),)
    node.drop_inputs()
    assert not x.uses and not y.uses


def test_constants_are_read_only_and_clones_are_independent() -> None:
    g = Graph("main")
    x = g.add_input("x", F32_2)
    source = np.array([1.0, 2.0], np.float32)
    w = g.add_constant("w", source)
    node = g.add_node("Add", [x, w], {"alpha": 0.5})
    g.set_outputs([node.output])
    with pytest.raises(ValueError, match="read-only"):
        w.const[0] = 5.0
    copy = g.clone()
    copy.nodes[0].set_attr("alpha", 2.0)
    copy.nodes[0].set_input(1, copy.inputs[0])
    assert node.attr("alpha") == 0.5 and node.inputs[1] is w
    assert w.is_used and not copy.constants["w"].is_used
    assert copy.constants["w"].const is w.const or np.shares_memory(copy.constants["w"].const,
                                                                    w.const)


def test_attrs_and_multi_output_access() -> None:
    g = Graph("main")
    x = g.add_input("x", TensorType(DType.FLOAT32, (4,)))
    split = g.add_node("Split", [x], {"num_outputs": 2, "ratio": 0.5, "mode": "even"},
                       outputs=2)
    assert split.attrs["num_outputs"].kind is AttrKind.INT
    assert split.attrs["ratio"].kind is AttrKind.FLOAT
    assert split.attrs["mode"].kind is AttrKind.STRING
    with pytest.raises(ValueError, match="has 2 outputs, not 1"):
        _ = split.output
    with pytest.raises(ValueError, match="empty list attribute"):
        Attr.infer([])
    assert Attr.infer([1, 2.5]).kind is AttrKind.FLOATS
    assert Attr.infer([True, 2]).value == (1, 2)
    split.remove_attr("mode")
    assert split.attr("mode", "default") == "default"
