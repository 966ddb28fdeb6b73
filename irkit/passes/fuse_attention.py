"""Recognize softmax attention: ``MatMul(q, k^T) -> scale -> Softmax -> MatMul(·, v)``.

The chain becomes one ``irkit.ScaledDotProductAttention`` (irkit/ops/attention.py). Its
q, k and v are rebuilt from the tensors the exporter's head-splitting view ops read (the
packed QKV projection, say) with one Reshape/Gather/Transpose each, so a backend reads
them with strided loads; scalar factors on q, k or the scores go into ``scale``; the
Transpose/Reshape chain after the second MatMul becomes the op's ``perm`` and at most
one Reshape, so the result is written in the layout its consumer reads.
"""

from __future__ import annotations

import numpy as np

from irkit.ir import Graph, Node, TensorType, Value
from irkit.passes.base import IRKIT_DOMAIN, only_user, take_name, use_irkit_domain
from irkit.passes.layout_views import (
    ONE,
    RESHAPES,
    View,
    apply,
    emit_view,
    parse_shape,
    source_view,
    trace_view,
)


def _scalar_factor(node: Node, value: Value) -> float | None:
    """The factor a Mul/Div by a constant scalar applies to ``value``, else None."""
    if node.domain or node.op not in ("Mul", "Div") or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    other = b if a is value else a if (b is value and node.op == "Mul") else None
    if other is None or other is value or other.const is None or other.const.size != 1:
        return None
    factor = float(other.const.reshape(-1)[0])
    if factor == 0.0:
        return None
    return factor if node.op == "Mul" else 1.0 / factor


def _input_view(graph: Graph, value: Value, before: Node, swap_last: bool,
                reshapes: dict[tuple[int, tuple[int, ...]], Value]
                ) -> tuple[Value, float, list[Node]] | None:
    """``value`` (or its last two dims swapped) rebuilt from the tensor its view chain
    reads, with the scalar factor found on the way and the nodes that chain used."""
    view = trace_view(value)
    if view is None:
        return None
    if swap_last:
        if len(view.groups) < 2:
            return None
        groups = [*view.groups[:-2], view.groups[-1], view.groups[-2]]
        view = View(view.source, groups, view.offset, view.scale, view.nodes)
    rebuilt = emit_view(graph, view, before, reshapes)
    if rebuilt is None:
        return None
    return rebuilt, view.scale, view.nodes


def _output_layout(value: Value) -> tuple[list[int], Value, list[Node]] | None:
    """Follow the single-user Transpose/Reshape chain after the attention result: the
    permutation that lays the result out as the chain's last value, that value and the
    chain (``None`` when the result is read as it is)."""
    start = source_view(value)
    if start is None:
        return None
    original = [a for g in start.groups for a in g]
    view, last, chain = start, value, []  # type: View, Value, list[Node]
    while True:
        user = only_user(last)
        if user is None or user.op not in (*RESHAPES, "Transpose") or user.domain \
                or user.inputs[0] is not last:
            break
        moved = apply(user, view)
        if moved is None:
            break
        view, last = moved, user.output
        chain.append(user)
    if not chain:
        return None
    atoms = [a for g in view.groups for a in g if a.size != ONE]
    if len(atoms) != len(original) or any(a not in original for a in atoms):
        return None  # a dim was split: not a permutation of the result
    dims_of = {a: d for d, g in enumerate(start.groups) for a in g}
    order = [dims_of[a] for a in atoms]
    unit = [d for d, g in enumerate(start.groups) if not g]  # size-1 dims: anywhere
    return unit + order, last, chain


def _same_dims(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x == y for x, y in zip(a, b))


