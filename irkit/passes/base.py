"""The pass protocol: a pass is a frozen dataclass whose fields are its options.

``Pass.run(graph)`` never mutates ``graph``: it clones it, lets the subclass rewrite the
copy in ``apply`` and returns ``PassResult(graph, modified, report)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from irkit.ir import Graph, Node, Value
from irkit.ir.types import TensorType

IRKIT_DOMAIN = "irkit"


@dataclass
class PassResult:
    """What one pass produced: the new graph, whether it changed, and a pass report."""

    graph: Graph
    modified: bool
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PassContext:
    """Data some passes need besides the graph: calibration batches (static quantize),
    the targets the graph will be compiled for (``irkit.target.Target`` objects; the
    quantize pass picks weight ranges for their int8 instructions), and a cost model
    (``cost.compare(candidates, feeds)``: seconds of each candidate graph on those
    targets) that lets a pass keep the faster form of a node. Passes that train or search
    (``distill``, ``search``) also read the training inputs and labels and the evaluation
    inputs and labels (input name -> array; labels an integer array)."""

    calibration: Sequence[Mapping[str, Any]] | None = None
    targets: tuple[Any, ...] = ()
    cost: Any = None
    train_data: Mapping[str, Any] | None = None
    train_labels: Any = None
    eval_data: Mapping[str, Any] | None = None
    eval_labels: Any = None


@dataclass(frozen=True)
class Pass:
    """Base class. Subclasses are frozen dataclasses; ``apply`` rewrites a private copy of
    the graph in place and returns (modified, report)."""

    name: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = False

    def run(self, graph: Graph, context: PassContext | None = None) -> PassResult:
        work = graph.clone()
        modified, report = self.apply(work, context or PassContext())
        return PassResult(work if modified else graph, modified, report)

    def apply(self, graph: Graph, context: PassContext) -> tuple[bool, dict[str, Any]]:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def describe(self) -> str:
        """The pipeline-text form of this pass: ``name{opt=value,...}`` (non-defaults)."""
        changed = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.default is not dataclasses.MISSING and value == f.default:
                continue
            if f.default_factory is not dataclasses.MISSING and value == f.default_factory():
                continue
            changed.append(f"{f.name}={_format_option(value)}")
        return f"{self.name}{{{','.join(changed)}}}" if changed else self.name


def _format_option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ",".join(_format_option(v) for v in value) + "]"
    return str(value)


CALIBRATE_DOC = (
    "calibration data, e.g. npz(\"calib.npz\", input = \"x\"); the pass reads batches from "
    "PassContext.calibration, which irkit.build fills from this reference"
)
"""Doc of the ``calibrate`` option that passes using data declare (a spec's npz(...))."""


# -- helpers shared by the rewriting passes ------------------------------------------------

def const_of(value: Value | None) -> np.ndarray | None:
    """The array behind a constant input, else None."""
    return None if value is None else value.const


def only_user(value: Value) -> Node | None:
    """The single node reading ``value`` when it is not also a graph output."""
    if value.is_graph_output or len(value.uses) != 1:
        return None
    return value.uses[0].node


def tensor_type(value: Value) -> TensorType | None:
    return value.type if isinstance(value.type, TensorType) else None


def with_shape(value: Value, shape: Sequence[Any]) -> TensorType:
    """``value``'s type with another shape (dtype kept)."""
    t = tensor_type(value)
    assert t is not None, f"%{value.name} has no tensor type"
    return TensorType(t.dtype, tuple(shape))


def use_irkit_domain(graph: Graph) -> None:
    graph.opset_imports.setdefault(IRKIT_DOMAIN, 1)


def drop_unused_constants(graph: Graph) -> int:
    """Remove constants nothing reads; returns how many went."""
    dead = [v for v in graph.constants.values() if not v.is_used]
    for value in dead:
        graph.remove_constant(value)
    return len(dead)


def rewrite_each(graph: Graph, wanted: Callable[[Node], bool],
                 rewrite: Callable[[Graph, Node], None]) -> tuple[Graph, int]:
    """``rewrite(copy, node)`` for every node ``wanted`` picks, on a copy of ``graph``
    (``graph`` itself, untouched, when none is); the graph and how many were rewritten."""
    if not any(wanted(n) for n in graph.nodes):
        return graph, 0
    graph = graph.clone()
    count = 0
    for node in list(graph.nodes):
        if wanted(node):
            rewrite(graph, node)
            count += 1
    drop_unused_constants(graph)
    return graph, count


def replace_outputs(graph: Graph, node: Node, outs: Sequence[Value | None]) -> None:
    """Redirect every used output of ``node`` to the value in ``outs`` at its position and
    remove ``node``; a graph output keeps its name (through an Identity)."""
    renames: list[tuple[int, str]] = []
    for old, new in zip(node.outputs, outs):
        if old.absent or not old.is_used:
            continue
        if new is None:
            raise AssertionError(f"{node.describe()}: no value for used %{old.name}")
        renames.extend((i, old.name) for i, v in enumerate(graph.outputs) if v is old)
        old.replace_all_uses_with(new)
    graph.remove_node(node)
    if renames:
        outputs = list(graph.outputs)
        for i, name in renames:
            outputs[i] = graph.add_node("Identity", [outputs[i]], outputs=[name]).output
        graph.set_outputs(outputs)


def remove_dead_nodes(graph: Graph) -> int:
    """Remove nodes whose outputs nobody reads (reverse topological sweep)."""
    removed = 0
    for node in reversed(graph.nodes):
        if not any(v.is_used for v in node.outputs) and not node.subgraphs():
            graph.remove_node(node)
            removed += 1
    return removed


def replace_node(node: Node, new_outputs: Sequence[Value]) -> None:
    """Redirect ``node``'s outputs to ``new_outputs`` and erase it."""
    graph = node.graph
    assert graph is not None
    for old, new in zip(node.outputs, new_outputs):
        old.replace_all_uses_with(new)
    graph.remove_node(node)


def take_name(graph: Graph, value: Value, name: str) -> None:
    """Give ``value`` the name of a value just erased (graph outputs keep their names)."""
    fresh = graph.unique_name(name)
    if fresh == name:
        value.name = name


def weight_bytes(graph: Graph) -> int:
    return int(sum(a.nbytes for a in graph.weights().values()))


def parameter_count(graph: Graph) -> int:
    return int(sum(a.size for a in graph.weights().values()))


def nonzero_count(graph: Graph) -> int:
    """Parameters that are not zero (what unstructured pruning lowers)."""
    return int(sum(np.count_nonzero(a) for a in graph.weights().values()))
