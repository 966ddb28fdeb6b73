"""Building blocks of the GPU templates: thread blocks written as kernel IR.

A GPU template kernel is ``block`` loops (the grid) around one ``thread`` loop (the
threads of a block, ``threads`` of them); inside it every statement is what one thread
does, ``shared`` buffers are the block's scratch and :class:`~irkit.kir.Barrier` waits for
every thread of the block (see ``irkit.kir.nodes.GPU_KINDS``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from irkit.kir import (
    Barrier,
    Binary,
    Buffer,
    Call,
    Const,
    Expr,
    For,
    If,
    Load,
    Stmt,
    Store,
    Var,
    block,
    simplify_expr,
)
from irkit.lower.context import LoweringContext

WARP = 32
Combine = Callable[[Expr, Expr], Expr]
COMBINE: dict[str, Combine] = {
    "add": lambda a, b: a + b,
    "max": lambda a, b: Binary("max", a, b),
    "min": lambda a, b: Binary("min", a, b),
}


def ceil_div(size: Expr | int, step: int) -> Expr:
    return simplify_expr((Const(0) + size + (step - 1)) // step)


def spmd_kernel(ctx: LoweringContext, hint: str, grid: Sequence[tuple[Var, Expr]],
                thread: Var, threads: int, body: Stmt, locals_: Sequence[Buffer]) -> None:
    """Add the kernel ``for grid… (block): for thread in threads (thread): body``;
    ``grid`` is outermost first (at most 3 loops: the innermost is ``blockIdx.x``)."""
    stmt: Stmt = For(thread, Const(threads), body, "thread")
    for var, extent in reversed(grid):
        stmt = For(var, extent, stmt, "block")
    ctx.add_kernel(hint, stmt, locals_)


def scalar(ctx: LoweringContext, hint: str, dtype: str = "f32") -> Buffer:
    """A one-element local: a per-thread register once rendered."""
    return Buffer(ctx.fresh(hint), dtype, Const(1), "local")


def shared(ctx: LoweringContext, hint: str, size: int, dtype: str = "f32") -> Buffer:
    return Buffer(ctx.fresh(hint), dtype, Const(size), "shared")


def strided(ctx: LoweringContext, thread: Var, threads: int, length: Expr,
            body: Callable[[Expr], Stmt]) -> Stmt:
    """``body(i)`` for ``i = thread, thread + threads, …`` below ``length``."""
    step = ctx.var("j")
    i = simplify_expr(thread + step * threads)
    return For(step, ceil_div(length, threads), If(Binary("lt", i, length), body(i)))


def block_reduce(ctx: LoweringContext, acc: Buffer, op: str, thread: Var, threads: int,
                 scratch: Buffer | None) -> list[Stmt]:
    """Reduce ``acc`` (each thread's one-element local) over the block with ``op``;
    afterwards every thread holds the result in ``acc``. Within a warp: five
    ``shfl_xor`` butterfly steps; across warps: one value per warp through ``scratch``
    (shared, ``threads // 32`` elements), between barriers."""
    z = Const(0)
    combine = COMBINE[op]
    stmts: list[Stmt] = []
    offset = min(threads, WARP) // 2
    while offset:
        value = Load(acc, z)
        stmts.append(Store(acc, z, combine(value, Call("shfl_xor", (value, Const(offset,
                                                                                 "i32"))))))
        offset //= 2
    warps = threads // WARP
    if warps > 1:
        assert scratch is not None
        lane, warp = thread % WARP, thread // WARP
        total: Expr = Load(scratch, Const(0))
        for w in range(1, warps):
            total = combine(total, Load(scratch, Const(w)))
        stmts += [
            If(Binary("eq", simplify_expr(lane), Const(0)), Store(scratch, simplify_expr(warp),
                                                                  Load(acc, z))),
            Barrier(),
            Store(acc, z, total),
            Barrier(),  # scratch is reused by the next reduction
        ]
    return stmts


def threads_for(length: Expr, large: int = 256) -> int:
    """Threads per block for a row of ``length`` elements: one warp for short rows."""
    length = simplify_expr(length)
    if isinstance(length, Const):
        size = int(length.value)
        return WARP if size <= 128 else (128 if size <= 2048 else large)
    return 128


def scratch_for(ctx: LoweringContext, threads: int, dtype: str = "f32") -> Buffer | None:
    return shared(ctx, "warps", threads // WARP, dtype) if threads > WARP else None


__all__ = ["COMBINE", "WARP", "block", "block_reduce", "ceil_div", "scalar", "scratch_for",
           "shared", "spmd_kernel", "strided", "threads_for"]
