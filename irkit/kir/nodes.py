"""Kernel IR nodes: scalar/vector expressions, statements, buffers, kernels, programs.

Every node is a frozen dataclass, so rewrites build new trees and structural equality
works for pattern matching. Element types are short strings (``f32``, ``i64``, ``bool``…;
see ``DTYPES``); an expression's ``lanes`` is 1 for a scalar and >1 for an LLVM-style
fixed vector.

Index arithmetic is ``i64``. Buffers are flat, typed, and addressed with one ``i64``
index (element units). ``bool`` is stored as one byte and computed as ``i1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

DTYPES = ("f32", "f64", "f16", "bf16", "i64", "i32", "i16", "i8", "u64", "u32", "u16", "u8",
          "bool")
FLOATS = ("f32", "f64", "f16", "bf16")
HALF_FLOATS = ("f16", "bf16")
"""16-bit floats: stored as 16 bits, computed in f32 with every result rounded back (to
nearest even), so a value of these types is always exactly representable in them."""
UNSIGNED = ("u64", "u32", "u16", "u8", "bool")
ITEMSIZE = {"f32": 4, "f64": 8, "f16": 2, "bf16": 2, "i64": 8, "i32": 4, "i16": 2, "i8": 1,
            "u64": 8, "u32": 4, "u16": 2, "u8": 1, "bool": 1}

BINARY_OPS = (
    "add", "sub", "mul", "div", "mod", "max", "min",
    "lt", "le", "gt", "ge", "eq", "ne", "and", "or", "xor",
)  # fmt: skip
COMPARE_OPS = ("lt", "le", "gt", "ge", "eq", "ne")
BITWISE_OPS = ("and", "or", "xor")  # integers (bitwise) and bool (logical)
UNARY_OPS = ("neg", "not")
CALLS = {
    # name: arity. ``fma(a, b, c) = a * b + c``.
    "exp": 1, "log": 1, "tanh": 1, "erf": 1, "sqrt": 1, "abs": 1, "floor": 1,
    "ceil": 1, "round": 1, "sin": 1, "cos": 1, "pow": 2, "fma": 3,
    "tan": 1, "asin": 1, "acos": 1, "atan": 1, "sinh": 1, "cosh": 1, "asinh": 1,
    "acosh": 1, "atanh": 1,
    "fdiv": 2,  # a / b rounded exactly (never a reciprocal multiply; quantization)
    "shl": 2, "shr": 2,  # integers: shift by b < bits (shr is arithmetic when signed)
    "dot4_u8s8": 3,  # i32 lanes: acc + sum of 4 u8(a byte) * s8(b byte) (int8 GEMM)
    # dot4_u8s8 whose b bytes all lie in [-64, 64] (the lowering guarantees it): two
    # u8*s8 products then sum within int16, which x86's vpmaddubsw needs to be exact.
    "dot4_u8s7": 3,
    # dot8_u8s6(acc, a0, b0, a1, b1) = dot4_u8s8(dot4_u8s8(acc, a0, b0), a1, b1) whose b
    # bytes all lie in [-32, 32]: the int16 pair sums of both words then add up within
    # int16 (255 * 32 * 4), so x86 adds two vpmaddubsw results before one vpmaddwd.
    "dot8_u8s6": 5,
    # GPU templates only, inside a ``thread`` loop: ``x`` as thread ``t ^ mask`` of the
    # same warp (32 consecutive threads) holds it; every thread of the warp computes it.
    "shfl_xor": 2,
}  # fmt: skip
ForKind = Literal["serial", "parallel", "vector", "unroll", "block", "thread"]
FOR_KINDS = ("serial", "parallel", "vector", "unroll", "block", "thread")
GPU_KINDS = ("block", "thread")
"""Loop kinds of GPU templates (registered for the ``gpu`` target family only): a
``block`` loop's iterations are thread blocks, a ``thread`` loop's the threads of one
block, which run at once, meet at :class:`Barrier` statements and share ``shared``
buffers. CPU backends never see them."""


class Expr:
    """Base of scalar and vector expressions."""

    @property
    def dtype(self) -> str:
        raise NotImplementedError

    @property
    def lanes(self) -> int:
        return 1

    # Operator sugar keeps lowering code readable: ``i * n + j``.
    def __add__(self, other: Expr | int | float) -> Expr:
        return Binary("add", self, wrap(other, self.dtype))

    def __radd__(self, other: Expr | int | float) -> Expr:
        return Binary("add", wrap(other, self.dtype), self)

    def __sub__(self, other: Expr | int | float) -> Expr:
        return Binary("sub", self, wrap(other, self.dtype))

    def __rsub__(self, other: Expr | int | float) -> Expr:
        return Binary("sub", wrap(other, self.dtype), self)

    def __mul__(self, other: Expr | int | float) -> Expr:
        return Binary("mul", self, wrap(other, self.dtype))

    def __rmul__(self, other: Expr | int | float) -> Expr:
        return Binary("mul", wrap(other, self.dtype), self)

    def __truediv__(self, other: Expr | int | float) -> Expr:
        return Binary("div", self, wrap(other, self.dtype))

    def __floordiv__(self, other: Expr | int) -> Expr:
        return Binary("div", self, wrap(other, self.dtype))

    def __mod__(self, other: Expr | int) -> Expr:
        return Binary("mod", self, wrap(other, self.dtype))

    def __neg__(self) -> Expr:
        return Unary("neg", self)


def wrap(value: Expr | int | float | bool, dtype: str = "i64") -> Expr:
    """An Expr for a Python number (typed like ``dtype``) or the Expr itself."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, bool):
        return Const(value, "bool")
    if dtype in FLOATS:
        return Const(float(value), dtype)
    return Const(int(value), dtype)


