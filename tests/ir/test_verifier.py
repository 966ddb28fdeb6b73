"""The verifier rejects broken graphs with a message naming the node and value at fault.

Each case builds a valid graph through the API, checks that it verifies, then breaks one
invariant (some through the public API, some by corrupting internals on purpose, as a
buggy pass would) and checks the exact problem reported.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from irkit.errors import IrkitError, VerificationError
from irkit.ir import DType, Graph, Node, TensorType, Use, verify

F32_2 = TensorType(DType.FLOAT32, (2,))


def chain() -> tuple[Graph, Node, Node]:
    """x -> Relu 'r1' (%a) -> Neg 'r2' (%b) -> output, plus constant @w."""
    g = Graph("main")
    x = g.add_input("x", F32_2)
    w = g.add_constant("w", np.ones(2, np.float32))
    r1 = g.add_node("Relu", [x], outputs=["a"], types=[F32_2], name="r1")
    r2 = g.add_node("Add", [r1.output, w], outputs=["b"], types=[F32_2], name="r2")
    g.set_outputs([r2.output])
    verify(g)
    return g, r1, r2


def with_if() -> tuple[Graph, Node, Graph]:
    """An If whose then-branch reads outer %a; returns (graph, if node, then branch)."""
    g = Graph("main")
    cond = g.add_input("cond", TensorType(DType.BOOL, ()))
    x = g.add_input("x", F32_2)
    a = g.add_node("Relu", [x], outputs=["a"], types=[F32_2], name="relu").output
    then_g = Graph("then", outer=g)
    t = then_g.add_node("Neg", [a], outputs=["t"], types=[F32_2], name="neg")
    then_g.set_outputs([t.output])
    else_g = Graph("else", outer=g)
    e = else_g.add_node("Identity", [x], outputs=["e"], types=[F32_2], name="ident")
    else_g.set_outputs([e.output])
    node = g.add_node("If", [cond], {"then_branch": then_g, "else_branch": else_g},
                      outputs=["out"], types=[F32_2], name="branch")
    g.set_outputs([node.output, a])
    verify(g)
    return g, node, then_g


def use_before_definition() -> Graph:
    g, r1, r2 = chain()
    g.reorder([r2, r1])
    return g


def duplicate_value_name() -> Graph:
    g, r1, _ = chain()
    r1.output.name = "x"  # corrupt: the name space no longer guards this
    return g


def stale_use() -> Graph:
    g, r1, r2 = chain()
    r1.output._uses[Use(r2, 1)] = None  # r2's input 1 is @w, not %a
    return g


def output_not_defined() -> Graph:
    g, _, _ = chain()
    other = Graph("other")
    stray = other.add_input("stray", F32_2)
    g.set_outputs([stray])
    return g


def subgraph_with_wrong_outer() -> Graph:
    g, _node, then_g = with_if()
    then_g.outer = Graph("elsewhere")
    return g


def constant_disagrees_with_type() -> Graph:
    g, _, _ = chain()
    g.constants["w"].type = TensorType(DType.FLOAT32, (3,))
    return g


def constant_dtype_disagrees() -> Graph:
    g, _, _ = chain()
    g.constants["w"].type = TensorType(DType.INT64, (2,))
    return g


def input_from_node_in_no_graph() -> Graph:
    g, _, r2 = chain()
    orphan = Node("Abs", [g.inputs[0]], outputs=["orphan"], types=[F32_2], name="lost")
    r2.set_input(0, orphan.output)
    return g


def reads_omitted_output() -> Graph:
    g = Graph("main")
    x = g.add_input("x", TensorType(DType.FLOAT32, (4,)))
    split = g.add_node("Split", [x], {"num_outputs": 2}, outputs=["lo", None],
                       types=[F32_2, F32_2], name="split")
    neg = g.add_node("Neg", [split.outputs[1]], outputs=["n"], types=[F32_2], name="neg")
    g.set_outputs([neg.output])
    return g


def use_not_recorded() -> Graph:
    g, r1, r2 = chain()
    r1.output._uses.pop(Use(r2, 0))
    return g


def node_does_not_record_graph() -> Graph:
    g, r1, _ = chain()
    r1.graph = None
    return g


def empty_op_name() -> Graph:
    g, r1, _ = chain()
    r1.op = ""
    return g


def output_index_wrong() -> Graph:
    g, r1, _ = chain()
    r1.output.index = 3
    return g


def dangling_user_in_no_graph() -> Graph:
    g, r1, _ = chain()
    Node("Sigmoid", [r1.output], outputs=["s"], name="dangling")  # never inserted
    return g


def outer_reads_subgraph_value() -> Graph:
    g, _node, then_g = with_if()
    inner = then_g.nodes[0].output
    g.add_node("Abs", [inner], outputs=["leak"], types=[F32_2], name="leaky")
    return g


def subgraph_reads_later_outer_value() -> Graph:
    g, _node, then_g = with_if()
    late = g.add_node("Sqrt", [g.inputs[1]], outputs=["late"], types=[F32_2], name="late")
    then_g.nodes[0].set_input(0, late.output)
    return g


def input_with_producer() -> Graph:
    g, r1, _ = chain()
    g.inputs[0]._producer = r1
    return g


def constant_registered_under_other_name() -> Graph:
    g, _, _ = chain()
    g.constants["w"].name = "w_renamed"
    return g


def constant_without_data() -> Graph:
    g, _, _ = chain()
    g.constants["w"]._const = None
    return g


def output_use_not_recorded() -> Graph:
    g, r1, _ = chain()
    g._outputs.append(r1.output)  # bypasses set_outputs
    return g


def unnamed_value() -> Graph:
    g, r1, _ = chain()
    r1.output.name = ""
    return g


def sibling_subgraph_read() -> Graph:
    g, node, then_g = with_if()
    else_g = node.attr("else_branch")
    else_g.nodes[0].set_input(0, then_g.nodes[0].output)
    return g


def duplicate_name_across_subgraphs() -> Graph:
    g, node, _then_g = with_if()
    node.attr("else_branch").nodes[0].output.name = "t"
    return g


CASES: list[tuple[Callable[[], Graph], list[str]]] = [
    (use_before_definition,
     ["graph 'main', node Add 'r2' (%b): input 0 %a is used before it is defined"]),
    (duplicate_value_name, ["graph 'main': value name %x is defined twice"]),
    (stale_use, ["node Relu 'r1' (%a): output %a lists a stale use by node Add 'r2' (%b)"]),
    (output_not_defined,
     ["graph 'main': output 0 (%stray) is not defined in this graph or an enclosing one"]),
    (subgraph_with_wrong_outer,
     ["node If 'branch' (%out): subgraph 'then' does not name graph 'main' as its "
      "enclosing graph"]),
    (constant_disagrees_with_type,
     ["graph 'main': constant @w is typed f32[3] but holds float32[2]"]),
    (constant_dtype_disagrees, ["constant @w is typed i64[2] but holds float32[2]"]),
    (input_from_node_in_no_graph,
     ["graph 'main', node Add 'r2' (%b): input 0 %orphan is not defined in scope"]),
    (reads_omitted_output,
     ["graph 'main', node Neg 'neg' (%n): input 0 reads an omitted output of "
      "<node Split 'split'"]),
    (use_not_recorded,
     ["graph 'main', node Add 'r2' (%b): input 0 %a does not record this use"]),
    (node_does_not_record_graph,
     ["graph 'main', node Relu 'r1' (%a): the node does not record its graph"]),
    (empty_op_name, ["graph 'main', node  'r1' (%a): empty op name"]),
    (output_index_wrong, ["node Relu 'r1' (%a): output 0 %a does not name this node"]),
    (dangling_user_in_no_graph,
     ["node Relu 'r1' (%a): output %a is used by node Sigmoid 'dangling' (%s), "
      "which is in no graph"]),
    (outer_reads_subgraph_value,
     ["graph 'main', node Abs 'leaky' (%leak): input 0 %t is not defined in scope"]),
    (subgraph_reads_later_outer_value,
     ["graph 'then', node Neg 'neg' (%t): input 0 %late is not defined in scope"]),
    (input_with_producer, ["graph 'main': input %x also has a producer"]),
    (constant_registered_under_other_name,
     ["graph 'main': constant @w_renamed is registered as 'w'"]),
    (constant_without_data, ["graph 'main': constant @w has no data"]),
    (output_use_not_recorded, ["graph 'main': output %a does not record its use"]),
    (unnamed_value, ["graph 'main': a value has no name"]),
    (sibling_subgraph_read,
     ["graph 'else', node Identity 'ident' (%e): input 0 %t is not defined in scope"]),
    (duplicate_name_across_subgraphs, ["graph 'else': value name %t is defined twice"]),
]


def test_case_count() -> None:
    assert len(CASES) == 23


@pytest.mark.parametrize(("build", "expected"), CASES, ids=[c[0].__name__ for c in CASES])
def test_verify_rejects(build: Callable[[], Graph], expected: list[str]) -> None:
    graph = build()
    with pytest.raises(VerificationError) as info:
        verify(graph)
    message = str(info.value)
    assert isinstance(info.value, IrkitError)
    assert message.startswith(f"graph {graph.name!r} is invalid (")
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_all_problems_are_listed_together() -> None:
    g, r1, r2 = chain()
    g.reorder([r2, r1])
    g.constants["w"]._const = None
    with pytest.raises(VerificationError) as info:
        g.verify()
    lines = str(info.value).splitlines()
    assert lines[0] == "graph 'main' is invalid (2 problems):"
    assert len(lines) == 3
    assert "constant @w has no data" in lines[1]
    assert "input 0 %a is used before it is defined" in lines[2]


def test_valid_graphs_pass() -> None:
    for build in (chain, with_if):
        graph = build()[0]
        verify(graph)
        verify(graph.clone())
