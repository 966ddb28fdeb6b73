"""Generic traversal of kernel IR: map over children, substitute variables."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from irkit.kir.nodes import (
    Barrier,
    Binary,
    Block,
    Broadcast,
    Call,
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
    Unary,
    Var,
)

ExprFn = Callable[[Expr], Expr]


def map_children(expr: Expr, fn: ExprFn) -> Expr:
    """``expr`` with ``fn`` applied to each direct child expression."""
    match expr:
        case Binary(op=op, a=a, b=b):
            na, nb = fn(a), fn(b)
            return expr if (na is a and nb is b) else Binary(op, na, nb)
        case Unary(op=op, x=x):
            nx = fn(x)
            return expr if nx is x else Unary(op, nx)
        case Call(fn=name, args=args):
            new = tuple(fn(a) for a in args)
            return expr if all(n is o for n, o in zip(new, args)) else Call(name, new)
        case Cast(type=t, x=x):
            nx = fn(x)
            return expr if nx is x else Cast(t, nx)
        case Select(cond=c, a=a, b=b):
            nc, na, nb = fn(c), fn(a), fn(b)
            return expr if (nc is c and na is a and nb is b) else Select(nc, na, nb)
        case Load(buf=buf, index=index, vlanes=lanes, stride=stride):
            ni = fn(index)
            return expr if ni is index else Load(buf, ni, lanes, stride)
        case Broadcast(x=x, vlanes=lanes):
            nx = fn(x)
            return expr if nx is x else Broadcast(nx, lanes)
        case Var() | Const():
            return expr
    raise TypeError(f"not a kernel IR expression: {expr!r}")


def children(expr: Expr) -> Iterator[Expr]:
    found: list[Expr] = []

    def collect(child: Expr) -> Expr:
        found.append(child)
        return child

    map_children(expr, collect)
    return iter(found)


def map_stmt_exprs(stmt: Stmt, fn: ExprFn) -> Stmt:
    """``stmt`` with ``fn`` applied to every top expression, recursing into bodies."""
    match stmt:
        case Store(buf=buf, index=index, value=value):
            return Store(buf, fn(index), fn(value))
        case Let(var=var, value=value):
            return Let(var, fn(value))
        case For(var=var, extent=extent, body=body, kind=kind, start=start):
            return For(var, fn(extent), map_stmt_exprs(body, fn), kind, fn(start),
                       stmt.independent)
        case Barrier():
            return stmt
        case If(cond=cond, then=then, orelse=orelse):
            return If(
                fn(cond),
                map_stmt_exprs(then, fn),
                None if orelse is None else map_stmt_exprs(orelse, fn),
            )
        case Block(stmts=stmts):
            return Block(tuple(map_stmt_exprs(s, fn) for s in stmts))
    raise TypeError(f"not a kernel IR statement: {stmt!r}")


def substitute(expr: Expr, mapping: Mapping[Var, Expr]) -> Expr:
    """Replace variables by expressions (bottom-up)."""

    def visit(node: Expr) -> Expr:
        if isinstance(node, Var):
            return mapping.get(node, node)
        return map_children(node, visit)

    return visit(expr)


def substitute_stmt(stmt: Stmt, mapping: Mapping[Var, Expr]) -> Stmt:
    return map_stmt_exprs(stmt, lambda e: substitute(e, mapping))


def walk_stmts(stmt: Stmt) -> Iterator[Stmt]:
    yield stmt
    match stmt:
        case For(body=body):
            yield from walk_stmts(body)
        case If(then=then, orelse=orelse):
            yield from walk_stmts(then)
            if orelse is not None:
                yield from walk_stmts(orelse)
        case Block(stmts=stmts):
            for s in stmts:
                yield from walk_stmts(s)


def walk_exprs(expr: Expr) -> Iterator[Expr]:
    yield expr
    for child in children(expr):
        yield from walk_exprs(child)


def stmt_exprs(stmt: Stmt) -> tuple[Expr, ...]:
    """The expressions ``stmt`` holds itself (not those of nested statements)."""
    match stmt:
        case Store(index=index, value=value):
            return (index, value)
        case Let(value=value):
            return (value,)
        case For(extent=extent, start=start):
            return (extent, start)
        case If(cond=cond):
            return (cond,)
    return ()


def calls_in(stmt: Stmt) -> set[str]:
    """Names of every ``Call`` in ``stmt`` and the statements nested in it."""
    return {e.fn for s in walk_stmts(stmt) for top in stmt_exprs(s) for e in walk_exprs(top)
            if isinstance(e, Call)}