@dataclass(frozen=True, eq=True)
class Var(Expr):
    """A loop variable, a ``Let`` name or a kernel scalar argument (``N``)."""

    name: str
    type: str = "i64"

    @property
    def dtype(self) -> str:
        return self.type


@dataclass(frozen=True, eq=True)
class Const(Expr):
    value: int | float | bool
    type: str = "i64"

    @property
    def dtype(self) -> str:
        return self.type


@dataclass(frozen=True, eq=True)
class Binary(Expr):
    op: str
    a: Expr
    b: Expr

    @property
    def dtype(self) -> str:
        return "bool" if self.op in COMPARE_OPS else self.a.dtype

    @property
    def lanes(self) -> int:
        return max(self.a.lanes, self.b.lanes)


@dataclass(frozen=True, eq=True)
class Unary(Expr):
    op: str
    x: Expr

    @property
    def dtype(self) -> str:
        return self.x.dtype

    @property
    def lanes(self) -> int:
        return self.x.lanes


@dataclass(frozen=True, eq=True)
class Call(Expr):
    """A math function (see ``CALLS``); backends decide how to compute it."""

    fn: str
    args: tuple[Expr, ...]

    @property
    def dtype(self) -> str:
        return self.args[0].dtype

    @property
    def lanes(self) -> int:
        return max(a.lanes for a in self.args)


@dataclass(frozen=True, eq=True)
class Cast(Expr):
    type: str
    x: Expr

    @property
    def dtype(self) -> str:
        return self.type

    @property
    def lanes(self) -> int:
        return self.x.lanes


@dataclass(frozen=True, eq=True)
class Select(Expr):
    cond: Expr
    a: Expr
    b: Expr

    @property
    def dtype(self) -> str:
        return self.a.dtype

    @property
    def lanes(self) -> int:
        return max(self.cond.lanes, self.a.lanes, self.b.lanes)


@dataclass(frozen=True, eq=True)
class Load(Expr):
    """``buf[index]``, or ``lanes`` elements from there as a vector: consecutive, or
    ``stride`` apart (a stride-2 convolution reads every other column)."""

    buf: Buffer
    index: Expr
    vlanes: int = 1
    stride: int = 1

    @property
    def dtype(self) -> str:
        return self.buf.dtype

    @property
    def lanes(self) -> int:
        return self.vlanes


@dataclass(frozen=True, eq=True)
class Broadcast(Expr):
    """A vector of ``vlanes`` copies of a scalar."""

    x: Expr
    vlanes: int

    @property
    def dtype(self) -> str:
        return self.x.dtype

    @property
    def lanes(self) -> int:
        return self.vlanes


@dataclass(frozen=True, eq=True)
class Buffer:
    """A flat typed buffer. ``scope="local"``: a per-kernel scratch array of ``size``
    (a constant) elements, private to each iteration of an independent loop around its
    uses; ``"shared"``: scratch one thread block of a GPU template shares (see
    ``GPU_KINDS``); ``"global"``: memory the program's plan places."""

    name: str
    dtype: str
    size: Expr
    scope: str = "global"


