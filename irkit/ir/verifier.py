"""Graph invariants. ``verify(g)`` raises one VerificationError listing every problem,
each naming the node and value at fault."""

from __future__ import annotations

from irkit.errors import VerificationError
from irkit.ir.dtypes import DType
from irkit.ir.graph import Graph, Node, Use, Value
from irkit.ir.types import TensorType


def verify(graph: Graph) -> None:
    problems: list[str] = []
    _verify_graph(graph, visible=set(), names={}, problems=problems)
    if problems:
        head = f"graph {graph.name!r} is invalid ({len(problems)} problem"
        head += "s):" if len(problems) > 1 else "):"
        raise VerificationError("\n  ".join([head, *problems]))


def _where(graph: Graph) -> str:
    return f"graph {graph.name!r}"


def _define(value: Value, graph: Graph, names: dict[str, Value], problems: list[str]) -> None:
    if value.absent:
        return
    if not value.name:
        problems.append(f"{_where(graph)}: a value has no name ({value!r})")
        return
    other = names.get(value.name)
    if other is not None and other is not value:
        problems.append(f"{_where(graph)}: value name %{value.name} is defined twice")
    names[value.name] = value


def _verify_graph(
    graph: Graph, visible: set[int], names: dict[str, Value], problems: list[str]
) -> None:
    scope = set(visible)
    for value in graph.inputs:
        if value.producer is not None:
            problems.append(f"{_where(graph)}: input %{value.name} also has a producer")
        _define(value, graph, names, problems)
        scope.add(id(value))
    for name, value in graph.constants.items():
        if value.const is None:
            problems.append(f"{_where(graph)}: constant @{name} has no data")
        elif isinstance(value.type, TensorType):
            array = value.const
            if value.type.shape != tuple(array.shape) or (
                DType.from_numpy(array.dtype) is not value.type.dtype
            ):
                problems.append(
                    f"{_where(graph)}: constant @{name} is typed {value.type} but holds "
                    f"{array.dtype}{list(array.shape)}"
                )
        if name != value.name:
            problems.append(f"{_where(graph)}: constant @{value.name} is registered as {name!r}")
        _define(value, graph, names, problems)
        scope.add(id(value))
    for node in graph.nodes:
        _verify_node(node, graph, scope, names, problems)
        for sub in node.subgraphs():
            if sub.outer is not graph:
                problems.append(
                    f"{node.describe()}: subgraph {sub.name!r} does not name {_where(graph)} "
                    "as its enclosing graph"
                )
            _verify_graph(sub, scope, names, problems)
        for value in node.outputs:
            _define(value, graph, names, problems)
            scope.add(id(value))
    for i, value in enumerate(graph.outputs):
        if id(value) not in scope:
            problems.append(
                f"{_where(graph)}: output {i} (%{value.name}) is not defined in this graph "
                "or an enclosing one"
            )
        if graph not in value._output_of:
            problems.append(f"{_where(graph)}: output %{value.name} does not record its use")


def _verify_node(
    node: Node, graph: Graph, scope: set[int], names: dict[str, Value], problems: list[str]
) -> None:
    where = f"{_where(graph)}, {node.describe()}"
    if node.graph is not graph:
        problems.append(f"{where}: the node does not record its graph")
    if not node.op:
        problems.append(f"{where}: empty op name")
    for i, value in enumerate(node.inputs):
        if value is None:
            continue
        if value.absent:
            problems.append(f"{where}: input {i} reads an omitted output of {value.producer!r}")
        if id(value) not in scope:
            producer = value.producer
            later = producer is not None and producer.graph is graph
            reason = "is used before it is defined" if later else "is not defined in scope"
            problems.append(f"{where}: input {i} %{value.name} {reason}")
        if Use(node, i) not in value._uses:
            problems.append(f"{where}: input {i} %{value.name} does not record this use")
    for i, value in enumerate(node.outputs):
        if value.producer is not node or value.index != i:
            problems.append(f"{where}: output {i} %{value.name} does not name this node")
        for use in value._uses:
            user = use.node
            if use.index >= len(user.inputs) or user.inputs[use.index] is not value:
                problems.append(
                    f"{where}: output %{value.name} lists a stale use by {user.describe()}"
                )
            elif user.graph is None:
                problems.append(
                    f"{where}: output %{value.name} is used by {user.describe()}, "
                    "which is in no graph"
                )
