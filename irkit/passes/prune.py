"""``prune``: magnitude pruning.

- ``mode=unstructured``: zero the smallest-magnitude weights of MatMul/Gemm/Conv (and their
  fused forms) to ``sparsity``, per layer or with one global threshold. Pruned weights are
  recorded in ``graph.meta["sparsity"]`` (weight name -> fraction of zeros) and, on irkit
  ops, in a ``sparsity`` attribute, for backends with sparse kernels.
- ``mode=structured``: remove whole output neurons/channels with the smallest L1/L2 norm
  and shrink every consumer's input dimension (through activations, BatchNorm, pooling,
  per-channel Add/Mul, Flatten and elementwise ops whose operands both come down the
  chain, such as the erf-form GELU ``x * 0.5 * (1 + erf(x / sqrt 2))`` of a transformer's
  feed-forward), so the graph itself gets smaller for every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from irkit.ir import Graph, Node, Value
from irkit.ir.types import TensorType
from irkit.passes.base import (
    CALIBRATE_DOC,
    IRKIT_DOMAIN,
    Pass,
    PassContext,
    drop_unused_constants,
)
from irkit.passes.fuse_conv_pool import refuse_conv_pools, split_conv_pool
from irkit.passes.prune_data import (
    Moments,
    add_consumer_bias,
    channel_features,
    feature_moments,
    feature_norms,
    feature_weights,
)

_PER_CHANNEL_UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Gelu", "Elu", "Selu", "HardSigmoid", "Softplus",
    "Identity", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Erf", "Clip",
})
_PER_CHANNEL_BINARY = frozenset({"Add", "Sub", "Mul", "Div"})


def _weight_input(node: Node) -> Value | None:
    """The constant weight of a prunable node (input 1 of MatMul/Gemm/Conv and fused)."""
    ops = ("MatMul", "Gemm", "Conv") if not node.domain else ("MatMulBiasAct", "ConvBiasAct")
    if node.domain not in ("", IRKIT_DOMAIN) or node.op not in ops or len(node.inputs) < 2:
        return None
    w = node.inputs[1]
    if w is None or w.const is None or not np.issubdtype(w.const.dtype, np.floating):
        return None
    return w


def _excluded(node: Node, patterns: tuple[str, ...]) -> bool:
    names = {node.name, node.op, *(v.name for v in node.outputs)}
    return any(p in names for p in patterns)


@dataclass
class _Layer:
    """How a linear node's weights map to output and input channels."""

    node: Node
    kind: Literal["matmul", "conv"]
    out_axis: int  # weight axis of output channels
    in_axis: int  # weight axis of input channels

    @property
    def weight(self) -> np.ndarray:
        w = self.node.inputs[1]
        assert w is not None and w.const is not None
        return w.const


def _layer(node: Node) -> _Layer | None:
    if _weight_input(node) is None:
        return None
    if node.op in ("Conv", "ConvBiasAct"):
        if node.attr("group", 1) != 1:
            return None
        return _Layer(node, "conv", 0, 1)
    if node.op == "Gemm":
        if node.attr("transA", 0):
            return None
        return _Layer(node, "matmul", 0, 1) if node.attr("transB", 0) else \
            _Layer(node, "matmul", 1, 0)
    if node.op == "MatMulBiasAct" and len(node.inputs) > 3 and node.inputs[3] is not None:
        return None  # a residual adds across channels: the output cannot shrink
    if _weight_input(node) is not None and _weight_input(node).const.ndim == 2:  # type: ignore[union-attr]
        return _Layer(node, "matmul", 1, 0)
    return None


@dataclass
class _Chain:
    producer: _Layer
    path: list[Node]
    consumers: list[tuple[_Layer, int]]  # (layer, input features per channel: Flatten)
    flattens: list[tuple[Node, int]]  # (Flatten node, features per channel)


def _channel_const(value: Value | None, channels: int, axis: int, rank: int) -> bool | None:
    """True: a per-channel constant (to slice); False: a scalar; None: anything else."""
    if value is None or value.const is None:
        return None
    if value.const.size == 1:
        return False
    shape = value.const.shape
    expected = [1] * rank
    expected[axis] = channels
    padded = [1] * (rank - len(shape)) + list(shape)
    return True if padded == expected else None


