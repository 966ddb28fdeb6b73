"""Indexing and data-movement ops: gathers, scatters, pads, tiles, arg/top-k selection,
cumulative sums and Einsum.

Ops whose output is a pure function of one input position (GatherElements, Pad, Trilu,
Tile, OneHot…) are inline refs that fuse into their consumer; ops with a running state
or a data-dependent write position (ArgMax, CumSum, TopK, Scatter*) emit a kernel.

Indices read at run time are wrapped (negative counts from the end) and then clamped
into the dimension, so an out-of-range index — undefined in ONNX — reads or writes a
valid element rather than memory past the buffer. Inputs that ONNX passes as tensors
but that only steer the computation (Trilu's ``k``, Pad's pads, CumSum's axis) may be
run-time values when the node's declared output shape fixes the output size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from irkit.ir import Node
from irkit.kir import (
    Binary,
    Buffer,
    Cast,
    Const,
    Expr,
    For,
    If,
    Let,
    Load,
    Select,
    Stmt,
    Store,
    Var,
    block,
    simplify_expr,
)
from irkit.kir.nodes import DTYPES, FLOATS, HALF_FLOATS
from irkit.lower.context import LoweringContext
from irkit.lower.runtime_sizes import declared
from irkit.lower.sorting import Better, Heap, is_nan, less
from irkit.lower.symbolic import is_poly
from irkit.lower.tensor import (
    KIR_DTYPES,
    Index,
    LoweringError,
    TensorRef,
    buffer_ref,
    dims_equal,
    flat_index,
    is_static,
    product,
    static,
    str_attr,
)

# Selections compare values, exactly in every numeric type; arithmetic ops (running
# sums and products, Einsum, reducing scatters) are limited to the types computed in
# their own width (16-bit floats would round every partial result).
ORDERED = tuple(d for d in DTYPES if d != "bool")
ARITHMETIC = tuple(d for d in ORDERED if d not in HALF_FLOATS)


# -- small helpers -------------------------------------------------------------------
def _zero(dtype: str) -> Const:
    if dtype == "bool":
        return Const(False, "bool")
    return Const(0.0, dtype) if dtype in FLOATS else Const(0, dtype)


def _one(dtype: str) -> Const:
    if dtype == "bool":
        return Const(True, "bool")
    return Const(1.0, dtype) if dtype in FLOATS else Const(1, dtype)


def _i64(e: Expr) -> Expr:
    return e if e.dtype == "i64" else Cast("i64", e)


def _lt(a: Expr, b: Expr | int) -> Expr:
    return Binary("lt", a, b if isinstance(b, Expr) else Const(b))


def _eq(a: Expr, b: Expr | int) -> Expr:
    return Binary("eq", a, b if isinstance(b, Expr) else Const(b))


def _and(a: Expr, b: Expr) -> Expr:
    return Binary("and", a, b)


def _clamp(i: Expr, lo: Expr | int, hi: Expr | int) -> Expr:
    lo_e = lo if isinstance(lo, Expr) else Const(lo)
    hi_e = hi if isinstance(hi, Expr) else Const(hi)
    return Binary("max", Binary("min", i, hi_e), lo_e)


def _wrapped_index(raw: Expr, dim: Expr) -> Expr:
    """An index that counts from the end when negative, clamped into ``[0, dim)``."""
    raw = _i64(raw)
    fixed = Select(_lt(raw, 0), raw + dim, raw)
    return simplify_expr(_clamp(fixed, 0, simplify_expr(dim - 1)))


def _positive_mod(i: Expr, n: Expr) -> Expr:
    """``i mod n`` in ``[0, n)`` for any sign of ``i`` (kernel-IR ``mod`` truncates)."""
    return simplify_expr(Binary("mod", Binary("mod", i, n) + n, n))


def _scalar(ref: TensorRef) -> Expr:
    """Element 0 of a scalar or one-element tensor as i64 (a literal when constant)."""
    return simplify_expr(_i64(ref.read(tuple(Const(0) for _ in ref.shape))))


def _const_ints(ref: TensorRef | None) -> list[int] | None:
    if ref is None or ref.const is None:
        return None
    return [int(v) for v in np.asarray(ref.const).reshape(-1)]


def _folded_ints(ref: TensorRef | None) -> list[Expr] | None:
    """The elements of a small 1-D int tensor as compile-time polynomials in the
    symbolic dims (constants, or exporter shape arithmetic on ``Shape``), else None."""
    constant = _const_ints(ref)
    if constant is not None:
        return [Const(v) for v in constant]
    if ref is None or ref.rank != 1 or ref.dtype != "i64" or not is_static(ref.shape[0]):
        return None
    values = []
    for j in range(static(ref.shape[0])):
        value = simplify_expr(ref.read((Const(j),)))
        if not is_poly(value):
            return None
        values.append(value)
    return values


def _input(ins: Sequence[TensorRef | None], k: int) -> TensorRef | None:
    return ins[k] if len(ins) > k else None


def _required(ins: Sequence[TensorRef | None], k: int, node: Node) -> TensorRef:
    ref = _input(ins, k)
    if ref is None:
        raise LoweringError(f"{node.op} is missing input {k}")
    return ref


def _axis(value: int, rank: int, node: Node) -> int:
    if not -rank <= value < max(rank, 1):
        raise LoweringError(f"{node.op} axis {value} is out of range for rank {rank}")
    return value % max(rank, 1)


def _guarded_shape(ctx: LoweringContext, node: Node, kind: str, in_shape: Sequence[Expr],
                   inputs: dict[str, TensorRef | None], why: str,
                   attrs: dict[str, int] | None = None, outputs: int = 1) -> tuple[Expr, ...]:
    """Output 0's declared shape, for outputs whose size depends on run-time values
    (``why``; it must be fully static), with a guard that checks the graph inputs in
    ``inputs`` give that shape (and the same shape for the first ``outputs`` outputs)."""
    shape = tuple(Const(d) for d in declared(node, 0, why))
    ctx.shape_guard(node, kind, inputs, in_shape, [shape] * outputs, attrs)
    return shape


def _with(idx: Index, axis: int, value: Expr) -> Index:
    return (*idx[:axis], value, *idx[axis + 1 :])


def _local(ctx: LoweringContext, dtype: str, hint: str = "s") -> Buffer:
    return Buffer(ctx.fresh(hint), dtype, Const(1), "local")


def _along_axis(ctx: LoweringContext, shape: Sequence[Expr], axis: int,
                body_fn: Callable[[Index, Callable[[Expr], Index]], Stmt],
                parallel: bool = True) -> Stmt:
    """A loop nest over every dim of ``shape`` but ``axis``; ``body_fn(kept, at)`` gets
    the kept indices and ``at(i)``, the full index at position ``i`` along ``axis``."""
    kept = [d for k, d in enumerate(shape) if k != axis]

    def body(o: Index) -> Stmt:
        return body_fn(o, lambda i: (*o[:axis], i, *o[axis:]))

    return ctx.loop_nest(kept, body, hint="o", parallel=parallel)


# -- gathers and views ---------------------------------------------------------------
def lower_gather_elements(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                          ) -> list[TensorRef]:
    """``out[i…] = data[i… with indices[i…] on axis]``."""
    data, indices = _required(ins, 0, node), _required(ins, 1, node)
    axis = _axis(int(node.attr("axis", 0)), data.rank, node)
    if indices.rank != data.rank:
        raise LoweringError("GatherElements needs indices of the data's rank")

    def read(idx: Index) -> Expr:
        picked = _wrapped_index(indices.read(idx), data.shape[axis])
        return data.read(_with(idx, axis, picked))

    return [TensorRef(indices.shape, data.dtype, read, cost=data.cost + indices.cost + 6)]


def lower_trilu(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                ) -> list[TensorRef]:
    """Keep ``x[…, i, j]`` where ``j - i >= k`` (upper) or ``<= k`` (lower), else 0;
    ``k`` may be a run-time scalar since it does not change the shape."""
    x = _required(ins, 0, node)
    if x.rank < 2:
        raise LoweringError("Trilu needs a tensor of rank >= 2")
    k_ref = _input(ins, 1)
    k = _scalar(k_ref) if k_ref is not None else Const(0)
    upper = bool(node.attr("upper", 1))

    def read(idx: Index) -> Expr:
        diff = idx[-1] - idx[-2]
        keep = Binary("ge", diff, k) if upper else Binary("le", diff, k)
        return Select(keep, x.read(idx), _zero(x.dtype))

    return [TensorRef(x.shape, x.dtype, read, cost=x.cost + 5)]


def lower_eyelike(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                  ) -> list[TensorRef]:
    x = _required(ins, 0, node)
    if x.rank != 2:
        raise LoweringError("EyeLike needs a 2-D input")
    out_dtype = node.outputs[0].dtype
    dtype = KIR_DTYPES.get(out_dtype) if out_dtype is not None else x.dtype
    if dtype is None:
        raise LoweringError(f"EyeLike to {out_dtype} is not supported")
    k = int(node.attr("k", 0))

    def read(idx: Index) -> Expr:
        return Select(_eq(idx[1] - idx[0], k), _one(dtype), _zero(dtype))

    return [TensorRef(x.shape, dtype, read, cost=4)]


def lower_onehot(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                 ) -> list[TensorRef]:
    """``out[…, d, …] = on if indices[…] (negative: + depth) == d else off``."""
    indices, depth_ref, values = (_required(ins, k, node) for k in range(3))
    rank = indices.rank + 1
    axis = _axis(int(node.attr("axis", -1)), rank, node)
    depth_values = _const_ints(depth_ref)
    if depth_values is not None:
        depth: Expr = Const(depth_values[0])
    else:
        depth = _guarded_shape(ctx, node, "onehot", indices.shape, {"depth": depth_ref},
                               "OneHot depth", {"axis": axis})[axis]
    shape = (*indices.shape[:axis], depth, *indices.shape[axis:])
    off, on = values.read((Const(0),)), values.read((Const(1),))

    def read(idx: Index) -> Expr:
        raw = _i64(indices.read((*idx[:axis], *idx[axis + 1 :])))
        fixed = Select(_lt(raw, 0), raw + depth, raw)
        return Select(_eq(fixed, idx[axis]), on, off)

    return [TensorRef(shape, values.dtype, read, cost=indices.cost + 2 * values.cost + 6)]


def lower_tile(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
               ) -> list[TensorRef]:
    """``out[i…] = x[i mod dim…]``; run-time repeats need a declared output shape."""
    x, repeats_ref = _required(ins, 0, node), _required(ins, 1, node)
    repeats = _const_ints(repeats_ref)
    if repeats is not None:
        if len(repeats) != x.rank or any(r < 0 for r in repeats):
            raise LoweringError(f"Tile repeats {repeats} do not fit a rank-{x.rank} input")
        shape = tuple(simplify_expr(d * r) for d, r in zip(x.shape, repeats))
        tiled = [r != 1 for r in repeats]
    else:
        shape = _guarded_shape(ctx, node, "tile", x.shape, {"repeats": repeats_ref},
                               "Tile repeats")
        if len(shape) != x.rank:
            raise LoweringError("Tile's declared output rank differs from its input's")
        tiled = []
        for d, out in zip(x.shape, shape):
            size = static(d, "Tile input dim (with run-time repeats)")
            if (size == 0 and static(out) != 0) or (size != 0 and static(out) % size):
                raise LoweringError(f"Tile output dim {out} is not a multiple of {size}")
            tiled.append(size != static(out))
    dims = x.shape

    def read(idx: Index) -> Expr:
        return x.read(tuple(Binary("mod", i, d) if t else i
                            for i, d, t in zip(idx, dims, tiled)))

    return [TensorRef(shape, x.dtype, read, cost=x.cost + 2 * x.rank)]


def lower_reverse_sequence(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                           ) -> list[TensorRef]:
    """Reverse the first ``sequence_lens[b]`` steps along the time axis of batch ``b``."""
    x, lens = _required(ins, 0, node), _required(ins, 1, node)
    time = _axis(int(node.attr("time_axis", 0)), x.rank, node)
    batch = _axis(int(node.attr("batch_axis", 1)), x.rank, node)
    steps = x.shape[time]

    def read(idx: Index) -> Expr:
        length = _clamp(_i64(lens.read((idx[batch],))), 0, steps)
        t = idx[time]
        src = Select(_lt(t, length), length - 1 - t, t)
        return x.read(_with(idx, time, src))

    return [TensorRef(x.shape, x.dtype, read, cost=x.cost + lens.cost + 8)]


def lower_tensor_scatter(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                         ) -> list[TensorRef]:
    """The KV-cache update: ``update`` written into ``past_cache`` along ``axis`` from
    ``write_indices[b]`` (0 when absent) on, modulo the cache length in circular mode."""
    past, update = _required(ins, 0, node), _required(ins, 1, node)
    writes = _input(ins, 2)
    axis = _axis(int(node.attr("axis", -2)), past.rank, node)
    if axis == 0 or update.rank != past.rank:
        raise LoweringError("TensorScatter needs a non-batch axis and a same-rank update")
    circular = str_attr(node, "mode", "linear") == "circular"
    length, capacity = update.shape[axis], past.shape[axis]
    if is_static(length) and static(length) == 0:
        return [past]

    def read(idx: Index) -> Expr:
        start = _i64(writes.read((idx[0],))) if writes is not None else Const(0)
        offset = simplify_expr(idx[axis] - start)
        if circular:
            offset = _positive_mod(offset, capacity)
        inside = _and(Binary("ge", offset, Const(0)), _lt(offset, length))
        src = _clamp(offset, 0, simplify_expr(length - 1))
        return Select(inside, update.read(_with(idx, axis, src)), past.read(idx))

    cost = past.cost + update.cost + (writes.cost if writes is not None else 0) + 12
    return [TensorRef(past.shape, past.dtype, read, cost=cost)]


# -- Pad -----------------------------------------------------------------------------
PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad_begins(ctx: LoweringContext, node: Node, x: TensorRef,
                ins: Sequence[TensorRef | None]) -> tuple[list[Expr], tuple[Expr, ...]]:
    """Per-axis leading pads (Exprs; run-time reads when the pads are inputs) and the
    output shape (computed, or declared when the pads are run-time values)."""
    rank = x.rank
    pads_ref, axes_ref = _input(ins, 1), _input(ins, 3)
    if pads_ref is None:  # opset < 11: an attribute
        pads_attr = node.attr("pads", None)
        if pads_attr is None:
            raise LoweringError("Pad without pads")
        pads: list[Expr] | None = [Const(int(p)) for p in pads_attr]
    else:
        pads = _folded_ints(pads_ref)
    axes = _const_ints(axes_ref) if axes_ref is not None else list(range(rank))
    if axes is not None:
        axes = [_axis(a, rank, node) for a in axes]
    if pads is not None and axes is not None:
        if len(pads) != 2 * len(axes):
            raise LoweringError(f"Pad has {len(pads)} pads for {len(axes)} axes")
        begin: list[Expr] = [Const(0)] * rank
        end: list[Expr] = [Const(0)] * rank
        for j, a in enumerate(axes):
            begin[a], end[a] = pads[j], pads[j + len(axes)]
        shape = tuple(simplify_expr(d + b + e) for d, b, e in zip(x.shape, begin, end))
        return begin, shape
    pads_guard = pads_ref
    if pads is not None and pads_ref is not None and pads_ref.const is None:
        # Pads folded from shape arithmetic: the guard needs their values.
        if not all(isinstance(p, Const) for p in pads):
            raise LoweringError("Pad pads depend on symbolic dims while its axes are a "
                                "run-time value")
        pads_guard = ctx.const_ref(np.array([static(p) for p in pads], np.int64), "i64")
    shape = _guarded_shape(ctx, node, "pad", x.shape, {"pads": pads_guard, "axes": axes_ref},
                           "Pad pads" if pads is None else "Pad axes")
    if len(shape) != rank:
        raise LoweringError("Pad's declared output rank differs from its input's")
    assert pads_ref is not None or pads is not None

    def pad_at(j: int) -> Expr:
        if pads is not None:
            return pads[j]
        assert pads_ref is not None
        return _i64(pads_ref.read((Const(j),)))

    if axes is not None:
        begins: list[Expr] = [Const(0)] * rank
        for j, a in enumerate(axes):
            begins[a] = pad_at(j)
        return begins, shape
    assert axes_ref is not None
    count = static(axes_ref.shape[0], "Pad axes length") if axes_ref.rank else 1
    begins = []
    for d in range(rank):
        total: Expr = Const(0)
        for j in range(count):
            raw = _i64(axes_ref.read((Const(j),) if axes_ref.rank else ()))
            named = Select(_lt(raw, 0), raw + rank, raw)
            total = total + Select(_eq(named, d), pad_at(j), Const(0))
        begins.append(simplify_expr(total))
    return begins, shape


def lower_pad(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
              ) -> list[TensorRef]:
    x = _required(ins, 0, node)
    mode = str_attr(node, "mode", "constant")
    if mode not in PAD_MODES:
        raise LoweringError(f"Pad mode {mode!r} is not supported")
    begins, shape = _pad_begins(ctx, node, x, ins)
    value_ref = _input(ins, 2)
    if value_ref is not None:
        value = value_ref.read(tuple(Const(0) for _ in value_ref.shape))
        value = value if value.dtype == x.dtype else Cast(x.dtype, value)
    else:
        value = Cast(x.dtype, Const(float(node.attr("value", 0.0)), "f64"))
    value = simplify_expr(value)
    padded = [not (isinstance(b, Const) and b.value == 0 and dims_equal(d, s))
              for b, d, s in zip(begins, x.shape, shape)]
    if mode != "constant":
        for d, p in zip(x.shape, padded):
            if p and is_static(d) and static(d) == 0:
                raise LoweringError(f"Pad mode {mode!r} of an empty axis")

    def source(i: Expr, n: Expr) -> tuple[Expr, Expr | None]:
        """The input index for position ``i`` of the unpadded range, and (constant
        mode) whether it is inside."""
        if mode == "constant":
            inside = _and(Binary("ge", i, Const(0)), _lt(i, n))
            return _clamp(i, 0, n - 1), inside
        if mode == "edge":
            return _clamp(i, 0, n - 1), None
        if mode == "wrap":
            return _positive_mod(i, n), None
        period = simplify_expr(Binary("max", n * 2 - 2, Const(1)))
        m = _positive_mod(i, period)
        return Select(_lt(m, n), m, period - m), None

    def read(idx: Index) -> Expr:
        src: list[Expr] = []
        inside: Expr | None = None
        for i, b, n, p in zip(idx, begins, x.shape, padded):
            if not p:
                src.append(i)
                continue
            s, ok = source(simplify_expr(i - b), n)
            src.append(simplify_expr(s))
            if ok is not None:
                inside = ok if inside is None else _and(inside, ok)
        got = x.read(tuple(src))
        return got if inside is None else Select(inside, got, value)

    cost = x.cost + 12 * sum(padded)
    return [TensorRef(shape, x.dtype, read, cost=cost)]


# -- selections along an axis ----------------------------------------------------------
def lower_arg_extreme(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                      ) -> list[TensorRef]:
    """ArgMax / ArgMin: the first (or with ``select_last_index`` the last) position of
    the extreme value along ``axis``, as int64."""
    x = _required(ins, 0, node)
    if x.dtype not in ORDERED:
        raise LoweringError(f"{node.op} on {x.dtype} is not supported")
    axis = _axis(int(node.attr("axis", 0)), x.rank, node)
    keep = bool(node.attr("keepdims", 1))
    last = bool(node.attr("select_last_index", 0))
    n = x.shape[axis]
    if is_static(n) and static(n) == 0:
        raise LoweringError(f"{node.op} over an empty axis")
    if node.op == "ArgMax":
        cmp = "ge" if last else "gt"
    else:
        cmp = "le" if last else "lt"
    out_shape = tuple(Const(1) if k == axis else d for k, d in enumerate(x.shape)
                      if keep or k != axis)
    out = ctx.new_buffer(node.op.lower(), "i64", product(out_shape))
    best, pos = _local(ctx, x.dtype, "best"), _local(ctx, "i64", "pos")
    z = Const(0)

    def body(kept: Index, at: Callable[[Expr], Index]) -> Stmt:
        r = ctx.var("r")
        v = Var(ctx.fresh("v"), x.dtype)
        better = Var(ctx.fresh("better"), "bool")
        out_idx = at(z) if keep else kept
        return block(
            Store(best, z, x.read(at(z))), Store(pos, z, z),
            For(r, simplify_expr(n - 1), block(
                Let(v, x.read(at(r))),
                Let(better, Binary(cmp, v, Load(best, z))),
                Store(best, z, Select(better, v, Load(best, z))),
                Store(pos, z, Select(better, r, Load(pos, z))),
            ), start=Const(1)),
            Store(out, flat_index(out_idx, out_shape), Load(pos, z)))

    ctx.add_kernel(node.op.lower(), _along_axis(ctx, x.shape, axis, body), [best, pos])
    return [buffer_ref(out, out_shape)]


_TOPK_BLOCK = 32  # elements checked against the heap's root at once


def _topk_order(largest: bool) -> Better:
    """``before(ka, a, kb, b)``: element ``a`` comes first in TopK's output: the larger
    (``largest``) or smaller key, NaN above every number and equal to NaN (ONNX
    Runtime's order), ties to the lower index."""
    def before(ka: Expr, a: Expr, kb: Expr, b: Expr) -> Expr:
        first = less(kb, ka) if largest else less(ka, kb)
        same = _eq(ka, kb)
        if ka.dtype in FLOATS:
            same = Binary("or", same, _and(is_nan(ka), is_nan(kb)))
        return Binary("or", first, _and(same, _lt(a, b)))
    return before


def lower_topk(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
               ) -> list[TensorRef]:
    """The K largest (or smallest) values along ``axis`` and their indices, sorted
    (``sorted=0`` too), ties broken by the lower index, NaN above every number (as ONNX
    Runtime orders them). Per row a binary heap of the K best so far, its root the worst
    of them: the first K elements build it, each later one replaces the root only when
    it beats it (one comparison for most), then popping the heap fills the row from its
    end. O(n) comparisons plus O(log K) for each element that enters (about K·ln(n/K)
    of them in data in random order), O(n log K) at worst (an ascending row with
    ``largest=1``). The heap lives in the outputs themselves when ``axis`` is the last one, else in scratch at the row's
    offset (rows run in parallel)."""
    x, k_ref = _required(ins, 0, node), _required(ins, 1, node)
    if x.dtype not in ORDERED:
        raise LoweringError(f"TopK on {x.dtype} is not supported")
    axis = _axis(int(node.attr("axis", -1)), x.rank, node)
    largest = bool(node.attr("largest", 1))
    k_values = _const_ints(k_ref)
    count = Const(k_values[0]) if k_values else _guarded_shape(
        ctx, node, "topk", x.shape, {"k": k_ref}, "TopK K", {"axis": axis}, outputs=2)[axis]
    n = x.shape[axis]
    if is_static(n) and static(count) > static(n):
        raise LoweringError(f"TopK K={static(count)} exceeds the axis size {static(n)}")
    out_shape = _with(x.shape, axis, count)
    values = ctx.new_buffer("topk_values", x.dtype, product(out_shape))
    indices = ctx.new_buffer("topk_indices", "i64", product(out_shape))
    in_place = axis == x.rank - 1
    if in_place:
        keys, order = values, indices
    else:
        keys = ctx.new_buffer("topk_keys", x.dtype, product(out_shape))
        order = ctx.new_buffer("topk_order", "i64", product(out_shape))
    kept_shape = [d for a, d in enumerate(x.shape) if a != axis]
    before = _topk_order(largest)
    heap_locals: list[Buffer] = []
    hit, z = _local(ctx, "bool", "hit"), Const(0)

    def worse(ka: Expr, a: Expr, kb: Expr, b: Expr) -> Expr:
        return before(kb, b, ka, a)

    def body(kept: Index, at: Callable[[Expr], Index]) -> Stmt:
        base = simplify_expr(flat_index(at(Const(0)), out_shape) if in_place
                             else flat_index(kept, kept_shape) * count)
        heap = Heap(ctx, order, keys, worse, base)
        heap_locals[:] = heap.locals
        j, r, t = ctx.var("j"), ctx.var("r"), ctx.var("t")
        v = Var(ctx.fresh("v"), x.dtype)
        top_k, top_i = Var(ctx.fresh("topk"), x.dtype), Var(ctx.fresh("topi"))
        fill = For(j, count, block(Store(order, base + j, j),
                                   Store(keys, base + j, x.read(at(j)))))
        if static(count) == 0:
            return fill
        # A later element has a higher index than all in the heap: it enters only when
        # its key strictly beats the root's. Blocks of _TOPK_BLOCK elements are first
        # checked branch-free against the root (LLVM vectorizes the check); only a block
        # with a newcomer is walked one element at a time.
        root, e, blk = Var(ctx.fresh("root"), x.dtype), ctx.var("e"), ctx.var("blk")
        w = Var(ctx.fresh("w"), x.dtype)

        def enters(key: Expr, threshold: Expr) -> Expr:
            return less(threshold, key) if largest else less(key, threshold)

        def walk(first: Expr, extent: Expr) -> Stmt:
            return For(r, extent, block(
                Let(v, x.read(at(r))),
                If(enters(v, Load(keys, base)), heap.replace_top(r, v))), start=first)

        # The last block may be shorter.
        blocks = simplify_expr(Binary("div", n - count + (_TOPK_BLOCK - 1), Const(_TOPK_BLOCK)))
        first = simplify_expr(count + blk * _TOPK_BLOCK)
        size = Var(ctx.fresh("bsize"))
        check = For(e, size, block(
            Let(w, x.read(at(simplify_expr(first + e)))),
            Store(hit, z, Binary("or", Load(hit, z), enters(w, root)))))
        scan = For(blk, blocks, block(
            Let(root, Load(keys, base)), Store(hit, z, Const(False, "bool")),
            Let(size, Binary("min", Const(_TOPK_BLOCK), simplify_expr(n - first))),
            check, If(Load(hit, z), walk(first, size))))
        spot = simplify_expr(base + count - 1 - t)
        drain = For(t, count, block(
            Let(top_i, Load(order, base)), Let(top_k, Load(keys, base)), heap.pop(True),
            Store(order, spot, top_i), Store(keys, spot, top_k)))
        copy = None if in_place else For(j, count, block(
            Store(values, flat_index(at(j), out_shape), Load(keys, base + j)),
            Store(indices, flat_index(at(j), out_shape), Load(order, base + j))))
        return block(fill, heap.build(count), scan, drain, copy)

    nest = _along_axis(ctx, x.shape, axis, body)
    ctx.add_kernel("topk", nest, [*heap_locals, hit])
    return [buffer_ref(values, out_shape), buffer_ref(indices, out_shape)]


def lower_cumulative(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                     ) -> list[TensorRef]:
    """CumSum / CumProd along an axis (``exclusive``, ``reverse``). A run-time axis
    selects among one loop nest per possible axis."""
    x, axis_ref = _required(ins, 0, node), _required(ins, 1, node)
    if x.dtype not in ARITHMETIC:
        raise LoweringError(f"{node.op} on {x.dtype} is not supported")
    if x.rank == 0:
        raise LoweringError(f"{node.op} of a scalar")
    exclusive = bool(node.attr("exclusive", 0))
    reverse = bool(node.attr("reverse", 0))
    product_op = node.op == "CumProd"
    out = ctx.new_buffer(node.op.lower(), x.dtype, product(x.shape))
    acc = _local(ctx, x.dtype, "acc")
    z = Const(0)

    def nest(axis: int, parallel: bool) -> Stmt:
        n = x.shape[axis]

        def body(kept: Index, at: Callable[[Expr], Index]) -> Stmt:
            t = ctx.var("t")
            where = at(simplify_expr(n - 1 - t) if reverse else t)
            v = x.read(where)
            step = Load(acc, z) * v if product_op else Load(acc, z) + v
            store = Store(out, flat_index(where, x.shape), Load(acc, z))
            update = Store(acc, z, step)
            inner = block(store, update) if exclusive else block(update, store)
            init = _one(x.dtype) if product_op else _zero(x.dtype)
            return block(Store(acc, z, init), For(t, n, inner))

        return _along_axis(ctx, x.shape, axis, body, parallel=parallel)

    axis_values = _const_ints(axis_ref)
    if axis_values is not None or x.rank == 1:
        axis = _axis(axis_values[0], x.rank, node) if axis_values is not None else 0
        stmt = nest(axis, parallel=True)
    else:
        raw = _scalar(axis_ref)
        chosen = Select(_lt(raw, 0), raw + x.rank, raw)
        stmt = block(*(If(_eq(chosen, a), nest(a, parallel=False)) for a in range(x.rank)))
    ctx.add_kernel(node.op.lower(), stmt, [acc])
    return [buffer_ref(out, x.shape)]


# -- scatters -------------------------------------------------------------------------
REDUCTIONS = ("none", "add", "mul", "max", "min")


def _combine(reduction: str, current: Expr, update: Expr) -> Expr:
    if reduction == "add":
        return current + update
    if reduction == "mul":
        return current * update
    if reduction in ("max", "min"):
        return Binary(reduction, current, update)
    return update


def _scatter_target(ctx: LoweringContext, node: Node, data: TensorRef
                    ) -> tuple[Buffer, str]:
    """A copy of ``data`` to scatter into, and the reduction."""
    reduction = str_attr(node, "reduction", "none")
    if reduction not in REDUCTIONS:
        raise LoweringError(f"{node.op} reduction {reduction!r} is not supported")
    if reduction != "none" and data.dtype not in ARITHMETIC:
        raise LoweringError(f"{node.op} reduction {reduction!r} on {data.dtype}")
    out = ctx.new_buffer(node.op.lower(), data.dtype, product(data.shape))
    ctx.materialize(data, node.op.lower(), target=out)
    return out, reduction


def lower_scatter_elements(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                           ) -> list[TensorRef]:
    """``out = data; out[i… with indices[i…] on axis] (op)= updates[i…]``, in index
    order (serial, so duplicate indices reduce deterministically)."""
    data, indices, updates = (_required(ins, k, node) for k in range(3))
    axis = _axis(int(node.attr("axis", 0)), data.rank, node)
    out, reduction = _scatter_target(ctx, node, data)

    def body(idx: Index) -> Stmt:
        where = flat_index(_with(idx, axis, _wrapped_index(indices.read(idx),
                                                           data.shape[axis])), data.shape)
        return Store(out, where, _combine(reduction, Load(out, where), updates.read(idx)))

    ctx.add_kernel("scatter", ctx.loop_nest(indices.shape, body, parallel=False))
    return [buffer_ref(out, data.shape)]


def lower_scatter_nd(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                     ) -> list[TensorRef]:
    """``out = data; out[indices[p…, :], j…] (op)= updates[p…, j…]``, in order."""
    data, indices, updates = (_required(ins, k, node) for k in range(3))
    k = static(indices.shape[-1], "ScatterND index length")
    if k > data.rank:
        raise LoweringError(f"ScatterND indexes {k} dims of a rank-{data.rank} tensor")
    outer = indices.rank - 1
    out, reduction = _scatter_target(ctx, node, data)

    def body(idx: Index) -> Stmt:
        picked = [_wrapped_index(indices.read((*idx[:outer], Const(j))), data.shape[j])
                  for j in range(k)]
        where = flat_index((*picked, *idx[outer:]), data.shape)
        return Store(out, where, _combine(reduction, Load(out, where), updates.read(idx)))

    ctx.add_kernel("scatter_nd", ctx.loop_nest(updates.shape, body, parallel=False))
    return [buffer_ref(out, data.shape)]


# -- Compress ---------------------------------------------------------------------------
def lower_compress(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                   ) -> list[TensorRef]:
    """The slices along ``axis`` (of the flattened input when absent) whose condition
    is true. A run-time condition needs the declared output shape; its kernel copies
    the selected slices in order and zero-fills what the condition leaves short."""
    from irkit.lower.shape_ops import reshape_ref

    x, cond = _required(ins, 0, node), _required(ins, 1, node)
    axis_attr = node.attr("axis", None)
    in_shape = x.shape
    attrs = {} if axis_attr is None else {"axis": int(axis_attr)}
    if axis_attr is None:
        x = reshape_ref(x, (product(x.shape),))
        axis = 0
    else:
        axis = _axis(int(axis_attr), x.rank, node)
    dim = x.shape[axis]
    if cond.const is not None:
        picks = np.flatnonzero(np.asarray(cond.const).reshape(-1)[: static(dim, "Compress axis")])
        shape = _with(x.shape, axis, Const(len(picks)))
        if len(picks) == 0:
            return [TensorRef(shape, x.dtype, lambda idx: _zero(x.dtype))]
        pick_ref = ctx.const_ref(picks.astype(np.int64), "i64")
        return [TensorRef(shape, x.dtype, lambda idx: x.read(_with(
            idx, axis, pick_ref.read((idx[axis],)))), cost=x.cost + 2)]
    shape = _guarded_shape(ctx, node, "compress", in_shape, {"condition": cond},
                           "Compress condition", attrs)
    if len(shape) != x.rank:
        raise LoweringError("Compress's declared output rank differs from its input's")
    out = ctx.new_buffer("compress", x.dtype, product(shape))
    ctx.add_kernel("compress_fill", ctx.loop_nest(
        shape, lambda idx: Store(out, flat_index(idx, shape), _zero(x.dtype))))
    filled = _local(ctx, "i64", "filled")
    z = Const(0)
    i = ctx.var("i")
    room = shape[axis]

    def copy(kept: Index, at: Callable[[Expr], Index]) -> Stmt:
        return Store(out, flat_index(at(Load(filled, z)), shape), x.read(at(i)))

    length = simplify_expr(Binary("min", cond.shape[0], dim))
    take = _and(cond.read((i,)), _lt(Load(filled, z), room))
    scan = For(i, length, If(take, block(
        _along_axis(ctx, x.shape, axis, copy, parallel=False),
        Store(filled, z, Load(filled, z) + 1))))
    ctx.add_kernel("compress", block(Store(filled, z, z), scan), [filled])
    return [buffer_ref(out, shape)]


# -- Einsum -----------------------------------------------------------------------------
def _einsum_terms(equation: str, ranks: Sequence[int]) -> tuple[list[list[str]], list[str]]:
    """Each operand's labels and the output's, with ``...`` expanded into labels
    ``.0``, ``.1``… aligned from the right (numpy's broadcasting of ellipses)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise LoweringError(f"Einsum {equation!r} names {len(terms)} operands, "
                            f"got {len(ranks)}")
    ell_rank = 0
    labels: list[list[str]] = []
    for term, rank in zip(terms, ranks):
        head, dots, tail = term.partition("...")
        if not all(c.isalpha() for c in head + tail):
            raise LoweringError(f"Einsum term {term!r} is not supported")
        n = rank - len(head) - len(tail) if dots else 0
        if n < 0 or (not dots and len(term) != rank):
            raise LoweringError(f"Einsum term {term!r} does not match rank {rank}")
        ell_rank = max(ell_rank, n)
        labels.append([*head, *(f".{ell_rank - n + e}" for e in range(n)), *tail])
    ell = [f".{e}" for e in range(ell_rank)]
    if arrow:
        head, dots, tail = rhs.partition("...")
        if not all(c.isalpha() for c in head + tail):
            raise LoweringError(f"Einsum output {rhs!r} is not supported")
        out = [*head, *(ell if dots else []), *tail]
    else:
        letters = [c for t in labels for c in t if not c.startswith(".")]
        out = ell + sorted(c for c in set(letters) if letters.count(c) == 1)
    return labels, out


def lower_einsum(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                 ) -> list[TensorRef]:
    """A loop nest over the output labels around a sum over the others. Without summed
    labels (transposes, diagonals, outer products) the result is an inline product."""
    refs = [r for r in ins if r is not None]
    dtype = refs[0].dtype
    if dtype not in ORDERED or any(r.dtype != dtype for r in refs):
        raise LoweringError(f"Einsum on {[r.dtype for r in refs]} is not supported")
    work = "f32" if dtype in HALF_FLOATS else dtype  # 16-bit floats: round once, at the end
    labels, out_labels = _einsum_terms(str_attr(node, "equation", ""), [r.rank for r in refs])
    sizes: dict[str, Expr] = {}
    for ref, term in zip(refs, labels):
        for label, d in zip(term, ref.shape):
            known = sizes.get(label)
            if known is None or (is_static(known) and static(known) == 1):
                sizes[label] = d
            elif not (dims_equal(known, d) or (is_static(d) and static(d) == 1)):
                raise LoweringError(f"Einsum label {label!r} has sizes {known} and {d}")
    if any(label not in sizes for label in out_labels) or len(set(out_labels)) != len(
            out_labels):
        raise LoweringError(f"Einsum output labels {out_labels} are not valid")
    summed = [label for label in sizes if label not in out_labels]
    out_shape = tuple(sizes[label] for label in out_labels)

    def term_product(bound: dict[str, Expr]) -> Expr:
        value: Expr | None = None
        for ref, term in zip(refs, labels):
            idx = tuple(Const(0) if is_static(d) and static(d) == 1 else bound[label]
                        for label, d in zip(term, ref.shape))
            got = ref.read(idx)
            got = got if work == dtype else Cast(work, got)
            value = got if value is None else value * got
        assert value is not None
        return value

    def result(value: Expr) -> Expr:
        return value if work == dtype else Cast(dtype, value)

    if not summed:
        return [TensorRef(out_shape, dtype, lambda idx: result(term_product(
            dict(zip(out_labels, idx)))), cost=sum(r.cost for r in refs) + len(refs))]
    out = ctx.new_buffer("einsum", dtype, product(out_shape))
    acc = _local(ctx, work, "acc")
    z = Const(0)

    def body(idx: Index) -> Stmt:
        loop_vars = {label: ctx.var("k") for label in summed}
        bound = {**dict(zip(out_labels, idx)), **loop_vars}
        stmt: Stmt = Store(acc, z, Load(acc, z) + term_product(bound))
        for label in reversed(summed):
            stmt = For(loop_vars[label], sizes[label], stmt)
        return block(Store(acc, z, _zero(work)), stmt,
                     Store(out, flat_index(idx, out_shape), result(Load(acc, z))))

    ctx.add_kernel("einsum", ctx.loop_nest(out_shape, body), [acc])
    return [buffer_ref(out, out_shape)]


LOWERINGS: dict[str, Callable[..., list[TensorRef]]] = {
    "GatherElements": lower_gather_elements, "Trilu": lower_trilu,
    "EyeLike": lower_eyelike, "OneHot": lower_onehot, "Tile": lower_tile,
    "ReverseSequence": lower_reverse_sequence, "Pad": lower_pad,
    "ArgMax": lower_arg_extreme, "ArgMin": lower_arg_extreme, "TopK": lower_topk,
    "CumSum": lower_cumulative, "CumProd": lower_cumulative,
    "ScatterElements": lower_scatter_elements, "Scatter": lower_scatter_elements,
    "ScatterND": lower_scatter_nd, "TensorScatter": lower_tensor_scatter, "Compress": lower_compress, "Einsum": lower_einsum,
}  # fmt: skip
