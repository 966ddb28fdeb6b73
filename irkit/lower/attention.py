"""``irkit.ScaledDotProductAttention`` as one kernel.

Parallel over the leading (batch x head) dims. For each, K and V are copied into
contiguous stack buffers (read through their refs: the views the fuse pass built over
the QKV projection, i.e. strided loads, no transpose kernels). Then, ``nr`` queries at a
time, with the scores kept transposed (``St[j, i]``, queries along the vector lanes) so
that no reduction ever crosses lanes:

1. ``St[j, i] = scale * sum_d K[j, d] * Qt[d, i]`` with the GEMM microkernel's shape
   (``mr`` keys x ``nr`` queries of vector accumulators; ``Qt`` is the block of queries
   packed transposed, zero-padded past the last query);
2. softmax numerators in place: the per-query max over the keys is an elementwise
   vector max down the rows of ``St``, then ``exp(St - max)`` and the sums likewise;
3. ``O[i, c] = sum_j St[j, i] * V[j, c]`` (``mr`` queries x ``nr`` value columns), and the
   store multiplies by 1 / sum and writes straight into the output at its (permuted)
   position.

The scores never leave a few KB of stack. Shapes must be static and the stack copies
small (:func:`attention_supported`); otherwise the op is decomposed before lowering.
"""

from __future__ import annotations

import numpy as np

from irkit.ir import Node
from irkit.kir import (
    Binary,
    Broadcast,
    Buffer,
    Call,
    Const,
    Expr,
    For,
    Let,
    Load,
    Stmt,
    Store,
    Var,
    block,
)
from irkit.lower.context import LoweringContext
from irkit.lower.gemm import tile_rows
from irkit.lower.tensor import (
    LoweringError,
    TensorRef,
    buffer_ref,
    flat_index,
    product,
    static,
    unravel,
)

# Floats of stack the per-(batch, head) copies may take (Q, K panel, V: 256 KB).
MAX_LOCAL_FLOATS = 64 * 1024
NEG_INF = Const(float("-inf"), "f32")
ZERO = Const(0.0, "f32")


def _static_dims(shape: tuple | None) -> list[int] | None:
    if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in shape[-2:]):
        return None
    return [int(d) for d in shape[-2:]]


