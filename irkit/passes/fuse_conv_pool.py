"""Conv + pooling fusion for the ``fuse`` pass: ``ConvBiasAct``/``Conv`` followed by a
2-D MaxPool/AveragePool without padding becomes ``irkit.ConvBiasActPool``
(irkit/ops/conv_pool.py), whose kernel pools the convolution's output tile in its
epilogue. Passes that rewrite convolutions (quantize, prune, lowrank) call
:func:`split_conv_pool` first, so they see the ``ConvBiasAct`` they know (prune, whose
convolutions stay float, fuses them again after).
"""

from __future__ import annotations

from typing import Any

from irkit.ir import Graph, Node
from irkit.ops.conv_pool import POOLS, conv_output_type, pool_attrs
from irkit.ops.fused import CONV_ATTRS
from irkit.passes.base import IRKIT_DOMAIN, only_user, take_name, use_irkit_domain
from irkit.passes.fuse_patterns import erase_chain

_POOL_OF = {op: pool for pool, op in POOLS.items()}


def _plain_pool(node: Node) -> bool:
    """A 2-D pool over windows that never leave the input (no pads, dilation, ceil)."""
    kernel = node.attr("kernel_shape")
    if kernel is None or len(kernel) != 2:
        return False
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return False
    if any(node.attr("pads", None) or []) or node.attr("ceil_mode", 0):
        return False
    if any(d != 1 for d in node.attr("dilations", None) or []):
        return False
    if node.attr("storage_order", 0):
        return False
    return not any(v.is_used for v in node.outputs[1:])


def fuse_conv_pool(graph: Graph, pool: Node) -> bool:
    if pool.domain or pool.op not in _POOL_OF or not _plain_pool(pool):
        return False
    x = pool.inputs[0]
    conv = x.producer if x is not None else None
    if x is None or conv is None or only_user(x) is not pool:
        return False
    if conv.domain == IRKIT_DOMAIN and conv.op == "ConvBiasAct":
        if len(conv.inputs) > 3 and conv.inputs[3] is not None:
            return False  # a residual add: keep it at full resolution
        act = conv.attr("act", "none")
    elif not conv.domain and conv.op == "Conv":
        act = "none"
    else:
        return False
    w = conv.inputs[1]
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    if w is None or w.const is None or w.const.ndim != 4 or \
            (bias is not None and bias.const is None):
        return False
    if conv_output_type(conv) is None:
        return False
    attrs: dict[str, Any] = {k: conv.attrs[k] for k in CONV_ATTRS if k in conv.attrs}
    kernel = list(pool.attr("kernel_shape"))
    attrs.update(act=act, pool=_POOL_OF[pool.op], pool_kernel_shape=kernel,
                 pool_strides=list(pool.attr("strides", None) or [1, 1]))
    use_irkit_domain(graph)
    inputs = [conv.inputs[0], w] + ([bias] if bias is not None else [])
    result = pool.outputs[0]
    fused = graph.add_node("ConvBiasActPool", inputs, attrs, domain=IRKIT_DOMAIN,
                           before=pool, types=[result.type], name=conv.name)
    result.replace_all_uses_with(fused.output)
    name = result.name
    erase_chain(graph, [conv, pool])
    take_name(graph, fused.output, name)
    return True


def split_conv_pool(graph: Graph) -> int:
    """Undo :func:`fuse_conv_pool`: each ``irkit.ConvBiasActPool`` becomes
    ``ConvBiasAct`` (``Conv`` when it has no activation or bias) and its pool."""
    count = 0
    for node in list(graph.nodes):
        if node.domain != IRKIT_DOMAIN or node.op != "ConvBiasActPool":
            continue
        conv_type = conv_output_type(node)
        if conv_type is None:
            continue
        attrs: dict[str, Any] = {k: node.attrs[k] for k in CONV_ATTRS if k in node.attrs}
        inputs = list(node.inputs[:3])
        act = node.attr("act", "none")
        if act == "none":
            conv = graph.add_node("Conv", inputs, attrs, before=node, types=[conv_type],
                                  name=node.name)
        else:
            attrs["act"] = act
            conv = graph.add_node("ConvBiasAct", inputs, attrs, domain=IRKIT_DOMAIN,
                                  before=node, types=[conv_type], name=node.name)
        pool = graph.add_node(POOLS[node.attr("pool", "max")], [conv.output],
                              pool_attrs(node), before=node, types=[node.outputs[0].type])
        result = node.outputs[0]
        result.replace_all_uses_with(pool.output)
        name = result.name
        graph.remove_node(node)
        take_name(graph, pool.output, name)
        count += 1
    return count


def refuse_conv_pools(graph: Graph) -> int:
    """:func:`fuse_conv_pool` over the whole graph (after a pass that split them)."""
    return sum(fuse_conv_pool(graph, node) for node in list(graph.nodes)
               if node.graph is graph)
