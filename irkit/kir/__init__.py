"""Kernel IR: loop nests over flat typed buffers (see :mod:`irkit.kir.nodes`)."""

from irkit.kir.nodes import (
    N,
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
    Placement,
    Program,
    Select,
    Stmt,
    Store,
    Unary,
    Var,
    block,
    wrap,
)
from irkit.kir.printer import format_expr, print_kernel, print_program
from irkit.kir.simplify import simplify_expr, simplify_kernel, simplify_stmt
from irkit.kir.transforms import KirError, prepare_kernel, unroll_loops
from irkit.kir.verifier import verify_kernel

__all__ = [
    "N", "Binary", "Block", "Broadcast", "Buffer", "Call", "Cast", "Const", "Expr", "For",
    "If", "Kernel", "KirError", "Let", "Load", "Placement", "Program", "Select", "Stmt",
    "Store", "Unary", "Var", "block", "format_expr", "prepare_kernel", "print_kernel",
    "print_program", "simplify_expr", "simplify_kernel", "simplify_stmt", "unroll_loops",
    "verify_kernel", "wrap",
]  # fmt: skip
