"""Checks that a kernel is well formed before a backend translates it."""

from __future__ import annotations

from irkit.kir.nodes import (
    BINARY_OPS,
    BITWISE_OPS,
    CALLS,
    DTYPES,
    FLOATS,
    FOR_KINDS,
    SYMBOL_NAME,
    Barrier,
    Binary,
    Block,
    Broadcast,
    Buffer,
    Call,
    Cast,
    Const,
    Expr,
    For,
    If,
    Kernel,
    Let,
    Load,
    Select,
    Stmt,
    Store,
    Var,
)
from irkit.kir.transforms import KirError
from irkit.kir.visit import walk_exprs


def _check_expr(expr: Expr, scope: dict[str, str], buffers: set[str], where: str) -> None:
    for node in walk_exprs(expr):
        match node:
            case Var(name=name, type=dtype):
                symbol = dtype == "i64" and SYMBOL_NAME.match(name) is not None
                if scope.get(name) != dtype and not symbol:
                    raise KirError(f"{where}: variable {name}:{dtype} is not in scope")
            case Binary(op=op, a=a, b=b):
                if op not in BINARY_OPS:
                    raise KirError(f"{where}: unknown binary op {op}")
                if op in BITWISE_OPS and a.dtype in FLOATS:
                    raise KirError(f"{where}: {op} of {a.dtype} (bitwise ops take integers)")
                if a.dtype != b.dtype:
                    raise KirError(f"{where}: {op} mixes {a.dtype} and {b.dtype}")
                if a.lanes != b.lanes and 1 not in (a.lanes, b.lanes):
                    raise KirError(f"{where}: {op} mixes {a.lanes} and {b.lanes} lanes")
            case Call(fn=fn, args=args):
                if CALLS.get(fn) != len(args):
                    raise KirError(f"{where}: unknown call {fn}/{len(args)}")
            case Cast(type=dtype) | Const(type=dtype) if dtype not in DTYPES:
                raise KirError(f"{where}: unknown dtype {dtype} in {node!r}")
            case Select(cond=cond, a=a, b=b):
                if cond.dtype != "bool" or a.dtype != b.dtype:
                    raise KirError(f"{where}: select needs bool cond and equal arm types")
            case Load(buf=buf, index=index):
                if buf.name not in buffers:
                    raise KirError(f"{where}: load from undeclared buffer {buf.name}")
                if index.dtype != "i64":
                    raise KirError(f"{where}: index of {buf.name} is {index.dtype}")
            case Broadcast(x=x):
                if x.lanes != 1:
                    raise KirError(f"{where}: broadcast of a vector")


def _check_stmt(stmt: Stmt, scope: dict[str, str], buffers: set[str], where: str) -> None:
    match stmt:
        case Store(buf=buf, index=index, value=value):
            if buf.name not in buffers:
                raise KirError(f"{where}: store to undeclared buffer {buf.name}")
            if value.dtype != buf.dtype:
                raise KirError(f"{where}: storing {value.dtype} into {buf.name}: {buf.dtype}")
            _check_expr(index, scope, buffers, where)
            _check_expr(value, scope, buffers, where)
        case Let(var=var, value=value):
            _check_expr(value, scope, buffers, where)
            if var.type != value.dtype:
                raise KirError(f"{where}: let {var.name}: {var.type} = {value.dtype} value")
            scope[var.name] = var.type
        case For(var=var, extent=extent, body=body, kind=kind, start=start):
            if kind not in FOR_KINDS:
                raise KirError(f"{where}: unknown loop kind {kind!r}")
            _check_expr(extent, scope, buffers, where)
            _check_expr(start, scope, buffers, where)
            inner = dict(scope)
            inner[var.name] = var.type
            _check_stmt(body, inner, buffers, where)
        case If(cond=cond, then=then, orelse=orelse):
            _check_expr(cond, scope, buffers, where)
            _check_stmt(then, dict(scope), buffers, where)
            if orelse is not None:
                _check_stmt(orelse, dict(scope), buffers, where)
        case Block(stmts=stmts):
            for s in stmts:
                _check_stmt(s, scope, buffers, where)
        case Barrier():
            pass
        case _:
            raise KirError(f"{where}: not a statement: {stmt!r}")


def verify_kernel(kernel: Kernel) -> None:
    """Raise :class:`KirError` if a variable, buffer or type is used inconsistently."""
    where = f"kernel {kernel.name}"
    names: set[str] = set()
    all_buffers: tuple[Buffer, ...] = kernel.buffers + kernel.locals
    for buf in all_buffers:
        if buf.dtype not in DTYPES:
            raise KirError(f"{where}: buffer {buf.name} has unknown dtype {buf.dtype}")
        if buf.name in names:
            raise KirError(f"{where}: buffer {buf.name} declared twice")
        names.add(buf.name)
    _check_stmt(kernel.body, {"N": "i64"}, names, where)
