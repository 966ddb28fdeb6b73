"""Kernel IR transforms a backend may rely on: unrolling ``unroll`` loops."""

from __future__ import annotations

from irkit.kir.nodes import Block, Const, For, If, Kernel, Stmt, block
from irkit.kir.simplify import simplify_stmt
from irkit.kir.visit import substitute_stmt


class KirError(ValueError):
    """Malformed kernel IR."""


def unroll_loops(stmt: Stmt) -> Stmt:
    """Expand every ``For(kind="unroll")`` (constant extent required) into copies."""
    match stmt:
        case For(var=var, extent=extent, body=body, kind=kind, start=start):
            body = unroll_loops(body)
            if kind != "unroll":
                return For(var, extent, body, kind, start, stmt.independent)
            if not isinstance(extent, Const):
                raise KirError(f"unroll loop over {var.name} needs a constant extent")
            return block(
                *(
                    substitute_stmt(body, {var: start + Const(i)})
                    for i in range(int(extent.value))
                )
            )
        case If(cond=cond, then=then, orelse=orelse):
            return If(cond, unroll_loops(then), None if orelse is None else unroll_loops(orelse))
        case Block(stmts=stmts):
            return block(*(unroll_loops(s) for s in stmts)) if stmts else stmt
    return stmt


def prepare_kernel(kernel: Kernel, lanes: int = 8) -> Kernel:
    """Unroll, vectorize ``vector`` loops to ``lanes``, then simplify: the form backends
    translate."""
    from irkit.kir.vectorize import vectorize_loops

    body = simplify_stmt(vectorize_loops(simplify_stmt(unroll_loops(kernel.body)), lanes))
    if not isinstance(body, Block | For | If):
        body = Block((body,))
    return Kernel(kernel.name, kernel.buffers, body, kernel.locals)