def _find_chain(layer: _Layer) -> _Chain | None:
    out = layer.node.outputs[0]
    channels = layer.weight.shape[layer.out_axis]
    rank = len(out.shape) if out.shape is not None else None
    if rank is None:
        return None
    axis = 1 if layer.kind == "conv" else rank - 1
    path: list[Node] = []
    consumers: list[tuple[_Layer, int]] = []
    flattens: list[tuple[Node, int]] = []
    frontier = [(out, 1)]
    seen: set[int] = set()
    joins: list[Node] = []  # x * f(x): both inputs come down the chain (erf-form GELU)
    while frontier:
        value, per_channel = frontier.pop()
        if value.is_graph_output:
            return None
        for use in value.uses:
            node = use.node
            target = _layer(node)
            if target is not None and use.index == 0:
                consumers.append((target, per_channel))
                continue
            if id(node) in seen:
                continue
            other = node.inputs[1 - use.index] if len(node.inputs) == 2 else None
            if node.op in _PER_CHANNEL_BINARY and not node.domain and other is not None \
                    and other.const is None and per_channel == 1:
                seen.add(id(node))
                joins.append(node)
                path.append(node)
                frontier.append((node.outputs[0], per_channel))
                continue
            commutes = node.op in ("Add", "Mul") and not node.domain and use.index == 1
            if (use.index != 0 and not commutes) or len(node.outputs) != 1 \
                    or node.domain not in ("", IRKIT_DOMAIN):
                return None
            if node.domain == IRKIT_DOMAIN and node.op != "Gelu":
                return None
            if node.op in _PER_CHANNEL_UNARY or (node.domain and node.op == "Gelu"):
                if node.op == "Clip" and any(v is not None and v.const is None
                                             for v in node.inputs[1:]):
                    return None
            elif node.op in _PER_CHANNEL_BINARY and not node.domain:
                if _channel_const(node.inputs[1 - use.index], channels, axis, rank) is None:
                    return None
            elif node.op == "BatchNormalization" and layer.kind == "conv":
                if any(v is None or v.const is None for v in node.inputs[1:5]):
                    return None
            elif node.op == "Flatten" and layer.kind == "conv" and node.attr("axis", 1) == 1:
                shape = value.shape
                spatial = shape[2:] if shape is not None else None
                if spatial is None or not all(isinstance(d, int) for d in spatial):
                    return None
                size = int(np.prod(spatial, dtype=np.int64)) if spatial else 1
                flattens.append((node, size))
                frontier.append((node.outputs[0], size))
                continue
            else:
                return None
            seen.add(id(node))
            path.append(node)
            frontier.append((node.outputs[0], per_channel))
    if not consumers:
        return None
    inside = {id(out)} | {id(n.outputs[0]) for n in path}
    if any(id(v) not in inside for n in joins for v in n.inputs):
        return None  # the other operand comes from outside the chain: channels mix
    return _Chain(layer, path, consumers, flattens)


def _take(graph: Graph, node: Node, index: int, keep: np.ndarray, axis: int) -> None:
    value = node.inputs[index]
    assert value is not None and value.const is not None
    sliced = np.take(value.const, keep, axis=axis)
    node.set_input(index, graph.add_constant(value.name + "_pruned", sliced))


def _set_dim(value: Value, axis: int, size: int) -> None:
    t = value.type
    if isinstance(t, TensorType) and t.shape is not None:
        shape = list(t.shape)
        shape[axis] = size
        value.type = TensorType(t.dtype, tuple(shape))


