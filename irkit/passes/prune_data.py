"""Data-aware structured pruning: activation statistics on calibration batches score
channels by what they feed forward, and the mean of each removed channel is folded into
the consumers' biases (so removing a nearly constant channel costs almost nothing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from irkit.ir import Graph, Node, Value


@dataclass
class Moments:
    """Per-feature mean and mean square of one value over calibration data."""

    mean: np.ndarray
    square: np.ndarray

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.square - self.mean**2, 0.0))

    @property
    def rms(self) -> np.ndarray:
        return np.sqrt(self.square)


def feature_moments(graph: Graph, values: Mapping[str, int],
                    batches: Sequence[Mapping[str, Any]]) -> dict[str, Moments]:
    """Moments of the named values along their feature ``axis`` (name -> axis)."""
    from irkit.passes.manager import evaluate_graph

    work = graph.clone()
    by_name = {v.name: v for v in work.values()}
    work.set_outputs([*work.outputs, *(by_name[n] for n in values
                                       if by_name[n] not in work.outputs)])
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(values, 0)
    for batch in batches:
        outputs = evaluate_graph(work, batch)
        for name, axis in values.items():
            array = np.moveaxis(np.asarray(outputs[name], np.float64), axis, -1)
            flat = array.reshape(-1, array.shape[-1])
            sums[name] = sums.get(name, 0) + flat.sum(axis=0)
            squares[name] = squares.get(name, 0) + (flat**2).sum(axis=0)
            counts[name] += flat.shape[0]
    return {n: Moments(sums[n] / counts[n], squares[n] / counts[n]) for n in values}


def feature_weights(weight: np.ndarray, in_axis: int, is_conv: bool) -> np.ndarray:
    """A consumer's weights as [input feature, output] (conv kernels summed: the response
    to a constant input away from the borders)."""
    moved = np.moveaxis(weight.astype(np.float64), in_axis, 0)
    if is_conv:
        return moved.reshape(moved.shape[0], moved.shape[1], -1).sum(axis=-1)
    return moved.reshape(moved.shape[0], -1)


def feature_norms(weight: np.ndarray, in_axis: int) -> np.ndarray:
    moved = np.moveaxis(weight.astype(np.float64), in_axis, 0)
    return np.sqrt((moved.reshape(moved.shape[0], -1) ** 2).sum(axis=1))


def channel_features(channels: np.ndarray, per_channel: int) -> np.ndarray:
    """Consumer input features of producer channels (Flatten makes blocks of per_channel)."""
    if per_channel == 1:
        return channels
    return (channels[:, None] * per_channel + np.arange(per_channel)[None, :]).reshape(-1)


def add_consumer_bias(graph: Graph, node: Node, delta: np.ndarray) -> bool:
    """Add ``delta`` (one value per output channel) to a consumer's bias; False when its
    bias input is not a constant."""
    dtype = np.float32
    if node.op == "MatMul" and not node.domain:
        out = node.outputs[0]
        users = list(out.uses)
        add = graph.add_node("Add", [out, graph.add_constant(f"{out.name}_compensation",
                                                             delta.astype(dtype))],
                             after=node, types=[out.type])
        for use in users:
            use.node.set_input(use.index, add.output)
        if out.is_graph_output:
            name = out.name
            graph.set_outputs([add.output if v is out else v for v in graph.outputs])
            out.name = graph.unique_name(f"{name}_uncompensated")
            add.output.name = name
        return True
    scale = 1.0
    if node.op == "Gemm":
        scale = float(node.attr("beta", 1.0)) or 1.0
    index = 2
    current: Value | None = node.inputs[index] if len(node.inputs) > index else None
    if current is not None and current.const is None:
        return False
    if current is not None and current.const is not None:
        base = current.const.astype(np.float64)
        updated = (base.reshape(-1) + delta / scale if base.size == delta.size
                   else base + delta / scale)
        new = updated.reshape(base.shape) if base.size == delta.size else updated
    else:
        new = delta / scale
    value = graph.add_constant(f"{node.outputs[0].name}_bias_compensated", new.astype(dtype))
    while len(node.inputs) <= index:
        node.append_input(None)
    node.set_input(index, value)
    return True