class Stmt:
    """Base of statements."""


@dataclass(frozen=True, eq=True)
class Store(Stmt):
    buf: Buffer
    index: Expr
    value: Expr


@dataclass(frozen=True, eq=True)
class Let(Stmt):
    """Bind ``var`` to ``value`` for the rest of the enclosing block."""

    var: Var
    value: Expr


@dataclass(frozen=True, eq=True)
class For(Stmt):
    """``for var in range(start, start + extent)``.

    Meaning and schedule are separate. ``independent`` is meaning: no iteration reads
    memory another iteration writes, and local buffers carry nothing from one iteration
    to the next, so the iterations may run in any order or all at once (a GPU maps them
    to threads; numba to ``prange``). ``kind`` is how a CPU schedules the loop, a hint
    (``unroll`` loops are expanded by :func:`irkit.kir.transforms.unroll_loops`; a
    ``vector`` loop is vectorized where that is safe; a top-level ``parallel`` loop is
    split across threads by the runtime, so ``parallel`` implies ``independent``).
    ``block`` and ``thread`` are the GPU templates' kinds (``GPU_KINDS``).
    """

    var: Var
    extent: Expr
    body: Stmt
    kind: str = "serial"
    start: Expr = field(default_factory=lambda: Const(0))
    independent: bool = False

    @property
    def is_independent(self) -> bool:
        """Whether the iterations are independent (declared, or implied by the kind)."""
        return self.independent or self.kind in ("parallel", "block")


@dataclass(frozen=True, eq=True)
class If(Stmt):
    cond: Expr
    then: Stmt
    orelse: Stmt | None = None


@dataclass(frozen=True, eq=True)
class Barrier(Stmt):
    """GPU templates only: every iteration of the enclosing ``thread`` loop reaches this
    point before any goes on; ``shared`` buffer stores before it are seen after it."""


@dataclass(frozen=True, eq=True)
class Block(Stmt):
    stmts: tuple[Stmt, ...]


def block(*stmts: Stmt | None) -> Stmt:
    """A Block of the non-None statements, flattening nested blocks."""
    flat: list[Stmt] = []
    for stmt in stmts:
        if stmt is None:
            continue
        if isinstance(stmt, Block):
            flat.extend(stmt.stmts)
        else:
            flat.append(stmt)
    return flat[0] if len(flat) == 1 else Block(tuple(flat))


@dataclass(frozen=True)
class Kernel:
    """One loop nest. ``buffers`` are the global buffers it reads or writes; ``locals``
    are its scratch arrays. The symbolic dims (``N``, ``N1``…) are always in scope."""

    name: str
    buffers: tuple[Buffer, ...]
    body: Stmt
    locals: tuple[Buffer, ...] = ()


# A polynomial in the symbolic dims: ((("N", "N1"), 384), ((), 64)) is 384*N*N1 + 64.
Terms = tuple[tuple[tuple[str, ...], int], ...]


@dataclass(frozen=True)
class Placement:
    """Where a global buffer lives: ``io`` (argument ``index`` of the entry), ``weights``
    (byte ``offset`` into the weights blob) or ``workspace`` (byte offset
    ``offset_n * N + offset_c`` plus ``offset_terms`` — the terms in other symbols, such
    as ``N*N1`` — into the scratch arena)."""

    kind: str
    index: int = 0
    offset_n: int = 0
    offset_c: int = 0
    offset_terms: Terms = ()


@dataclass(frozen=True)
class Program:
    """What lowering hands a backend: kernels in execution order and buffer placements."""

    name: str
    kernels: tuple[Kernel, ...]
    placements: dict[str, Placement]
    io_order: tuple[str, ...]
    workspace_n: int = 0
    workspace_c: int = 0
    weights: bytes = b""
    # Kernel-IR names of the symbolic dims, in the order the entry receives their values.
    symbols: tuple[str, ...] = ("N",)
    workspace_terms: Terms = ()  # workspace bytes in symbols other than N alone


N = Var("N")
"""The first symbolic dim (the batch size), in scope in every kernel."""
SYMBOL_NAME = re.compile(r"^N\d*$")
"""Names of the symbolic dims: ``N``, ``N1``, ``N2``… (loop vars always hold an ``_``)."""
