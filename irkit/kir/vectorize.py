"""``For(kind="vector")`` → explicit vector code.

A vector loop whose body is straight-line (stores and lets, no inner loops or ifs) and
whose stores are contiguous (index stride 1 in the loop variable) and whose loads are
contiguous, uniform (stride 0) or stride 2 (``MAX_LOAD_STRIDE``: stride-2 convolutions
and pooling read every other column) becomes a loop over ``lanes``-wide vectors plus a scalar remainder loop.
Anything else — a gathered index, the loop variable used as a value — leaves the loop
serial: vectorization is a promise kept only when it is safe.
"""

from __future__ import annotations

from irkit.kir.nodes import (
    Binary,
    Block,
    Broadcast,
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
)
from irkit.kir.simplify import simplify_expr
from irkit.kir.visit import map_children, walk_exprs

MAX_LOAD_STRIDE = 2


class _NotVectorizable(Exception):
    pass


def affine_stride(expr: Expr, var: Var) -> int | None:
    """The constant ``s`` with ``expr == s * var + (terms without var)``, or None."""
    if expr == var:
        return 1
    if not any(node == var for node in walk_exprs(expr)):
        return 0
    if isinstance(expr, Binary) and expr.op in ("add", "sub"):
        a, b = affine_stride(expr.a, var), affine_stride(expr.b, var)
        if a is None or b is None:
            return None
        return a + b if expr.op == "add" else a - b
    if isinstance(expr, Binary) and expr.op == "mul":
        a, b = affine_stride(expr.a, var), affine_stride(expr.b, var)
        if a is None or b is None:
            return None
        left, right = simplify_expr(expr.a), simplify_expr(expr.b)
        if b == 0 and isinstance(right, Const):
            return a * int(right.value)
        if a == 0 and isinstance(left, Const):
            return b * int(left.value)
    return None


def _widen(expr: Expr, var: Var, base: Expr, lanes: int, vectors: set[str]) -> Expr:
    """``expr`` for lanes ``base .. base+lanes-1`` of ``var``."""
    if isinstance(expr, Load):
        stride = affine_stride(expr.index, var)
        index = _substitute_var(expr.index, var, base)
        if stride == 1 and expr.vlanes == 1:
            return Load(expr.buf, index, lanes)
        if stride == 0:
            return Load(expr.buf, index, expr.vlanes, expr.stride)
        if stride is not None and 2 <= stride <= MAX_LOAD_STRIDE and expr.vlanes == 1:
            return Load(expr.buf, index, lanes, stride)
        raise _NotVectorizable
    if expr == var:
        raise _NotVectorizable  # the index as a value would need an iota vector
    if isinstance(expr, Var | Const):
        return expr
    return map_children(expr, lambda child: _widen(child, var, base, lanes, vectors))


def _substitute_var(expr: Expr, var: Var, value: Expr) -> Expr:
    if expr == var:
        return value
    if isinstance(expr, Var | Const):
        return expr
    return map_children(expr, lambda child: _substitute_var(child, var, value))


def _is_vector(expr: Expr, vectors: set[str]) -> bool:
    return expr.lanes > 1 or any(isinstance(n, Var) and n.name in vectors
                                 for n in walk_exprs(expr))


def _vector_body(body: Stmt, var: Var, base: Expr, lanes: int) -> Stmt:
    stmts = body.stmts if isinstance(body, Block) else (body,)
    vectors: set[str] = set()
    out: list[Stmt] = []
    for stmt in stmts:
        if isinstance(stmt, Let):
            value = _widen(stmt.value, var, base, lanes, vectors)
            if _is_vector(value, vectors):
                vectors.add(stmt.var.name)
            out.append(Let(stmt.var, value))
        elif isinstance(stmt, Store):
            if affine_stride(stmt.index, var) != 1:
                raise _NotVectorizable
            value = _widen(stmt.value, var, base, lanes, vectors)
            if not _is_vector(value, vectors):
                value = Broadcast(value, lanes)
            out.append(Store(stmt.buf, _substitute_var(stmt.index, var, base), value))
        else:
            raise _NotVectorizable
    return block(*out)


def vectorize_loops(stmt: Stmt, lanes: int) -> Stmt:
    """Rewrite every vectorizable ``vector`` loop; the others become ``serial``."""
    match stmt:
        case For(var=var, extent=extent, body=body, kind=kind, start=start):
            body = vectorize_loops(body, lanes)
            if kind != "vector":
                return For(var, extent, body, kind, start, stmt.independent)
            chunk = Var(f"{var.name}_v")
            base = simplify_expr(start + chunk * lanes)
            try:
                wide = _vector_body(body, var, base, lanes)
            except _NotVectorizable:
                return For(var, extent, body, "serial", start, stmt.independent)
            full = simplify_expr(extent // lanes)
            rest_start = simplify_expr(start + full * lanes)
            return block(
                For(chunk, full, wide, independent=stmt.independent),
                For(var, simplify_expr(extent - full * lanes), body, "serial", rest_start,
                    stmt.independent),
            )
        case If(cond=cond, then=then, orelse=orelse):
            return If(cond, vectorize_loops(then, lanes),
                      None if orelse is None else vectorize_loops(orelse, lanes))
        case Block(stmts=stmts):
            return block(*(vectorize_loops(s, lanes) for s in stmts)) if stmts else stmt
    return stmt
