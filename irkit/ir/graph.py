"""Values, nodes and graphs. Objects are compared by identity; use lists change only
through methods (``replace_all_uses_with``, ``set_input``, ``Graph.remove_node``…)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from irkit.ir.attrs import Attr
from irkit.ir.dtypes import DType
from irkit.ir.types import TensorType, UnknownType, ValueType

DEFAULT_OPSET = 17


@dataclass(frozen=True)
class Use:
    """Input ``index`` of ``node`` reads the value."""

    node: Node
    index: int


class Value:
    """An SSA value: a graph input, a constant (weights), or a node output."""

    __slots__ = ("_const", "_output_of", "_producer", "_uses", "absent", "index", "name", "type")

    def __init__(self, name: str, type: ValueType | None = None) -> None:
        self.name = name
        self.absent = False  # an omitted optional output (ONNX's empty output name)
        self.type: ValueType = type if type is not None else UnknownType()
        self._producer: Node | None = None
        self.index = 0  # output index within the producer
        self._uses: dict[Use, None] = {}
        self._output_of: list[Graph] = []
        self._const: np.ndarray | None = None

    # -- structure -----------------------------------------------------------------
    @property
    def producer(self) -> Node | None:
        return self._producer

    @property
    def uses(self) -> tuple[Use, ...]:
        return tuple(self._uses)

    @property
    def users(self) -> list[Node]:
        seen: dict[Node, None] = {}
        for use in self._uses:
            seen[use.node] = None
        return list(seen)

    @property
    def is_graph_output(self) -> bool:
        return bool(self._output_of)

    @property
    def is_used(self) -> bool:
        return bool(self._uses) or bool(self._output_of)

    @property
    def const(self) -> np.ndarray | None:
        """The weights of a constant value (read-only), else None."""
        return self._const

    @property
    def is_constant(self) -> bool:
        return self._const is not None

    @property
    def dtype(self) -> DType | None:
        return self.type.dtype if isinstance(self.type, TensorType) else None

    @property
    def shape(self) -> tuple[Any, ...] | None:
        return self.type.shape if isinstance(self.type, TensorType) else None

    def replace_all_uses_with(self, other: Value) -> None:
        """Make every node input and graph output that reads this value read ``other``."""
        if other is self:
            return
        for use in list(self._uses):
            use.node.set_input(use.index, other)
        for graph in list(self._output_of):
            graph.set_outputs([other if v is self else v for v in graph.outputs])

    def __repr__(self) -> str:
        return f"Value(%{self.name}: {self.type})"


class Node:
    """One op application. ``inputs`` may hold None for an omitted optional input."""

    __slots__ = ("_attrs", "_inputs", "_outputs", "domain", "graph", "name", "op")

    def __init__(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: Mapping[str, Any] | None = None,
        *,
        domain: str = "",
        outputs: int | Sequence[str | None] = 1,
        types: Sequence[ValueType | None] | None = None,
        name: str = "",
    ) -> None:
        """``outputs``: a count (names chosen on insertion) or names; None marks an
        omitted optional output."""
        self.op = op
        self.domain = "" if domain == "ai.onnx" else domain
        self.name = name
        self.graph: Graph | None = None
        self._attrs: dict[str, Attr] = {}
        for key, value in (attrs or {}).items():
            self._attrs[key] = Attr.infer(value)
        self._inputs: list[Value | None] = []
        for i, value in enumerate(inputs):
            self._inputs.append(value)
            if value is not None:
                value._uses[Use(self, i)] = None
        names: list[str | None] = [""] * outputs if isinstance(outputs, int) else list(outputs)
        types = list(types) if types is not None else [None] * len(names)
        if len(types) != len(names):
            raise ValueError(f"{op}: {len(names)} outputs but {len(types)} types")
        self._outputs: list[Value] = []
        for i, (out_name, out_type) in enumerate(zip(names, types)):
            value = Value(out_name or "", out_type)
            value.absent = out_name is None
            value._producer = self
            value.index = i
            self._outputs.append(value)

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[Value, ...]:
        return tuple(self._outputs)

    @property
    def output(self) -> Value:
        """The only output (error if the node has several)."""
        if len(self._outputs) != 1:
            raise ValueError(f"{self.describe()} has {len(self._outputs)} outputs, not 1")
        return self._outputs[0]

    @property
    def attrs(self) -> Mapping[str, Attr]:
        return MappingProxyType(self._attrs)

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}.{self.op}" if self.domain else self.op

    def attr(self, name: str, default: Any = None) -> Any:
        """The plain value of attribute ``name``, or ``default`` when absent."""
        found = self._attrs.get(name)
        return default if found is None else found.value

    def set_attr(self, name: str, value: Any) -> None:
        self._attrs[name] = Attr.infer(value)

    def remove_attr(self, name: str) -> None:
        self._attrs.pop(name, None)

    def set_input(self, index: int, value: Value | None) -> None:
        old = self._inputs[index]
        if old is not None:
            old._uses.pop(Use(self, index), None)
        self._inputs[index] = value
        if value is not None:
            value._uses[Use(self, index)] = None

    def append_input(self, value: Value | None) -> None:
        self._inputs.append(None)
        self.set_input(len(self._inputs) - 1, value)

    def drop_inputs(self) -> None:
        """Detach from every input (used when the node is erased)."""
        for i in range(len(self._inputs)):
            self.set_input(i, None)

    def subgraphs(self) -> list[Graph]:
        return [g for attr in self._attrs.values() for g in attr.graphs()]

    def describe(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        outs = ", ".join("_" if v.absent else f"%{v.name}" for v in self._outputs)
        return f"node {self.qualified_op}{label} ({outs})"

    def __repr__(self) -> str:
        return f"<{self.describe()}>"


class Graph:
    """A graph: inputs, constants, nodes in topological order, outputs.

    A subgraph (an If/Loop/Scan body) is created with ``outer=`` the enclosing graph; it
    shares the root's name space and may read values of enclosing graphs.
    """

    def __init__(
        self,
        name: str = "main",
        *,
        outer: Graph | None = None,
        opset_imports: Mapping[str, int] | None = None,
    ) -> None:
        self.name = name
        self.outer = outer
        self._names: set[str] = outer._names if outer is not None else set()
        self._inputs: list[Value] = []
        self._outputs: list[Value] = []
        self._nodes: list[Node] = []
        self._constants: dict[str, Value] = {}
        self.opset_imports: dict[str, int] = dict(opset_imports or {"": DEFAULT_OPSET})
        self.meta: dict[str, Any] = {}
        self.history: list[Any] = []
        self._counter = itertools.count()

    # -- read-only views -----------------------------------------------------------
    @property
    def inputs(self) -> tuple[Value, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[Value, ...]:
        return tuple(self._outputs)

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(self._nodes)

    @property
    def constants(self) -> Mapping[str, Value]:
        return MappingProxyType(self._constants)

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self._nodes))

    # -- names ---------------------------------------------------------------------
    def unique_name(self, hint: str = "v") -> str:
        """A value name not yet used anywhere in this graph's name space."""
        hint = hint or "v"
        if hint not in self._names:
            self._names.add(hint)
            return hint
        while True:
            candidate = f"{hint}_{next(self._counter)}"
            if candidate not in self._names:
                self._names.add(candidate)
                return candidate

    def _claim(self, value: Value, hint: str) -> None:
        value.name = self.unique_name(value.name or hint)

    # -- building --------------------------------------------------------------------
    def add_input(self, name: str, type: ValueType | None = None) -> Value:
        value = Value("", type)
        value.name = self._reserve(name)
        self._inputs.append(value)
        return value

    def add_constant(self, name: str, array: Any, *, exact_name: bool = False) -> Value:
        """Add weights as a constant value (the array is kept read-only)."""
        arr = np.asarray(array)
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        arr = arr.view()
        arr.flags.writeable = False
        dtype = DType.from_numpy(arr.dtype)
        value = Value("", TensorType(dtype, arr.shape))
        value._const = arr
        value.name = self._reserve(name) if exact_name else self.unique_name(name or "const")
        self._constants[value.name] = value
        return value

    def _reserve(self, name: str) -> str:
        if not name:
            return self.unique_name("v")
        if name in self._names:
            raise ValueError(f"graph {self.name!r}: value name %{name} is already defined")
        self._names.add(name)
        return name

    def add_node(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: Mapping[str, Any] | None = None,
        *,
        domain: str = "",
        outputs: int | Sequence[str | None] = 1,
        types: Sequence[ValueType | None] | None = None,
        name: str = "",
        before: Node | None = None,
        after: Node | None = None,
    ) -> Node:
        """Create a node and insert it (at the end, or before/after an anchor node)."""
        node = Node(op, inputs, attrs, domain=domain, outputs=outputs, types=types, name=name)
        if before is not None:
            self.insert_before(before, node)
        elif after is not None:
            self.insert_after(after, node)
        else:
            self.append(node)
        return node

    def _adopt(self, node: Node) -> None:
        if node.graph is not None:
            raise ValueError(f"{node.describe()} already belongs to graph {node.graph.name!r}")
        node.graph = self
        for value in node.outputs:
            if not value.absent:
                self._claim(value, node.op.lower())

    def append(self, node: Node) -> Node:
        self._adopt(node)
        self._nodes.append(node)
        return node

    def insert_before(self, anchor: Node, node: Node) -> Node:
        index = self._index_of(anchor)
        self._adopt(node)
        self._nodes.insert(index, node)
        return node

    def insert_after(self, anchor: Node, node: Node) -> Node:
        index = self._index_of(anchor)
        self._adopt(node)
        self._nodes.insert(index + 1, node)
        return node

    def _index_of(self, node: Node) -> int:
        for i, candidate in enumerate(self._nodes):
            if candidate is node:
                return i
        raise ValueError(f"{node.describe()} is not in graph {self.name!r}")

    def remove_node(self, node: Node) -> None:
        """Erase a node whose outputs are no longer used."""
        for value in node.outputs:
            if value.is_used:
                users = ", ".join(u.describe() for u in value.users) or "a graph output"
                raise ValueError(
                    f"cannot remove {node.describe()}: its output %{value.name} is still "
                    f"used by {users}"
                )
        self._nodes.pop(self._index_of(node))
        node.drop_inputs()
        node.graph = None
        for value in node.outputs:
            self._names.discard(value.name)

    def remove_constant(self, value: Value) -> None:
        if value.is_used:
            raise ValueError(f"cannot remove constant @{value.name}: it is still used")
        self._constants.pop(value.name, None)
        self._names.discard(value.name)

    def remove_input(self, value: Value) -> None:
        if value.is_used:
            raise ValueError(f"cannot remove input %{value.name}: it is still used")
        self._inputs = [v for v in self._inputs if v is not value]
        self._names.discard(value.name)

    def set_outputs(self, values: Iterable[Value]) -> None:
        for old in self._outputs:
            old._output_of = [g for g in old._output_of if g is not self]
        self._outputs = list(values)
        for value in self._outputs:
            value._output_of.append(self)

    def reorder(self, nodes: Sequence[Node]) -> None:
        """Replace the node order with a permutation of the same nodes."""
        if len(nodes) != len(self._nodes) or {id(n) for n in nodes} != {
            id(n) for n in self._nodes
        }:
            raise ValueError("reorder() needs a permutation of the graph's own nodes")
        self._nodes = list(nodes)

    # -- traversal -------------------------------------------------------------------
    def walk(self) -> Iterator[Node]:
        """Every node, recursing into subgraphs (parents before their bodies)."""
        for node in list(self._nodes):
            yield node
            for sub in node.subgraphs():
                yield from sub.walk()

    def values(self) -> Iterator[Value]:
        """Inputs, constants and node outputs of this graph (not of subgraphs)."""
        yield from self._inputs
        yield from self._constants.values()
        for node in self._nodes:
            yield from node.outputs

    def find_value(self, name: str) -> Value | None:
        for value in self.values():
            if value.name == name:
                return value
        return self.outer.find_value(name) if self.outer is not None else None

    # -- conveniences delegating to other modules ---------------------------------------
    def to_text(self) -> str:
        from irkit.ir.printer import print_graph

        return print_graph(self)

    def to_networkx(self) -> Any:
        from irkit.ir.drawing import to_networkx

        return to_networkx(self)

    def to_dot(self) -> str:
        from irkit.ir.drawing import to_dot

        return to_dot(self)

    def verify(self) -> None:
        from irkit.ir.verifier import verify

        verify(self)

    def clone(self) -> Graph:
        """A structural copy (weights arrays are shared; they are read-only)."""
        from irkit.ir.clone import clone_graph

        return clone_graph(self)

    def weights(self) -> dict[str, np.ndarray]:
        """Every constant's array by name, subgraphs included."""
        out: dict[str, np.ndarray] = {}
        stack = [self]
        while stack:
            g = stack.pop()
            for name, value in g._constants.items():
                assert value._const is not None
                out[name] = value._const
            for node in g._nodes:
                stack.extend(node.subgraphs())
        return out

    def __repr__(self) -> str:
        return f"<Graph {self.name!r}: {len(self._inputs)} inputs, {len(self._nodes)} nodes>"

