"""The tiled GEMM template shared by MatMul, Gemm and Conv.

``C[b, i, j] = sum_k A[b, i, k] * B[b, k, j]``, then a fused epilogue. B is packed into
column panels of ``nr`` (zero-padded): ``Bp[b][p][k][c] = B[b, k, p*nr + c]`` — at compile
time for weights, by a packing loop for runtime tensors (the im2col of a convolution is
such a packing loop). The microkernel keeps an ``mr x nr`` block of C in ``nr/vec``
vector accumulators per row (``<vec x f32>`` FMAs: a broadcast of ``A[i, k]`` times a
row of the panel), so with mr=6, nr=16, vec=8 it holds 12 ymm accumulators. Loop order:
batch (parallel), panel (parallel when there is no batch loop), row block, k.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from irkit.kir import (
    Binary,
    Broadcast,
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
from irkit.lower.context import LoweringContext, Tiles
from irkit.lower.tensor import LoweringError

StoreFn = Callable[[Expr, Expr, Expr, Expr], Stmt]  # (batch, row, col, acc) -> Stmt
PackFn = Callable[[Expr, Expr, Expr], Expr]  # (batch, k, col) -> B element (col < cols)


@dataclass
class GemmSpec:
    batch: Expr  # number of independent products (may depend on the symbols)
    rows: Expr  # M (may depend on the symbols)
    depth: int | Expr  # K; symbolic only with ``b_direct``
    cols: int | Expr  # N of the product; symbolic only with a packed runtime B
    a_buf: Buffer
    a_offset: Callable[[Expr], Expr]  # batch -> element offset of A's first row
    lda: int  # A's row stride (elements)
    store: StoreFn
    b_packed: Buffer | None = None  # compile-time packed weights (shared by all batches)
    b_source: PackFn | None = None  # runtime B, packed by a loop into the workspace
    # A custom packing loop nest (batch, panel index, panel buffer) -> Stmt writing one
    # ``depth x nr`` panel; a convolution writes im2col panels with contiguous copies.
    pack_panel: Callable[[Expr, Expr, Buffer], Stmt] | None = None
    prologue: Callable[[Expr], Stmt] | None = None  # per batch item, before its panels
    # A runtime B already laid out row-major ``[depth, cols]`` per batch item with cols a
    # multiple of nr: its rows serve as panels in place (stride cols), so the depth may be
    # symbolic (attention's probabilities x values, K = sequence length).
    b_direct: Buffer | None = None
    b_direct_offset: Callable[[Expr], Expr] | None = None  # batch -> element offset of B
    b_direct_ld: int | None = None  # b_direct's row stride when not ``cols`` (padded rows)
    # Replaces the per-element ``store`` loop: (batch, first row, rows, panel, tile) -> Stmt
    # reading the finished ``rows x nr`` tile (irkit.ConvBiasActPool pools it in place).
    tile_store: Callable[[Expr, Expr, int, Expr, Buffer], Stmt] | None = None
    # A's column (depth) stride: a 1x1 convolution reads its input [C, H*W] as A = x^T,
    # rows one element apart and columns a channel plane apart.
    a_kstride: int = 1


def pack_weights(b: np.ndarray, nr: int) -> np.ndarray:
    """``[K, cols]`` → ``[panels, K, nr]`` zero-padded panels."""
    k, cols = b.shape
    panels = -(-cols // nr)
    padded = np.zeros((k, panels * nr), dtype=np.float32)
    padded[:, :cols] = b
    return np.ascontiguousarray(padded.reshape(k, panels, nr).transpose(1, 0, 2))


def _microkernel(spec: GemmSpec, t: Tiles, acc: Buffer, tile: Buffer, bpanel: Buffer,
                 b: Expr, panel_base: Expr, p: Expr, i0: Expr, rows: int,
                 ctx: LoweringContext) -> Stmt:
    vecs = t.nr // t.vec
    # Few rows (GEMV-like calls at batch 1) leave too few FMA chains to hide latency:
    # split k over ``split`` independent accumulator sets and add them at the end.
    split = max(1, min(4, -(-8 // (rows * vecs))))
    dynamic_depth = not isinstance(spec.depth, int)
    split = 1 if isinstance(spec.depth, Expr) else min(split, max(1, spec.depth))
    ldb = (spec.b_direct_ld or spec.cols) if spec.b_direct is not None else t.nr

    def slot(s: int, r: int, v: int) -> Const:
        return Const((s * rows + r) * t.nr + v * t.vec)

    zero = Broadcast(Const(0.0, "f32"), t.vec)
    stmts: list[Stmt] = [
        Store(acc, slot(s, r, v), zero)
        for s in range(split) for r in range(rows) for v in range(vecs)
    ]
    a_base = simplify_expr(spec.a_offset(b) + i0 * spec.lda)
    panel_base = simplify_expr(panel_base)

    def step(k: Expr, s: int) -> list[Stmt]:
        # Vector-valued lets: Vars carry no lane count; the backend keeps the vector.
        bvars = [Var(ctx.fresh(f"bv{v}"), "f32") for v in range(vecs)]
        body: list[Stmt] = [
            _let_vec(bvars[v], Load(bpanel, panel_base + k * ldb + v * t.vec, t.vec))
            for v in range(vecs)
        ]
        for r in range(rows):
            a = Broadcast(Load(spec.a_buf, a_base + (r * spec.lda) + k * spec.a_kstride),
                          t.vec)
            for v in range(vecs):
                body.append(Store(acc, slot(s, r, v), Call(
                    "fma", (a, bvars[v], Load(acc, slot(s, r, v), t.vec)))))
        return body

    kq = ctx.var("k")
    if dynamic_depth:
        stmts.append(For(kq, simplify_expr(Const(0) + spec.depth), block(*step(kq, 0))))
    else:
        depth = int(spec.depth)  # type: ignore[arg-type]
        steps = depth // split
        unrolled = [st for s in range(split) for st in step(kq * split + s, s)]
        stmts.append(For(kq, Const(steps), block(*unrolled)))
        for k_rest in range(steps * split, depth):
            stmts += step(Const(k_rest), 0)
    for r in range(rows):
        for v in range(vecs):
            total: Expr = Load(acc, slot(0, r, v), t.vec)
            for s in range(1, split):
                total = total + Load(acc, slot(s, r, v), t.vec)
            stmts.append(Store(tile, Const(r * t.nr + v * t.vec), total))
    if spec.tile_store is not None:
        stmts.append(spec.tile_store(b, i0, rows, p, tile))
        return block(*stmts)
    r_var, c_var = ctx.var("r"), ctx.var("c")
    epilogue = spec.store(b, i0 + r_var, p * t.nr + c_var, Load(tile, r_var * t.nr + c_var))
    # Constant trip counts let LLVM vectorize the epilogue without runtime checks.
    full = For(r_var, Const(rows), For(c_var, Const(t.nr), epilogue, "vector"))
    if not isinstance(spec.cols, int):
        cols = simplify_expr(Const(0) + spec.cols)
        partial = For(r_var, Const(rows), For(c_var, simplify_expr(cols % t.nr), epilogue))
        stmts.append(If(Binary("lt", p, simplify_expr(cols // t.nr)), full, partial))
        return block(*stmts)
    full_panels, tail = divmod(spec.cols, t.nr)
    if tail == 0:
        stmts.append(full)
    else:
        partial = For(r_var, Const(rows), For(c_var, Const(tail), epilogue, "vector"))
        stmts.append(If(Binary("lt", p, Const(full_panels)), full, partial)
                     if full_panels else partial)
    return block(*stmts)


def _let_vec(var: Var, value: Expr) -> Let:
    return Let(var, value)


def emit_gemm(ctx: LoweringContext, spec: GemmSpec, hint: str = "gemm",
              tiles: Tiles | None = None) -> None:
    """Emit the kernel(s) computing ``spec``: an optional prologue kernel and the GEMM.
    A target family with its own GEMM template (irkit.lower.templates) gets that."""
    from irkit.lower.templates import family_template

    own = family_template(ctx.target.family, "gemm", "*")
    if own is not None:
        own(ctx, spec, hint, tiles)
        return
    t = tiles or ctx.tiles
    panels: Expr = (Const(-(-spec.cols // t.nr)) if isinstance(spec.cols, int) else
                    simplify_expr((spec.cols + (t.nr - 1)) // t.nr))
    acc = Buffer(ctx.fresh("acc"), "f32", Const(max(t.mr, 8) * t.nr), "local")
    tile = Buffer(ctx.fresh("tile"), "f32", Const(t.mr * t.nr), "local")
    b_var = ctx.var("b")
    single = isinstance(simplify_expr(spec.batch), Const) and simplify_expr(spec.batch) == Const(1)
    p = ctx.var("p")
    locals_ = [acc, tile]
    pack_stmt: Stmt | None = None
    if spec.b_packed is not None:
        bpanel, panel_base = spec.b_packed, p * (spec.depth * t.nr)
    elif spec.b_direct is not None:
        assert spec.b_direct_offset is not None
        bpanel, panel_base = spec.b_direct, spec.b_direct_offset(b_var) + p * t.nr
    else:
        if not isinstance(spec.depth, int):
            raise LoweringError("a runtime GEMM operand with a symbolic depth needs its "
                                "columns to be a multiple of the tile width")
        # Runtime B: pack one panel at a time into a stack buffer, used while it is in L1.
        bpanel = Buffer(ctx.fresh("panel"), "f32", Const(spec.depth * t.nr), "local")
        locals_.append(bpanel)
        panel_base = Const(0)
        if spec.pack_panel is not None:
            pack_stmt = spec.pack_panel(b_var, p, bpanel)
        else:
            pack_stmt = _pack_panel(t, spec, bpanel, b_var, p, ctx)

    def micro(i0: Expr, rows: int) -> Stmt:
        return _microkernel(spec, t, acc, tile, bpanel, b_var, panel_base, p, i0, rows, ctx)

    row_blocks = tile_rows(ctx, spec.rows, t.mr, micro)
    panel_body = block(pack_stmt, *row_blocks)
    prologue = spec.prologue(b_var) if spec.prologue is not None else None
    if single:
        if prologue is not None:
            ctx.add_kernel(f"{hint}_prologue", _bind_zero(b_var, prologue))
        loops: Stmt = For(p, panels, panel_body, "parallel")
        ctx.add_kernel(hint, _bind_zero(b_var, loops), locals_)
    else:
        body = block(prologue, For(p, panels, panel_body, independent=True))
        ctx.add_kernel(hint, For(b_var, spec.batch, body, "parallel"), locals_)


def _bind_zero(var: Var, stmt: Stmt) -> Stmt:
    from irkit.kir.visit import substitute_stmt

    return substitute_stmt(stmt, {var: Const(0)})


def _pack_panel(t: Tiles, spec: GemmSpec, bpanel: Buffer, b: Expr, p: Expr,
                ctx: LoweringContext) -> Stmt:
    assert spec.b_source is not None
    k, c = ctx.var("pk"), ctx.var("pc")
    j = p * t.nr + c
    if isinstance(spec.cols, int) and spec.cols % t.nr == 0:
        value = spec.b_source(b, k, j)
    else:
        # Padding columns read a valid column; their results are never stored.
        value = spec.b_source(b, k, Binary("min", j, simplify_expr(Const(0) + spec.cols - 1)))
    assert isinstance(spec.depth, int)  # emit_gemm refuses a packed symbolic depth
    return For(k, Const(spec.depth), For(c, Const(t.nr), Store(bpanel, k * t.nr + c, value)))


__all__ = ["GemmSpec", "emit_gemm", "pack_weights"]


def tile_rows(ctx: LoweringContext, rows: Expr, mr: int,
              micro: Callable[[Expr, int], Stmt]) -> list[Stmt]:
    """Cover ``rows`` with ``mr``-row microkernel calls: full blocks in a loop, then the
    remainder (known at compile time, or dispatched on ``rows % mr`` at run time)."""
    ib = ctx.var("ib")
    rows = simplify_expr(rows)
    blocks: list[Stmt] = [For(ib, rows // mr, micro(ib * mr, mr))]
    if isinstance(rows, Const):
        rem = int(rows.value) % mr
        if rem:
            blocks.append(micro(Const(int(rows.value) - rem), rem))
    else:
        rem_var = ctx.var("rem")
        blocks.append(Let(rem_var, rows % mr))
        for r in range(1, mr):
            blocks.append(If(Binary("eq", rem_var, Const(r)), micro(rows - r, r)))
    return blocks
