"""Algebraic simplification of kernel IR as rewrite tables run to a fixed point.

A rule is a ``(node type, function)`` pair; the function returns the rewritten node or
``None`` for "no match". :func:`simplify_expr` applies ``EXPR_RULES`` bottom-up until no
rule fires; :func:`simplify_stmt` does the same for statements with ``STMT_RULES``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from irkit.kir.nodes import (
    FLOATS,
    HALF_FLOATS,
    ITEMSIZE,
    UNSIGNED,
    Binary,
    Block,
    Cast,
    Const,
    Expr,
    For,
    If,
    Kernel,
    Select,
    Stmt,
    Unary,
    block,
)
from irkit.kir.visit import map_children, map_stmt_exprs, substitute_stmt

ExprRule = tuple[type, Callable[[Expr], Expr | None]]
StmtRule = tuple[type, Callable[[Stmt], Stmt | None]]


def _is_const(expr: Expr, value: float | None = None) -> bool:
    return isinstance(expr, Const) and (value is None or expr.value == value)


def _wrap_int(value: int, dtype: str) -> int:
    """``value`` wrapped to the range of integer type ``dtype`` (two's complement)."""
    bits = 8 * ITEMSIZE[dtype]
    value %= 1 << bits
    return value - (1 << bits) if dtype not in UNSIGNED and value >> (bits - 1) else value


def _as_f32(value: float) -> float:
    """``value`` rounded to f32 (nearest even), as an f32 ``Const`` means it."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def _fold(op: str, x: float, y: float, dtype: str) -> float | bool | None:
    if dtype == "f32":  # fold what the kernel computes: f32 operands, an f32 result
        x, y = _as_f32(x), _as_f32(y)
    value = _fold_exact(op, x, y, dtype)
    if isinstance(value, int) and not isinstance(value, bool) and dtype not in FLOATS:
        return _wrap_int(value, dtype)
    if dtype == "f32" and isinstance(value, float):
        return _as_f32(value)
    return value


def _fold_exact(op: str, x: float, y: float, dtype: str) -> float | bool | None:
    if dtype in HALF_FLOATS:
        return None  # 16-bit float results round in the backend
    integer = dtype not in FLOATS
    table: dict[str, Callable[[], float | bool]] = {
        "add": lambda: x + y, "sub": lambda: x - y, "mul": lambda: x * y,
        "max": lambda: max(x, y), "min": lambda: min(x, y),
        "lt": lambda: x < y, "le": lambda: x <= y, "gt": lambda: x > y,
        "ge": lambda: x >= y, "eq": lambda: x == y, "ne": lambda: x != y,
    }  # fmt: skip
    if not integer:  # NaN in x propagates, NaN in y gives x (irkit.kir.interpret)
        table["max"] = lambda: x if not x <= y else y
        table["min"] = lambda: x if not x >= y else y
    if dtype == "bool":
        table["and"] = lambda: bool(x) and bool(y)
        table["or"] = lambda: bool(x) or bool(y)
        table["xor"] = lambda: bool(x) != bool(y)
    elif integer:  # bitwise on integers
        table["and"] = lambda: int(x) & int(y)
        table["or"] = lambda: int(x) | int(y)
        table["xor"] = lambda: int(x) ^ int(y)
    if op in table:
        return table[op]()
    if op in ("div", "mod"):
        if y == 0 or (op == "mod" and not integer):
            return None
        if not integer:
            return x / y
        q = abs(int(x)) // abs(int(y))  # C semantics: truncate toward zero, exactly
        q = q if (x < 0) == (y < 0) else -q
        return q if op == "div" else int(x) - q * int(y)  # the dividend's sign
    return None


def fold_binary(expr: Expr) -> Expr | None:
    assert isinstance(expr, Binary)
    a, b = expr.a, expr.b
    if isinstance(a, Const) and isinstance(b, Const):
        value = _fold(expr.op, a.value, b.value, a.type)
        if value is None:
            return None
        return Const(value, expr.dtype if expr.dtype != "bool" else "bool")
    return None


def identity_binary(expr: Expr) -> Expr | None:
    """x+0, 0+x, x-0, x*1, 1*x, x/1 → x; integer x*0 → 0; x%1 → 0; x-x → 0."""
    assert isinstance(expr, Binary)
    op, a, b = expr.op, expr.a, expr.b
    if expr.lanes > 1:
        return None
    integer = a.dtype not in FLOATS and a.dtype != "bool"
    if op == "add" and _is_const(b, 0):
        return a
    if op == "add" and _is_const(a, 0):
        return b
    if op == "sub" and _is_const(b, 0):
        return a
    if op in ("mul", "div") and _is_const(b, 1):
        return a
    if op == "mul" and _is_const(a, 1):
        return b
    if integer and op == "mul" and (_is_const(a, 0) or _is_const(b, 0)):
        return Const(0, a.dtype)
    if integer and op == "mod" and _is_const(b, 1):
        return Const(0, a.dtype)
    if integer and op == "sub" and a == b:
        return Const(0, a.dtype)
    if integer and op == "div" and _is_const(a, 0):
        return Const(0, a.dtype)
    return None


def reassociate_constants(expr: Expr) -> Expr | None:
    """(x + c1) + c2 → x + (c1 + c2); (x * c1) * c2 → x * (c1 * c2); c + x → x + c."""
    assert isinstance(expr, Binary)
    if expr.a.dtype in FLOATS or expr.op not in ("add", "mul"):
        return None
    a, b = expr.a, expr.b
    if isinstance(a, Const) and not isinstance(b, Const):
        return Binary(expr.op, b, a)
    if (
        isinstance(b, Const)
        and isinstance(a, Binary)
        and a.op == expr.op
        and isinstance(a.b, Const)
    ):
        folded = _fold(expr.op, a.b.value, b.value, b.type)
        return None if folded is None else Binary(expr.op, a.a, Const(folded, b.type))
    return None


def mod_div_of_multiple(expr: Expr) -> Expr | None:
    """(x * c) % c → 0 and (x * c) / c → x for integer index arithmetic."""
    assert isinstance(expr, Binary)
    a, b = expr.a, expr.b
    if (
        expr.op in ("mod", "div")
        and a.dtype == "i64"
        and isinstance(b, Const)
        and isinstance(a, Binary)
        and a.op == "mul"
        and a.b == b
    ):
        return Const(0) if expr.op == "mod" else a.a
    return None


def recombine_div_mod(expr: Expr) -> Expr | None:
    """(x / c) * c + x % c → x and (p + x / c) * c + x % c → p * c + x (indices >= 0)."""
    assert isinstance(expr, Binary)
    if expr.op != "add" or expr.a.dtype != "i64":
        return None
    mul, mod = expr.a, expr.b
    if not (isinstance(mod, Binary) and mod.op == "mod" and isinstance(mod.b, Const)):
        return None
    if not (isinstance(mul, Binary) and mul.op == "mul" and mul.b == mod.b):
        return None
    div = Binary("div", mod.a, mod.b)
    inner = mul.a
    if inner == div:
        return mod.a
    if isinstance(inner, Binary) and inner.op == "add" and inner.b == div:
        return Binary("add", Binary("mul", inner.a, mod.b), mod.a)
    return None


def fold_select(expr: Expr) -> Expr | None:
    assert isinstance(expr, Select)
    if isinstance(expr.cond, Const):
        return expr.a if expr.cond.value else expr.b
    if expr.a == expr.b:
        return expr.a
    return None


def fold_cast(expr: Expr) -> Expr | None:
    assert isinstance(expr, Cast)
    if expr.x.dtype == expr.type:
        return expr.x
    rounds = expr.type in HALF_FLOATS or expr.x.dtype in HALF_FLOATS  # in the backend
    if isinstance(expr.x, Const) and not rounds:
        value = expr.x.value
        if expr.x.type == "f32":
            value = _as_f32(float(value))
        if expr.type in FLOATS:
            if expr.type == "f32" and not isinstance(value, float) and abs(value) > 1 << 53:
                return None  # int -> f64 -> f32 would round twice
            return Const(float(value), expr.type)
        if expr.type == "bool":
            return Const(bool(value), "bool")
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return Const(_wrap_int(int(value), expr.type), expr.type)
    return None


def fold_unary(expr: Expr) -> Expr | None:
    assert isinstance(expr, Unary)
    x = expr.x
    if isinstance(x, Const):
        if expr.op == "neg" and x.type in FLOATS:
            return Const(-x.value, x.type)
        if expr.op == "neg" and x.type != "bool":
            return Const(_wrap_int(-int(x.value), x.type), x.type)
        if expr.op == "not" and x.type == "bool":
            return Const(not x.value, "bool")
        if expr.op == "not" and x.type not in FLOATS:
            return Const(_wrap_int(~int(x.value), x.type), x.type)
    if isinstance(x, Unary) and x.op == expr.op:
        return x.x
    return None


EXPR_RULES: Sequence[ExprRule] = (
    (Binary, fold_binary),
    (Binary, identity_binary),
    (Binary, reassociate_constants),
    (Binary, mod_div_of_multiple),
    (Binary, recombine_div_mod),
    (Select, fold_select),
    (Cast, fold_cast),
    (Unary, fold_unary),
)


def rewrite_expr(expr: Expr, rules: Sequence[ExprRule] = EXPR_RULES) -> Expr:
    """Apply ``rules`` bottom-up; repeat at each node until none fires."""
    node = map_children(expr, lambda child: rewrite_expr(child, rules))
    changed = True
    while changed:
        changed = False
        for kind, rule in rules:
            if isinstance(node, kind):
                new = rule(node)
                if new is not None and new != node:
                    node = map_children(new, lambda child: rewrite_expr(child, rules))
                    changed = True
                    break
    return node


def simplify_expr(expr: Expr) -> Expr:
    return rewrite_expr(expr, EXPR_RULES)


def drop_empty_loop(stmt: Stmt) -> Stmt | None:
    assert isinstance(stmt, For)
    if isinstance(stmt.extent, Const) and stmt.extent.value <= 0:
        return Block(())
    return None


def inline_single_iteration(stmt: Stmt) -> Stmt | None:
    assert isinstance(stmt, For)
    if _is_const(stmt.extent, 1) and stmt.kind not in ("parallel", "block", "thread"):
        return substitute_stmt(stmt.body, {stmt.var: stmt.start})
    return None


def fold_if(stmt: Stmt) -> Stmt | None:
    assert isinstance(stmt, If)
    if isinstance(stmt.cond, Const):
        return stmt.then if stmt.cond.value else (stmt.orelse or Block(()))
    return None


def flatten_block(stmt: Stmt) -> Stmt | None:
    assert isinstance(stmt, Block)
    flat = block(*stmt.stmts)
    if not isinstance(flat, Block):
        return flat
    return None if flat == stmt else flat


STMT_RULES: Sequence[StmtRule] = (
    (For, drop_empty_loop),
    (For, inline_single_iteration),
    (If, fold_if),
    (Block, flatten_block),
)


def _rewrite_children(stmt: Stmt, rules: Sequence[StmtRule]) -> Stmt:
    match stmt:
        case For(var=var, extent=extent, body=body, kind=kind, start=start):
            return For(var, extent, rewrite_stmt(body, rules), kind, start, stmt.independent)
        case If(cond=cond, then=then, orelse=orelse):
            return If(
                cond,
                rewrite_stmt(then, rules),
                None if orelse is None else rewrite_stmt(orelse, rules),
            )
        case Block(stmts=stmts):
            return Block(tuple(rewrite_stmt(s, rules) for s in stmts))
    return stmt


def rewrite_stmt(stmt: Stmt, rules: Sequence[StmtRule] = STMT_RULES) -> Stmt:
    node = _rewrite_children(stmt, rules)
    changed = True
    while changed:
        changed = False
        for kind, rule in rules:
            if isinstance(node, kind):
                new = rule(node)
                if new is not None and new != node:
                    node = _rewrite_children(new, rules)
                    changed = True
                    break
    return node


def simplify_stmt(stmt: Stmt) -> Stmt:
    """Simplify every expression, then the statement structure, to a fixed point."""
    previous: Stmt | None = None
    current = stmt
    while current != previous:
        previous = current
        current = rewrite_stmt(map_stmt_exprs(current, simplify_expr), STMT_RULES)
    return current


def simplify_kernel(kernel: Kernel) -> Kernel:
    return Kernel(kernel.name, kernel.buffers, simplify_stmt(kernel.body), kernel.locals)