def fuse_attention(graph: Graph, softmax: Node) -> bool:
    if softmax.op != "Softmax" or softmax.domain or softmax.inputs[0] is None:
        return False
    scores = softmax.inputs[0]
    rank = len(scores.shape) if scores.shape is not None else 0
    if rank < 3 or int(softmax.attr("axis", -1)) % rank != rank - 1:
        return False
    if graph.opset_imports.get("", 13) < 13 and rank - 1 != int(softmax.attr("axis", 1)):
        return False
    scale, chain = 1.0, [softmax]
    value = scores
    while value.producer is not None and value.producer.op in ("Mul", "Div"):
        factor = _scalar_factor(value.producer, _data(value.producer))
        if factor is None or only_user(value) is None:
            break
        scale *= factor
        chain.insert(0, value.producer)
        value = _data(value.producer)
    qk = value.producer
    if qk is None or qk.op != "MatMul" or qk.domain or only_user(value) is None:
        return False
    pv = only_user(softmax.output)
    if pv is None or pv.op != "MatMul" or pv.domain or pv.inputs[0] is not softmax.output:
        return False
    q, kt, v = qk.inputs[0], qk.inputs[1], pv.inputs[1]
    if q is None or kt is None or v is None or any(x.const is not None for x in (q, kt, v)):
        return False
    shapes = [parse_shape(x.shape) for x in (q, kt, v, pv.output)]
    if any(s is None or len(s) != rank for s in shapes):
        return False
    sq, skt, sv, so = shapes
    assert sq is not None and skt is not None and sv is not None and so is not None
    if not (_same_dims(sq[:-2], skt[:-2]) and _same_dims(sq[:-2], sv[:-2])
            and sq[-1] == skt[-2] and skt[-1] == sv[-2]):
        return False  # broadcasting batch dims: leave it to the MatMuls
    if any(x.dtype is None or x.dtype != q.dtype for x in (kt, v)):
        return False
    layout = _output_layout(pv.output)
    result, attrs = pv.output, {"scale": 1.0}  # type: Value, dict[str, object]
    out_shape = so
    if layout is not None:
        perm, result, out_chain = layout
        chain += out_chain
        if perm != list(range(rank)):
            attrs["perm"] = perm
            out_shape = [so[p] for p in perm]
    want = parse_shape(result.shape)
    if want is None or (not _same_dims(want, out_shape)
                        and sum(not d.is_const for d in want) > 1):
        return False
    if any(x.is_graph_output for n in [qk, *chain, pv] for x in n.outputs if x is not result):
        return False
    anchor = result.producer
    assert anchor is not None and q.dtype is not None
    # From here on the rewrite happens.
    reshapes: dict[tuple[int, tuple[int, ...]], Value] = {}
    found = [_input_view(graph, q, qk, False, reshapes),
             _input_view(graph, kt, qk, True, reshapes),
             _input_view(graph, v, qk, False, reshapes)]
    inputs: list[Value] = []
    for index, (original, hit) in enumerate(zip((q, kt, v), found)):
        if hit is not None and (index < 2 or hit[1] == 1.0):
            inputs.append(hit[0])
            scale *= hit[1]
            continue
        if hit is not None:
            _remove_dead(graph, [hit[0].producer] if hit[0].producer else [])
        if index == 1:
            perm_k = [*range(rank - 2), rank - 1, rank - 2]
            k_shape = [*skt[:-2], skt[-1], skt[-2]]
            assert original.dtype is not None
            inputs.append(graph.add_node("Transpose", [original], {"perm": perm_k}, before=qk,
                                         types=[TensorType(original.dtype, tuple(
                                             d.dim() for d in k_shape))]).output)
        else:
            inputs.append(original)
    attrs["scale"] = float(scale)
    use_irkit_domain(graph)
    node = graph.add_node("ScaledDotProductAttention", inputs, attrs, domain=IRKIT_DOMAIN,
                          before=anchor, name=pv.name, outputs=["attention"],
                          types=[TensorType(q.dtype, tuple(d.dim() for d in out_shape))])
    out = node.output
    if not _same_dims(want, out_shape):
        shape = graph.add_constant("attention_shape", np.array(
            [d.coef if d.is_const else -1 for d in want], np.int64))
        out = graph.add_node("Reshape", [out, shape], before=anchor,
                             types=[result.type]).output
    result.replace_all_uses_with(out)
    name = result.name
    _remove_dead(graph, [anchor])
    take_name(graph, out, name)
    return True


def _data(node: Node) -> Value:
    """The non-constant input of a binary op with one constant scalar."""
    a, b = node.inputs[0], node.inputs[1]
    assert a is not None and b is not None
    return b if a.const is not None and a.const.size == 1 else a


def _remove_dead(graph: Graph, start: list[Node]) -> None:
    """Erase ``start`` and, transitively, the producers only they were reading."""
    work = list(start)
    while work:
        node = work.pop()
        if node.graph is not graph or any(v.is_used for v in node.outputs) or node.subgraphs():
            continue
        producers = [v.producer for v in node.inputs if v is not None and v.producer is not None]
        graph.remove_node(node)
        work.extend(producers)


__all__ = ["fuse_attention"]
