"""Drop whole attention heads: the width reduction of a transformer's attention.

An attention block in the IR is found from its ``Softmax``: walking back and forward
through the view ops between the projections (Reshape, Transpose, (Un)Squeeze, Gather,
Identity), the scale (Mul/Div by a scalar), the mask (an Add/Sub/Mul/Where operand that
broadcasts over the head axis), the two activation x activation MatMuls and the shape
arithmetic that feeds computed Reshape shapes, it ends at weight layers: the Q/K/V
projections (one fused ``in_proj`` or separate ones, each with an optional bias Add) and
the output projection. The head count ``H`` is the softmax input's axis -3; the
attention width ``dA`` is the output projection's input features; ``D = dA / H``.

Keeping ``H'`` heads takes, in every projection, the columns ``[section][kept head][D]``
(sections: q, k, v of a fused projection), the output projection's rows of the kept
heads, and rewrites the integer shape constants of the block (Reshape shapes, Concat
operands of computed shapes): ``H -> H'``, ``dA -> dA'`` and a fused width ``k*dA ->
k*dA'``. The head dim, the sequence length and ``d_model`` (the residual/LayerNorm width)
stay. A block whose sequence length or head dim equals one of those numbers is skipped
(the constant would be ambiguous). Every rewrite is checked: the pruned graph must compute
what the unpruned one computes with the dropped heads' output-projection rows zeroed, on
sample inputs; if not, the heads stay and the reason is reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from irkit.ir import Graph, Node, Value
from irkit.passes.prune import _Layer, _layer

_VIEW_OPS = frozenset({"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Gather", "Identity",
                       "Softmax", "Dropout", "IsNaN"})  # IsNaN: SDPA's guard on softmax
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Where"})
_SHAPE_OPS = frozenset({"Shape", "Slice", "Concat", "Gather", "Unsqueeze", "Squeeze", "Cast",
                        "Mul", "Div", "Add", "Sub", "Identity", "Size"})


class HeadPruneError(Exception):
    """This attention block cannot lose heads (the message says why)."""


@dataclass
class _Block:
    softmax: Node
    region: set[int] = field(default_factory=set)  # ids of nodes between the projections
    nodes: list[Node] = field(default_factory=list)
    projections: dict[int, tuple[_Layer, Node | None]] = field(default_factory=dict)
    out: _Layer | None = None
    shape_consts: list[tuple[Node, int]] = field(default_factory=list)
    matmuls: int = 0


def _const(value: Value | None) -> bool:
    return value is not None and value.const is not None


def _scalar(value: Value | None) -> bool:
    return value is not None and value.const is not None and value.const.size == 1


def _is_side(node: Node, value: Value) -> bool:
    """A mask operand: it broadcasts over the head axis (-3) of a rank >= 4 output."""
    out_shape = node.outputs[0].shape
    shape = value.shape
    if out_shape is None or shape is None or len(out_shape) < 4:
        return False
    return len(shape) < 3 or shape[len(shape) - 3] == 1


def _projection(value: Value) -> tuple[_Layer, Node | None] | None:
    """The weight layer (and its bias Add) producing ``value``, if one does."""
    node = value.producer
    if node is None:
        return None
    layer = _layer(node)
    if layer is not None and layer.kind == "matmul":
        return layer, None
    if node.op == "Add" and not node.domain and len(node.inputs) == 2:
        for i in (0, 1):
            x, bias = node.inputs[i], node.inputs[1 - i]
            if x is not None and _const(bias) and x.producer is not None \
                    and len(x.uses) == 1:
                inner = _layer(x.producer)
                if inner is not None and inner.kind == "matmul":
                    return inner, node
    return None


class _Walker:
    def __init__(self, softmax: Node) -> None:
        self.block = _Block(softmax)
        self.work: list[Node] = []

    def add(self, node: Node) -> None:
        if id(node) not in self.block.region:
            self.block.region.add(id(node))
            self.block.nodes.append(node)
            self.work.append(node)

    def shape_path(self, value: Value, seen: set[int]) -> None:
        """A computed shape: its Concat constants may hold H or dA; Shape reads are fine."""
        node = value.producer
        if node is None or id(node) in seen:
            if node is None and not _const(value):
                raise HeadPruneError(f"a reshape's shape comes from graph input {value.name}")
            return
        seen.add(id(node))
        if node.op not in _SHAPE_OPS:
            raise HeadPruneError(f"a computed shape goes through {node.op}")
        if node.op in ("Shape", "Size"):
            return
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if v.const is not None:
                if node.op == "Concat":
                    self.block.shape_consts.append((node, i))
                continue
            if node.op in ("Slice", "Gather") and i > 0:
                raise HeadPruneError("a computed shape slices at computed indices")
            self.shape_path(v, seen)

    def backward(self, node: Node) -> None:
        shape_seen: set[int] = set()
        for i, value in enumerate(node.inputs):
            if value is None or value.const is not None:
                if node.op == "Reshape" and i == 1 and value is not None:
                    self.block.shape_consts.append((node, i))
                continue
            if node.op == "Reshape" and i == 1:
                self.shape_path(value, shape_seen)
                continue
            if node.op in _ELEMENTWISE and _is_side(node, value):
                continue  # the attention mask
            if node.op in ("Gather", "Unsqueeze", "Squeeze") and i > 0:
                raise HeadPruneError(f"{node.op} with computed indices or axes")
            projection = _projection(value)
            if projection is not None:
                self.block.projections[id(projection[0].node)] = projection
                continue
            producer = value.producer
            if producer is None:
                raise HeadPruneError(f"the attention reads graph input {value.name} directly")
            if id(producer) in self.block.region:
                continue
            self.check(producer)
            self.add(producer)

    def forward(self, node: Node) -> None:
        for value in node.outputs:
            if value.is_graph_output:
                raise HeadPruneError(f"{value.name} (inside the attention) is a graph output")
            for use in value.uses:
                user = use.node
                if id(user) in self.block.region:
                    continue
                if user.op in ("Shape", "Size"):
                    continue
                layer = _layer(user)
                if layer is not None and use.index == 0 and layer.kind == "matmul":
                    if self.block.out is not None and self.block.out.node is not user:
                        raise HeadPruneError("the attention feeds two output projections")
                    self.block.out = layer
                    continue
                self.check(user)
                self.add(user)

    def check(self, node: Node) -> None:
        if node.domain:
            raise HeadPruneError(f"{node.domain}.{node.op} inside the attention")
        if node.op == "MatMul":
            if any(_const(v) for v in node.inputs):
                raise HeadPruneError("a weight MatMul inside the attention")
            self.block.matmuls += 1
            return
        if node.op in _VIEW_OPS:
            if node.op == "Softmax" and node is not self.block.softmax:
                raise HeadPruneError("two softmaxes in one attention block")
            return
        if node.op in _ELEMENTWISE:
            operands = [v for v in node.inputs if v is not None and not _scalar(v)]
            if node.op == "Where" or len(operands) <= 2:
                return
        raise HeadPruneError(f"{node.op} inside the attention")

    def run(self) -> _Block:
        self.add(self.block.softmax)
        while self.work:
            node = self.work.pop()
            self.backward(node)
            self.forward(node)
        for layer, bias in self.block.projections.values():
            for value in (bias or layer.node).outputs:
                if any(id(u.node) not in self.block.region for u in value.uses
                       if u.node.op not in ("Shape", "Size")):
                    raise HeadPruneError(f"projection output {value.name} is also used "
                                         "outside the attention")
        if self.block.matmuls != 2 or self.block.out is None or not self.block.projections:
            raise HeadPruneError("not a softmax(Q K^T) V block between weight layers")
        return self.block


@dataclass
class _Plan:
    heads: int
    head_dim: int
    width: int  # dA
    keep: np.ndarray  # kept head indices


def _plan(block: _Block, fraction: float) -> _Plan:
    scores_shape = block.softmax.inputs[0].shape if block.softmax.inputs[0] else None
    if scores_shape is None or len(scores_shape) < 4 or not isinstance(scores_shape[-3], int):
        raise HeadPruneError("the softmax input has no static head axis (-3)")
    heads = int(scores_shape[-3])
    assert block.out is not None
    width = int(block.out.weight.shape[block.out.in_axis])
    if heads < 2 or width % heads:
        raise HeadPruneError(f"{heads} heads over {width} features")
    dim = width // heads
    keep_count = max(1, round(heads * fraction))
    if keep_count >= heads:
        raise HeadPruneError(f"width {fraction} keeps all {heads} heads")
    sizes = {int(layer.weight.shape[layer.out_axis]) for layer, _ in block.projections.values()}
    if any(s % width for s in sizes):
        raise HeadPruneError(f"projection widths {sorted(sizes)} are not multiples of {width}")
    rewritten = {heads, width} | sizes
    sequence = {d for d in scores_shape[-2:] if isinstance(d, int)}
    if dim in rewritten or sequence & rewritten:
        raise HeadPruneError(f"ambiguous shape constants (heads {heads}, head dim {dim}, "
                             f"width {width}, sequence {sorted(sequence)})")
    score = np.zeros(heads)
    for layer, _ in block.projections.values():
        w = np.moveaxis(layer.weight.astype(np.float64), layer.out_axis, 0)
        per = w.reshape(-1, heads, dim, *w.shape[1:])
        score += (per**2).sum(axis=tuple(i for i in range(per.ndim) if i != 1))
    w = np.moveaxis(block.out.weight.astype(np.float64), block.out.in_axis, 0)
    score += (w.reshape(heads, -1) ** 2).sum(axis=1)
    keep = np.sort(np.argsort(-score, kind="stable")[:keep_count])
    return _Plan(heads, dim, width, keep)


def _features(plan: _Plan, sections: int) -> np.ndarray:
    return np.concatenate([s * plan.width + h * plan.head_dim + np.arange(plan.head_dim)
                           for s in range(sections) for h in plan.keep])


def _take(graph: Graph, node: Node, index: int, keep: np.ndarray, axis: int) -> None:
    value = node.inputs[index]
    assert value is not None and value.const is not None
    node.set_input(index, graph.add_constant(value.name + "_heads",
                                             np.take(value.const, keep, axis=axis)))


def _apply(graph: Graph, block: _Block, plan: _Plan, rewritten: set[tuple[int, int]]
           ) -> None:
    kept = len(plan.keep)
    mapping = {plan.heads: kept, plan.width: kept * plan.head_dim}
    for layer, bias in block.projections.values():
        total = int(layer.weight.shape[layer.out_axis])
        sections = total // plan.width
        mapping[total] = sections * kept * plan.head_dim
        cols = _features(plan, sections)
        _take(graph, layer.node, 1, cols, layer.out_axis)
        node = layer.node
        if len(node.inputs) > 2 and node.inputs[2] is not None and \
                _const(node.inputs[2]) and node.inputs[2].const.size == total:  # type: ignore[union-attr]
            _take(graph, node, 2, cols, node.inputs[2].const.ndim - 1)  # type: ignore[union-attr]
        if bias is not None:
            index = 1 if _const(bias.inputs[1]) else 0
            b = bias.inputs[index]
            assert b is not None and b.const is not None
            if b.const.shape[-1] != total:
                raise HeadPruneError(f"bias {b.name} is not per output feature")
            _take(graph, bias, index, cols, b.const.ndim - 1)
    assert block.out is not None
    _take(graph, block.out.node, 1, _features(plan, 1), block.out.in_axis)
    for node, index in block.shape_consts:
        if (id(node), index) in rewritten:  # a shape computation two reshapes share
            continue
        rewritten.add((id(node), index))
        value = node.inputs[index]
        assert value is not None and value.const is not None
        array = value.const
        if not np.issubdtype(array.dtype, np.integer):
            continue
        new = np.vectorize(lambda d: mapping.get(int(d), int(d)), otypes=[array.dtype])(array) \
            if array.size else array
        if not np.array_equal(new, array):
            node.set_input(index, graph.add_constant(value.name + "_heads", new))


def _by_output(graph: Graph) -> dict[str, Node]:
    return {v.name: n for n in graph.nodes for v in n.outputs}


def _retype(graph: Graph, changed: set[str]) -> Graph:
    """Re-infer the shapes of the values the pruning changed (an ONNX round trip)."""
    from irkit.interop.onnx_export import to_onnx
    from irkit.interop.onnx_import import load_onnx

    model = to_onnx(graph, check=False)
    kept = [vi for vi in model.graph.value_info if vi.name not in changed]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    out = load_onnx(model)
    out.meta.update(graph.meta)
    return out


def prune_heads(graph: Graph, fraction: float, feeds: Mapping[str, np.ndarray]
                ) -> tuple[Graph, dict[str, Any], dict[str, str]]:
    """``graph`` with each attention block narrowed to ``fraction`` of its heads.

    Returns (graph, {block: [heads, kept]}, {block: why it was skipped}); the input graph
    is not modified. ``feeds`` (a few sample inputs) check the rewrite numerically.
    """
    from irkit.passes.base import drop_unused_constants
    from irkit.passes.manager import compare_outputs, evaluate_graph

    work = graph.clone()
    masked = graph.clone()
    masked_nodes = _by_output(masked)
    done: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    changed: set[str] = set()
    rewritten: set[tuple[int, int]] = set()
    for softmax in [n for n in work.nodes if n.op == "Softmax" and not n.domain]:
        label = softmax.name or softmax.outputs[0].name
        try:
            block = _Walker(softmax).run()
            plan = _plan(block, fraction)
        except HeadPruneError as exc:
            skipped[label] = str(exc)
            continue
        _apply(work, block, plan, rewritten)
        assert block.out is not None
        out_node = masked_nodes[block.out.node.outputs[0].name]
        dropped = np.setdiff1d(np.arange(plan.width), _features(plan, 1))
        w = out_node.inputs[1]
        assert w is not None and w.const is not None
        zeroed = w.const.copy()
        index = [slice(None)] * zeroed.ndim
        index[block.out.in_axis] = dropped  # type: ignore[call-overload]
        zeroed[tuple(index)] = 0
        out_node.set_input(1, masked.add_constant(w.name + "_masked", zeroed))
        changed.update(v.name for n in block.nodes for v in n.outputs)
        changed.update(v.name for layer, bias in block.projections.values()
                       for node in (layer.node, bias) if node is not None for v in node.outputs)
        done[label] = [plan.heads, len(plan.keep)]
    if not done:
        return graph, done, skipped
    drop_unused_constants(work)
    try:
        pruned = _retype(work, changed)
        got = evaluate_graph(pruned, feeds)
    except Exception as exc:  # any failure means the rewrite was wrong
        skipped["all"] = f"the head-pruned graph does not run ({exc}); heads kept"
        return graph, {}, skipped
    want = evaluate_graph(masked, feeds)
    error = compare_outputs(got, want)
    scale = max(float(np.max(np.abs(np.asarray(v)))) for v in want.values())
    if not error.max_abs <= 1e-4 * (1.0 + scale):
        skipped["all"] = (f"the head-pruned graph differs from the head-masked one "
                          f"(max abs {error.max_abs:.3g}); heads kept")
        return graph, {}, skipped
    return pruned, done, skipped
