"""``irkit.ConvBiasActPool``: a convolution with its epilogue and the pooling after it.

``irkit.ConvBiasActPool(x, w, b?) {<Conv attrs>, act, pool, pool_kernel_shape,
pool_strides}``: ``Pool(act(Conv(x, w, b)))`` where ``pool`` is ``max`` (MaxPool) or
``average`` (AveragePool), 2-D, without padding, dilation or ceil mode. The fuse pass
forms it from ``ConvBiasAct``/``Conv`` followed by such a pool, so a backend can pool the
convolution's output tile in its epilogue instead of writing the full-resolution
activation and reading it back (irkit/lower/conv_pool.py).
"""

from __future__ import annotations

from typing import Any

from irkit.ir import Graph, Node, TensorType, Value
from irkit.ir.types import ValueType
from irkit.ops.fused import CONV_ATTRS, emit_activation, keep_output_names
from irkit.ops.registry import register_irkit_op

POOLS = {"max": "MaxPool", "average": "AveragePool"}


def conv_output_type(node: Node) -> TensorType | None:
    """The type of the convolution's (unpooled) result, from ``x``, ``w`` and the Conv
    attributes; None when the spatial dims are not static."""
    x, w = node.inputs[0], node.inputs[1]
    if x is None or w is None or x.shape is None or w.shape is None or len(x.shape) != 4:
        return None
    in_hw = x.shape[2:]
    if not all(isinstance(d, int) for d in in_hw) or not isinstance(w.shape[0], int):
        return None
    kernel = list(node.attr("kernel_shape", None) or w.shape[2:])
    strides = list(node.attr("strides", None) or [1, 1])
    dil = list(node.attr("dilations", None) or [1, 1])
    pads = list(node.attr("pads", None) or [0, 0, 0, 0])
    auto = node.attr("auto_pad", "NOTSET")
    out: list[Any] = []
    for d in range(2):
        size = int(in_hw[d])  # type: ignore[arg-type]
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-size // strides[d]))
            continue
        pad = 0 if auto == "VALID" else pads[d] + pads[d + 2]
        out.append((size + pad - dil[d] * (kernel[d] - 1) - 1) // strides[d] + 1)
    assert x.dtype is not None
    return TensorType(x.dtype, (x.shape[0], w.shape[0], *out))


def pool_attrs(node: Node) -> dict[str, Any]:
    return {"kernel_shape": list(node.attr("pool_kernel_shape")),
            "strides": list(node.attr("pool_strides", None) or node.attr("pool_kernel_shape"))}


def _decompose_conv_bias_act_pool(graph: Graph, node: Node) -> list[Value]:
    attrs = {k: node.attrs[k] for k in CONV_ATTRS if k in node.attrs}
    inputs = [node.inputs[0], node.inputs[1]]
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        inputs.append(node.inputs[2])
    conv_type = conv_output_type(node) or node.outputs[0].type
    y = graph.add_node("Conv", inputs, attrs, before=node, types=[conv_type]).output
    y = emit_activation(graph, node, y, node.attr("act", "none"))
    # emit_activation types its values like the node's (pooled) output: retype every
    # value between the Conv and the pool.
    _retype_between(y, conv_type)
    pool = node.attr("pool", "max")
    out = graph.add_node(POOLS[pool], [y], pool_attrs(node), before=node,
                         types=[node.outputs[0].type]).output
    return keep_output_names(graph, node, [out])


def _retype_between(value: Value, conv_type: ValueType) -> None:
    stack = [value]
    seen: set[int] = set()
    while stack:
        v = stack.pop()
        if id(v) in seen or v.producer is None or v.producer.op == "Conv":
            continue
        seen.add(id(v))
        v.type = conv_type
        stack.extend(i for i in v.producer.inputs if i is not None and i.const is None)


register_irkit_op("ConvBiasActPool", _decompose_conv_bias_act_pool,
                  "Pool(act(Conv(x, w, b))); Conv attributes, act, pool=max|average, "
                  "pool_kernel_shape, pool_strides (no pool padding)")
