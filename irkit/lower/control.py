"""Graph surgery for run-time control flow: ``Loop``/``If`` bodies as standalone graphs.

A ``Loop`` whose trip count or condition is only known at run time, an ``If`` whose
condition is, and sequence/optional ops are not unrolled (:mod:`.unroll` handles the
compile-time cases) but run by the runtime between compiled segments
(:mod:`irkit.runtime.control`). This module prepares what gets compiled: each body or
branch as a graph of its own whose inputs are its formal inputs followed by the outer
values it reads, typed by ONNX shape inference — loop-carried values with the types they
have on entry, and a symbolic dim wherever an iteration changes a dim.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from irkit.ir import (
    Graph,
    Node,
    OptionalType,
    SequenceType,
    TensorType,
    UnknownType,
    Value,
    ValueType,
)
from irkit.ir.attrs import AttrKind
from irkit.ir.clone import clone_attrs
from irkit.lower.tensor import LoweringError

LOOP_OPS = ("Loop", "If")
SEQUENCE_OPS = ("SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceAt",
                "SequenceErase", "SequenceLength", "SplitToSequence", "ConcatFromSequence",
                "Optional", "OptionalHasElement", "OptionalGetElement")
MAX_FIXPOINT = 4  # rounds of widening loop-carried shapes to symbols


def is_host_node(node: Node) -> bool:
    """Whether the runtime runs ``node`` between compiled segments."""
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op in LOOP_OPS or node.op in SEQUENCE_OPS:
        return True
    # an Identity of a sequence or optional (an Identity of a not-yet-typed tensor is not)
    return node.op == "Identity" and bool(node.inputs) and node.inputs[0] is not None and \
        isinstance(node.inputs[0].type, (SequenceType, OptionalType))


def subgraphs(node: Node) -> Iterator[Graph]:
    for attr in node.attrs.values():
        if attr.kind is AttrKind.GRAPH:
            yield attr.value
        elif attr.kind is AttrKind.GRAPHS:
            yield from attr.value


def free_values(graph: Graph) -> list[Value]:
    """The values ``graph``'s nodes (nested bodies included) read from enclosing graphs."""
    defined: set[Value] = set(graph.inputs) | set(graph.constants.values())
    found: dict[Value, None] = {}
    for node in graph.nodes:
        for value in node.inputs:
            if value is not None and value not in defined:
                found[value] = None
        for sub in subgraphs(node):
            for value in free_values(sub):
                if value not in defined:
                    found[value] = None
        defined.update(node.outputs)
    for value in graph.outputs:
        if value not in defined:
            found[value] = None
    return list(found)


def node_free_values(node: Node) -> list[Value]:
    """What ``node``'s bodies read from outside them."""
    return [v for sub in subgraphs(node) for v in free_values(sub)]


def standalone(body: Graph, name: str, types: Sequence[ValueType] | None = None
               ) -> tuple[Graph, list[str]]:
    """``body`` as a graph of its own: its formal inputs (typed ``types`` where given),
    then one input per non-constant outer value it reads (their names, returned);
    outer constants are copied in."""
    graph = Graph(name, opset_imports=body.opset_imports)
    mapping: dict[Value, Value] = {}
    for k, value in enumerate(body.inputs):
        mapping[value] = graph.add_input(value.name, types[k] if types else value.type)
    captured: list[str] = []
    for value in free_values(body):
        if value.const is not None:
            mapping[value] = graph.add_constant(value.name, value.const, exact_name=True)
        else:
            mapping[value] = graph.add_input(value.name, value.type)
            captured.append(value.name)
    for cname, value in body.constants.items():
        mapping[value] = graph.add_constant(cname, value.const, exact_name=True)
    for node in body.nodes:
        copy = graph.add_node(
            node.op, [None if v is None else mapping[v] for v in node.inputs],
            clone_attrs(node, graph, mapping),
            domain=node.domain, outputs=[None if o.absent else o.name for o in node.outputs],
            types=[None for _ in node.outputs], name=node.name)  # inference types them
        for old, new in zip(node.outputs, copy.outputs):
            mapping[old] = new
    graph.set_outputs([mapping[v] for v in body.outputs])
    return graph, captured


