"""Control flow and recurrent ops the lowering lacks, rewritten into ops it has.

Before lowering, nodes whose result can be computed exactly by straight-line code are
replaced by it:

- ``RNN``, ``GRU``, ``LSTM`` with a static sequence length: one MatMul projects the input
  of every step up front, then each step is a small MatMul for the recurrence and the gate
  arithmetic (all directions, layouts, activations with their alpha/beta, ``clip``,
  ``linear_before_reset``, peepholes, ``input_forget``, initial states). ``sequence_lens``
  must be absent or constant and equal to the full length.
- ``Scan`` with a static sequence length: the body once per step, scan inputs sliced and
  scan outputs stacked along their axes and directions.
- ``Loop`` whose trip count and condition are known at compile time at every iteration
  (a constant count, a condition passed through or computed from constants).
- ``If`` whose condition is known at compile time: the taken branch inlined; otherwise,
  when both branches are small, cannot fault and give tensors of one static shape, both
  are inlined and ``Where`` picks.

At most :data:`MAX_STEPS` steps and :data:`MAX_NEW_NODES` new nodes are unrolled; a node
that cannot be rewritten exactly stays as it is, so the lowering names it as unsupported.
The rewritten graph is re-typed by ONNX shape inference (export, infer, re-import).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from irkit.ir import DEFAULT_OPSET, Graph, Node, TensorType, UnknownType, Value, ValueType
from irkit.ir.attrs import Attr, AttrKind

_log = logging.getLogger(__name__)

MAX_STEPS = 256  # time steps / iterations unrolled per node
MAX_NEW_NODES = 20_000  # nodes the rewrites may add to one graph
MAX_ROUNDS = 8  # inlined bodies may hold control flow of their own
MAX_KNOWN_ELEMENTS = 1 << 16  # largest value computed at compile time
MAX_SELECT_NODES = 64  # If branches both run and Where picks: at most this many nodes each
MIN_OPSET = 13  # Squeeze/Unsqueeze/Split/Slice/Clip take their sizes as inputs
CONTROL_OPS = ("If", "Loop", "Scan", "RNN", "GRU", "LSTM")
# Ops an If branch may hold to run unconditionally: no data-dependent indexing, no traps.
_SELECT_SAFE = frozenset([
    "Abs", "Add", "And", "Cast", "Ceil", "Clip", "Concat", "Cos", "Equal", "Erf", "Exp",
    "Floor", "Greater", "GreaterOrEqual", "Identity", "Less", "LessOrEqual", "Log", "MatMul",
    "Max", "Min", "Mul", "Neg", "Not", "Or", "Reciprocal", "Relu", "Sigmoid", "Sign", "Sin",
    "Sqrt", "Sub", "Tanh", "Transpose", "Where", "Xor",
])
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_DEFAULT_ACTS = {"RNN": ("Tanh",), "GRU": ("Sigmoid", "Tanh"), "LSTM": ("Sigmoid", "Tanh", "Tanh")}
# Activation name -> (canonical name, default alpha, default beta); None: takes none.
_ACTIVATIONS: dict[str, tuple[str, float | None, float | None]] = {
    "sigmoid": ("Sigmoid", None, None), "tanh": ("Tanh", None, None),
    "relu": ("Relu", None, None), "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None), "leakyrelu": ("LeakyRelu", 0.01, None),
    "thresholdedrelu": ("ThresholdedRelu", 1.0, None), "elu": ("Elu", 1.0, None),
    "hardsigmoid": ("HardSigmoid", 0.2, 0.5), "affine": ("Affine", float("nan"), float("nan")),
    "scaledtanh": ("ScaledTanh", float("nan"), float("nan")),
}

Activation = tuple[str, float | None, float | None]


class Refused(Exception):
    """The node cannot be rewritten exactly; it stays for the lowering to name."""


def unroll_control_flow(graph: Graph, lowers: Callable[[str, str], bool]) -> Graph:
    """``graph`` itself when nothing is rewritten, else a re-typed copy with the control
    flow nodes the lowering lacks (``not lowers(op, domain)``) and the recurrent nodes
    (which the lowering runs as a time loop only when they cannot be unrolled) rewritten."""
    if not any(n.op in CONTROL_OPS and not n.domain and _wanted(n, lowers)
               for n in graph.nodes):
        return graph
    opset = graph.opset_imports.get("", graph.opset_imports.get("ai.onnx", DEFAULT_OPSET))
    if opset < MIN_OPSET:
        return graph
    work = graph.clone()
    if not _Unroller(work, opset, lowers).run():
        return graph
    from onnx.shape_inference import InferenceError

    from irkit.errors import IrkitError
    from irkit.lower.expand import expand_functions

    try:
        typed = _retype(work)
    except (IrkitError, InferenceError, ValueError, RuntimeError) as exc:
        _log.debug("re-typing the unrolled %r failed: %s", graph.name, exc)
        return graph
    return expand_functions(typed, lowers)


def _wanted(node: Node, lowers: Callable[[str, str], bool]) -> bool:
    """Whether to rewrite ``node``: the lowering lacks it, or it is a recurrence (unrolled
    steps beat the lowering's scalar time loop and cover every attribute)."""
    return node.op in _GATES or not lowers(node.op, node.domain)


def _retype(graph: Graph) -> Graph:
    """The graph exported, typed by ONNX shape inference and imported again."""
    import onnx.shape_inference

    from irkit.interop.onnx_export import to_onnx
    from irkit.interop.onnx_import import load_onnx

    model = onnx.shape_inference.infer_shapes(to_onnx(graph, check=False), strict_mode=True,
                                              data_prop=True)
    typed = load_onnx(model, infer_shapes=False)
    typed.name = graph.name
    untyped = [v.name for n in typed.nodes for v in n.outputs
               if not v.absent and v.dtype is None]
    if untyped:
        raise ValueError(f"no inferred type for {', '.join(untyped[:5])}")
    return typed


def _static_type(t: ValueType) -> ValueType:
    """A copied body value keeps its type only when fully static (a symbolic or partial
    shape may differ per iteration; inference types it again)."""
    if isinstance(t, TensorType) and t.shape is not None and all(
            isinstance(d, int) for d in t.shape):
        return t
    return UnknownType()


class _Unroller:
    def __init__(self, graph: Graph, opset: int, lowers: Callable[[str, str], bool]) -> None:
        self.graph = graph
        self.opset = opset
        self.lowers = lowers
        self.anchor: Node | None = None  # new nodes go right before it
        self.budget = MAX_NEW_NODES
        self.known_values: dict[Value, np.ndarray] = {}
        self.body_consts: dict[Value, Value] = {}

    def run(self) -> bool:
        from irkit.passes.base import drop_unused_constants, remove_dead_nodes

        rewrites: dict[str, Callable[[Node], list[Value | None]]] = {
            "If": self.rewrite_if, "Loop": self.rewrite_loop, "Scan": self.rewrite_scan,
            "RNN": self.rewrite_recurrent, "GRU": self.rewrite_recurrent,
            "LSTM": self.rewrite_recurrent,
        }
        changed = False
        for _ in range(MAX_ROUNDS):
            progress = False
            for node in self.graph.nodes:
                if node.domain or node.op not in rewrites or not _wanted(node, self.lowers):
                    continue
                self.anchor = node
                try:
                    outs = rewrites[node.op](node)
                except Refused as exc:
                    _log.debug("%s stays: %s", node.describe(), exc)
                    continue
                self._replace(node, outs)
                progress = changed = True
            if not progress:
                break
        self.anchor = None
        if changed:
            while remove_dead_nodes(self.graph):
                pass
            drop_unused_constants(self.graph)
        return changed

    def _replace(self, node: Node, outs: Sequence[Value | None]) -> None:
        from irkit.passes.base import replace_outputs

        replace_outputs(self.graph, node, outs)

    # -- building blocks ----------------------------------------------------------------
    def emit(self, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None,
             outputs: int = 1) -> Value:
        self.budget -= 1
        if self.budget < 0:
            raise Refused(f"the unrolled graph would exceed {MAX_NEW_NODES} new nodes")
        node = self.graph.add_node(op, inputs, attrs, outputs=outputs, before=self.anchor)
        return node.outputs[0]

    def const(self, array: Any, name: str = "unroll") -> Value:
        return self.graph.add_constant(name, np.asarray(array))

    def ints(self, values: Sequence[int]) -> Value:
        return self.const(np.array(values, np.int64), "axes")

    def take(self, x: Value, index: int, axis: int) -> Value:
        """``x[index]`` along ``axis`` (the axis goes away)."""
        if x.const is not None:
            return self.const(np.take(x.const, index, axis=axis))
        return self.emit("Gather", [x, self.const(np.array(index, np.int64), "index")],
                         {"axis": axis})

    def slice(self, x: Value, axis: int, start: int, end: int) -> Value:
        if x.const is not None:
            return self.const(np.take(x.const, np.arange(start, end), axis=axis))
        return self.emit("Slice", [x, self.ints([start]), self.ints([end]), self.ints([axis])])

    def transpose(self, x: Value) -> Value:
        if x.const is not None:
            return self.const(np.ascontiguousarray(x.const.T))
        return self.emit("Transpose", [x], {"perm": [1, 0]})

    def add(self, a: Value, b: Value) -> Value:
        if a.const is not None and b.const is not None:
            return self.const(a.const + b.const)
        return self.emit("Add", [a, b])

    def unsqueeze(self, x: Value, axes: Sequence[int]) -> Value:
        return self.emit("Unsqueeze", [x, self.ints(axes)])

    def stack(self, items: Sequence[Value], axis: int) -> Value:
        """The items, each given a new ``axis`` of size 1, concatenated along it."""
        parts = [self.unsqueeze(v, [axis]) for v in items]
        return parts[0] if len(parts) == 1 else self.emit("Concat", parts, {"axis": axis})

    def concat(self, items: Sequence[Value], axis: int) -> Value:
        if len(items) == 1:
            return items[0]
        arrays = [v.const for v in items if v.const is not None]
        if len(arrays) == len(items):
            return self.const(np.concatenate(arrays, axis=axis))
        return self.emit("Concat", list(items), {"axis": axis})

    # -- values known at compile time -------------------------------------------------------
    def known(self, value: Value | None) -> np.ndarray | None:
        """The value's array when it can be computed now (constants, static shapes and
        small computations on them), else None."""
        return None if value is None else self._known(value, 0)

    def _known(self, value: Value, depth: int) -> np.ndarray | None:
        if value.const is not None:
            return value.const
        if value in self.known_values:
            return self.known_values[value]
        node = value.producer
        if node is None or node.domain or node.subgraphs() or depth > 64:
            return None
        shape = node.inputs[0].shape if node.inputs and node.inputs[0] is not None else None
        result: list[np.ndarray] | None = None
        if node.op in ("Shape", "Size"):
            if shape is None:
                return None
            if node.op == "Shape":
                rank = len(shape)
                start, end = node.attr("start", 0), node.attr("end", rank)
                start = min(max(start + rank if start < 0 else start, 0), rank)
                end = min(max(end + rank if end < 0 else end, 0), rank)
                shape = shape[start:end]
            if not all(isinstance(d, int) for d in shape):
                return None
            result = [np.array(shape if node.op == "Shape" else int(np.prod(shape)), np.int64)]
        elif node.op not in ("RandomNormal", "RandomUniform", "RandomNormalLike",
                             "RandomUniformLike", "Multinomial", "Bernoulli"):
            arrays = []
            for v in node.inputs:
                a = None if v is None else self._known(v, depth + 1)
                if v is not None and (a is None or a.size > MAX_KNOWN_ELEMENTS):
                    return None
                arrays.append(a)
            try:
                result = _evaluate(node, arrays, self.opset)
            except Exception:  # onnx.reference rejects what it cannot run
                return None
        if result is None or any(r.size > MAX_KNOWN_ELEMENTS for r in result):
            return None
        for out, array in zip(node.outputs, result):
            self.known_values[out] = array
        return self.known_values.get(value)

    # -- bodies --------------------------------------------------------------------------
    def inline(self, body: Graph, mapping: dict[Value, Value]) -> list[Value]:
        """Copy ``body``'s nodes in front of the anchor, its inputs read from ``mapping``;
        the values of its outputs."""
        mapping = dict(mapping)
        for value in body.constants.values():
            if value not in self.body_consts:
                self.body_consts[value] = self.graph.add_constant(value.name, value.const)
            mapping[value] = self.body_consts[value]
        for node in body.nodes:
            attrs = self._copy_attrs(node, mapping)
            self.budget -= 1
            if self.budget < 0:
                raise Refused(f"the unrolled graph would exceed {MAX_NEW_NODES} new nodes")
            copy = Node(node.op, [None if v is None else mapping.get(v, v) for v in node.inputs],
                        attrs, domain=node.domain,
                        outputs=[None if v.absent else v.name for v in node.outputs],
                        types=[_static_type(v.type) for v in node.outputs], name=node.name)
            assert self.anchor is not None
            self.graph.insert_before(self.anchor, copy)
            for old, new in zip(node.outputs, copy.outputs):
                mapping[old] = new
        return [mapping.get(v, v) for v in body.outputs]

    def _copy_attrs(self, node: Node, mapping: dict[Value, Value]) -> dict[str, Attr]:
        """``node``'s attributes with subgraph bodies copied (see :meth:`_copy_subgraph`)."""
        attrs: dict[str, Attr] = {}
        for key, attr in node.attrs.items():
            if attr.kind is AttrKind.GRAPH:
                attrs[key] = Attr(attr.kind, self._copy_subgraph(attr.value, mapping))
            elif attr.kind is AttrKind.GRAPHS:
                attrs[key] = Attr(attr.kind, tuple(self._copy_subgraph(g, mapping)
                                                   for g in attr.value))
            else:
                attrs[key] = attr
        return attrs

    def _copy_subgraph(self, sub: Graph, mapping: dict[Value, Value]) -> Graph:
        """A nested body (an If inside a Scan body…) copied under the main graph with
        fresh names: each copy needs its own names in the shared name space."""
        new = Graph(sub.name, outer=self.graph, opset_imports=sub.opset_imports)
        for value in sub.inputs:
            fresh = new.unique_name(value.name)
            new._names.discard(fresh)
            mapping[value] = new.add_input(fresh, value.type)
        for value in sub.constants.values():
            mapping[value] = new.add_constant(value.name, value.const)
        for node in sub.nodes:
            attrs = self._copy_attrs(node, mapping)
            copy = new.append(Node(
                node.op, [None if v is None else mapping.get(v, v) for v in node.inputs], attrs,
                domain=node.domain, outputs=[None if v.absent else v.name for v in node.outputs],
                types=[_static_type(v.type) for v in node.outputs], name=node.name))
            for old, fresh_value in zip(node.outputs, copy.outputs):
                mapping[old] = fresh_value
        new.set_outputs(mapping.get(v, v) for v in sub.outputs)
        return new

    # -- If --------------------------------------------------------------------------------
    def rewrite_if(self, node: Node) -> list[Value | None]:
        then_branch, else_branch = node.attr("then_branch"), node.attr("else_branch")
        cond = self.known(node.inputs[0])
        if cond is not None:
            if cond.size != 1:
                raise Refused(f"If condition has {cond.size} elements")
            return list(self.inline(then_branch if bool(cond.reshape(-1)[0]) else else_branch,
                                    {}))
        return self._select(node, then_branch, else_branch)

    def _select(self, node: Node, then_branch: Graph, else_branch: Graph) -> list[Value | None]:
        """Both branches computed, ``Where`` picks: only when neither can fault."""
        cond = node.inputs[0]
        if cond is None or cond.shape is None or int(np.prod(cond.shape)) != 1 or any(
                not isinstance(d, int) for d in cond.shape):
            raise Refused("the If condition is a run-time value of unknown shape")
        for branch in (then_branch, else_branch):
            if len(branch.nodes) > MAX_SELECT_NODES or any(
                    n.domain or n.op not in _SELECT_SAFE or n.subgraphs() for n in branch.nodes):
                raise Refused("the If condition is a run-time value and a branch has ops that "
                              "cannot run unconditionally")
        for a, b in zip(then_branch.outputs, else_branch.outputs):
            if not (isinstance(_static_type(a.type), TensorType) and a.type == b.type):
                raise Refused("the If condition is a run-time value and the branches' outputs "
                              "differ or are not static tensors")
        then_outs, else_outs = self.inline(then_branch, {}), self.inline(else_branch, {})
        if cond.shape:
            cond = self.emit("Reshape", [cond, self.ints([])])
        return [self.emit("Where", [cond, t, e]) for t, e in zip(then_outs, else_outs)]

    # -- Loop ------------------------------------------------------------------------------
    def rewrite_loop(self, node: Node) -> list[Value | None]:
        body: Graph = node.attr("body")
        trip, cond_in = (*node.inputs, None, None)[:2]
        carried = list(node.inputs[2:])
        if any(v is None for v in carried):
            raise Refused("Loop with an omitted loop-carried input")
        count = None
        if trip is not None:
            known = self.known(trip)
            if known is None:
                raise Refused("Loop trip count is a run-time value")
            count = int(known.reshape(-1)[0])
        cond = True
        if cond_in is not None:
            known = self.known(cond_in)
            if known is None:
                raise Refused("Loop condition is a run-time value")
            cond = bool(known.reshape(-1)[0])
        n_carried = len(carried)
        n_scan = len(body.outputs) - 1 - n_carried
        states: list[Value] = [v for v in carried if v is not None]
        scans: list[list[Value]] = [[] for _ in range(n_scan)]
        step = 0
        while cond and (count is None or step < count):
            if step >= MAX_STEPS:
                raise Refused(f"Loop runs more than {MAX_STEPS} iterations")
            mapping = {body.inputs[0]: self.const(_like(body.inputs[0], step, np.int64), "iter"),
                       body.inputs[1]: self.const(_like(body.inputs[1], cond, np.bool_), "cond")}
            mapping.update(zip(body.inputs[2:], states))
            outs = self.inline(body, mapping)
            known = self.known(outs[0])
            if known is None:
                raise Refused("Loop condition is computed at run time")
            cond = bool(known.reshape(-1)[0])
            states = outs[1:1 + n_carried]
            for k in range(n_scan):
                scans[k].append(outs[1 + n_carried + k])
            step += 1
        if n_scan and not step:
            raise Refused("Loop runs no iteration and has scan outputs")
        return [*states, *(self.stack(items, 0) for items in scans)]

    # -- Scan ------------------------------------------------------------------------------
    def rewrite_scan(self, node: Node) -> list[Value | None]:
        body: Graph = node.attr("body")
        if int(self.graph.meta.get("ir_version") or 99) < 4:
            raise Refused("Scan of an opset-8 model: ONNX's version converter changed the "
                          "graph's input shapes")
        m = int(node.attr("num_scan_inputs"))
        inputs = list(node.inputs)
        if any(v is None for v in inputs):
            raise Refused("Scan with an omitted input")
        n = len(inputs) - m
        k = len(body.outputs) - n
        in_axes = list(node.attr("scan_input_axes", [0] * m))
        in_dirs = list(node.attr("scan_input_directions", [0] * m))
        out_axes = list(node.attr("scan_output_axes", [0] * k))
        out_dirs = list(node.attr("scan_output_directions", [0] * k))
        scans = [v for v in inputs[n:] if v is not None]
        lengths = set()
        for j, x in enumerate(scans):
            if x.shape is None:
                raise Refused(f"Scan input %{x.name} has no known shape")
            in_axes[j] %= len(x.shape)
            lengths.add(x.shape[in_axes[j]])
        if len(lengths) != 1 or not isinstance(length := lengths.pop(), int):
            raise Refused("Scan sequence length is not static")
        if not 0 < length <= MAX_STEPS:
            raise Refused(f"Scan runs {length} steps (1..{MAX_STEPS} are unrolled)")
        states: list[Value] = [v for v in inputs[:n] if v is not None]
        outs_per_step: list[list[Value]] = [[] for _ in range(k)]
        for t in range(length):
            mapping = dict(zip(body.inputs[:n], states))
            for j, x in enumerate(scans):
                index = length - 1 - t if in_dirs[j] else t
                mapping[body.inputs[n + j]] = self.take(x, index, in_axes[j])
            outs = self.inline(body, mapping)
            states = outs[:n]
            for i in range(k):
                outs_per_step[i].append(outs[n + i])
        results: list[Value | None] = list(states)
        for i, items in enumerate(outs_per_step):
            axis = out_axes[i]
            if axis < 0:
                shape = body.outputs[n + i].shape
                if shape is None:
                    raise Refused("Scan output axis is negative and the body output's rank "
                                  "is unknown")
                axis += len(shape) + 1
            results.append(self.stack(items[::-1] if out_dirs[i] else items, axis))
        return results

    # -- RNN, GRU, LSTM ------------------------------------------------------------------
    def rewrite_recurrent(self, node: Node) -> list[Value | None]:
        op = node.op
        ins = list(node.inputs) + [None] * (8 - len(node.inputs))
        x, w, r, b, seq_lens, init_h = ins[:6]
        init_c, peep = (ins[6], ins[7]) if op == "LSTM" else (None, None)
        if x is None or w is None or r is None or x.shape is None or len(x.shape) != 3:
            raise Refused(f"{op} input X needs a known rank-3 shape")
        layout = int(node.attr("layout", 0))
        seq_axis = 1 if layout else 0
        length = x.shape[seq_axis]
        if not isinstance(length, int) or not 0 < length <= MAX_STEPS:
            raise Refused(f"{op} sequence length {length} is not static in 1..{MAX_STEPS}")
        if seq_lens is not None:
            lens = self.known(seq_lens)
            if lens is None or not np.all(lens == length):
                raise Refused(f"{op} sequence_lens is not constant and full-length")
        direction = node.attr("direction", "forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        if direction not in ("forward", "reverse", "bidirectional"):
            raise Refused(f"{op} direction {direction!r}")
        dirs = 2 if direction == "bidirectional" else 1
        hidden = node.attr("hidden_size")
        if hidden is None:
            if r.shape is None or not isinstance(r.shape[-1], int):
                raise Refused(f"{op} hidden_size is unknown")
            hidden = r.shape[-1]
        if x.dtype is None:
            raise Refused(f"{op} input dtype is unknown")
        acts = self._activations(node, dirs)
        clip = node.attr("clip")
        dtype = x.dtype.numpy
        gates = _GATES[op]
        split_rbh = op == "GRU" and bool(node.attr("linear_before_reset", 0))
        outputs = node.outputs + (None,) * 3
        want_y = outputs[0] is not None and not outputs[0].absent and outputs[0].is_used
        ys: list[Value] = []
        hs: list[Value] = []
        cs: list[Value] = []
        state_axis = 1 if layout else 0
        for d in range(dirs):
            cell = _Cell(self, op, hidden, dtype, acts[d], clip, node)
            wt = self.transpose(self.take(w, d, 0))  # [input, gates*hidden]
            cell.rt = self.transpose(self.take(r, d, 0))  # [hidden, gates*hidden]
            proj = self.emit("MatMul", [x, wt])
            if b is not None:
                bias = self.take(b, d, 0)
                wb = self.slice(bias, 0, 0, gates * hidden)
                rb = self.slice(bias, 0, gates * hidden, 2 * gates * hidden)
                if split_rbh:  # R's bias of the h gate is added inside the reset product
                    cell.rb = rb
                    zero = self.const(np.zeros(hidden, dtype), "zeros")
                    rb_zr = self.concat([self.slice(rb, 0, 0, 2 * hidden), zero], 0)
                    proj = self.emit("Add", [proj, self.add(wb, rb_zr)])
                else:
                    proj = self.emit("Add", [proj, self.add(wb, rb)])
            if peep is not None:
                p = self.take(peep, d, 0)
                cell.peep = [self.slice(p, 0, i * hidden, (i + 1) * hidden) for i in range(3)]
            h = None if init_h is None else self.take(init_h, d, state_axis)
            c = None if init_c is None else self.take(init_c, d, state_axis)
            reverse = direction == "reverse" or d == 1
            steps: list[Value] = [proj] * length
            for t in (reversed(range(length)) if reverse else range(length)):
                h, c = cell.step(self.take(proj, t, seq_axis), h, c)
                steps[t] = h
            assert h is not None
            hs.append(h)
            if c is not None:
                cs.append(c)
            if want_y:  # [seq, 1, batch, hidden] or [batch, seq, 1, hidden]
                axes = [1, 2] if layout else [0, 1]
                ys.append(self.concat([self.unsqueeze(s, axes) for s in steps], seq_axis))
        results: list[Value | None] = [
            self.concat(ys, 2 if layout else 1) if want_y else None,
            self.stack(hs, state_axis),
        ]
        if op == "LSTM":
            results.append(self.stack(cs, state_axis) if len(cs) == dirs else None)
        return results[:len(node.outputs)]

    def _activations(self, node: Node, dirs: int) -> list[list[Activation]]:
        """Per direction, the activation functions (name, alpha, beta); alphas and betas
        are taken in order by the functions that have them (as ONNX Runtime does)."""
        per_dir = len(_DEFAULT_ACTS[node.op])
        names = [a.decode() if isinstance(a, bytes) else str(a)
                 for a in node.attr("activations", _DEFAULT_ACTS[node.op] * dirs)]
        if len(names) == per_dir and dirs == 2:
            names = names * 2
        if len(names) != per_dir * dirs:
            raise Refused(f"{node.op} has {len(names)} activations, not {per_dir * dirs}")
        alphas = list(node.attr("activation_alpha", []))
        betas = list(node.attr("activation_beta", []))
        given_alpha, given_beta = bool(alphas), bool(betas)
        funcs: list[Activation] = []
        for name in names:
            found = _ACTIVATIONS.get(name.lower())
            if found is None:
                raise Refused(f"{node.op} activation {name!r}")
            canon, alpha, beta = found
            if alpha is not None and alphas:
                alpha = float(alphas.pop(0))
            if beta is not None and betas:
                beta = float(betas.pop(0))
            if (alpha is not None and np.isnan(alpha)) or (beta is not None and np.isnan(beta)):
                raise Refused(f"{node.op} activation {canon} needs activation_alpha/beta")
            funcs.append((canon, alpha, beta))
        if (given_alpha and alphas) or (given_beta and betas):
            raise Refused(f"{node.op} activation_alpha/beta do not match its activations")
        return [funcs[i * per_dir:(i + 1) * per_dir] for i in range(dirs)]


class _Cell:
    """One direction of an RNN/GRU/LSTM: the ops of one time step. A state of None is
    zero (no initial state), so its terms are left out."""

    def __init__(self, u: _Unroller, op: str, hidden: int, dtype: Any,
                 acts: list[Activation], clip: float | None, node: Node) -> None:
        self.u, self.op, self.hidden, self.dtype = u, op, hidden, dtype
        self.acts, self.clip = acts, clip
        self.rt: Value | None = None
        self.rb: Value | None = None  # GRU linear_before_reset: R's bias of the h gate
        self.peep: list[Value] | None = None  # LSTM peepholes i, o, f
        self.input_forget = bool(node.attr("input_forget", 0)) if op == "LSTM" else False
        self._rt_parts: dict[tuple[int, int], Value] = {}
        self._one: Value | None = None

    def scalar(self, value: float) -> Value:
        return self.u.const(np.array(value, self.dtype), "c")

    def gates(self, pre: Value, lo: int, hi: int) -> Value:
        return self.u.slice(pre, 1, lo * self.hidden, hi * self.hidden)

    def recur(self, h: Value, lo: int, hi: int) -> Value:
        """``h @ R[lo:hi gates]^T``."""
        assert self.rt is not None
        key = (lo, hi)
        if key not in self._rt_parts:
            full = (lo, hi) == (0, _GATES[self.op])
            self._rt_parts[key] = self.rt if full else self.u.slice(
                self.rt, 1, lo * self.hidden, hi * self.hidden)
        return self.u.emit("MatMul", [h, self._rt_parts[key]])

    def act(self, k: int, x: Value, clip: bool = True) -> Value:
        u = self.u
        if self.clip is not None and clip:
            x = u.emit("Clip", [x, self.scalar(-self.clip), self.scalar(self.clip)])
        name, alpha, beta = self.acts[k]
        if name in ("Sigmoid", "Tanh", "Relu", "Softsign", "Softplus"):
            return u.emit(name, [x])
        if name in ("LeakyRelu", "Elu"):
            return u.emit(name, [x], {"alpha": alpha})
        if name == "HardSigmoid":
            return u.emit(name, [x], {"alpha": alpha, "beta": beta})
        if name == "ThresholdedRelu":
            above = u.emit("Greater", [x, self.scalar(alpha or 0.0)])
            return u.emit("Where", [above, x, self.scalar(0.0)])
        if name == "Affine":
            return u.emit("Add", [u.emit("Mul", [x, self.scalar(alpha or 0.0)]),
                                  self.scalar(beta or 0.0)])
        # ScaledTanh
        inner = u.emit("Tanh", [u.emit("Mul", [x, self.scalar(beta or 0.0)])])
        return u.emit("Mul", [inner, self.scalar(alpha or 0.0)])

    def plus(self, a: Value, b: Value | None) -> Value:
        return a if b is None else self.u.emit("Add", [a, b])

    def mul(self, a: Value, b: Value) -> Value:
        return self.u.emit("Mul", [a, b])

    def one_minus(self, a: Value) -> Value:
        if self._one is None:
            self._one = self.scalar(1.0)
        return self.u.emit("Sub", [self._one, a])

    def step(self, xt: Value, h: Value | None, c: Value | None
             ) -> tuple[Value, Value | None]:
        """(H_t, C_t) from the step's input projection ``xt`` ([batch, gates*hidden])."""
        if self.op == "RNN":
            pre = self.plus(xt, None if h is None else self.recur(h, 0, 1))
            return self.act(0, pre), None
        if self.op == "GRU":
            return self._gru(xt, h), None
        return self._lstm(xt, h, c)

    def _gru(self, xt: Value, h: Value | None) -> Value:
        u = self.u
        zr = self.plus(self.gates(xt, 0, 2), None if h is None else self.recur(h, 0, 2))
        z = self.act(0, self.gates(zr, 0, 1))
        r = self.act(0, self.gates(zr, 1, 2))
        x_h = self.gates(xt, 2, 3)
        if self.rb is not None:  # linear_before_reset: r * (h @ Rh^T + Rbh)
            rbh = u.slice(self.rb, 0, 2 * self.hidden, 3 * self.hidden)
            rec = rbh if h is None else u.emit("Add", [self.recur(h, 2, 3), rbh])
            pre = u.emit("Add", [x_h, self.mul(r, rec)])
        else:  # (r * h) @ Rh^T
            pre = self.plus(x_h, None if h is None else self.recur(self.mul(r, h), 2, 3))
        candidate = self.act(1, pre)
        new = self.mul(self.one_minus(z), candidate)
        return new if h is None else u.emit("Add", [new, self.mul(z, h)])

    def _lstm(self, xt: Value, h: Value | None, c: Value | None) -> tuple[Value, Value]:
        u = self.u
        pre = self.plus(xt, None if h is None else self.recur(h, 0, 4))
        i_pre, o_pre = self.gates(pre, 0, 1), self.gates(pre, 1, 2)
        f_pre, c_pre = self.gates(pre, 2, 3), self.gates(pre, 3, 4)
        if self.peep is not None and c is not None:
            i_pre = u.emit("Add", [i_pre, self.mul(self.peep[0], c)])
            f_pre = u.emit("Add", [f_pre, self.mul(self.peep[2], c)])
        i = self.act(0, i_pre)
        f = self.one_minus(i) if self.input_forget else self.act(0, f_pre)
        cell = self.mul(i, self.act(1, c_pre))
        c_new = cell if c is None else u.emit("Add", [self.mul(f, c), cell])
        if self.peep is not None:
            o_pre = u.emit("Add", [o_pre, self.mul(self.peep[1], c_new)])
        o = self.act(0, o_pre)
        # The cell state itself is not clipped (as ONNX Runtime does).
        return self.mul(o, self.act(2, c_new, clip=False)), c_new


def _like(value: Value, item: Any, dtype: Any) -> np.ndarray:
    """``item`` as a scalar, or as a tensor of the body input's declared static shape."""
    shape = value.shape
    if shape and all(isinstance(d, int) for d in shape):
        return np.full(shape, item, dtype)
    return np.array(item, dtype)


def _evaluate(node: Node, arrays: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """Run one standard node on known arrays with ``onnx.reference``."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    from irkit.interop.onnx_types import attr_to_proto

    def no_graphs(graph: Graph) -> onnx.GraphProto:
        raise ValueError("nodes with subgraphs are not evaluated")

    names = [f"in{i}" if a is not None else "" for i, a in enumerate(arrays)]
    outs = [f"out{i}" for i in range(len(node.outputs))]
    proto = helper.make_node(node.op, names, outs)
    for key, attr in node.attrs.items():
        proto.attribute.append(attr_to_proto(key, attr, no_graphs))
    model = helper.make_model(
        helper.make_graph([proto], "known",
                          [helper.make_value_info(n, onnx.TypeProto()) for n in names if n],
                          [helper.make_value_info(n, onnx.TypeProto()) for n in outs]),
        opset_imports=[helper.make_opsetid("", opset)])
    feeds = {n: a for n, a in zip(names, arrays) if a is not None}
    return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]
