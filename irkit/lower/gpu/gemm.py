"""The GPU GEMM template: shared-memory tiles, a register tile per thread.

``C[b, i, j] = sum_k A(b, i, k) * B(b, k, j)`` then the fused epilogue. One thread block
computes a ``BM x BN`` tile of C with 256 threads, each a ``TM x TN`` register tile
(rows ``ty + TY*r``, columns ``tx + TX*c``: neighbouring threads take neighbouring
columns, so shared-memory reads hit distinct banks and the epilogue's stores coalesce).
The depth goes ``BK`` at a time: the block stages ``A[BM x BK]`` (transposed) and
``B[BK x BN]`` in shared memory, each thread loading ``BM*BK/256`` and ``BK*BN/256``
elements (zero past the edges), a barrier, ``BK`` rank-1 updates of the register tile,
a barrier. Grid: columns of tiles on ``blockIdx.x``, rows on ``y``, the batch on ``z``.

MatMul and Gemm come here from :func:`irkit.lower.gemm.emit_gemm` (registered as the gpu
family's ``gemm`` template) with their :class:`~irkit.lower.gemm.GemmSpec`; a convolution
is the implicit GEMM of :mod:`.conv` (pixels as rows, output channels as columns).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
from irkit.kir.visit import substitute_stmt
from irkit.lower.context import LoweringContext, Tiles
from irkit.lower.gemm import GemmSpec
from irkit.lower.gpu.spmd import ceil_div, shared, spmd_kernel
from irkit.lower.tensor import LoweringError

THREADS = 256
BK = 8
Element = Callable[[Expr, Expr, Expr], Expr]  # (batch, row or depth, depth or col) -> value
StoreFn = Callable[[Expr, Expr, Expr, Expr], Stmt]


@dataclass
class GpuGemm:
    """A GEMM the template computes: sizes and how to read A, B and store C."""

    batch: Expr
    rows: Expr
    depth: Expr
    cols: Expr
    a: Element  # (b, i, k), read only for i < rows and k < depth
    b: Element  # (b, k, j), read only for k < depth and j < cols
    store: StoreFn  # (b, i, j, acc)


def _size(dim: Expr) -> int:
    dim = simplify_expr(dim)
    return int(dim.value) if isinstance(dim, Const) else 1 << 30  # symbolic: large


def tile_shape(rows: Expr, cols: Expr) -> tuple[int, int, int, int]:
    """(BM, BN, TM, TN): 128 x 128 with 8 x 8 per thread, smaller along a short side (a
    convolution's output channels, a narrow matrix) so fewer threads idle."""
    height, width = _size(rows), _size(cols)
    if height <= 32:
        return 32, 128, 4, 4
    if height <= 64:
        return 64, 128, 4, 8
    if width >= 128:
        return 128, 128, 8, 8
    if width >= 64:
        return 128, 64, 8, 4
    return 128, 32, 4, 4


def emit_gpu_gemm(ctx: LoweringContext, gemm: GpuGemm, hint: str = "gemm") -> None:
    """Add the kernel computing ``gemm``."""
    bm, bn, tm, tn = tile_shape(gemm.rows, gemm.cols)
    tx_count, ty_count = bn // tn, bm // tm
    assert tx_count * ty_count == THREADS
    zero = Const(0.0, "f32")
    rows, depth, cols = (simplify_expr(Const(0) + e) for e in (gemm.rows, gemm.depth,
                                                                gemm.cols))
    batch = simplify_expr(Const(0) + gemm.batch)
    bb, bi, bj, t = ctx.var("bb"), ctx.var("bi"), ctx.var("bj"), ctx.var("t")
    tx, ty, kt, kk = ctx.var("tx"), ctx.var("ty"), ctx.var("kt"), ctx.var("kk")
    a_tile, b_tile = shared(ctx, "a_tile", BK * bm), shared(ctx, "b_tile", BK * bn)
    acc_buf = Buffer(ctx.fresh("acc"), "f32", Const(tm * tn), "local")

    def in_range(value: Expr, limit: Expr) -> Expr:
        return Binary("lt", value, limit)

    loads: list[Stmt] = []
    for q in range(bm * BK // THREADS):
        e = t + q * THREADS
        row, k = simplify_expr(e // BK), simplify_expr(e % BK)
        gi, gk = simplify_expr(bi * bm + row), simplify_expr(kt * BK + k)
        slot = simplify_expr(k * bm + row)
        loads.append(If(Binary("and", in_range(gi, rows), in_range(gk, depth)),
                        Store(a_tile, slot, gemm.a(bb, gi, gk)), Store(a_tile, slot, zero)))
    for q in range(bn * BK // THREADS):
        e = t + q * THREADS
        k, col = simplify_expr(e // bn), simplify_expr(e % bn)
        gk, gj = simplify_expr(kt * BK + k), simplify_expr(bj * bn + col)
        slot = simplify_expr(k * bn + col)
        loads.append(If(Binary("and", in_range(gk, depth), in_range(gj, cols)),
                        Store(b_tile, slot, gemm.b(bb, gk, gj)), Store(b_tile, slot, zero)))
    a_vals = [Var(ctx.fresh(f"a{r}"), "f32") for r in range(tm)]
    b_vals = [Var(ctx.fresh(f"b{c}"), "f32") for c in range(tn)]
    step: list[Stmt] = [Let(a_vals[r], Load(a_tile, kk * bm + ty + ty_count * r))
                        for r in range(tm)]
    step += [Let(b_vals[c], Load(b_tile, kk * bn + tx + tx_count * c)) for c in range(tn)]
    for r in range(tm):
        for c in range(tn):
            slot = Const(r * tn + c)
            step.append(Store(acc_buf, slot, Call("fma", (a_vals[r], b_vals[c],
                                                          Load(acc_buf, slot)))))
    epilogue: list[Stmt] = []
    for r in range(tm):
        for c in range(tn):
            i = simplify_expr(bi * bm + ty + ty_count * r)
            j = simplify_expr(bj * bn + tx + tx_count * c)
            epilogue.append(If(Binary("and", in_range(i, rows), in_range(j, cols)),
                               gemm.store(bb, i, j, Load(acc_buf, Const(r * tn + c)))))
    body = block(
        Let(tx, t % tx_count), Let(ty, t // tx_count),
        *(Store(acc_buf, Const(s), zero) for s in range(tm * tn)),
        For(kt, ceil_div(depth, BK), block(
            *loads, Barrier(), For(kk, Const(BK), block(*step)), Barrier())),
        *epilogue,
    )
    grid = [(bi, ceil_div(rows, bm)), (bj, ceil_div(cols, bn))]
    if isinstance(batch, Const) and batch.value == 1:
        body = substitute_stmt(body, {bb: Const(0)})
    else:
        grid.insert(0, (bb, batch))
    spmd_kernel(ctx, hint, grid, t, THREADS, body, [acc_buf, a_tile, b_tile])


def emit_gemm_gpu(ctx: LoweringContext, spec: GemmSpec, hint: str = "gemm",
                  tiles: Tiles | None = None) -> None:
    """The gpu family's ``gemm`` template: ``spec`` (built by the MatMul/Gemm plans for the
    CPU template) computed by :func:`emit_gpu_gemm`."""
    if spec.pack_panel is not None or spec.tile_store is not None or spec.prologue:
        raise LoweringError(f"{hint}: the GPU GEMM template takes no packing loops, tile "
                            "stores or prologues (convolutions have their own template)")
    nr = ctx.tiles.nr  # compile-time panels were packed this wide

    def a(b: Expr, i: Expr, k: Expr) -> Expr:
        return Load(spec.a_buf, simplify_expr(spec.a_offset(b) + i * spec.lda
                                              + k * spec.a_kstride))

    if spec.b_packed is not None:
        assert isinstance(spec.depth, int)
        packed, depth = spec.b_packed, spec.depth

        def b(bb: Expr, k: Expr, j: Expr) -> Expr:
            return Load(packed, simplify_expr((j // nr) * (depth * nr) + k * nr + j % nr))
    elif spec.b_direct is not None:
        assert spec.b_direct_offset is not None
        # Rows of B may be padded past ``cols`` (a small head dim's V, padded to a panel).
        direct, offset, ld = spec.b_direct, spec.b_direct_offset, spec.b_direct_ld or spec.cols

        def b(bb: Expr, k: Expr, j: Expr) -> Expr:
            return Load(direct, simplify_expr(offset(bb) + k * ld + j))
    elif spec.b_source is not None:
        b = spec.b_source  # type: ignore[assignment]
    else:
        raise LoweringError(f"{hint}: a GEMM without a B operand")
    emit_gpu_gemm(ctx, GpuGemm(spec.batch, spec.rows, Const(0) + spec.depth,
                               Const(0) + spec.cols, a, b, spec.store), hint)


__all__ = ["BK", "THREADS", "GpuGemm", "emit_gemm_gpu", "emit_gpu_gemm", "tile_shape"]
