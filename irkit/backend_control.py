"""Compiling graphs with run-time control flow into segments (the compile half of
:mod:`irkit.runtime.control`).

A graph holding a ``Loop`` or ``If`` that legalizing could not unroll, or sequence and
optional ops, is split at those nodes: runs of ordinary nodes become kernel programs
(through the backend's own flow, ORT fallback included), each ``Loop`` a ``loop``
segment whose body is compiled the same way (recursively), each ``If`` an ``if``
segment with both branches compiled, each sequence/optional op a ``seq`` segment. No
node runs outside compiled code except the list operations of sequences.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from irkit.ir import Graph, Node, TensorType, Value
from irkit.ir.attrs import AttrKind
from irkit.ir.clone import extract_subgraph
from irkit.lower import Capabilities, LoweringError
from irkit.lower.control import (
    branch,
    is_host_node,
    loop_body,
    node_free_values,
    symbolize_inputs,
)
from irkit.runtime.control import MAX_DEPTH, Body, Control, check_control
from irkit.runtime.program import Segment
from irkit.target import Target

if TYPE_CHECKING:
    from irkit.backend import KernelBackend, _Compiled

CONTROL_BACKENDS = ("llvm",)
"""Backends whose artifacts run through the shared runner with control segments."""


def needs_control(graph: Graph) -> bool:
    return any(is_host_node(n) for n in graph.nodes)


def control_segments(backend: KernelBackend, graph: Graph, target: Target,
                     caps: Capabilities, options: Mapping[str, Any], prefix: str,
                     compiled: _Compiled) -> list[Segment]:
    """``graph``'s segments with its control flow run by the runtime."""
    from irkit.backend import BackendUnsupportedError

    ops = sorted({n.op for n in graph.nodes if is_host_node(n)})
    if backend.name not in CONTROL_BACKENDS:  # (fallback = "ort": the whole model on ORT)
        raise LoweringError(
            f"graph {graph.name!r}: {', '.join(ops)} {'needs' if len(ops) == 1 else 'need'}"
            " run-time control flow (a trip count, condition or sequence known only at run "
            f"time), which the {backend.name} backend does not run; compile for llvm")
    for side, values in (("input", graph.inputs), ("output", graph.outputs)):
        for value in values:
            if not isinstance(value.type, TensorType):
                raise BackendUnsupportedError(
                    f"graph {graph.name!r}: model {side} {value.name!r} is a "
                    f"{value.type}; artifacts take and give tensors only (sequences and "
                    "optionals may flow inside the model)")
    return _Builder(backend, target, caps, options, compiled).segments(graph, prefix, 0)


