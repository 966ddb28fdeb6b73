"""Text form of kernel IR, used in golden tests and ``irkit inspect``."""

from __future__ import annotations

from irkit.kir.nodes import (
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
    Program,
    Select,
    Stmt,
    Store,
    Unary,
    Var,
)

_INFIX = {
    "add": "+", "sub": "-", "mul": "*", "div": "/", "mod": "%",
    "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!=",
    "and": "&&", "or": "||", "xor": "^",
}  # fmt: skip


def format_expr(expr: Expr) -> str:
    """One expression, fully parenthesized where nesting could be ambiguous."""
    match expr:
        case Var(name=name):
            return name
        case Const(value=value, type=dtype):
            if dtype == "bool":
                return "true" if value else "false"
            if dtype == "i64":
                return str(value)
            return f"{value!r}:{dtype}"
        case Binary(op=op, a=a, b=b) if op in _INFIX:
            return f"({format_expr(a)} {_INFIX[op]} {format_expr(b)})"
        case Binary(op=op, a=a, b=b):
            return f"{op}({format_expr(a)}, {format_expr(b)})"
        case Unary(op="neg", x=x):
            return f"-{format_expr(x)}"
        case Unary(op=op, x=x):
            return f"{op}({format_expr(x)})"
        case Call(fn=fn, args=args):
            return f"{fn}({', '.join(format_expr(a) for a in args)})"
        case Cast(type=dtype, x=x):
            return f"{dtype}({format_expr(x)})"
        case Select(cond=c, a=a, b=b):
            return f"select({format_expr(c)}, {format_expr(a)}, {format_expr(b)})"
        case Load(buf=buf, index=index, vlanes=1):
            return f"{buf.name}[{format_expr(index)}]"
        case Load(buf=buf, index=index, vlanes=lanes, stride=1):
            return f"{buf.name}[{format_expr(index)} : +{lanes}]"
        case Load(buf=buf, index=index, vlanes=lanes, stride=stride):
            return f"{buf.name}[{format_expr(index)} : +{lanes} step {stride}]"
        case Broadcast(x=x, vlanes=lanes):
            return f"broadcast({format_expr(x)}, {lanes})"
    raise TypeError(f"not a kernel IR expression: {expr!r}")


def format_stmt(stmt: Stmt, indent: int = 0) -> list[str]:
    pad = "  " * indent
    match stmt:
        case Store(buf=buf, index=index, value=value):
            suffix = f" : +{value.lanes}" if value.lanes > 1 else ""
            return [f"{pad}{buf.name}[{format_expr(index)}{suffix}] = {format_expr(value)}"]
        case Let(var=var, value=value):
            return [f"{pad}let {var.name}: {var.type} = {format_expr(value)}"]
        case For(var=var, extent=extent, body=body, kind=kind, start=start):
            head = f"{pad}for {var.name} in "
            if start == Const(0):
                head += f"range({format_expr(extent)})"
            else:
                head += f"range({format_expr(start)}, +{format_expr(extent)})"
            if kind != "serial":
                head += f" {kind}"
            if stmt.independent and kind not in ("parallel", "block"):
                head += " independent"
            return [head + ":", *format_stmt(body, indent + 1)]
        case Barrier():
            return [f"{pad}barrier"]
        case If(cond=cond, then=then, orelse=orelse):
            lines = [f"{pad}if {format_expr(cond)}:", *format_stmt(then, indent + 1)]
            if orelse is not None:
                lines += [f"{pad}else:", *format_stmt(orelse, indent + 1)]
            return lines
        case Block(stmts=stmts):
            if not stmts:
                return [f"{pad}pass"]
            return [line for s in stmts for line in format_stmt(s, indent)]
    raise TypeError(f"not a kernel IR statement: {stmt!r}")


def _format_buffer(buf: Buffer) -> str:
    return f"{buf.name}: {buf.dtype}[{format_expr(buf.size)}]"


def print_kernel(kernel: Kernel) -> str:
    lines = [f"kernel {kernel.name}({', '.join(_format_buffer(b) for b in kernel.buffers)}) {{"]
    for buf in kernel.locals:
        scope = "shared" if buf.scope == "shared" else "local"
        lines.append(f"  {scope} {_format_buffer(buf)}")
    lines += format_stmt(kernel.body, 1)
    lines.append("}")
    return "\n".join(lines)


def print_program(program: Program) -> str:
    extra = "".join(f" + {c}*{'*'.join(m)}" for m, c in program.workspace_terms)
    lines = [f"program {program.name} (workspace {program.workspace_n}*N + "
             f"{program.workspace_c}{extra} bytes)"]
    for name, place in sorted(program.placements.items()):
        if place.kind == "io":
            where = f"io[{place.index}]"
        elif place.kind == "weights":
            where = f"weights+{place.offset_c}"
        else:
            where = f"workspace+{place.offset_n}*N+{place.offset_c}"
            where += "".join(f"+{c}*{'*'.join(m)}" for m, c in place.offset_terms)
        lines.append(f"  {name} @ {where}")
    for kernel in program.kernels:
        lines.append(print_kernel(kernel))
    return "\n".join(lines)
