"""Layout and shape ops as inline views (no data movement until a consumer needs it).

Shape computations fold at compile time: ``Shape`` yields dims as polynomials in the
symbolic dims, and
Reshape reads its target shape through them, so exporter-generated shape arithmetic
(Shape → Slice → Concat → Reshape) costs nothing at run time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from irkit.ir import Node, TensorType
from irkit.kir import Binary, Cast, Const, Expr, Select, simplify_expr
from irkit.kir.printer import format_expr
from irkit.lower.context import LoweringContext
from irkit.lower.runtime_sizes import guarded_shape, runtime_range, runtime_slice
from irkit.lower.symbolic import exact_div, is_poly, to_expr, to_poly
from irkit.lower.tensor import (
    Index,
    LoweringError,
    Reader,
    TensorRef,
    broadcast_read,
    broadcast_shape,
    buffer_ref,
    dim_value,
    flat_index,
    product,
    static,
    unravel,
)


def const_ints(ref: TensorRef | None, what: str) -> list[int] | None:
    """The values of an optional constant int input; LoweringError if known only at run time."""
    if ref is None:
        return None
    if ref.const is None:
        raise LoweringError(f"{what} must be a compile-time constant")
    return [int(v) for v in np.asarray(ref.const).reshape(-1)]


def _shape_values(ref: TensorRef) -> list[Expr]:
    """The elements of a 1-D int64 shape tensor as (folded) expressions."""
    if ref.const is not None:
        return [Const(int(v)) for v in np.asarray(ref.const).reshape(-1)]
    length = static(ref.shape[0], "shape length") if ref.rank else 1
    values = []
    for i in range(length):
        v = simplify_expr(ref.read((Const(i),) if ref.rank else ()))
        if not (isinstance(v, Const) or _is_affine(v)):
            raise LoweringError("Reshape target shape depends on run-time data")
        values.append(v)
    return values


def _is_affine(e: Expr) -> bool:
    """Whether ``e`` folds to a polynomial in the symbolic dims (name kept from when
    sizes were affine in N alone)."""
    return is_poly(e)


def wrap_int(value: int | Expr) -> Expr:
    return Const(value) if isinstance(value, int) else value


def view(src: TensorRef, shape: Sequence[Expr], read_fn: object) -> TensorRef:
    return TensorRef(tuple(shape), src.dtype, read_fn, cost=src.cost)  # type: ignore[arg-type]


def reshape_ref(src: TensorRef, shape: Sequence[Expr]) -> TensorRef:
    """``src`` seen with a new shape of the same size (a buffer alias when contiguous)."""
    shape = tuple(simplify_expr(d) for d in shape)
    consts = [d for d in shape if isinstance(d, Const)]
    if src.const is not None and len(consts) == len(shape):
        dims = tuple(int(d.value) for d in consts)
        return TensorRef(shape, src.dtype, _const_reader(src, dims), const=np.asarray(
            src.const).reshape(dims))
    if src.buffer is not None:
        return buffer_ref(src.buffer, shape)
    groups = _groups(src.shape, shape)
    if groups is None:
        return view(src, shape, lambda idx: src.read(unravel(flat_index(idx, shape), src.shape)))

    def read(idx: Index) -> Expr:
        out: list[Expr] = []
        for (s0, s1), (d0, d1) in groups:
            flat = flat_index(idx[d0:d1], shape[d0:d1])
            out.extend(unravel(flat, src.shape[s0:s1]) if s1 > s0 else ())
        return src.read(tuple(out))

    return view(src, shape, read)


def _const_reader(src: TensorRef, dims: tuple[int, ...]) -> Reader:
    from irkit.lower.tensor import flat_index as fi

    shape_src = src.shape
    new_shape = tuple(Const(d) for d in dims)
    return lambda idx: src.read(unravel(fi(idx, new_shape), shape_src))


def _groups(a: Sequence[Expr], b: Sequence[Expr]
            ) -> list[tuple[tuple[int, int], tuple[int, int]]] | None:
    """Split two shapes into consecutive groups of equal size (checked at N=1,2,3)."""
    def sizes(shape: Sequence[Expr], n: int) -> list[int]:
        return [dim_value(d, n) for d in shape]

    try:
        va = [sizes(a, n) for n in (1, 2, 3)]
        vb = [sizes(b, n) for n in (1, 2, 3)]
    except LoweringError:
        return None
    groups = []
    i = j = 0
    while i < len(a) or j < len(b):
        i0, j0 = i, j
        pa = [1, 1, 1]
        pb = [1, 1, 1]
        if i < len(a):
            pa = [va[t][i] for t in range(3)]
            i += 1
        if j < len(b):
            pb = [vb[t][j] for t in range(3)]
            j += 1
        while pa != pb:
            if all(x < y for x, y in zip(pa, pb)) and i < len(a):
                pa = [pa[t] * va[t][i] for t in range(3)]
                i += 1
            elif all(y < x for x, y in zip(pa, pb)) and j < len(b):
                pb = [pb[t] * vb[t][j] for t in range(3)]
                j += 1
            else:
                return None
        groups.append(((i0, i), (j0, j)))
    return groups


def lower_reshape(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                  ) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    total = product(x.shape)
    if node.op == "Flatten":
        axis = int(node.attr("axis", 1))
        axis = axis + x.rank if axis < 0 else axis
        shape = [product(x.shape[:axis]), product(x.shape[axis:])]
        return [reshape_ref(x, shape)]
    if node.op in ("Squeeze", "Unsqueeze"):
        axes = node.attr("axes", None)
        if axes is None and len(ins) > 1 and ins[1] is not None and ins[1].const is None:
            (declared,) = guarded_shape(ctx, node, node.op.lower(), x, {"axes": ins[1]})
            return [_reshape_declared(x, declared, node)]
        if axes is None:
            axes = const_ints(ins[1] if len(ins) > 1 else None, f"{node.op} axes")
        if node.op == "Squeeze":
            if not axes:
                axes = [d for d in range(x.rank) if dim_value(x.shape[d], 2) == 1]
            axes = [a % x.rank for a in axes]
            shape = [d for k, d in enumerate(x.shape) if k not in axes]
        else:
            out_rank = x.rank + len(axes)
            axes = sorted(a % out_rank for a in axes)
            it = iter(x.shape)
            shape = [Const(1) if k in axes else next(it) for k in range(out_rank)]
        return [reshape_ref(x, shape)]
    target = ins[1]
    assert target is not None
    allowzero = int(node.attr("allowzero", 0))
    try:
        values = _shape_values(target)
    except LoweringError:
        (declared,) = guarded_shape(ctx, node, "reshape", x, {"shape": target},
                                    {"allowzero": allowzero})
        return [_reshape_declared(x, declared, node)]
    shape = []
    for k, v in enumerate(values):
        if isinstance(v, Const) and v.value == 0 and not allowzero:
            shape.append(x.shape[k])
        else:
            shape.append(v)
    unknown = [k for k, v in enumerate(shape) if isinstance(v, Const) and v.value == -1]
    if unknown:
        known = product([d for k, d in enumerate(shape) if k != unknown[0]])
        # e.g. [N, -1] of an N x 12 tensor, or [-1, 384] of an N x S x 384 one.
        quotient = exact_div(to_poly(total), to_poly(known))
        if quotient is None:
            raise LoweringError(f"cannot infer the -1 of Reshape {values} for {total} elements")
        shape[unknown[0]] = to_expr(quotient)
    _require_same_count(ctx, node, x.shape, shape)
    return [reshape_ref(x, shape)]


def _require_same_count(ctx: LoweringContext, node: Node, src: Sequence[Expr],
                        shape: Sequence[Expr]) -> None:
    """A Reshape target with no -1 can hold the input's elements only for some dims: a
    legacy torch export bakes the traced sequence length into it (``[7, 3*N, 8]`` for an
    ``S x N x 24`` input). ONNX Runtime refuses other dims at run time; the kernels would
    read out of bounds, so the runtime checks the counts agree before any call."""
    have, want = product(src), product(shape)
    if not (is_poly(have) and is_poly(want)) or to_poly(have) == to_poly(want):
        return
    value = node.inputs[0]  # the graph's dim names where its type has them
    declared = value.type.shape if value is not None and isinstance(value.type, TensorType) \
        else None
    dims = ", ".join(str(d) for d in declared) if declared is not None else \
        ", ".join(format_expr(d) for d in src)
    target = ", ".join(format_expr(d) for d in shape)
    why = (f"Reshape {node.name or node.outputs[0].name!r} into [{target}] (a shape fixed "
           f"when the model was exported) cannot hold its input [{dims}] at these sizes")
    ctx.require_nonnegative(simplify_expr(have - want), why)
    ctx.require_nonnegative(simplify_expr(want - have), why)


def _reshape_declared(x: TensorRef, shape: Sequence[Expr], node: Node) -> TensorRef:
    """``x`` viewed with a declared shape of the same element count."""
    if to_poly(product(x.shape)) != to_poly(product(shape)):
        raise LoweringError(f"{node.op}: declared output {[str(d) for d in shape]} does not "
                            f"hold the input's elements")
    return reshape_ref(x, shape)


def lower_transpose(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                    ) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    perm = list(node.attr("perm", None) or reversed(range(x.rank)))
    shape = tuple(x.shape[p] for p in perm)
    inverse = [perm.index(d) for d in range(x.rank)]
    if x.const is not None:
        return [ctx.const_ref(np.transpose(x.const, perm), x.dtype)]
    return [view(x, shape, lambda idx: x.read(tuple(idx[inverse[d]] for d in range(x.rank))))]


def _bound_list(ref: TensorRef | None, what: str) -> list[int | Expr]:
    """Slice starts/ends: ints, or polynomials in the symbolic dims (from ``Shape``)."""
    if ref is None:
        return []
    if ref.const is not None:
        return [int(v) for v in np.asarray(ref.const).reshape(-1)]
    try:
        values = _shape_values(ref)
    except LoweringError as exc:
        raise LoweringError(f"{what} must be compile-time values") from exc
    return [int(v.value) if isinstance(v, Const) else v for v in values]


def lower_slice(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                ) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    dynamic = runtime_slice(ctx, node, x, ins)
    if dynamic is not None:
        return [dynamic]
    starts = _bound_list(ins[1], "Slice starts")
    ends = _bound_list(ins[2], "Slice ends")
    axes = const_ints(ins[3] if len(ins) > 3 else None, "Slice axes") or list(range(len(starts)))
    steps = const_ints(ins[4] if len(ins) > 4 else None, "Slice steps") or [1] * len(starts)
    begin: list[Expr] = [Const(0)] * x.rank
    step: list[int] = [1] * x.rank
    shape = list(x.shape)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a %= x.rank
        if isinstance(simplify_expr(x.shape[a]), Const) and isinstance(s, int) and \
                isinstance(e, int):
            dim = static(x.shape[a])
            lo, hi, _ = slice(s, e, st).indices(dim)
            count = len(range(lo, hi, st))
            begin[a], step[a], shape[a] = Const(lo), st, Const(count)
        elif st == 1 and s == 0 and isinstance(e, int) and e >= 2**62:
            continue
        elif st == 1 and (not isinstance(s, int) or s >= 0) and \
                (not isinstance(e, int) or 0 <= e < 2**62):
            # Symbolic bounds (``x[:, :S]`` of position ids) cannot be clamped at compile
            # time: the slice is taken as in range, and the runtime checks that it is
            # (a sequence longer than the model's positions is refused, not read past).
            lo_e, hi_e = simplify_expr(wrap_int(s)), simplify_expr(wrap_int(e))
            if not (is_poly(x.shape[a]) and is_poly(lo_e) and is_poly(hi_e)):
                raise LoweringError("Slice bounds must be polynomials in the symbolic dims")
            where = f"{node.describe()} on axis {a} (size {x.shape[a]})"
            ctx.require_nonnegative(x.shape[a] - hi_e, f"{where}: end {hi_e} past the size")
            ctx.require_nonnegative(hi_e - lo_e, f"{where}: end {hi_e} before start {lo_e}")
            begin[a], shape[a] = lo_e, simplify_expr(hi_e - lo_e)
        else:
            raise LoweringError("Slice with negative or strided bounds along a symbolic "
                                "dimension is not supported")
    if any(not isinstance(simplify_expr(d), Const) for d in shape) and x.const is not None:
        return [view(x, shape, lambda idx: x.read(tuple(
            simplify_expr(begin[d] + idx[d] * step[d]) for d in range(x.rank))))]
    if x.const is not None:
        sl = tuple(slice(int(b.value), None, st) for b, st in zip(begin, step))  # type: ignore
        arr = np.asarray(x.const)[sl]
        arr = arr[tuple(slice(0, static(d)) for d in shape)]
        return [ctx.const_ref(arr, x.dtype)]
    return [view(x, shape, lambda idx: x.read(tuple(
        simplify_expr(begin[d] + idx[d] * step[d]) for d in range(x.rank))))]


def lower_split(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                ) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    axis = int(node.attr("axis", 0)) % x.rank
    dim = static(x.shape[axis], "Split axis")
    count = len(node.outputs)
    runtime = len(ins) > 1 and ins[1] is not None and ins[1].const is None
    sizes: list[int] | None
    if runtime and node.attr("split", None) is None:
        shapes = guarded_shape(ctx, node, "split", x, {"split": ins[1]}, {"axis": axis},
                               outputs=count)
        sizes = [static(sh[axis]) for sh in shapes]
    else:
        sizes = node.attr("split", None) or const_ints(ins[1] if len(ins) > 1 else None,
                                                      "split")
    if not sizes:
        chunk = -(-dim // count)
        sizes = [min(chunk, dim - k * chunk) for k in range(count)]
    outs = []
    offset = 0
    for size in sizes:
        off = offset
        shape = list(x.shape)
        shape[axis] = Const(size)
        outs.append(view(x, shape, lambda idx, off=off: x.read(tuple(
            (idx[d] + off) if d == axis else idx[d] for d in range(x.rank)))))
        offset += size
    return outs


def lower_concat(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                 ) -> list[TensorRef]:
    refs = [r for r in ins if r is not None]
    axis = int(node.attr("axis", 0)) % refs[0].rank
    if all(r.const is not None for r in refs):
        return [ctx.const_ref(np.concatenate([np.asarray(r.const) for r in refs], axis),
                              refs[0].dtype)]
    sizes = [r.shape[axis] for r in refs]
    shape = list(refs[0].shape)
    shape[axis] = simplify_expr(_sum(sizes))
    offsets: list[Expr] = []
    acc: Expr = Const(0)
    for s in sizes:
        offsets.append(acc)
        acc = simplify_expr(acc + s)

    def read(idx: Index) -> Expr:
        i = idx[axis]
        value: Expr | None = None
        for k, (r, off) in enumerate(zip(refs, offsets)):
            local = simplify_expr(i - off)
            # Clamp so the untaken arms of the select still address valid memory.
            size = simplify_expr(sizes[k] - 1)
            safe = Binary("min", Binary("max", local, Const(0)), size) if k else \
                Binary("min", local, size)
            sub = r.read(tuple(simplify_expr(safe) if d == axis else idx[d]
                               for d in range(len(idx))))
            value = sub if value is None else Select(Binary("ge", i, off), sub, value)
        assert value is not None
        return value

    return [TensorRef(tuple(shape), refs[0].dtype, read, cost=sum(r.cost for r in refs))]


def _sum(values: Sequence[Expr]) -> Expr:
    acc: Expr = Const(0)
    for v in values:
        acc = acc + v
    return acc


def lower_gather(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                 ) -> list[TensorRef]:
    data, indices = ins[0], ins[1]
    assert data is not None and indices is not None
    axis = int(node.attr("axis", 0)) % data.rank
    dim = data.shape[axis]
    shape = (*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :])
    if indices.const is not None and data.const is not None:
        return [ctx.const_ref(np.take(data.const, indices.const, axis=axis), data.dtype)]
    k = indices.rank

    def read(idx: Index) -> Expr:
        raw = indices.read(tuple(idx[axis : axis + k]))
        if raw.dtype != "i64":
            raw = Cast("i64", raw)
        fixed = simplify_expr(Select(Binary("lt", raw, Const(0)), raw + dim, raw))
        if isinstance(raw, Const):
            fixed = simplify_expr(raw + dim) if raw.value < 0 else raw
        return data.read((*idx[:axis], fixed, *idx[axis + k :]))

    return [TensorRef(shape, data.dtype, read, cost=data.cost + indices.cost + 4)]


def lower_gather_nd(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                    ) -> list[TensorRef]:
    """ONNX GatherND: ``out[b…, i…, j…] = data[b…, *indices[b…, i…, :], j…]`` with
    ``batch_dims`` leading dims shared; negative indices count from the end."""
    data, indices = ins[0], ins[1]
    assert data is not None and indices is not None
    batch = int(node.attr("batch_dims", 0))
    k = static(indices.shape[-1], "GatherND index length")
    if batch + k > data.rank:
        raise LoweringError(f"GatherND indexes {k} dims of a rank-{data.rank} tensor")
    outer = indices.rank - 1  # output dims taken from the indices (batch dims included)
    shape = (*indices.shape[:-1], *data.shape[batch + k :])

    def read(idx: Index) -> Expr:
        picked: list[Expr] = []
        for j in range(k):
            raw = indices.read((*idx[:outer], Const(j)))
            if raw.dtype != "i64":
                raw = Cast("i64", raw)
            dim = data.shape[batch + j]
            picked.append(simplify_expr(Select(Binary("lt", raw, Const(0)), raw + dim, raw)))
        return data.read((*idx[:batch], *picked, *idx[outer:]))

    return [TensorRef(shape, data.dtype, read, cost=data.cost + k * (indices.cost + 4))]


def lower_expand(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                 ) -> list[TensorRef]:
    x, target = ins[0], ins[1]
    assert x is not None and target is not None
    try:
        dims = _shape_values(target)
    except LoweringError:
        (declared,) = guarded_shape(ctx, node, "expand", x, {"shape": target})
        dims = list(declared)
    shape = broadcast_shape([x.shape, tuple(dims)])
    reader = broadcast_read(x, len(shape))
    return [TensorRef(shape, x.dtype, reader, cost=x.cost)]


def lower_shape(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                ) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    start = int(node.attr("start", 0))
    end = node.attr("end", None)
    dims = list(x.shape)[slice(start, end)]
    if all(isinstance(simplify_expr(d), Const) for d in dims):
        return [ctx.const_ref(np.array([static(d) for d in dims], np.int64), "i64")]

    def read(idx: Index) -> Expr:
        value: Expr = dims[-1]
        for k in reversed(range(len(dims) - 1)):
            value = Select(Binary("eq", idx[0], Const(k)), dims[k], value)
        return simplify_expr(value)

    return [TensorRef((Const(len(dims)),), "i64", read)]


def lower_size(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
               ) -> list[TensorRef]:
    """Size: the element count as an int64 scalar, a polynomial in the symbolic dims."""
    x = ins[0]
    assert x is not None
    count = simplify_expr(product(x.shape))
    if isinstance(count, Const):
        return [ctx.const_ref(np.array(static(count), np.int64), "i64")]
    return [TensorRef((), "i64", lambda idx: count)]


def lower_constant(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                   ) -> list[TensorRef]:
    from irkit.ir import DType
    from irkit.lower.tensor import KIR_DTYPES

    value = node.attr("value", None)
    for key in ("value_float", "value_int", "value_floats", "value_ints"):
        if value is None and node.attr(key) is not None:
            value = np.asarray(node.attr(key))
    arr = np.asarray(value)
    if arr.dtype == np.float64 and node.attr("value") is None:
        arr = arr.astype(np.float32)
    dtype = KIR_DTYPES.get(DType.from_numpy(arr.dtype))
    if dtype is None:
        raise LoweringError(f"Constant of dtype {arr.dtype} is not supported")
    return [ctx.const_ref(arr, dtype)]


def lower_constant_of_shape(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                            ) -> list[TensorRef]:
    from irkit.ir import DType
    from irkit.lower.tensor import KIR_DTYPES

    value = node.attr("value", None)
    arr = np.asarray(value if value is not None else np.zeros(1, np.float32)).reshape(-1)
    dtype = KIR_DTYPES[DType.from_numpy(arr.dtype)]
    if ins[0] is not None and ins[0].const is None:
        try:  # a shape made of the symbolic dims (Shape/Gather/Concat of an input)
            symbolic = tuple(_shape_values(ins[0]))
        except LoweringError:
            symbolic = None
        if symbolic is not None and not all(isinstance(d, Const) for d in symbolic):
            fill = arr[0].item()
            return [TensorRef(symbolic, dtype, lambda idx: Const(fill, dtype), cost=0)]
        (shape,) = guarded_shape(ctx, node, "constant_of_shape", ins[0], {"shape": ins[0]})
        dims = [static(d) for d in shape]
    else:
        dims = const_ints(ins[0], "ConstantOfShape shape") or []
    return [ctx.const_ref(np.full(dims, arr[0], dtype=arr.dtype), dtype)]


def lower_range(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                ) -> list[TensorRef]:
    vals = [np.asarray(r.const).reshape(-1)[0] for r in ins if r is not None and
            r.const is not None]
    if len(vals) != 3:
        dynamic = runtime_range(ctx, node, ins)
        return [dynamic if dynamic is not None else _symbolic_range(ins)]
    arr = np.arange(vals[0], vals[1], vals[2]).astype(np.asarray(vals[0]).dtype)
    assert ins[0] is not None
    return [ctx.const_ref(arr, ins[0].dtype)]


def _symbolic_range(ins: list[TensorRef | None]) -> TensorRef:
    """``Range(start, limit, 1)`` with a limit in the symbolic dims (``arange(S)``)."""
    start, limit, delta = ins[0], ins[1], ins[2]
    assert start is not None and limit is not None and delta is not None
    if start.const is None or delta.const is None or int(np.asarray(delta.const)) != 1 or \
            start.dtype not in ("i64", "i32"):
        raise LoweringError("Range needs constant start and delta 1 (and an integer type) "
                            "when its limit is symbolic")
    first = int(np.asarray(start.const))
    end = simplify_expr(limit.read(()) if limit.rank == 0 else limit.read((Const(0),)))
    if end.dtype != "i64":
        end = simplify_expr(Cast("i64", end))
    if not is_poly(end):
        raise LoweringError("Range needs constant start, limit and delta")
    length = simplify_expr(end - first)
    dtype = start.dtype

    def read(idx: Index) -> Expr:
        value = simplify_expr(idx[0] + first)
        return value if dtype == "i64" else Cast(dtype, value)

    return TensorRef((length,), dtype, read)