class _Builder:
    def __init__(self, backend: KernelBackend, target: Target, caps: Capabilities,
                 options: Mapping[str, Any], compiled: _Compiled) -> None:
        self.backend, self.target, self.caps = backend, target, caps
        self.options, self.compiled = options, compiled
        # Types host segments give their outputs (what their bodies compute), by name.
        self.types: dict[str, TensorType] = {}

    def segments(self, graph: Graph, prefix: str, depth: int) -> list[Segment]:
        if depth > MAX_DEPTH:
            raise LoweringError(f"graph {graph.name!r}: control flow nested more than "
                                f"{MAX_DEPTH} deep")
        runs: list[list[Node]] = []
        for node in graph.nodes:
            if is_host_node(node) or not runs or is_host_node(runs[-1][0]):
                runs.append([node])
            else:
                runs[-1].append(node)
        segments: list[Segment] = []
        for index, nodes in enumerate(runs):
            name = f"{prefix}s{index}"
            if is_host_node(nodes[0]):
                try:
                    segments.append(self.host(nodes[0], name, depth))
                except LoweringError as exc:  # say where a body's problem is
                    raise LoweringError(f"in {nodes[0].describe()} of graph "
                                        f"{graph.name!r}: {exc}") from None
                continue
            later: set[Value] = set(graph.outputs)
            for rest in runs[index + 1:]:
                for node in rest:
                    later.update(v for v in node.inputs if v is not None)
                    later.update(node_free_values(node))
            sub = extract_subgraph(graph, nodes, f"{graph.name or 'model'}_{name}", later)
            if not sub.outputs:
                continue
            for value in sub.inputs:
                known = self.types.get(value.name)
                if known is not None and not (isinstance(value.type, TensorType) and
                                              value.type.is_static):
                    value.type = known
            sub = symbolize_inputs(sub)
            made = self.backend._segments(sub, self.target, self.caps, self.options,
                                          f"{name}_", self.compiled)
            if depth == 0:
                _check_declared(graph, made)
            segments.extend(made)
        # Outputs that are constants: handed out by an Identity on the host.
        for value in graph.outputs:
            if value.const is not None:
                segments.append(_segment("seq", [], [value.name], Control(
                    "seq", {value.name: np.asarray(value.const)}, op="Identity",
                    args=(value.name,))))
        return segments

    def body(self, graph: Graph, formal: list[str], prefix: str, depth: int) -> Body:
        from irkit.lower.dynamic import prepare_dynamic
        from irkit.lower.legalize import legalize

        graph = prepare_dynamic(graph, self.backend.name,
                                getattr(self.backend, "dynamic_shapes", False), LoweringError)
        legal = legalize(graph, self.caps)
        return Body(tuple(formal), tuple(v.name for v in legal.outputs),
                    tuple(self.segments(legal, prefix, depth + 1)))

    def host(self, node: Node, name: str, depth: int) -> Segment:
        consts = {v.name: np.asarray(v.const) for v in node.inputs
                  if v is not None and v.const is not None}
        reads = [v.name for v in node.inputs if v is not None and v.const is None]
        outputs = [v.name if not v.absent else f"{name}_unused{k}"
                   for k, v in enumerate(node.outputs)]
        if node.op == "Loop":
            graph, captured = loop_body(node, f"{name}_body")
            formal = [v.name for v in graph.inputs[:len(graph.inputs) - len(captured)]]
            body = self.body(graph, formal, f"{name}_b", depth)
            carried = len(node.inputs) - 2
            scans = graph.outputs[1 + carried:]
            scan_dtypes, scan_shapes = [], []
            for value in scans:
                t = value.type
                if not isinstance(t, TensorType) or t.shape is None:
                    raise LoweringError(f"{node.describe()}: scan output {value.name!r} "
                                        f"is a {t}, not a tensor of known rank")
                scan_dtypes.append(np.dtype(t.dtype.numpy).name)
                scan_shapes.append(tuple(d if isinstance(d, int) else None for d in t.shape))
            trip = node.inputs[0].name if node.inputs and node.inputs[0] is not None else None
            cond = node.inputs[1].name if len(node.inputs) > 1 and \
                node.inputs[1] is not None else None
            for out, value in zip(outputs, graph.outputs[1:1 + carried]):
                if isinstance(value.type, TensorType) and value.type.shape is not None:
                    self.types[out] = _loose(value.type)
            for out, dtype_value, dims in zip(outputs[carried:], scans, scan_shapes):
                self.types[out] = TensorType(dtype_value.type.dtype,  # type: ignore[union-attr]
                                             (None, *dims))
            control = Control("loop", consts, trip=trip, cond=cond,
                              carried=tuple(_name(v, f"{node.describe()}: carried value")
                                            for v in node.inputs[2:]),
                              scan_dtypes=tuple(scan_dtypes), scan_shapes=tuple(scan_shapes),
                              body=body)
            return _segment("loop", _unique([*reads, *captured]), outputs, control)
        if node.op == "If":
            then, then_reads = branch(node, "then_branch", f"{name}_then")
            other, other_reads = branch(node, "else_branch", f"{name}_else")
            for out, a, b in zip(outputs, then.outputs, other.outputs):
                if isinstance(a.type, TensorType) and isinstance(b.type, TensorType) and \
                        a.type.shape is not None and b.type.shape is not None and \
                        len(a.type.shape) == len(b.type.shape):
                    self.types[out] = TensorType(a.type.dtype, tuple(
                        d if d == e and isinstance(d, int) else None
                        for d, e in zip(a.type.shape, b.type.shape)))
            control = Control("if", consts, cond=_name(node.inputs[0], "If condition"),
                              then=self.body(then, [], f"{name}_t", depth),
                              other=self.body(other, [], f"{name}_e", depth))
            return _segment("if", _unique([*reads, *then_reads, *other_reads]), outputs,
                            control)
        attrs = {k: int(a.value) for k, a in node.attrs.items() if a.kind is AttrKind.INT}
        args = tuple(None if v is None else v.name for v in node.inputs)
        return _segment("seq", _unique(reads), outputs[:1],
                        Control("seq", consts, op=node.op, args=args, attrs=attrs))


def _check_declared(graph: Graph, made: list[Segment]) -> None:
    """LoweringError when a model output declared with a static shape is computed with
    sizes only known at run time (a loop's trip count): the signature would lie."""
    declared = {v.name: v.type for v in graph.outputs}
    for segment in made:
        program = segment.program
        for name, dims in (program.output_shapes.items() if program is not None else ()):
            want = declared.get(name)
            if isinstance(want, TensorType) and want.is_static and [
                    {m: c for m, c in d.items() if c} for d in dims] != [
                    {(): n} if n else {} for n in want.shape or ()]:
                raise LoweringError(
                    f"model output {name!r} is declared {want} but its size follows from "
                    "run-time control flow (a trip count); declare it with a symbolic dim")


def _loose(t: TensorType) -> TensorType:
    """``t`` with its symbolic dims unknown (a body's symbols are its own)."""
    return TensorType(t.dtype, tuple(d if isinstance(d, int) else None for d in t.shape or ()))


def _name(value: Value | None, what: str) -> str:
    if value is None:
        raise LoweringError(f"{what} is missing")
    return value.name


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _segment(kind: str, inputs: list[str], outputs: list[str], control: Control) -> Segment:
    segment = Segment(kind, tuple(inputs), tuple(outputs), control=control)
    check_control(segment, f"{kind} segment {outputs}")
    return segment