def attention_supported(node: Node) -> bool:
    """Whether :func:`lower_attention` takes ``node`` (static sequence and head dims, f32,
    equal leading dims, small enough per-head copies)."""
    if len(node.inputs) != 3:
        return False
    q, k, v = node.inputs
    if q is None or k is None or v is None or q.shape is None or k.shape is None \
            or v.shape is None:
        return False
    dims = [_static_dims(x.shape) for x in (q, k, v)]
    if any(d is None for d in dims) or any(x.dtype is None or x.dtype.numpy != np.float32
                                           for x in (q, k, v)):
        return False
    (_, d), (sk, dk), (sv, dv) = dims  # type: ignore[misc]
    if dk != d or sv != sk or not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        return False
    pad = 64  # the widest nr
    dvp = -(-dv // pad) * pad
    return sk * d + sk * dvp + (d + sk) * pad <= MAX_LOCAL_FLOATS


def lower_attention(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                    ) -> list[TensorRef]:
    q, k, v = ins[0], ins[1], ins[2]
    assert q is not None and k is not None and v is not None
    if q.dtype != "f32" or q.rank < 3:
        raise LoweringError("ScaledDotProductAttention needs f32 inputs of rank >= 3")
    sq, d = static(q.shape[-2], "query length"), static(q.shape[-1], "head size")
    sk, dv = static(k.shape[-2], "key length"), static(v.shape[-1], "value head size")
    t = ctx.tiles
    vec, nr, mr = t.vec, t.nr, t.mr
    dvp = -(-dv // nr) * nr
    lead = q.shape[:-2]
    rank = q.rank
    perm = [int(p) for p in node.attr("perm", None) or range(rank)]
    logical = (*lead, Const(sq), Const(dv))
    out_shape = tuple(logical[p] for p in perm)
    out = ctx.new_buffer("attention", "f32", product(out_shape))
    scale = float(np.float32(node.attr("scale", 1.0)))

    def local(hint: str, size: int) -> Buffer:
        return Buffer(ctx.fresh(hint), "f32", Const(size), "local")

    kp, vp = local("k", sk * d), local("v", sk * dvp)
    qt, st = local("qt", d * nr), local("scores", sk * nr)
    acc = local("acc", mr * nr)
    col_max, col_inv = local("col_max", nr), local("col_inv", nr)
    bh = ctx.var("bh")
    at = unravel(bh, lead)
    vecs = nr // vec

    def copy(dst: Buffer, rows: int, cols: int, ld: int, read: object) -> Stmt:
        r, c = ctx.var("r"), ctx.var("c")
        value = read(r, c)  # type: ignore[operator]
        return For(r, Const(rows), For(c, Const(cols), Store(dst, r * ld + c, value), "vector"))

    def zero_pad(dst: Buffer, rows: int, start: int, stop: int, ld: int) -> Stmt | None:
        if stop == start:
            return None
        r, c = ctx.var("r"), ctx.var("c")
        return For(r, Const(rows), For(c, Const(stop - start), Store(dst, r * ld + c, ZERO),
                                       "serial", Const(start)))

    pack = block(
        copy(kp, sk, d, d, lambda r, c: k.read((*at, r, c))),
        copy(vp, sk, dv, dvp, lambda r, c: v.read((*at, r, c))),
        zero_pad(vp, sk, dv, dvp, dvp),
    )

    def product_tile(rows: int, depth: int, a_of: object, b_buf: Buffer, ldb: int,
                     col0: Expr) -> list[Stmt]:
        """acc[r, 0:nr] = sum_k a_of(r, k) * b_buf[k * ldb + col0 : +nr] (vectors)."""
        stmts: list[Stmt] = [Store(acc, Const(r * nr + c * vec), Broadcast(ZERO, vec))
                             for r in range(rows) for c in range(vecs)]
        kk = ctx.var("k")
        body: list[Stmt] = []
        bvars = [Var(ctx.fresh("bv"), "f32") for _ in range(vecs)]
        for c in range(vecs):
            body.append(Let(bvars[c], Load(b_buf, kk * ldb + col0 + c * vec, vec)))
        for r in range(rows):
            a = Broadcast(a_of(r, kk), vec)  # type: ignore[operator]
            for c in range(vecs):
                slot = Const(r * nr + c * vec)
                body.append(Store(acc, slot, Call("fma", (a, bvars[c], Load(acc, slot, vec)))))
        stmts.append(For(kk, Const(depth), block(*body)))
        return stmts

    def scores_block(j0: Expr, rows: int) -> Stmt:
        """St[j0 + r, :] for ``rows`` keys."""
        r, c = ctx.var("r"), ctx.var("c")
        tile = product_tile(rows, d, lambda rr, kk: Load(kp, (j0 + rr) * d + kk), qt, nr,
                            Const(0))
        return block(*tile, For(r, Const(rows), For(c, Const(nr), Store(
            st, (j0 + r) * nr + c, Load(acc, r * nr + c) * Const(scale, "f32")), "vector")))

    def softmax_columns() -> Stmt:
        """Numerators exp(St - max) in place and 1 / sum per query, all lane-wise."""
        j, j2 = ctx.var("j"), ctx.var("j")
        first = [Store(col_max, Const(c * vec), Load(st, Const(c * vec), vec))
                 for c in range(vecs)]
        maxes = [Store(col_max, Const(c * vec), Binary(
            "max", Load(col_max, Const(c * vec), vec), Load(st, j * nr + c * vec, vec)))
            for c in range(vecs)]
        exps: list[Stmt] = []
        for c in range(vecs):
            e = Var(ctx.fresh("e"), "f32")
            exps += [
                Let(e, Call("exp", (Load(st, j2 * nr + c * vec, vec)
                                    - Load(col_max, Const(c * vec), vec),))),
                Store(st, j2 * nr + c * vec, e),
                Store(col_inv, Const(c * vec), Load(col_inv, Const(c * vec), vec) + e),
            ]
        return block(
            *first,
            For(j, Const(sk - 1), block(*maxes), "serial", Const(1)),
            *[Store(col_inv, Const(c * vec), Broadcast(ZERO, vec)) for c in range(vecs)],
            For(j2, Const(sk), block(*exps)),
            *[Store(col_inv, Const(c * vec), Broadcast(Const(1.0, "f32"), vec)
                    / Load(col_inv, Const(c * vec), vec)) for c in range(vecs)],
        )

    def query_block(i0: Expr, valid: int) -> Stmt:
        """Queries i0 .. i0 + valid - 1 (valid <= nr) end to end."""
        i, kk = ctx.var("i"), ctx.var("k")
        pack_q = For(i, Const(valid), For(kk, Const(d), Store(
            qt, kk * nr + i, q.read((*at, i0 + i, kk)))))
        pad_q = zero_pad(qt, d, valid, nr, nr)

        def pv_block(il: Expr, rows: int) -> Stmt:
            stmts: list[Stmt] = []
            p, r, c = ctx.var("p"), ctx.var("r"), ctx.var("c")
            tile = product_tile(rows, sk, lambda rr, kk2: Load(st, kk2 * nr + il + rr), vp,
                                dvp, p * nr)
            col = p * nr + c
            index = (*at, i0 + il + r, col)
            target = flat_index(tuple(index[pp] for pp in perm), out_shape)
            value = Load(acc, r * nr + c) * Load(col_inv, il + r)

            def store(cols: int) -> Stmt:
                return For(r, Const(rows), For(c, Const(cols), Store(out, target, value),
                                               "vector"))

            panels = dvp // nr
            cols_last = dv - (panels - 1) * nr
            if cols_last == nr:
                stmts.append(For(p, Const(panels), block(*tile, store(nr))))
            else:
                if panels > 1:
                    stmts.append(For(p, Const(panels - 1), block(*tile, store(nr))))
                stmts += [_bind(x, p, Const(panels - 1)) for x in [*tile, store(cols_last)]]
            return block(*stmts)

        return block(pack_q, pad_q, *tile_rows(ctx, Const(sk), mr, scores_block),
                     softmax_columns(), *tile_rows(ctx, Const(valid), mr, pv_block))

    qb = ctx.var("qb")
    blocks: list[Stmt] = []
    if sq // nr:
        blocks.append(For(qb, Const(sq // nr), query_block(qb * nr, nr)))
    if sq % nr:
        blocks.append(query_block(Const(sq - sq % nr), sq % nr))
    body = block(pack, *blocks)
    locals_ = [kp, vp, qt, st, acc, col_max, col_inv]
    ctx.add_kernel("attention", For(bh, product(lead), body, "parallel"), locals_)
    return [buffer_ref(out, out_shape)]


def _bind(stmt: Stmt, var: Var, value: Expr) -> Stmt:
    from irkit.kir.visit import substitute_stmt

    return substitute_stmt(stmt, {var: value})


LOWERINGS = {"ScaledDotProductAttention": lower_attention}

__all__ = ["LOWERINGS", "MAX_LOCAL_FLOATS", "attention_supported", "lower_attention"]
