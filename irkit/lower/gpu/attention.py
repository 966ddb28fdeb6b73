"""The GPU attention template for ``irkit.ScaledDotProductAttention`` (static shapes).

One thread block per (batch x head, ``BQ`` queries), 128 threads, streaming the keys in
chunks of ``BK`` with the running-max softmax (flash attention's order): per chunk the
block stages K and V in shared memory, computes the ``BQ x BK`` scaled scores, updates
each query's running maximum and sum and rescales its output accumulator, then adds the
chunk's probabilities times V. The scores never leave shared memory; chunks are sized so
the block's shared memory stays within 44 KB (no opt-in needed). The output is written
at its permuted position, like the CPU kernel.
"""

from __future__ import annotations

import numpy as np

from irkit.ir import Node
from irkit.kir import (
    Barrier,
    Binary,
    Buffer,
    Call,
    Const,
    Expr,
    For,
    If,
    Let,
    Load,
    Stmt,
    Store,
    Var,
    block,
    simplify_expr,
)
from irkit.lower.context import LoweringContext
from irkit.lower.gpu.spmd import ceil_div, scalar, shared, spmd_kernel, strided
from irkit.lower.tensor import (
    LoweringError,
    TensorRef,
    buffer_ref,
    fconst,
    flat_index,
    product,
    static,
    unravel,
)

THREADS = 128
SHARED_FLOATS = 44 * 1024 // 4


def _chunks(d: int, dv: int) -> tuple[int, int]:
    """(BQ, BK): the largest query block and key chunk whose shared buffers fit."""
    for bq in (16, 8, 4):
        for bk in (32, 16, 8):
            if bq * d + bk * d + bk * dv + bq * bk + bq * dv + 3 * bq <= SHARED_FLOATS:
                return bq, bk
    raise LoweringError(f"attention heads of size {d}/{dv} do not fit the GPU template's "
                        "shared memory")


def gpu_attention(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                  ) -> list[TensorRef]:
    q, k, v = ins[0], ins[1], ins[2]
    assert q is not None and k is not None and v is not None
    if q.dtype != "f32" or q.rank < 3:
        raise LoweringError("ScaledDotProductAttention needs f32 inputs of rank >= 3")
    sq, d = static(q.shape[-2], "query length"), static(q.shape[-1], "head size")
    sk, dv = static(k.shape[-2], "key length"), static(v.shape[-1], "value head size")
    bq, bk = _chunks(d, dv)
    lead = q.shape[:-2]
    perm = [int(p) for p in node.attr("perm", None) or range(q.rank)]
    logical = (*lead, Const(sq), Const(dv))
    out_shape = tuple(logical[p] for p in perm)
    out = ctx.new_buffer("attention", "f32", product(out_shape))
    scale = float(np.float32(node.attr("scale", 1.0)))
    bh, qt, t = ctx.var("bh"), ctx.var("qt"), ctx.var("t")
    kc, key, dd = ctx.var("kc"), ctx.var("key"), ctx.var("d")
    at = unravel(bh, lead)
    qs, ks, vs = shared(ctx, "q", bq * d), shared(ctx, "k", bk * d), shared(ctx, "v", bk * dv)
    scores, acc_o = shared(ctx, "scores", bq * bk), shared(ctx, "o", bq * dv)
    run_max, run_sum, corr = (shared(ctx, h, bq) for h in ("m", "l", "corr"))
    dot = scalar(ctx, "dot")
    z, zero, neg_inf = Const(0), fconst(0.0), fconst(float("-inf"))

    def load_rows(dst: Buffer, rows: int, width: int, first: Expr, limit: int,
                  ref: TensorRef) -> Stmt:
        def one(e: Expr) -> Stmt:
            row, col = simplify_expr(e // width), simplify_expr(e % width)
            g = simplify_expr(first + row)
            return If(Binary("lt", g, Const(limit)), Store(dst, e, ref.read((*at, g, col))),
                      Store(dst, e, zero))
        return strided(ctx, t, THREADS, Const(rows * width), one)

    def score(e: Expr) -> Stmt:
        qi, kj = simplify_expr(e // bk), simplify_expr(e % bk)
        valid = Binary("lt", simplify_expr(kc * bk + kj), Const(sk))
        return block(
            Store(dot, z, zero),
            For(dd, Const(d), Store(dot, z, Load(dot, z) + Load(qs, qi * d + dd) * Load(
                ks, kj * d + dd))),
            If(valid, Store(scores, e, Load(dot, z) * fconst(scale)),
               Store(scores, e, neg_inf)),
        )

    row = t
    mx, c = Var(ctx.fresh("mx"), "f32"), Var(ctx.fresh("c"), "f32")
    best, sums = scalar(ctx, "best"), scalar(ctx, "sums")
    update_rows = If(Binary("lt", row, Const(bq)), block(
        Store(best, z, Load(run_max, row)),
        For(key, Const(bk), Store(best, z, Binary("max", Load(best, z),
                                                  Load(scores, row * bk + key)))),
        Let(mx, Load(best, z)),
        Let(c, Call("exp", (Load(run_max, row) - mx,))),
        Store(sums, z, zero),
        For(key, Const(bk), block(
            Store(scores, row * bk + key, Call("exp", (Load(scores, row * bk + key) - mx,))),
            Store(sums, z, Load(sums, z) + Load(scores, row * bk + key)))),
        Store(run_sum, row, Load(run_sum, row) * c + Load(sums, z)),
        Store(run_max, row, mx),
        Store(corr, row, c),
    ))

    def accumulate(e: Expr) -> Stmt:
        qi, col = simplify_expr(e // dv), simplify_expr(e % dv)
        return block(
            Store(dot, z, Load(acc_o, e) * Load(corr, qi)),
            For(key, Const(bk), Store(dot, z, Load(dot, z) + Load(scores, qi * bk + key)
                                      * Load(vs, key * dv + col))),
            Store(acc_o, e, Load(dot, z)))

    def finish(e: Expr) -> Stmt:
        qi, col = simplify_expr(e // dv), simplify_expr(e % dv)
        gq = simplify_expr(qt * bq + qi)
        index = (*at, gq, col)
        target = flat_index(tuple(index[p] for p in perm), out_shape)
        return If(Binary("lt", gq, Const(sq)), Store(out, target, Load(acc_o, e) / Load(
            run_sum, qi)))

    body = block(
        load_rows(qs, bq, d, simplify_expr(qt * bq), sq, q),
        strided(ctx, t, THREADS, Const(bq * dv), lambda e: Store(acc_o, e, zero)),
        If(Binary("lt", t, Const(bq)), block(Store(run_max, t, neg_inf),
                                             Store(run_sum, t, zero))),
        For(kc, ceil_div(Const(sk), bk), block(
            load_rows(ks, bk, d, simplify_expr(kc * bk), sk, k),
            load_rows(vs, bk, dv, simplify_expr(kc * bk), sk, v),
            Barrier(),
            strided(ctx, t, THREADS, Const(bq * bk), score),
            Barrier(),
            update_rows,
            Barrier(),
            strided(ctx, t, THREADS, Const(bq * dv), accumulate),
            Barrier(),
        )),
        strided(ctx, t, THREADS, Const(bq * dv), finish),
    )
    spmd_kernel(ctx, "attention", [(qt, ceil_div(Const(sq), bq)), (bh, product(lead))], t,
                THREADS, body, [qs, ks, vs, scores, acc_o, run_max, run_sum, corr, dot, best,
                                sums])
    return [buffer_ref(out, out_shape)]


__all__ = ["gpu_attention"]
