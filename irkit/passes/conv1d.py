"""``conv1d-as-2d``: 1-D convolutions as 2-D ones over a height of 1.

``Conv`` (and ``irkit.ConvBiasAct``) over ``[N, C, L]`` with constant weights becomes
``Squeeze(Conv(Unsqueeze(x, 2), w[:, :, None, :]), 2)`` with the kernel, strides,
dilations and pads of the length axis moved to the width axis. The result is the same
arithmetic; what changes is the kernel that runs it: a backend whose fast convolution
(packed im2col GEMM, depthwise) is 2-D otherwise runs a 1-D Conv as a direct loop nest,
5-6x slower than ONNX Runtime on a Conv1d audio classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from irkit.ir import Graph, Node, Value
from irkit.ir.types import TensorType
from irkit.passes.base import IRKIT_DOMAIN, rewrite_each, take_name

Lowers = Callable[[str, str], bool]
_SPATIAL_ATTRS = ("kernel_shape", "strides", "dilations")


def _is_conv1d(node: Node) -> bool:
    if not ((node.domain in ("", "ai.onnx") and node.op == "Conv")
            or (node.domain == IRKIT_DOMAIN and node.op == "ConvBiasAct")):
        return False
    x, w = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    return (x is not None and w is not None and w.const is not None and w.const.ndim == 3
            and x.shape is not None and len(x.shape) == 3 and out.shape is not None
            and len(out.shape) == 3
            and str(node.attr("auto_pad", "NOTSET")) in ("NOTSET", "VALID"))


def conv1d_as_2d(graph: Graph, lowers: Lowers | None = None) -> tuple[Graph, int]:
    """``graph`` (itself when it has no 1-D Conv, else a rewritten copy) and how many
    Convs were rewritten; ``lowers(op, domain)`` says whether the backend takes the op."""
    def wanted(node: Node) -> bool:
        return _is_conv1d(node) and (lowers is None or lowers(node.op, node.domain))

    return rewrite_each(graph, wanted, _rewrite)


def _unsqueezed(graph: Graph, value: Value, axes: Value, before: Node) -> Value:
    assert value.shape is not None and value.dtype is not None
    shape = (*value.shape[:2], 1, *value.shape[2:])
    return graph.add_node("Unsqueeze", [value, axes], before=before,
                          types=[TensorType(value.dtype, shape)]).output


def _rewrite(graph: Graph, node: Node) -> None:
    x, w_value = node.inputs[0], node.inputs[1]
    assert x is not None and w_value is not None and w_value.const is not None
    axes = graph.add_constant("conv1d_axis", np.array([2], np.int64))
    inputs: list[Value | None] = [_unsqueezed(graph, x, axes, node),
                                  graph.add_constant(f"{w_value.name}_2d",
                                                     np.asarray(w_value.const)[:, :, None, :])]
    inputs += node.inputs[2:3]
    if len(node.inputs) > 3:  # ConvBiasAct's residual, [N, C, L] like the output
        residual = node.inputs[3]
        inputs.append(None if residual is None else _unsqueezed(graph, residual, axes, node))
    attrs: dict[str, Any] = {k: node.attr(k) for k in node.attrs}
    for key in _SPATIAL_ATTRS:
        if key in attrs:
            attrs[key] = [1, *attrs[key]]
    if "pads" in attrs:
        begin, end = attrs["pads"]
        attrs["pads"] = [0, begin, 0, end]
    out = node.outputs[0]
    assert out.shape is not None and out.dtype is not None
    conv = graph.add_node(node.op, inputs, attrs, domain=node.domain, before=node,
                          name=node.name,
                          types=[TensorType(out.dtype, (*out.shape[:2], 1, out.shape[2]))])
    y = graph.add_node("Squeeze", [conv.output, axes], before=node, types=[out.type]).output
    out.replace_all_uses_with(y)
    name = out.name
    graph.remove_node(node)
    take_name(graph, y, name)