@dataclass(frozen=True)
class Prune(Pass):
    """Magnitude pruning; see the module docstring. ``sparsity`` is the fraction of weights
    (unstructured) or of output channels per layer (structured) removed.
    ``structured = true`` (the spelling of DESIGN.md's spec example) is ``mode=structured``."""

    name = "prune"
    sparsity: float = 0.5
    mode: Literal["unstructured", "structured"] = "unstructured"
    norm: Literal["l1", "l2"] = "l2"
    scope: Literal["layer", "global"] = "layer"
    min_channels: int = 1
    exclude: tuple[str, ...] = ()
    criterion: Literal["weight", "activation"] = "weight"
    compensate: bool = True
    calibrate: Any = field(default=None, compare=False, metadata={"doc": CALIBRATE_DOC})
    structured: bool = False

    def __post_init__(self) -> None:
        if self.structured:
            object.__setattr__(self, "mode", "structured")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"prune: sparsity must be in [0, 1), got {self.sparsity}")

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        return self.mode == "structured" and self.criterion == "activation"

    def apply(self, graph: Graph, context: PassContext) -> tuple[bool, dict[str, Any]]:
        if self.sparsity == 0.0:
            return False, {}
        split = split_conv_pool(graph)  # irkit.ConvBiasActPool -> ConvBiasAct + pool
        if self.mode == "structured":
            result = self._structured(graph, context)
        else:
            result = self._unstructured(graph)
        if split:
            refuse_conv_pools(graph)  # the pruned convs keep their fused pooling
        return result

    # -- unstructured -----------------------------------------------------------------------
    def _unstructured(self, graph: Graph) -> tuple[bool, dict[str, Any]]:
        targets = [n for n in graph.nodes
                   if _weight_input(n) is not None and not _excluded(n, self.exclude)]
        if not targets:
            return False, {"layers": {}}
        global_threshold = None
        if self.scope == "global":
            arrays = [w.const for w in map(_weight_input, targets)
                      if w is not None and w.const is not None]
            everything = np.concatenate([np.abs(a).ravel() for a in arrays])
            global_threshold = float(np.quantile(everything, self.sparsity))
        sparsity_meta: dict[str, float] = dict(graph.meta.get("sparsity", {}))
        layers: dict[str, float] = {}
        for node in targets:
            w = _weight_input(node)
            assert w is not None and w.const is not None
            magnitude = np.abs(w.const)
            if global_threshold is None:
                count = round(self.sparsity * w.const.size)
                order = np.argsort(magnitude, axis=None, kind="stable")
                flat_mask = np.ones(w.const.size, bool)
                flat_mask[order[:count]] = False
                mask = flat_mask.reshape(w.const.shape)
            else:
                mask = magnitude > global_threshold
            pruned = np.where(mask, w.const, 0).astype(w.const.dtype)
            new = graph.add_constant(w.name + "_sparse", pruned)
            node.set_input(1, new)
            fraction = float(1.0 - np.count_nonzero(pruned) / pruned.size)
            sparsity_meta[new.name] = round(fraction, 6)
            if node.domain == IRKIT_DOMAIN:
                node.set_attr("sparsity", round(fraction, 6))
            layers[node.name or node.outputs[0].name] = round(fraction, 4)
        graph.meta["sparsity"] = sparsity_meta
        drop_unused_constants(graph)
        return True, {"layers": layers}

    # -- structured -------------------------------------------------------------------------
    def _scores(self, layer: _Layer) -> np.ndarray:
        w = np.moveaxis(layer.weight.astype(np.float64), layer.out_axis, 0)
        flat = w.reshape(w.shape[0], -1)
        return np.abs(flat).sum(axis=1) if self.norm == "l1" else np.sqrt((flat**2).sum(axis=1))

    def _structured(self, graph: Graph, context: PassContext) -> tuple[bool, dict[str, Any]]:
        layers: dict[str, list[int]] = {}
        batches = context.calibration
        use_data = bool(batches) and (self.criterion == "activation" or self.compensate)
        compensated = 0
        for node in graph.nodes:
            layer = _layer(node)
            if layer is None or _excluded(node, self.exclude):
                continue
            chain = _find_chain(layer)
            if chain is None:
                continue
            channels = layer.weight.shape[layer.out_axis]
            keep_count = max(self.min_channels, round(channels * (1.0 - self.sparsity)))
            if keep_count >= channels:
                continue
            moments = self._moments(graph, chain, batches) if use_data else None
            scores = self._scores(layer) if moments is None or self.criterion == "weight" \
                else self._activation_scores(chain, moments, channels)
            keep = np.sort(np.argsort(-scores, kind="stable")[:keep_count])
            removed = np.setdiff1d(np.arange(channels), keep)
            deltas = self._compensation(chain, moments, removed) \
                if moments is not None and self.compensate else []
            self._shrink(graph, chain, keep)
            for consumer, delta in deltas:
                compensated += add_consumer_bias(graph, consumer, delta)
            layers[node.name or node.outputs[0].name] = [channels, keep_count]
        drop_unused_constants(graph)
        return bool(layers), {"channels": layers, "compensated_consumers": compensated,
                              "criterion": self.criterion if use_data else "weight"}

    # -- data-aware scoring and compensation ------------------------------------------------
    def _moments(self, graph: Graph, chain: _Chain, batches: Any) -> dict[str, Moments]:
        feeds: dict[str, int] = {}
        for consumer, _ in chain.consumers:
            x = consumer.node.inputs[0]
            assert x is not None
            feeds[x.name] = 1 if consumer.kind == "conv" else len(x.shape or (0,)) - 1
        return feature_moments(graph, feeds, batches)

    def _activation_scores(self, chain: _Chain, moments: dict[str, Moments],
                           channels: int) -> np.ndarray:
        scores = np.zeros(channels)
        for consumer, per_channel in chain.consumers:
            x = consumer.node.inputs[0]
            assert x is not None
            stats = moments[x.name]
            spread = stats.std if self.compensate else stats.rms
            contribution = spread * feature_norms(consumer.weight, consumer.in_axis)
            scores += contribution.reshape(channels, per_channel).sum(axis=1)
        return scores

    def _compensation(self, chain: _Chain, moments: dict[str, Moments] | None,
                      removed: np.ndarray) -> list[tuple[Node, np.ndarray]]:
        out: list[tuple[Node, np.ndarray]] = []
        if moments is None or not len(removed):
            return out
        for consumer, per_channel in chain.consumers:
            x = consumer.node.inputs[0]
            assert x is not None
            features = channel_features(removed, per_channel)
            weights = feature_weights(consumer.weight, consumer.in_axis,
                                      consumer.kind == "conv")
            out.append((consumer.node, moments[x.name].mean[features] @ weights[features]))
        return out

    def _shrink(self, graph: Graph, chain: _Chain, keep: np.ndarray) -> None:
        layer = chain.producer
        node = layer.node
        out = node.outputs[0]
        rank = len(out.shape or ())
        axis = 1 if layer.kind == "conv" else rank - 1
        channels = layer.weight.shape[layer.out_axis]
        _take(graph, node, 1, keep, layer.out_axis)
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            bias = node.inputs[2]
            if bias.const is None:
                raise ValueError(f"{node.describe()}: bias is not constant")
            if bias.const.size == channels:
                node.set_input(2, graph.add_constant(
                    bias.name + "_pruned", np.take(bias.const.reshape(-1), keep).reshape(
                        [len(keep) if d == channels else d for d in bias.const.shape])))
        _set_dim(out, axis, len(keep))
        for path_node in chain.path:
            if path_node.op == "BatchNormalization":
                for i in range(1, 5):
                    _take(graph, path_node, i, keep, 0)
            elif path_node.op in _PER_CHANNEL_BINARY and not path_node.domain:
                index = 0 if path_node.inputs[0] is not None and path_node.inputs[0].is_constant \
                    else 1  # Add(b, h) as well as Add(h, b)
                other = path_node.inputs[index]
                if _channel_const(other, channels, axis, rank):
                    assert other is not None and other.const is not None
                    const_axis = axis - (rank - other.const.ndim)
                    _take(graph, path_node, index, keep, const_axis)
            _set_dim(path_node.outputs[0], axis, len(keep))
        for flatten, size in chain.flattens:
            _set_dim(flatten.outputs[0], 1, len(keep) * size)
        for consumer, per_channel in chain.consumers:
            rows = keep if per_channel == 1 else (
                keep[:, None] * per_channel + np.arange(per_channel)[None, :]).reshape(-1)
            _take(graph, consumer.node, 1, rows, consumer.in_axis)