def retype(graph: Graph) -> Graph:
    """``graph`` typed again by ONNX shape inference (sequence and optional values too)."""
    import onnx.shape_inference

    from irkit.interop.onnx_export import to_onnx
    from irkit.interop.onnx_import import load_onnx

    try:
        model = onnx.shape_inference.infer_shapes(to_onnx(graph, check=False),
                                                  strict_mode=True, data_prop=True)
        inferred = {v.name: v.type for v in model.graph.value_info}
        for output in model.graph.output:  # inference leaves graph outputs as declared
            if output.name in inferred:
                output.type.CopyFrom(inferred[output.name])
        typed = load_onnx(model, infer_shapes=False)
    except Exception as exc:  # onnx raises several types; all mean "cannot type this body"
        raise LoweringError(f"graph {graph.name!r}: shape inference failed: "
                            f"{' '.join(str(exc).split())[:300]}") from None
    typed.name = graph.name
    untyped = [v.name for n in typed.nodes for v in n.outputs
               if not v.absent and isinstance(v.type, UnknownType)]
    if untyped:
        raise LoweringError(f"graph {graph.name!r}: no inferred type for "
                            f"{', '.join(untyped[:5])}")
    return typed


_fresh = itertools.count()


def symbolic_type(t: ValueType, what: str) -> ValueType:
    """``t`` with each unknown dim a fresh symbol (kernel programs bind it per call)."""
    if isinstance(t, UnknownType) or (isinstance(t, TensorType) and t.shape is None):
        raise LoweringError(f"{what} has an unknown rank; run-time control flow needs ranks")
    if isinstance(t, TensorType) and any(d is None for d in t.shape or ()):
        return TensorType(t.dtype, tuple(f"cf{next(_fresh)}" if d is None else d
                                         for d in t.shape or ()))
    return t


def symbolize_inputs(graph: Graph, force: bool = False) -> Graph:
    """``graph`` with every unknown input dim a symbol, re-typed when one was (or
    ``force``: a standalone body, whose node outputs are untyped)."""
    changed = False
    for value in graph.inputs:
        new = symbolic_type(value.type or UnknownType(), f"value {value.name!r}")
        if new != value.type:
            value.type = new
            changed = True
    return retype(graph) if changed or force else graph


def _widen(entry: ValueType, after: ValueType, what: str) -> ValueType:
    if not isinstance(entry, TensorType) or not isinstance(after, TensorType):
        return entry
    if after.shape is None or entry.shape is None or len(after.shape) != len(entry.shape):
        raise LoweringError(f"{what} changes rank across iterations ({entry} -> {after})")
    # A dim that already is a symbol stays one; a size an iteration changes becomes one.
    dims = tuple(d if d == a or isinstance(d, str) else f"cf{next(_fresh)}"
                 for d, a in zip(entry.shape, after.shape))
    return TensorType(entry.dtype, dims)


def loop_body(node: Node, name: str) -> tuple[Graph, list[str]]:
    """The body of ``node`` (a Loop) as a typed standalone graph, and the outer values it
    reads. Carried values enter with the types of the loop's initial values; a dim an
    iteration changes becomes a symbol (at most :data:`MAX_FIXPOINT` rounds)."""
    body: Graph = node.attrs["body"].value
    carried = [v for v in node.inputs[2:]]
    declared = [v.type for v in body.inputs]
    if len(declared) != 2 + len(carried):
        raise LoweringError(f"{node.describe()}: body takes {len(declared)} inputs for "
                            f"{len(carried)} carried values")
    types: list[ValueType] = list(declared[:2])
    for k, value in enumerate(carried):
        start = value.type if value is not None and isinstance(value.type, TensorType) and \
            value.type.shape is not None else declared[2 + k]
        types.append(symbolic_type(start or UnknownType(),
                                   f"{node.describe()}: carried value {k}"))
    for _ in range(MAX_FIXPOINT):
        graph, captured = standalone(body, name, types)
        graph = symbolize_inputs(graph, force=True)
        outs = [v.type for v in graph.outputs[1:1 + len(carried)]]
        widened = [*types[:2], *(_widen(t, o, f"{node.describe()}: carried value {k}")
                                 for k, (t, o) in enumerate(zip(types[2:], outs)))]
        if widened == types:
            return graph, captured
        types = widened
    raise LoweringError(f"{node.describe()}: loop-carried shapes do not settle")


def branch(node: Node, key: str, name: str) -> tuple[Graph, list[str]]:
    """An If branch as a typed standalone graph, and the outer values it reads."""
    graph, captured = standalone(node.attrs[key].value, name)
    return symbolize_inputs(graph, force=True), captured
