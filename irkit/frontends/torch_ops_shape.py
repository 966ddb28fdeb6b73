"""ATen -> ONNX lowerings, part two: shapes, indexing, gather/scatter and tensor creation.

Registered into ``torch_ops.LOWERINGS`` (importing ``torch_ops`` imports this module).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import fx

from irkit.frontends.torch_lowering import LoweringContext, LoweringUnsupported, sym_expr
from irkit.frontends.torch_ops_base import INT64_MAX, _as_list, _axis, lowers
from irkit.ir import DType, Value


# -- shapes, indexing and data movement ---------------------------------------------------
@lowers("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default")
def lower_view(ctx: LoweringContext, x: Any, size: Any) -> Value:
    matmul = _broadcast_matmul(ctx, x)
    if matmul is not None:
        return matmul
    if _same_shape(ctx, x, ctx.node):
        return ctx.get(x)
    return ctx.emit("Reshape", [ctx.get(x), ctx.reshape_shape(x, list(size))])


def _same_shape(ctx: LoweringContext, a: Any, b: Any) -> bool:
    return [sym_expr(d) for d in ctx.shape_of(a)] == [sym_expr(d) for d in ctx.shape_of(b)]


def _unexpanded(arg: Any) -> Any:
    """X when ``arg`` is ``view(expand(X, …), …)`` (how torch feeds a broadcast bmm)."""
    if not (isinstance(arg, fx.Node) and str(arg.target) == "aten.view.default"):
        return None
    inner: Any = arg.args[0]
    if isinstance(inner, fx.Node) and str(inner.target) == "aten.expand.default":
        return inner.args[0]
    return None


def _broadcast_matmul(ctx: LoweringContext, x: Any) -> Value | None:
    """``view(bmm(view(expand(A)), view(expand(B))))`` is torch's decomposition of a
    broadcasting ``A @ B``; ONNX MatMul broadcasts itself, so emit ``MatMul(A, B)`` (the
    expanded copies and the bmm are left unused and removed)."""
    if not (isinstance(x, fx.Node) and str(x.target) == "aten.bmm.default"):
        return None
    args: Any = x.args
    a, b = _unexpanded(args[0]), _unexpanded(args[1])
    if a is None or b is None or ctx.rank_of(a) < 2 or ctx.rank_of(b) < 2:
        return None
    sa = [sym_expr(d) for d in ctx.shape_of(a)]
    sb = [sym_expr(d) for d in ctx.shape_of(b)]
    batch_a, batch_b = sa[:-2], sb[:-2]
    width = max(len(batch_a), len(batch_b))
    batch_a = [1] * (width - len(batch_a)) + batch_a
    batch_b = [1] * (width - len(batch_b)) + batch_b
    batch = []
    for da, db in zip(batch_a, batch_b):
        if da != db and 1 not in (da, db):
            return None
        batch.append(db if da == 1 else da)
    expected = [*batch, sa[-2], sb[-1]]
    if sa[-1] != sb[-2] or expected != [sym_expr(d) for d in ctx.shape_of(ctx.node)]:
        return None
    return ctx.emit("MatMul", [ctx.get(a), ctx.get(b)])


@lowers("aten.permute.default")
def lower_permute(ctx: LoweringContext, x: Any, dims: Any) -> Value:
    """Transposes of transposes compose into one (or none, when they cancel)."""
    rank = ctx.rank_of(x)
    perm = [_axis(d, rank) for d in dims]
    source = x
    while isinstance(source, fx.Node) and str(source.target) == "aten.permute.default":
        inner: Any = source.args
        inner_perm = [_axis(d, rank) for d in inner[1]]
        perm = [inner_perm[p] for p in perm]
        source = inner[0]
    if perm == list(range(rank)):
        return ctx.get(source)
    return ctx.emit("Transpose", [ctx.get(source)], {"perm": perm})


@lowers("aten.expand.default")
def lower_expand(ctx: LoweringContext, x: Any, size: Any, implicit: bool = False) -> Value:
    if _same_shape(ctx, x, ctx.node):
        return ctx.get(x)
    return ctx.emit("Expand", [ctx.get(x), ctx.expand_shape(x, list(size))])


@lowers("aten.unsqueeze.default")
def lower_unsqueeze(ctx: LoweringContext, x: Any, dim: int) -> Value:
    axis = _axis(int(dim), ctx.rank_of(x) + 1)
    return ctx.emit("Unsqueeze", [ctx.tensor(x), ctx.ints([axis])])


@lowers("aten.squeeze.dims", "aten.squeeze.dim", "aten.squeeze.default")
def lower_squeeze(ctx: LoweringContext, x: Any, dim: Any = None) -> Value:
    rank = ctx.rank_of(x)
    shape = ctx.shape_of(x)
    dims = list(range(rank)) if dim is None else _as_list(dim)
    axes = [_axis(d, rank) for d in dims if shape[_axis(d, rank)] == 1]
    if not axes:
        return ctx.get(x)  # torch ignores dims that are not 1
    return ctx.emit("Squeeze", [ctx.get(x), ctx.ints(axes)])


@lowers("aten.cat.default")
def lower_cat(ctx: LoweringContext, tensors: Any, dim: int = 0) -> Value:
    dtype = ctx.out_dtype
    parts = [t for t in tensors if 0 not in ctx.shape_of(t) or ctx.rank_of(t) != 1]
    rank = ctx.rank_of(parts[0])
    return ctx.emit("Concat", [ctx.tensor(t, dtype) for t in parts], {"axis": _axis(dim, rank)})


@lowers("aten.slice.Tensor")
def lower_slice(
    ctx: LoweringContext,
    x: Any,
    dim: int = 0,
    start: Any = None,
    end: Any = None,
    step: int = 1,
) -> Value:
    rank = ctx.rank_of(x)
    size = ctx.shape_of(x)[_axis(dim, rank)]
    if (
        start in (None, 0)
        and (end is None or end == INT64_MAX or (isinstance(end, int) and end == size))
        and step == 1
    ):
        return ctx.get(x)
    starts = ctx.size_value(0 if start is None else start)
    ends = ctx.size_value(INT64_MAX if end is None else end)
    inputs = [ctx.get(x), starts, ends, ctx.ints([_axis(dim, rank)]), ctx.ints([int(step)])]
    return ctx.emit("Slice", inputs)


@lowers("aten.select.int")
def lower_select(ctx: LoweringContext, x: Any, dim: int, index: Any) -> Value:
    rank = ctx.rank_of(x)
    idx = (
        ctx.const(np.asarray(index, np.int64))
        if isinstance(index, int)
        else ctx.scalar(ctx.size_value(index))
    )
    return ctx.emit("Gather", [ctx.get(x), idx], {"axis": _axis(dim, rank)})


@lowers("aten.index_select.default")
def lower_index_select(ctx: LoweringContext, x: Any, dim: int, index: Any) -> Value:
    return ctx.emit("Gather", [ctx.get(x), ctx.get(index)], {"axis": _axis(dim, ctx.rank_of(x))})


@lowers("aten.embedding.default")
def lower_embedding(ctx: LoweringContext, weight: Any, indices: Any, *args: Any) -> Value:
    return ctx.emit("Gather", [ctx.get(weight), ctx.tensor(indices, DType.INT64)], {"axis": 0})


@lowers("aten.index.Tensor")
def lower_index(ctx: LoweringContext, x: Any, indices: Any) -> Value:
    """Advanced indexing with integer tensors: one index is a Gather on its dim; several
    adjacent ones broadcast together and become one GatherND."""
    present = [(i, t) for i, t in enumerate(indices) if t is not None]
    if any(ctx.dtype_of(t) is DType.BOOL for _, t in present):
        raise LoweringUnsupported("boolean-mask indexing (its result shape depends on data)")
    if len(present) == 1:
        axis, index = present[0]
        return ctx.emit("Gather", [ctx.get(x), ctx.tensor(index, DType.INT64)], {"axis": axis})
    positions = [i for i, _ in present]
    first, count = positions[0], len(positions)
    if positions != list(range(first, first + count)):
        raise LoweringUnsupported("index tensors separated by sliced dims")
    index_values = [ctx.tensor(t, DType.INT64) for _, t in present]
    common = index_values[0]
    for other in index_values[1:]:  # Expand broadcasts both ways: the common index shape
        common = ctx.emit("Expand", [common, ctx.emit("Shape", [other], typed=False)], typed=False)
    shape = ctx.emit("Shape", [common], typed=False)
    last = ctx.ints([-1])
    columns = [
        ctx.emit("Unsqueeze", [ctx.emit("Expand", [v, shape], typed=False), last], typed=False)
        for v in index_values
    ]
    stacked = ctx.emit("Concat", columns, {"axis": -1}, typed=False)
    if first == 0:
        return ctx.emit("GatherND", [ctx.get(x), stacked])
    # x[:, i, j]: index the moved-to-front dims, then put the index dims back at ``first``
    rank = ctx.rank_of(x)
    front = list(range(first, first + count))
    moved = front + [d for d in range(rank) if d not in front]
    source = ctx.emit("Transpose", [ctx.get(x)], {"perm": moved}, typed=False)
    gathered = ctx.emit("GatherND", [source, stacked], typed=False)
    index_rank = ctx.rank_of(ctx.node) - (rank - count)
    out_rank = index_rank + rank - count
    perm = (
        list(range(index_rank, index_rank + first))
        + list(range(index_rank))
        + list(range(index_rank + first, out_rank))
    )
    return ctx.emit("Transpose", [gathered], {"perm": perm})


@lowers("aten.split_with_sizes.default", "aten.split.Tensor")
def lower_split(ctx: LoweringContext, x: Any, sizes: Any, dim: int = 0) -> tuple[Value, ...]:
    rank = ctx.rank_of(x)
    count = len(ctx.out_val)
    split = [int(v.shape[_axis(dim, rank)]) for v in ctx.out_val]
    outs = ctx.emit(
        "Split", [ctx.get(x), ctx.ints(split)], {"axis": _axis(dim, rank)}, outputs=count
    )
    return tuple(outs) if count > 1 else (outs,)


@lowers("aten.constant_pad_nd.default")
def lower_constant_pad(ctx: LoweringContext, x: Any, pad: Any, value: float = 0.0) -> Value:
    rank = ctx.rank_of(x)
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):  # torch pads the last dim first
        begins[rank - 1 - i], ends[rank - 1 - i] = int(pad[2 * i]), int(pad[2 * i + 1])
    inputs = [ctx.get(x), ctx.ints(begins + ends), ctx.tensor(value, ctx.out_dtype)]
    return ctx.emit("Pad", inputs, {"mode": "constant"})


# -- creation -------------------------------------------------------------------------------
@lowers("aten.full.default", "aten.scalar_tensor.default")
def lower_full(ctx: LoweringContext, size: Any, value: Any = None, **kw: Any) -> Value:
    if "scalar_tensor" in ctx.target:
        size, value = [], size
    dtype = ctx.out_dtype
    if all(isinstance(s, int) for s in size):
        return ctx.const_typed(np.full([int(s) for s in size], value, dtype.numpy))
    fill = ctx.const_tensor_attr(value, dtype)
    return ctx.emit("ConstantOfShape", [ctx.shape_tensor(list(size))], {"value": fill})


@lowers("aten.full_like.default", "aten.zeros_like.default", "aten.ones_like.default")
def lower_full_like(ctx: LoweringContext, x: Any, value: Any = None, **kw: Any) -> Value:
    target = ctx.target
    if value is None:
        value = 1 if "ones" in target else 0
    dtype = ctx.out_dtype
    shape = ctx.shape_of(x)
    if all(isinstance(s, int) for s in shape):
        return ctx.const_typed(np.full([int(s) for s in shape], value, dtype.numpy))
    shape_value = ctx.emit("Shape", [ctx.get(x)], typed=False)
    return ctx.emit(
        "ConstantOfShape", [shape_value], {"value": ctx.const_tensor_attr(value, dtype)}
    )


@lowers("aten.arange.start_step", "aten.arange.start", "aten.arange.default")
def lower_arange(ctx: LoweringContext, *args: Any, **kw: Any) -> Value:
    bounds = list(args) + [None] * (3 - len(args))
    if "start" not in ctx.target:
        bounds = [0, args[0], 1]
    start, end, step = bounds[0], bounds[1], bounds[2] if bounds[2] is not None else 1
    dtype = ctx.out_dtype
    if all(not isinstance(v, fx.Node) for v in (start, end, step)):
        return ctx.const_typed(np.arange(start, end, step, dtype=dtype.numpy))
    pieces = [
        ctx.scalar(ctx.size_value(v))
        if isinstance(v, fx.Node)
        else ctx.const(np.asarray(v, np.int64))
        for v in (start, end, step)
    ]
    if dtype is DType.INT64:
        return ctx.emit("Range", pieces)
    pieces = [ctx.cast(p, dtype) for p in pieces]
    return ctx.emit("Range", pieces)


# -- gather / scatter / selection ---------------------------------------------------------------
@lowers("aten.gather.default")
def lower_gather(ctx: LoweringContext, x: Any, dim: int, index: Any, **kw: Any) -> Value:
    axis = _axis(int(dim), ctx.rank_of(x))
    return ctx.emit("GatherElements", [ctx.get(x), ctx.get(index)], {"axis": axis})


_SCATTER_REDUCTIONS = {"sum": "add", "prod": "mul", "amax": "max", "amin": "min"}


@lowers(
    "aten.scatter.src", "aten.scatter.value", "aten.scatter_add.default", "aten.scatter_reduce.two"
)
def lower_scatter(
    ctx: LoweringContext,
    x: Any,
    dim: int,
    index: Any,
    src: Any,
    reduce: str | None = None,
    include_self: bool = True,
) -> Value:
    target = ctx.target
    reduction = "add" if "scatter_add" in target else "none"
    if "scatter_reduce" in target:
        if reduce not in _SCATTER_REDUCTIONS or not include_self:
            raise LoweringUnsupported(f"scatter_reduce {reduce!r}, include_self={include_self}")
        reduction = _SCATTER_REDUCTIONS[reduce]
    dtype = ctx.out_dtype
    updates = ctx.tensor(src, dtype)
    if not isinstance(src, fx.Node):  # scatter.value: a scalar spread over the index shape
        shape = ctx.emit("Shape", [ctx.get(index)], typed=False)
        updates = ctx.emit("Expand", [updates, shape], typed=False)
    attrs: dict[str, Any] = {"axis": _axis(int(dim), ctx.rank_of(x))}
    if reduction != "none":
        attrs["reduction"] = reduction
    return ctx.emit("ScatterElements", [ctx.get(x), ctx.get(index), updates], attrs)


@lowers("aten.copy.default")
def lower_copy_into(ctx: LoweringContext, dst: Any, src: Any, non_blocking: bool = False) -> Value:
    """``dst.copy_(src)`` functionalized: src broadcast to dst's shape, in dst's dtype."""
    value = ctx.tensor(src, ctx.out_dtype)
    shape = ctx.emit("Shape", [ctx.get(dst)], typed=False)
    return ctx.emit("Expand", [value, shape])


@lowers("aten.empty.memory_format")
def lower_empty(ctx: LoweringContext, size: Any, **kw: Any) -> Value:
    """Uninitialized memory in torch; zeros here (any value is a valid result)."""
    return lower_full(ctx, size, 0)


@lowers("aten.flip.default")
def lower_flip(ctx: LoweringContext, x: Any, dims: Any) -> Value:
    rank = ctx.rank_of(x)
    axes = [_axis(int(d), rank) for d in dims]
    starts, ends = ctx.ints([-1] * len(axes)), ctx.ints([-(2**63)] * len(axes))
    return ctx.emit("Slice", [ctx.get(x), starts, ends, ctx.ints(axes), ctx.ints([-1] * len(axes))])


@lowers("aten.repeat.default")
def lower_repeat(ctx: LoweringContext, x: Any, repeats: Any) -> Value:
    value = ctx.get(x)
    extra = len(repeats) - ctx.rank_of(x)
    if extra > 0:  # torch prepends dims of size 1
        value = ctx.emit("Unsqueeze", [value, ctx.ints(list(range(extra)))], typed=False)
    return ctx.emit("Tile", [value, ctx.shape_tensor(list(repeats))])
