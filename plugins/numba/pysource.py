"""Kernel IR → Python source that Numba compiles (CPU ``@njit`` and numba-cuda kernels).

:class:`KernelSource` renders one prepared kernel's statements; the numba and cuda
backends wrap them in functions (:mod:`.codegen`, :mod:`irkit.plugins.cuda.codegen`). The
renderer keeps kernel-IR semantics exactly, which Numba's Python typing would not give
by itself:

- every integer result is cast back to its kernel-IR type (Numba widens ``int32 + int32``
  to int64, so ``np.int32(a + b)`` wraps like the 32-bit add); constants are typed
  (``np.float32(0.5)``: an untyped ``0.5`` would promote f32 arithmetic to f64);
- signed ``div``/``mod`` truncate toward zero like C (``_idiv``/``_irem``; Python's ``//``
  floors) unless both operands are known to be >= 0; float ``mod`` is C's ``fmod``;
- float ``max``/``min`` keep the first operand when either is NaN, as the llvm backend's
  ``select(fcmp uno)`` does (``_fmax``/``_fmin``);
- f16/bf16 values are f32 in registers and 16-bit patterns (uint16) in memory; every
  arithmetic result is rounded to nearest even (``_rf16``/``_rbf16``); bool is one byte
  in memory;
- vector statements (the GEMM templates' ``<vec x f32>``) become loops over their lanes
  (``for _ln in range(8): acc[16 + _ln] = …``; a vector ``Let`` fills a small array made
  once per kernel), which LLVM vectorizes again; writing each lane out instead would
  multiply the source, and Numba's compile time grows with every operation in it;
- locals read and written only one element at a time at constant indices (a
  reduction's running value) become scalar variables, which LLVM keeps in registers.

The names the source uses (``np``, ``math``, the helpers of :mod:`.helpers`) are defined
in the generated module's preamble.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from irkit.kir import (
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
from irkit.kir.nodes import FLOATS, HALF_FLOATS, ITEMSIZE, SYMBOL_NAME, UNSIGNED
from irkit.kir.visit import stmt_exprs, walk_exprs, walk_stmts

MEMORY = {"f32": "float32", "f64": "float64", "f16": "uint16", "bf16": "uint16",
          "i64": "int64", "i32": "int32", "i16": "int16", "i8": "int8", "u64": "uint64",
          "u32": "uint32", "u16": "uint16", "u8": "uint8", "bool": "uint8"}
"""numpy element type of each kernel-IR type in memory."""
REGISTER = {**MEMORY, "f16": "float32", "bf16": "float32", "bool": "bool_"}
WIDE_INTS = ("i64", "u64")  # integer types Numba computes in without widening
COMPARE = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
ARITH = {"add": "+", "sub": "-", "mul": "*"}
BITWISE = {"and": "&", "or": "|", "xor": "^"}
MATH_CALLS = ("exp", "log", "tanh", "erf", "sqrt", "sin", "cos", "tan", "asin", "acos",
              "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "pow")
EXACT_CALLS = ("abs", "floor", "ceil", "round")  # exact on 16-bit values: no rounding
LANE = "_ln"  # the loop variable of vector statements


class SourceError(ValueError):
    """Kernel IR this renderer cannot express."""


def half_value(value: float, dtype: str) -> float:
    """``value`` rounded to ``dtype`` (f16 or bf16), to nearest even."""
    import ml_dtypes

    half = np.float16 if dtype == "f16" else ml_dtypes.bfloat16
    with np.errstate(over="ignore"):
        return float(np.asarray(value, dtype=np.float64).astype(half))


def float_literal(value: float) -> str:
    if math.isnan(value):
        return "math.nan"
    if math.isinf(value):
        return "math.inf" if value > 0 else "(-math.inf)"
    text = repr(float(value))
    return f"({text})" if text.startswith("-") else text


def const_text(value: int | float | bool, dtype: str) -> str:
    """A typed literal: ``np.float32(0.5)``, ``np.int8(-3)``, ``7`` (i64), ``True``."""
    if dtype == "bool":
        return "True" if value else "False"
    if dtype in FLOATS:
        number = float(value)
        if dtype in HALF_FLOATS:
            number = half_value(number, dtype)
        text = float_literal(number)
        return text if dtype == "f64" else f"np.float32({text})"
    bits = 8 * ITEMSIZE[dtype]
    wrapped = int(value) % (1 << bits)
    if dtype not in UNSIGNED and wrapped >> (bits - 1):
        wrapped -= 1 << bits
    if dtype == "i64":
        return f"({wrapped})" if wrapped < 0 else str(wrapped)
    return f"np.{MEMORY[dtype]}({wrapped})"


def python_name(name: str, prefix: str) -> str:
    clean = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return f"{prefix}{clean}"


def global_buffers(program: Program) -> dict[tuple[str, str], str]:
    """Every global buffer of ``program`` as it is typed in its kernels: (name, kernel-IR
    type) -> a unique Python name, in first-use order.

    One placement may be typed differently by different kernels (an int8 conv writes the
    u8 bytes of the next conv's input as i32 words that a u8 kernel padded), so the
    module needs a typed view of the bytes per (name, type), not per name: a kernel
    given the first kernel's u8 view would index bytes where it means words. The first
    type keeps ``b_<name>``; others are ``b_<name>__<type>``."""
    names: dict[tuple[str, str], str] = {}
    seen: set[str] = set()
    for kernel in program.kernels:
        for buf in kernel.buffers:
            key = (buf.name, buf.dtype)
            if key in names:
                continue
            base = python_name(buf.name, "b_")
            names[key] = f"{base}__{buf.dtype}" if buf.name in seen else base
            seen.add(buf.name)
    return names


def constant_indexed_locals(kernel: Kernel) -> dict[str, set[int]]:
    """Locals every load and store of which reads or writes one element at a constant
    index: name -> the element indices used. They become scalar variables."""
    candidates = {buf.name: set[int]() for buf in kernel.locals if buf.scope == "local"}
    for stmt in walk_stmts(kernel.body):
        accesses: list[tuple[Buffer, Expr, int, int]] = []
        if isinstance(stmt, Store):
            accesses.append((stmt.buf, stmt.index, stmt.value.lanes, 1))
        for top in stmt_exprs(stmt):
            for node in walk_exprs(top):
                if isinstance(node, Load):
                    accesses.append((node.buf, node.index, node.vlanes, node.stride))
        for buf, index, lanes, _ in accesses:
            if buf.name not in candidates:
                continue
            if not isinstance(index, Const) or lanes > 1:
                del candidates[buf.name]
                continue
            candidates[buf.name].add(int(index.value))
    return candidates


class KernelSource:
    """The Python statements of one prepared kernel (see the module docstring).

    ``calls`` overrides how a math call is written (``(fn, dtype) -> template`` with
    ``{0}``, ``{1}``… for the arguments), so CPU and GPU differ only in that table;
    ``helpers`` collects the helper functions the source uses.
    """

    fmod = "_fmod"  # the helper computing C's fmod

    def __init__(self, kernel: Kernel, symbols: Sequence[str],
                 calls: Callable[[str, str], str | None] | None = None) -> None:
        self.kernel = kernel
        self.symbols = set(symbols)
        self.calls = calls or (lambda fn, dtype: None)
        self.helpers: set[str] = set()
        self.scalar_locals = constant_indexed_locals(kernel)
        self.local_types = {b.name: b.dtype for b in kernel.locals}
        self._scope: dict[str, tuple[str, int]] = {}
        self._nonneg: set[str] = set(self.symbols)
        self._counter = 0
        # Arrays holding vector Let values: python name -> (lanes, register dtype).
        self.vectors: dict[str, tuple[int, str]] = {}

    # -- names ------------------------------------------------------------------------
    def buffer(self, buf: Buffer) -> str:
        prefix = "b_" if buf.scope == "global" else ("s_" if buf.scope == "shared" else "l_")
        return python_name(buf.name, prefix)

    def fresh(self, hint: str) -> str:
        self._counter += 1
        return python_name(f"{hint}_{self._counter}", "v_")

    def bind(self, var: Var, lanes: int = 1, nonneg: bool = False) -> str:
        """A new Python name for ``var`` (each binding its own: Numba types each name once)."""
        name = self.fresh(var.name)
        self._scope[var.name] = (name, lanes)
        if nonneg:
            self._nonneg.add(var.name)
        else:
            self._nonneg.discard(var.name)
        return name

    def local_slot(self, buf: Buffer, element: int) -> str:
        return f"{self.buffer(buf)}_{element}"

    def local_declarations(self, array: Callable[[str, int, str], str]) -> list[str]:
        """Statements creating the kernel's locals: scalar variables (zero) for those
        indexed by constants, ``array(scope, size, numpy type)`` for the others, and the
        arrays of vector ``Let`` values (call after rendering the body)."""
        lines = []
        for name, (lanes, dtype) in self.vectors.items():
            lines.append(f"{name} = {array('local', lanes, REGISTER[dtype])}")
        for buf in self.kernel.locals:
            size = int(buf.size.value)  # type: ignore[attr-defined]
            if buf.name in self.scalar_locals:
                zero = const_text(False if buf.dtype == "bool" else 0, buf.dtype)
                lines += [f"{self.local_slot(buf, k)} = {zero}"
                          for k in sorted(self.scalar_locals[buf.name])]
            else:
                lines.append(f"{self.buffer(buf)} = {array(buf.scope, size, MEMORY[buf.dtype])}")
        return lines

    def is_nonneg(self, expr: Expr) -> bool:
        """Whether ``expr`` is provably >= 0 (loop counters from >= 0, the symbols)."""
        match expr:
            case Const(value=value):
                return not isinstance(value, float) and value >= 0
            case Var(name=name):
                return name in self._nonneg
            case Binary(op=op, a=a, b=b) if op in ("add", "mul", "div", "mod", "min", "max"):
                return self.is_nonneg(a) and self.is_nonneg(b)
        return False

    # -- statements -------------------------------------------------------------------
    def block(self, stmt: Stmt, indent: int) -> list[str]:
        lines = self.stmt(stmt, indent)
        return lines or ["    " * indent + "pass"]

    def stmt(self, stmt: Stmt, indent: int) -> list[str]:
        pad = "    " * indent
        match stmt:
            case Block(stmts=stmts):
                return [line for s in stmts for line in self.stmt(s, indent)]
            case Let(var=var, value=value):
                lanes = value.lanes
                if lanes == 1:
                    text = self.expr(value)
                    return [f"{pad}{self.bind(var, 1, self.is_nonneg(value))} = {text}"]
                text = self.expr(value, LANE)
                name = self.bind(var, lanes)
                self.vectors[name] = (lanes, "bool" if value.dtype == "bool" else
                                      ("f32" if value.dtype in HALF_FLOATS else value.dtype))
                return [f"{pad}for {LANE} in range({lanes}):",
                        f"{pad}    {name}[{LANE}] = {text}"]
            case Store(buf=buf, index=index, value=value):
                return self.store(buf, index, value, pad)
            case For():
                return self.loop(stmt, indent, "range")
            case If(cond=cond, then=then, orelse=orelse):
                lines = [f"{pad}if {self.expr(cond)}:", *self.scoped(then, indent + 1)]
                if orelse is not None:
                    lines += [f"{pad}else:", *self.scoped(orelse, indent + 1)]
                return lines
            case Barrier():
                return [f"{pad}{self.barrier()}"]
        raise SourceError(f"kernel {self.kernel.name}: cannot render {stmt!r}")

    def barrier(self) -> str:
        raise SourceError(f"kernel {self.kernel.name}: a barrier outside a GPU template")

    def scoped(self, stmt: Stmt, indent: int) -> list[str]:
        saved, nonneg = dict(self._scope), set(self._nonneg)
        lines = self.block(stmt, indent)
        self._scope, self._nonneg = saved, nonneg
        return lines

    def loop(self, loop: For, indent: int, keyword: str, lo: str | None = None,
             hi: str | None = None, prologue: Iterable[str] = ()) -> list[str]:
        """``for v in keyword(lo, hi):`` (the loop's own range unless given), with
        ``prologue`` lines first in its body."""
        pad = "    " * indent
        start, extent = loop.start, loop.extent
        if lo is None:
            if isinstance(start, Const) and start.value == 0:
                bounds = self.expr(extent)
            else:
                first = self.expr(start)
                bounds = f"{first}, {first} + {self.expr(extent)}"
        else:
            bounds = f"{lo}, {hi}"
        saved, nonneg = dict(self._scope), set(self._nonneg)
        name = self.bind(loop.var, nonneg=self.is_nonneg(start))
        body = [*("    " * (indent + 1) + line for line in prologue),
                *self.stmt(loop.body, indent + 1)]
        self._scope, self._nonneg = saved, nonneg
        return [f"{pad}for {name} in {keyword}({bounds}):", *(body or [pad + "    pass"])]

    def store(self, buf: Buffer, index: Expr, value: Expr, pad: str) -> list[str]:
        lanes = value.lanes
        if buf.name in self.scalar_locals:
            slot = self.local_slot(buf, int(index.value))  # type: ignore[attr-defined]
            return [f"{pad}{slot} = {self.expr(value)}"]
        target = self.buffer(buf)
        if lanes == 1:
            return [f"{pad}{target}[{self.expr(index)}] = "
                    f"{self.to_memory(self.expr(value), buf.dtype)}"]
        lines, at = self._index_temp(index, pad)
        text = self.to_memory(self.expr(value, LANE), buf.dtype)
        return [*lines, f"{pad}for {LANE} in range({lanes}):",
                f"{pad}    {target}[{at} + {LANE}] = {text}"]

    def _index_temp(self, index: Expr, pad: str) -> tuple[list[str], str]:
        text = self.expr(index)
        if isinstance(index, Var | Const):
            return [], text
        name = self.fresh("at")
        return [f"{pad}{name} = {text}"], name

    # -- memory -----------------------------------------------------------------------
    def to_memory(self, text: str, dtype: str) -> str:
        if dtype == "f16":
            return self.helper("_f32_to_f16", text)
        if dtype == "bf16":
            return self.helper("_f32_to_bf16", text)
        if dtype == "bool":
            return f"np.uint8({text})"
        return text

    def from_memory(self, text: str, dtype: str) -> str:
        if dtype == "f16":
            return self.helper("_f16_to_f32", text)
        if dtype == "bf16":
            return self.helper("_bf16_to_f32", text)
        if dtype == "bool":
            return f"({text} != 0)"
        return text

    def helper(self, name: str, *args: str) -> str:
        self.helpers.add(name)
        return f"{name}({', '.join(args)})"

    # -- expressions ------------------------------------------------------------------
    def expr(self, e: Expr, lane: str | None = None) -> str:
        """The Python expression of ``e``; of its lane ``lane`` (a loop variable's name)
        when ``e`` is a vector."""
        match e:
            case Var(name=name):
                if name in self._scope:
                    pyname, lanes = self._scope[name]
                    return f"{pyname}[{lane or 0}]" if lanes > 1 else pyname
                if SYMBOL_NAME.match(name):
                    return name
                raise SourceError(f"kernel {self.kernel.name}: {name} is not in scope")
            case Const(value=value, type=dtype):
                return const_text(value, dtype)
            case Binary(op=op, a=a, b=b):
                return self.binary(op, a, b, lane)
            case Unary(op=op, x=x):
                return self.unary(op, x, lane)
            case Call(fn=fn, args=args):
                return self.call(fn, args, e.dtype, lane)
            case Cast(type=dtype, x=x):
                return self.cast(self.expr(x, lane), x.dtype, dtype)
            case Select(cond=cond, a=a, b=b):
                return (f"({self.expr(a, lane)} if {self.expr(cond, lane)} "
                        f"else {self.expr(b, lane)})")
            case Load(buf=buf, index=index, vlanes=lanes, stride=stride):
                return self.load(buf, index, lane if lanes > 1 else None, stride)
            case Broadcast(x=x):
                return self.expr(x)
        raise SourceError(f"kernel {self.kernel.name}: cannot render {e!r}")

    def load(self, buf: Buffer, index: Expr, lane: str | None, stride: int) -> str:
        if buf.name in self.scalar_locals:
            return self.local_slot(buf, int(index.value))  # type: ignore[attr-defined]
        at = self.expr(index)
        if lane is not None:
            at = f"{at} + {lane}" if stride == 1 else f"{at} + {stride} * {lane}"
        return self.from_memory(f"{self.buffer(buf)}[{at}]", buf.dtype)

    def wrap_int(self, text: str, dtype: str) -> str:
        """An integer result cast back to ``dtype`` (Numba widens narrow integers)."""
        return text if dtype in WIDE_INTS else f"np.{MEMORY[dtype]}({text})"

    def binary(self, op: str, a: Expr, b: Expr, lane: str | None) -> str:
        dtype = a.dtype
        x, y = self.expr(a, lane), self.expr(b, lane)
        if op in COMPARE:
            return f"({x} {COMPARE[op]} {y})"
        if dtype in FLOATS:
            if op in ("max", "min"):
                return self.helper("_fmax" if op == "max" else "_fmin", x, y)
            if op in ARITH or op == "div":
                text = f"({x} {ARITH.get(op, '/')} {y})"
            elif op == "mod":
                text = self.helper(self.fmod, x, y)
                if dtype != "f64":
                    text = f"np.float32({text})"
            else:
                raise SourceError(f"no {op} for {dtype}")
            return self.round_half(text, dtype)
        if dtype == "bool":
            if op in BITWISE:
                return f"({x} {BITWISE[op]} {y})"
            if op in ("max", "min"):
                return f"({x} {'|' if op == 'max' else '&'} {y})"
            raise SourceError(f"no {op} for bool")
        if op in ARITH:
            if dtype == "u64" and op == "sub":
                return f"({x} - {y})"
            return self.wrap_int(f"({x} {ARITH[op]} {y})", dtype)
        if op in ("div", "mod"):
            if dtype in UNSIGNED or (self.is_nonneg(a) and self.is_nonneg(b)):
                text = f"({x} {'//' if op == 'div' else '%'} {y})"
            else:
                text = self.helper("_idiv" if op == "div" else "_irem", x, y)
            return self.wrap_int(text, dtype)
        if op in ("max", "min"):
            return self.wrap_int(f"{op}({x}, {y})", dtype)
        if op in BITWISE:
            return self.wrap_int(f"({x} {BITWISE[op]} {y})", dtype)
        raise SourceError(f"no {op} for {dtype}")

    def unary(self, op: str, x: Expr, lane: str | None) -> str:
        text, dtype = self.expr(x, lane), x.dtype
        if op == "neg":
            if dtype in FLOATS:
                return f"(-{text})"
            if dtype in UNSIGNED:
                return self.wrap_int(f"({const_text(0, dtype)} - {text})", dtype)
            return self.wrap_int(f"(-{text})", dtype)
        if op == "not":
            if dtype == "bool":
                return f"(not {text})"
            return self.wrap_int(f"(~{text})", dtype)
        raise SourceError(f"unknown unary {op}")

    def round_half(self, text: str, dtype: str) -> str:
        if dtype == "f16":
            return self.helper("_rf16", text)
        if dtype == "bf16":
            return self.helper("_rbf16", text)
        return text

    def call(self, fn: str, args: Sequence[Expr], dtype: str, lane: str | None) -> str:
        texts = [self.expr(a, lane) for a in args]
        if fn in ("dot4_u8s8", "dot4_u8s7"):  # u8s7: the same exact sum ([-64, 64] bytes)
            return self.helper("_dot4_u8s8", *texts)
        if fn == "dot8_u8s6":  # two exact dot4 steps ([-32, 32] bytes)
            return self.helper("_dot4_u8s8", self.helper("_dot4_u8s8", *texts[:3]), *texts[3:])
        if fn in ("shl", "shr"):
            return self.wrap_int(f"({texts[0]} {'<<' if fn == 'shl' else '>>'} {texts[1]})",
                                 dtype)
        if fn == "fma":  # rounded once, like llvm.fma (an LLVM intrinsic when compiled)
            return self.round_half(self.helper("_fma", *texts), dtype)
        if fn == "fdiv":
            return self.round_half(f"({texts[0]} / {texts[1]})", dtype)
        template = self.calls(fn, dtype)
        if template is None:
            template = self._default_call(fn, dtype)
        text = template.format(*texts)
        for name in _helper_names(template):
            self.helpers.add(name)
        return text if fn in EXACT_CALLS else self.round_half(text, dtype)

    def _default_call(self, fn: str, dtype: str) -> str:
        args = ", ".join(f"{{{i}}}" for i in range(2 if fn == "pow" else 1))
        if fn == "abs":
            return "abs({0})"
        if fn in ("floor", "ceil", "round"):
            name = {"floor": "np.floor", "ceil": "np.ceil", "round": "np.rint"}[fn]
            return f"{name}({{0}})"
        if fn in MATH_CALLS:
            text = f"_math.{fn}({args})"
            return text if dtype == "f64" else f"np.float32({text})"
        raise SourceError(f"kernel {self.kernel.name}: no Python form for call {fn}")

    def cast(self, text: str, src: str, dst: str) -> str:
        if src == dst:
            return text
        if dst in HALF_FLOATS:
            if src not in FLOATS and ITEMSIZE[src] > 2:  # exact in f64, then f32 to odd
                text, src = f"np.float64({text})", "f64"
            if src == "f64":
                text = self.helper("_f32_odd", text)
            elif src != "f32" and src not in HALF_FLOATS:
                text = f"np.float32({text})"
            return self.round_half(text, dst)
        if dst == "bool":
            return f"({text} != {const_text(0, src) if src != 'bool' else 'False'})"
        if src == "bool":
            return f"np.{REGISTER[dst]}(1 if {text} else 0)"
        return f"np.{REGISTER[dst]}({text})"


def _helper_names(template: str) -> list[str]:
    """The helper functions a call template uses (``_floor(…)``; not ``_math.exp``)."""
    names = []
    for part in template.replace("(", " ").split():
        if part.startswith("_") and part[1:2].isalpha() and "." not in part:
            names.append(part)
    return names


__all__ = ["MEMORY", "REGISTER", "KernelSource", "SourceError", "const_text",
           "constant_indexed_locals", "global_buffers", "python_name"]
