"""MatMul and Gemm on every dtype the fast f32 template does not take.

f64 and integer products are a plain loop nest: a parallel loop over the output elements
and a serial loop over the depth, accumulating in f64 or 64-bit integers (wrapping to the
result type like numpy). They are correct rather than fast; f32 (and f16/bf16, widened)
keep the packed, register-blocked template in ``irkit.lower.heavy``.
"""

from __future__ import annotations

import numpy as np

from irkit.ir import Node
from irkit.kir import Cast, Const, Expr, Load, Store, block
from irkit.lower.context import LoweringContext
from irkit.lower.nn import _reduce_acc, _Reducer
from irkit.lower.tensor import (
    Index,
    LoweringError,
    TensorRef,
    broadcast_read,
    broadcast_shape,
    buffer_ref,
    flat_index,
    product,
)

TEMPLATE_DTYPES = ("f32", "f16", "bf16")  # f16/bf16 run the f32 template widened


def needs_generic(node: Node, ins: list[TensorRef | None]) -> bool:
    """Whether a MatMul/Gemm must take this path (an f64 or integer operand)."""
    return node.op in ("MatMul", "Gemm") and any(
        r is not None and r.dtype not in TEMPLATE_DTYPES for r in ins[:3])


def _cast(e: Expr, dtype: str) -> Expr:
    return e if e.dtype == dtype else Cast(dtype, e)


def lower_matmul_generic(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                         ) -> list[TensorRef]:
    a, b = ins[0], ins[1]
    assert a is not None and b is not None
    if a.dtype != b.dtype:
        raise LoweringError(f"{node.op} on {a.dtype} x {b.dtype} mixes element types")
    dtype = a.dtype
    if dtype == "bool":
        raise LoweringError(f"{node.op} on bool is not supported")
    trans_a = node.op == "Gemm" and bool(node.attr("transA", 0))
    trans_b = node.op == "Gemm" and bool(node.attr("transB", 0))
    if node.op == "Gemm" and (a.rank != 2 or b.rank != 2):
        raise LoweringError("Gemm needs 2-D operands")
    squeeze_rows, squeeze_cols = a.rank == 1, b.rank == 1
    a_shape = (Const(1), *a.shape) if squeeze_rows else a.shape
    b_shape = (*b.shape, Const(1)) if squeeze_cols else b.shape
    if trans_a:
        a_shape = (*a_shape[:-2], a_shape[-1], a_shape[-2])
    if trans_b:
        b_shape = (*b_shape[:-2], b_shape[-1], b_shape[-2])
    batch = broadcast_shape([a_shape[:-2], b_shape[:-2]])
    m, depth, n = a_shape[-2], a_shape[-1], b_shape[-1]
    nb = len(batch)

    def read_a(bidx: Index, i: Expr, k: Expr) -> Expr:
        row, col = (k, i) if trans_a else (i, k)
        idx = (*bidx, col) if squeeze_rows else (*bidx, row, col)
        return _batched(a, nb, idx)

    def read_b(bidx: Index, k: Expr, j: Expr) -> Expr:
        row, col = (j, k) if trans_b else (k, j)
        idx = (*bidx, row) if squeeze_cols else (*bidx, row, col)
        return _batched(b, nb, idx)

    full = (*batch, m, n, depth)
    acc_dtype = _reduce_acc("ReduceSum", dtype)
    red = _Reducer(ctx, full, [len(full) - 1])
    acc = red.scalar(acc_dtype)
    z = Const(0)

    def step(idx: Index) -> Expr:
        bidx, i, j, k = idx[:nb], idx[nb], idx[nb + 1], idx[nb + 2]
        prod = _cast(read_a(bidx, i, k), acc_dtype) * _cast(read_b(bidx, k, j), acc_dtype)
        return Load(acc, z) + prod

    out_shape = (*batch, m, n)
    result: Expr = Load(acc, z)
    outer = tuple(red.outer)
    if node.op == "Gemm":
        alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
        if alpha != 1.0:
            result = result * _scalar(alpha, acc_dtype)
        c = ins[2] if len(ins) > 2 else None
        if c is not None and beta != 0.0:
            term = _cast(broadcast_read(c, 2)(outer), acc_dtype)
            result = result + (term if beta == 1.0 else term * _scalar(beta, acc_dtype))
    out = ctx.new_buffer(node.op.lower(), dtype, product(out_shape))
    red.emit(node.op.lower(), block(
        Store(acc, z, _scalar(0, acc_dtype)),
        red.inner(lambda idx: Store(acc, z, step(idx))),
        Store(out, flat_index(outer, out_shape), _cast(result, dtype)),
    ))
    shape = out_shape
    if squeeze_rows:
        shape = (*shape[:-2], shape[-1])
    if squeeze_cols:
        shape = shape[:-1]
    return [buffer_ref(out, shape)]


def _batched(ref: TensorRef, nb: int, idx: Index) -> Expr:
    """``ref`` read at ``idx`` (batch dims first, broadcast where ``ref`` has fewer or
    size-1 batch dims)."""
    own = ref.rank - (len(idx) - nb)  # batch dims ``ref`` has
    tail = idx[nb:]
    batch = idx[nb - own:nb] if own else ()
    ones = [isinstance(d, Const) and d.value == 1 for d in ref.shape[:own]]
    batch = tuple(Const(0) if one else v for one, v in zip(ones, batch))
    return ref.read((*batch, *tail))


def _scalar(value: float, dtype: str) -> Const:
    if dtype == "f32":
        return Const(float(np.float32(value)), dtype)
    if dtype == "f64":
        return Const(float(value), dtype)
    return Const(int(value), dtype)

