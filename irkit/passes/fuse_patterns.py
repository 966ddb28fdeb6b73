"""Recognizers for the decomposed forms exporters emit: LayerNorm, erf-GELU, Softmax.

Each rewrite is ``(graph, node) -> bool``: it looks at a chain anchored on ``node`` and,
on a match, inserts the single op and erases the chain (returns True); else False.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from irkit.ir import Graph, Node, Value
from irkit.passes.base import IRKIT_DOMAIN, only_user, take_name, use_irkit_domain

Rewrite = Callable[[Graph, Node], bool]


def scalar_const(value: Value | None) -> float | None:
    """The number held by a constant of one element, else None."""
    if value is None or value.const is None or value.const.size != 1:
        return None
    return float(value.const.reshape(-1)[0])


def other_input(node: Node, value: Value) -> Value | None:
    """For a binary op, the input that is not ``value`` (None if neither or both)."""
    a, b = node.inputs[0], node.inputs[1]
    if a is value and b is not value:
        return b
    if b is value and a is not value:
        return a
    return None


def single_user(value: Value, op: str) -> Node | None:
    user = only_user(value)
    return user if user is not None and user.op == op and not user.domain else None


def erase_chain(graph: Graph, nodes: list[Node]) -> None:
    """Erase matched nodes, consumers first (their outputs must be unused by then)."""
    for node in sorted(nodes, key=lambda n: -graph.nodes.index(n)):
        graph.remove_node(node)


def _reduce_axes(node: Node) -> tuple[int, ...] | None:
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        if node.inputs[1].const is None:
            return None
        axes = node.inputs[1].const.reshape(-1).tolist()
    return None if axes is None else tuple(int(a) for a in axes)


def _normalize_axes(axes: tuple[int, ...], rank: int | None) -> tuple[int, ...] | None:
    if rank is None:
        return axes if all(a < 0 for a in axes) else None
    return tuple(sorted(a - rank if a >= 0 else a for a in axes))


# -- GELU: x * 0.5 * (1 + erf(x / sqrt 2)) in any association of the Muls ------------------

def fuse_erf_gelu(graph: Graph, erf: Node, use_onnx_gelu: bool = False) -> bool:
    if erf.op != "Erf" or erf.domain:
        return False
    div = erf.inputs[0].producer if erf.inputs[0] is not None else None
    if div is None or div.op not in ("Div", "Mul") or div.domain:
        return False
    x = div.inputs[0]
    k = scalar_const(div.inputs[1])
    if x is None or k is None:
        return False
    if not math.isclose(k, math.sqrt(2.0) if div.op == "Div" else 1 / math.sqrt(2.0),
                        rel_tol=1e-4):
        return False
    add = single_user(erf.output, "Add")
    if add is None or scalar_const(other_input(add, erf.output)) != 1.0:
        return False
    first = only_user(add.output)
    if first is None or first.op != "Mul":
        return False
    second = only_user(first.output) if first.output else None
    chain = [div, erf, add, first]
    partner = other_input(first, add.output)
    result: Value
    if partner is x and second is not None and second.op == "Mul" and math.isclose(
        scalar_const(other_input(second, first.output)) or 0.0, 0.5, rel_tol=1e-6
    ):
        chain.append(second)  # (x * (1 + erf)) * 0.5
        result = second.output
    elif partner is not None and partner.producer is not None and partner.producer.op == "Mul":
        half = partner.producer  # (x * 0.5) * (1 + erf)
        if other_input(half, x) is None or not math.isclose(
            scalar_const(other_input(half, x)) or 0.0, 0.5, rel_tol=1e-6
        ) or only_user(half.output) is not first:
            return False
        chain.append(half)
        result = first.output
    elif partner is not None and scalar_const(partner) == 0.5 and second is not None \
            and second.op == "Mul" and other_input(second, first.output) is x:
        chain.append(second)  # ((1 + erf) * 0.5) * x
        result = second.output
    else:
        return False
    if any(v.is_graph_output for n in chain for v in n.outputs if v is not result):
        return False
    last = result.producer
    assert last is not None
    if use_onnx_gelu:
        gelu = graph.add_node("Gelu", [x], {"approximate": "none"}, before=last,
                              types=[result.type])
    else:
        use_irkit_domain(graph)
        gelu = graph.add_node("Gelu", [x], {"approximate": "none"}, domain=IRKIT_DOMAIN,
                              before=last, types=[result.type])
    result.replace_all_uses_with(gelu.output)
    name = result.name
    erase_chain(graph, chain)
    take_name(graph, gelu.output, name)
    return True


# -- LayerNorm: ReduceMean-Sub-Pow-ReduceMean-Add-Sqrt-Div(-Mul)(-Add) -------------------

def fuse_layer_norm(graph: Graph, mean: Node) -> bool:
    if mean.op != "ReduceMean" or mean.domain or not mean.attr("keepdims", 1):
        return False
    x = mean.inputs[0]
    axes = _reduce_axes(mean)
    if x is None or axes is None:
        return False
    rank = len(x.shape) if x.shape is not None else None
    axes = _normalize_axes(axes, rank)
    if axes is None or axes != tuple(range(-len(axes), 0)):
        return False  # LayerNormalization normalizes trailing axes only
    subs = [u for u in mean.output.users if u.op == "Sub" and u.inputs[0] is x]
    if len(subs) != 1 or len(mean.output.uses) != 1:
        return False
    sub = subs[0]
    centered = sub.output
    users = {u.op: u for u in centered.users}
    if len(centered.uses) != 2 or set(users) not in ({"Pow", "Div"}, {"Mul", "Div"}):
        return False
    square = users.get("Pow") or users["Mul"]
    if square.op == "Pow" and scalar_const(square.inputs[1]) != 2.0:
        return False
    if square.op == "Mul" and not (square.inputs[0] is centered and square.inputs[1] is centered):
        return False
    var = single_user(square.output, "ReduceMean")
    if var is None or _normalize_axes(_reduce_axes(var) or (), rank) != axes:
        return False
    add_eps = single_user(var.output, "Add")
    eps = scalar_const(other_input(add_eps, var.output)) if add_eps is not None else None
    sqrt = single_user(add_eps.output, "Sqrt") if add_eps is not None else None
    div = users["Div"]
    if eps is None or add_eps is None or sqrt is None or div.inputs[1] is not sqrt.output \
            or only_user(sqrt.output) is not div:
        return False
    chain = [mean, sub, square, var, add_eps, sqrt, div]
    result = div.output
    norm_shape = tuple(x.shape[len(x.shape) - len(axes):]) if x.shape is not None else None
    dtype = x.dtype.numpy if x.dtype is not None else np.dtype(np.float32)
    scale: Value | None = None
    bias: Value | None = None
    mul = single_user(result, "Mul")
    if mul is not None and _is_affine_param(other_input(mul, result), norm_shape):
        scale = other_input(mul, result)
        chain.append(mul)
        result = mul.output
        add = single_user(result, "Add")
        if add is not None and _is_affine_param(other_input(add, result), norm_shape):
            bias = other_input(add, result)
            chain.append(add)
            result = add.output
    if scale is None:
        scale = graph.add_constant("ln_scale", np.ones(norm_shape or (), dtype))
    if any(v.is_graph_output for n in chain for v in n.outputs if v is not result):
        return False
    assert scale.const is not None
    scale_value = graph.add_constant("ln_scale", scale.const.reshape(norm_shape or -1))
    inputs: list[Value | None] = [x, scale_value]
    if bias is not None and bias.const is not None:
        inputs.append(graph.add_constant("ln_bias", bias.const.reshape(norm_shape or -1)))
    ln = graph.add_node("LayerNormalization", inputs, {"axis": -len(axes), "epsilon": eps},
                        before=chain[-1], types=[result.type])
    result.replace_all_uses_with(ln.output)
    name = result.name
    erase_chain(graph, chain)
    take_name(graph, ln.output, name)
    return True


def _is_affine_param(value: Value | None, norm_shape: tuple | None) -> bool:
    if value is None or value.const is None or norm_shape is None:
        return False
    squeezed = value.const.shape
    while squeezed and squeezed[0] == 1 and len(squeezed) > len(norm_shape):
        squeezed = squeezed[1:]
    return tuple(squeezed) == tuple(norm_shape)


# -- Softmax: Exp(x - ReduceMax(x)) / ReduceSum(...) over one axis -------------------------

def fuse_softmax(graph: Graph, exp: Node) -> bool:
    if exp.op != "Exp" or exp.domain or exp.inputs[0] is None:
        return False
    chain = [exp]
    source = exp.inputs[0]
    x: Value | None = source
    sub = source.producer
    if sub is not None and sub.op == "Sub" and not sub.domain and only_user(sub.output) is exp:
        rmax = sub.inputs[1].producer if sub.inputs[1] is not None else None
        if rmax is not None and rmax.op == "ReduceMax" and rmax.inputs[0] is sub.inputs[0] \
                and only_user(rmax.output) is sub:
            x = sub.inputs[0]
            chain = [rmax, sub, exp]
    users = {u.op: u for u in exp.output.users}
    if len(exp.output.uses) != 2 or set(users) != {"ReduceSum", "Div"}:
        return False
    rsum, div = users["ReduceSum"], users["Div"]
    if div.inputs[0] is not exp.output or div.inputs[1] is not rsum.output \
            or only_user(rsum.output) is not div or not rsum.attr("keepdims", 1):
        return False
    axes = _reduce_axes(rsum)
    if x is None or axes is None or len(axes) != 1:
        return False
    if len(chain) == 3 and _reduce_axes(chain[0]) != axes:
        return False
    chain += [rsum, div]
    if any(v.is_graph_output for n in chain for v in n.outputs if v is not div.output):
        return False
    softmax = graph.add_node("Softmax", [x], {"axis": axes[0]}, before=div,
                             types=[div.output.type])
    div.output.replace_all_uses_with(softmax.output)
    name = div.output.name
    erase_chain(graph, chain)
    take_name(graph, softmax.output, name)
    return True
