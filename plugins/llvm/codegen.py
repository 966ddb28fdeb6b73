"""Translate a kernel-IR :class:`~irkit.kir.Program` into an llvmlite module.

Every kernel becomes ``void @<kernel>(ptr io, ptr weights, ptr workspace, ptr dims,
i64 start, i64 end)``: ``dims`` points at the values of the symbolic dims (``i64``
each, in ``program.symbols`` order: ``N``, ``N1``…), the kernel computes its buffer
pointers from the program's placements (offsets are polynomials in those values) and,
when its body is a top-level ``parallel`` loop, runs only iterations ``[start, end)``;
``i64 @<kernel>_extent(ptr dims)`` gives that loop's trip count (1 for other kernels).
The entry points (``<program>_run``, its packed form and the CPython fast entry) are built by
:mod:`irkit.plugins.llvm.entry`.

This module knows kernel IR and LLVM, nothing about graph ops.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import ml_dtypes
import numpy as np
from llvmlite import ir

from irkit.kir import (
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
    prepare_kernel,
    verify_kernel,
)
from irkit.kir.nodes import HALF_FLOATS, ITEMSIZE, UNSIGNED
from irkit.kir.printer import print_kernel
from irkit.plugins.llvm.entry import add_entries
from irkit.plugins.llvm.intrinsics import EXTENSION_CALLS, emit_extension_call
from irkit.plugins.llvm.mathlib import MathEmitter
from irkit.target import Target, get_target

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F16 = ir.HalfType()
F32 = ir.FloatType()
F64 = ir.DoubleType()
PTR = ir.PointerType()
VOID = ir.VoidType()
# Register types. f16 and bf16 compute as f32 (each result rounded back, see ``_round``).
LLVM_TYPES: dict[str, ir.Type] = {
    "f32": F32, "f64": F64, "f16": F32, "bf16": F32,
    "i64": I64, "i32": I32, "i16": I16, "i8": I8,
    "u64": I64, "u32": I32, "u16": I16, "u8": I8,
    "bool": I1,
}  # fmt: skip
MEMORY_TYPES = {**LLVM_TYPES, "f16": I16, "bf16": I16, "bool": I8}
FLOAT_TYPES = ("f32", "f64", *HALF_FLOATS)
# Results of these calls on 16-bit float values are 16-bit values already.
EXACT_CALLS = ("abs", "floor", "ceil", "round")
FCMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
INTRINSIC_CALLS = {
    "sqrt": "llvm.sqrt", "abs": "llvm.fabs", "floor": "llvm.floor", "ceil": "llvm.ceil",
    "round": "llvm.roundeven", "log": "llvm.log", "sin": "llvm.sin", "cos": "llvm.cos",
    "pow": "llvm.pow", "fma": "llvm.fma", "exp": "llvm.exp", "tanh": "llvm.tanh",
    "tan": "llvm.tan", "asin": "llvm.asin", "acos": "llvm.acos", "atan": "llvm.atan",
    "sinh": "llvm.sinh", "cosh": "llvm.cosh",
}  # fmt: skip
LIBM_CALLS = ("asinh", "acosh", "atanh")  # no LLVM intrinsic: libm, one lane at a time
FAST_FLAGS = ("reassoc", "contract", "nsz", "arcp", "afn")


def value_type(dtype: str, lanes: int = 1, memory: bool = False) -> ir.Type:
    base = (MEMORY_TYPES if memory else LLVM_TYPES)[dtype]
    return base if lanes == 1 else ir.VectorType(base, lanes)


def _like(ty: ir.Type, element: ir.Type) -> ir.Type:
    """``element``, or a vector of it as wide as ``ty``."""
    return ir.VectorType(element, ty.count) if isinstance(ty, ir.VectorType) else element


def _const(ty: ir.Type, value: int | float) -> ir.Constant:
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [ir.Constant(ty.element, value)] * ty.count)
    return ir.Constant(ty, value)


def half_value(value: float, dtype: str) -> float:
    """``value`` rounded to ``dtype`` (``f16`` or ``bf16``; to nearest even)."""
    half = np.float16 if dtype == "f16" else ml_dtypes.bfloat16
    with np.errstate(over="ignore"):
        return float(np.asarray(value, dtype=np.float64).astype(half))


class KernelTranslator:
    """Emits one kernel's function body."""

    def __init__(self, module: ir.Module, program: Program, target: Target, fast_math: bool,
                 lanes: int = 8) -> None:
        self.lanes = lanes
        self.target = target
        self.module = module
        self.program = program
        self.flags = FAST_FLAGS if fast_math else ()
        self.scope: dict[str, ir.Value] = {}
        # LLVM's WebAssembly backend cannot legalize half-precision vectors (it aborts or
        # loops once InstCombine narrows a compare or select to half): convert in integer
        # arithmetic there.
        self.soft_half = target.family == "wasm"

    def translate(self, kernel: Kernel, body: ir.Function | None = None
                  ) -> tuple[ir.Function, ir.Function]:
        """``kernel(io, weights, workspace, dims, start, end)`` and its extent function;
        the kernel computes its buffers' addresses and calls ``body`` (see
        :meth:`translate_body`; made here when not given)."""
        kernel = prepare_kernel(kernel, self.lanes)
        if body is None:
            body = self.translate_body(kernel, f"{kernel.name}_body")
        fnty = ir.FunctionType(VOID, [PTR, PTR, PTR, PTR, I64, I64])
        fn = ir.Function(self.module, fnty, name=kernel.name)
        io, weights, workspace, dims, start, end = fn.args
        for arg, name in zip(fn.args, ("io", "weights", "workspace", "dims", "start", "end")):
            arg.name = name
        for i in range(4):
            fn.args[i].add_attribute("noalias")
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.scope = self._load_symbols(dims)
        pointers = [self._global_pointer(buf, io, weights, workspace) for buf in kernel.buffers]
        self.b.call(body, [*pointers, dims, start, end])
        self.b.ret_void()
        return fn, self._extent_function(kernel.name, _parallel_loop(kernel.body))

    def translate_body(self, kernel: Kernel, name: str, shared: bool = False) -> ir.Function:
        """``name(buffer pointers…, dims, start, end)``: the kernel's loops, with one pointer
        argument per buffer in ``kernel.buffers`` order. Buffers of one kernel never
        overlap (the memory planner gives buffers live in the same kernel distinct
        slots; inputs are only read), so every pointer is ``noalias``. A ``shared`` body
        serves several identical kernels and is kept out of line. ``kernel`` is in
        prepared form (:func:`prepare_kernel`)."""
        verify_kernel(kernel)
        fnty = ir.FunctionType(VOID, [PTR] * len(kernel.buffers) + [PTR, I64, I64])
        fn = ir.Function(self.module, fnty, name=name)
        fn.linkage = "internal"
        if shared:
            fn.attributes.add("noinline")
        *buffers, dims, start, end = fn.args
        for arg, buf in zip(buffers, kernel.buffers):
            arg.name = buf.name
            arg.add_attribute("noalias")
        dims.name, start.name, end.name = "dims", "start", "end"
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.math = MathEmitter(self.b, self.module, ("contract", "nsz"), self.target)
        self.scope = self._load_symbols(dims)
        self.ptrs: dict[str, ir.Value] = {buf.name: arg for arg, buf in zip(buffers,
                                                                          kernel.buffers)}
        for buf in kernel.locals:
            if not isinstance(buf.size, Const):
                raise ValueError(f"local buffer {buf.name} needs a constant size")
            slot = self.b.alloca(value_type(buf.dtype, memory=True),
                                 size=ir.Constant(I64, int(buf.size.value)), name=buf.name)
            slot.align = 64
            self.ptrs[buf.name] = slot
        parallel = _parallel_loop(kernel.body)
        if parallel is not None:
            # [start, end) counts iterations; the loop's own start offsets both.
            first = self.expr(parallel.start)
            self._loop(parallel, lo=self.b.add(start, first), hi=self.b.add(end, first))
        else:
            self.stmt(kernel.body)
        self.b.ret_void()
        return fn

    def _extent_function(self, name: str, loop: For | None) -> ir.Function:
        fn = ir.Function(self.module, ir.FunctionType(I64, [PTR]), name=f"{name}_extent")
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.scope = self._load_symbols(fn.args[0])
        self.b.ret(self.expr(loop.extent) if loop is not None else ir.Constant(I64, 1))
        return fn

    def _load_symbols(self, dims: ir.Value) -> dict[str, ir.Value]:
        scope: dict[str, ir.Value] = {}
        for i, symbol in enumerate(self.program.symbols):
            slot = self.b.gep(dims, [ir.Constant(I64, i)], source_etype=I64)
            scope[symbol] = self.b.load(slot, typ=I64, name=symbol)
        return scope

    def _global_pointer(self, buf: Buffer, io: ir.Value, weights: ir.Value, ws: ir.Value
                        ) -> ir.Value:
        place = self.program.placements[buf.name]
        if place.kind == "io":
            slot = self.b.gep(io, [ir.Constant(I64, place.index)], source_etype=PTR)
            return self.b.load(slot, typ=PTR, name=buf.name)
        if place.kind == "weights":
            return self.b.gep(weights, [ir.Constant(I64, place.offset_c)], source_etype=I8,
                              name=buf.name)
        offset: ir.Value = ir.Constant(I64, place.offset_c)
        if place.offset_n:
            n = self.scope["N"]
            offset = self.b.add(self.b.mul(n, ir.Constant(I64, place.offset_n)), offset)
        for monomial, coefficient in place.offset_terms:
            term: ir.Value = ir.Constant(I64, coefficient)
            for symbol in monomial:
                term = self.b.mul(term, self.scope[symbol])
            offset = self.b.add(offset, term)
        return self.b.gep(ws, [offset], source_etype=I8, name=buf.name)

    # -- statements --------------------------------------------------------------
    def stmt(self, stmt: Stmt) -> None:
        match stmt:
            case Block(stmts=stmts):
                for s in stmts:
                    self.stmt(s)
            case Let(var=var, value=value):
                self.scope[var.name] = self.expr(value)
            case Store(buf=buf, index=index, value=value):
                val = self._to_memory(self.expr(value), buf.dtype)
                ptr = self._typed(self._address(buf, index), val.type)
                store = self.b.store(val, ptr)
                store.align = ITEMSIZE[buf.dtype]
            case For():
                self._loop(stmt, lo=self.expr(stmt.start), hi=None)
            case If(cond=cond, then=then, orelse=orelse):
                c = self.expr(cond)
                if orelse is None:
                    with self.b.if_then(c):
                        self._scoped(then)
                else:
                    with self.b.if_else(c) as (then_block, else_block):
                        with then_block:
                            self._scoped(then)
                        with else_block:
                            self._scoped(orelse)
            case _:
                raise TypeError(f"cannot translate statement {stmt!r}")

    def _scoped(self, stmt: Stmt) -> None:
        saved = dict(self.scope)
        self.stmt(stmt)
        self.scope = saved

    def _loop(self, loop: For, lo: ir.Value, hi: ir.Value | None) -> None:
        if hi is None:
            hi = self.b.add(lo, self.expr(loop.extent))
        pre = self.b.block
        header = self.b.append_basic_block(f"{loop.var.name}.head")
        body = self.b.append_basic_block(f"{loop.var.name}.body")
        exit_ = self.b.append_basic_block(f"{loop.var.name}.exit")
        self.b.branch(header)
        self.b.position_at_end(header)
        phi = self.b.phi(I64, name=loop.var.name)
        phi.add_incoming(lo, pre)
        self.b.cbranch(self.b.icmp_signed("<", phi, hi), body, exit_)
        self.b.position_at_end(body)
        saved = dict(self.scope)
        self.scope[loop.var.name] = phi
        self.stmt(loop.body)
        self.scope = saved
        nxt = self.b.add(phi, ir.Constant(I64, 1), flags=["nsw"])
        phi.add_incoming(nxt, self.b.block)
        self.b.branch(header)
        self.b.position_at_end(exit_)

    # -- expressions -------------------------------------------------------------
    def _address(self, buf: Buffer, index: Expr) -> ir.Value:
        return self.b.gep(
            self.ptrs[buf.name], [self.expr(index)], inbounds=True,
            source_etype=value_type(buf.dtype, memory=True),
        )

    def _strided_load(self, buf: Buffer, index: Expr, lanes: int, stride: int) -> ir.Value:
        """``lanes`` elements two apart from two overlapping contiguous loads that end at
        the last element read (nothing past it is touched) and one shuffle."""
        if stride != 2 or lanes % 2:
            raise ValueError(f"strided load of {lanes} lanes, stride {stride}")
        vty = value_type(buf.dtype, lanes, memory=True)
        elem = value_type(buf.dtype, memory=True)
        start = self._address(buf, index)
        head = self.b.load(self._typed(start, vty), typ=vty)
        tail_ptr = self.b.gep(start, [ir.Constant(I64, lanes - 1)], inbounds=True,
                              source_etype=elem)
        tail = self.b.load(self._typed(tail_ptr, vty), typ=vty)
        head.align = tail.align = ITEMSIZE[buf.dtype]
        # Offsets 0, 2, .., lanes-2 are in head; lanes, .., 2*lanes-2 are tail's odd lanes.
        picks = [2 * k for k in range(lanes // 2)] + [lanes + 2 * k + 1
                                                      for k in range(lanes // 2)]
        return self.b.shuffle_vector(head, tail, ir.Constant(ir.VectorType(I32, lanes), picks))

    def _typed(self, ptr: ir.Value, ty: ir.Type) -> ir.Value:
        # Allocas are typed pointers in llvmlite; vector accesses need a cast.
        if not ptr.type.is_opaque and ptr.type.pointee != ty:
            return self.b.bitcast(ptr, ty.as_pointer())
        return ptr

    def _splat(self, value: ir.Value, lanes: int) -> ir.Value:
        if lanes == 1 or isinstance(value.type, ir.VectorType):
            return value
        vty = ir.VectorType(value.type, lanes)
        one = self.b.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(I64, 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        return self.b.shuffle_vector(one, ir.Constant(vty, ir.Undefined), mask)

    def _fl(self, inst: ir.Value) -> ir.Value:
        inst.flags.extend(self.flags)
        return inst

    def expr(self, e: Expr) -> ir.Value:
        match e:
            case Var(name=name):
                return self.scope[name]
            case Const(value=value, type=dtype):
                ty = LLVM_TYPES[dtype]
                if dtype in HALF_FLOATS:
                    return ir.Constant(ty, half_value(float(value), dtype))
                if dtype in FLOAT_TYPES:
                    return ir.Constant(ty, value)
                # LLVM integers are signless: write u64 values >= 2**63 as negative i64.
                bits = ty.width
                wrapped = int(value) % (1 << bits)
                if bits > 1 and wrapped >> (bits - 1):
                    wrapped -= 1 << bits
                return ir.Constant(ty, wrapped)
            case Binary(op=op, a=a, b=b):
                lanes = e.lanes
                x, y = self._splat(self.expr(a), lanes), self._splat(self.expr(b), lanes)
                return self._binary(op, x, y, a.dtype)
            case Unary(op="neg", x=x):
                v = self.expr(x)
                return self.b.fneg(v) if x.dtype in FLOAT_TYPES else self.b.neg(v)
            case Unary(op="not", x=x):
                return self.b.not_(self.expr(x))
            case Call(fn=fn, args=args):
                lanes = e.lanes
                vals = [self._splat(self.expr(a), lanes) for a in args]
                return self._call(fn, vals, e.dtype)
            case Cast(type=dtype, x=x):
                return self._cast(self.expr(x), x.dtype, dtype, e.lanes)
            case Select(cond=cond, a=a, b=b):
                lanes = e.lanes
                c = self.expr(cond)
                if lanes > 1 and cond.lanes == 1:
                    c = self._splat(c, lanes)
                return self.b.select(c, self._splat(self.expr(a), lanes),
                                     self._splat(self.expr(b), lanes))
            case Load(buf=buf, index=index, vlanes=lanes, stride=stride) if (
                    stride > 1 and lanes > 1):
                return self._from_memory(self._strided_load(buf, index, lanes, stride),
                                         buf.dtype)
            case Load(buf=buf, index=index, vlanes=lanes):
                vty = value_type(buf.dtype, lanes, memory=True)
                ptr = self._typed(self._address(buf, index), vty)
                val = self.b.load(ptr, typ=vty)
                val.align = ITEMSIZE[buf.dtype]
                return self._from_memory(val, buf.dtype)
            case Broadcast(x=x, vlanes=lanes):
                return self._splat(self.expr(x), lanes)
        raise TypeError(f"cannot translate expression {e!r}")

    def _binary(self, op: str, x: ir.Value, y: ir.Value, dtype: str) -> ir.Value:
        b = self.b
        if dtype in FLOAT_TYPES:
            arith = {"add": b.fadd, "sub": b.fsub, "mul": b.fmul, "div": b.fdiv, "mod": b.frem}
            if op in arith:
                return self._round(self._fl(arith[op](x, y)), dtype)
            if op in FCMP:
                pred = FCMP[op]
                return b.fcmp_unordered(pred, x, y) if op == "ne" else b.fcmp_ordered(pred, x, y)
            if op == "max":
                return b.select(b.fcmp_unordered(">", x, y), x, y) if False else self._minmax(
                    x, y, ">")
            if op == "min":
                return self._minmax(x, y, "<")
        else:
            unsigned = dtype in UNSIGNED
            if op in ("add", "sub", "mul"):
                return {"add": b.add, "sub": b.sub, "mul": b.mul}[op](x, y)
            if op == "div":
                return b.udiv(x, y) if unsigned else b.sdiv(x, y)
            if op == "mod":
                return b.urem(x, y) if unsigned else b.srem(x, y)
            if op in FCMP:
                cmp = b.icmp_unsigned if unsigned else b.icmp_signed
                return cmp(FCMP[op], x, y)
            if op in ("max", "min"):
                cmp = b.icmp_unsigned if unsigned else b.icmp_signed
                return b.select(cmp(">" if op == "max" else "<", x, y), x, y)
            if op == "and":
                return b.and_(x, y)
            if op == "or":
                return b.or_(x, y)
            if op == "xor":
                return b.xor(x, y)
        raise TypeError(f"no {op} for {dtype}")

    def _minmax(self, x: ir.Value, y: ir.Value, pred: str) -> ir.Value:
        # NaN in x propagates like numpy's maximum for the common relu case max(x, 0).
        keep_x = self.b.fcmp_unordered(pred, x, y)
        return self.b.select(keep_x, x, y)

    def _call(self, fn: str, args: Sequence[ir.Value], dtype: str) -> ir.Value:
        if fn in EXTENSION_CALLS:
            return emit_extension_call(self.b, self.module, self.target, fn, args)
        if dtype in HALF_FLOATS and fn not in EXACT_CALLS:
            return self._round(self._call(fn, args, "f32"), dtype)
        if dtype in ("f32", *HALF_FLOATS) and fn in ("exp", "tanh", "erf"):
            return getattr(self.math, fn)(args[0])
        if fn == "erf":
            raise TypeError("erf is only implemented for f32")
        if fn == "fdiv":  # no fast-math flags: the correctly rounded quotient
            return self.b.fdiv(args[0], args[1])
        if fn in ("shl", "shr"):
            if fn == "shl":
                return self.b.shl(args[0], args[1])
            return self.b.lshr(*args) if dtype in UNSIGNED else self.b.ashr(*args)
        if fn in LIBM_CALLS:
            return self._libm(fn, args[0])
        name = INTRINSIC_CALLS[fn]
        if fn == "fma" and not self.target.has_fma and self.flags:
            # Without the instruction llvm.fma is a software call per lane. Under the
            # fast-math licence (results differ by rounding only) fmuladd lets LLVM emit
            # a multiply and an add; without fast-math fma stays exact (one rounding).
            name = "llvm.fmuladd"
        return self.math.intrinsic(name, *args)

    # -- 16-bit floats: f32 in registers, 16 bits in memory ----------------------------
    def _round(self, v: ir.Value, dtype: str) -> ir.Value:
        """An f32 value rounded to the nearest even ``dtype`` value (still an f32)."""
        b = self.b
        if dtype == "f16":
            if self.soft_half:
                return self._f16_bits_to_f32(self._f32_to_f16_bits(v))
            return b.fpext(b.fptrunc(v, _like(v.type, F16)), v.type)
        if dtype != "bf16":
            return v
        # Round the top 16 bits to nearest even; NaN stays NaN (quieted, as ml_dtypes).
        ity = _like(v.type, I32)
        bits = b.bitcast(v, ity)
        lsb = b.and_(b.lshr(bits, _const(ity, 16)), _const(ity, 1))
        rounded = b.add(bits, b.add(lsb, _const(ity, 0x7FFF)))
        quiet = b.or_(bits, _const(ity, 0x00400000))
        bits = b.select(b.fcmp_unordered("uno", v, v), quiet, rounded)
        return b.bitcast(b.and_(bits, _const(ity, 0xFFFF0000)), v.type)

    def _from_memory(self, v: ir.Value, dtype: str) -> ir.Value:
        b = self.b
        if dtype == "bool":
            return b.icmp_unsigned("!=", v, ir.Constant(v.type, None))
        if dtype == "f16":
            if self.soft_half:
                return self._f16_bits_to_f32(v)
            return b.fpext(b.bitcast(v, _like(v.type, F16)), _like(v.type, F32))
        if dtype == "bf16":
            wide = b.shl(b.zext(v, _like(v.type, I32)), _const(_like(v.type, I32), 16))
            return b.bitcast(wide, _like(v.type, F32))
        return v

    def _to_memory(self, v: ir.Value, dtype: str) -> ir.Value:
        b = self.b
        if dtype == "bool":
            return b.zext(v, _like(v.type, I8))
        if dtype == "f16":  # exact: the value is an f16 value
            if self.soft_half:
                return self._f32_to_f16_bits(v)
            return b.bitcast(b.fptrunc(v, _like(v.type, F16)), _like(v.type, I16))
        if dtype == "bf16":
            bits = b.lshr(b.bitcast(v, _like(v.type, I32)), _const(_like(v.type, I32), 16))
            return b.trunc(bits, _like(v.type, I16))
        return v

    def _f16_bits_to_f32(self, h: ir.Value) -> ir.Value:
        """The f32 value of f16 bits (i16), exactly, with integer and f32 operations only
        (targets where LLVM's ``half`` is not a legal type: ``soft_half``)."""
        b = self.b
        ity, fty = _like(h.type, I32), _like(h.type, F32)
        bits = b.zext(h, ity)
        sign = b.shl(b.and_(bits, _const(ity, 0x8000)), _const(ity, 16))
        em = b.and_(bits, _const(ity, 0x7FFF))
        shifted = b.shl(em, _const(ity, 13))
        # Normal and subnormal: the shifted bits as an f32 times 2**112, exact.
        finite = b.fmul(b.bitcast(shifted, fty), _const(fty, 2.0 ** 112))
        special = b.bitcast(b.or_(shifted, _const(ity, 0x7F800000)), fty)  # inf, NaN
        value = b.select(b.icmp_unsigned(">=", em, _const(ity, 0x7C00)), special, finite)
        return b.bitcast(b.or_(b.bitcast(value, ity), sign), fty)

    def _f32_to_f16_bits(self, v: ir.Value) -> ir.Value:
        """f32 to f16 bits (i16), rounded to nearest even; NaN stays NaN (quieted, its top
        payload bits kept), overflow is infinity. Integer and f32 operations only."""
        b = self.b
        ity, fty = _like(v.type, I32), _like(v.type, F32)
        bits = b.bitcast(v, ity)
        sign = b.and_(bits, _const(ity, -0x80000000))
        a = b.xor(bits, sign)
        nan = b.or_(_const(ity, 0x7E00), b.and_(b.lshr(a, _const(ity, 13)), _const(ity, 0x3FF)))
        big = b.select(b.icmp_unsigned(">", a, _const(ity, 0x7F800000)), nan,
                       _const(ity, 0x7C00))
        # Below 2**-14: adding 0.5 rounds the value to a multiple of 2**-24 (the f16
        # subnormal step) in the f32 adder; the low bits are then the f16 bits.
        magic = 0x3F000000
        tiny = b.sub(b.bitcast(b.fadd(b.bitcast(a, fty), _const(fty, 0.5)), ity),
                     _const(ity, magic))
        odd = b.and_(b.lshr(a, _const(ity, 13)), _const(ity, 1))
        rebias = b.add(a, _const(ity, ((15 - 127) << 23) + 0xFFF))
        normal = b.lshr(b.add(rebias, odd), _const(ity, 13))
        out = b.select(b.icmp_unsigned(">=", a, _const(ity, 0x47800000)), big,
                       b.select(b.icmp_unsigned("<", a, _const(ity, 0x38800000)), tiny, normal))
        out = b.or_(out, b.lshr(sign, _const(ity, 16)))
        return b.trunc(out, _like(v.type, I16))

    def _to_f32_odd(self, v: ir.Value) -> ir.Value:
        """f64 → f32 rounding to odd, so that rounding the result again to f16 or bf16
        equals rounding ``v`` directly (no double-rounding error)."""
        b = self.b
        t = b.fptrunc(v, _like(v.type, F32))
        back = b.fpext(t, v.type)
        ity = _like(t.type, I32)
        bits = b.bitcast(t, ity)
        even = b.icmp_unsigned("==", b.and_(bits, _const(ity, 1)), _const(ity, 0))
        inexact = b.and_(b.fcmp_ordered("!=", back, v), even)
        away = b.fcmp_ordered(">", self.math.intrinsic("llvm.fabs", back),
                              self.math.intrinsic("llvm.fabs", v))
        step = b.select(away, _const(ity, -1), _const(ity, 1))
        return b.bitcast(b.select(inexact, b.add(bits, step), bits), t.type)

    def _libm(self, fn: str, x: ir.Value) -> ir.Value:
        lanes = x.type.count if isinstance(x.type, ir.VectorType) else 0
        elem = x.type.element if lanes else x.type
        name = fn if isinstance(elem, ir.DoubleType) else f"{fn}f"
        callee = self.module.globals.get(name)
        if callee is None:
            callee = ir.Function(self.module, ir.FunctionType(elem, [elem]), name)
        if not lanes:
            return self.b.call(callee, [x])
        out = ir.Constant(x.type, ir.Undefined)
        for k in range(lanes):
            lane = self.b.call(callee, [self.b.extract_element(x, ir.Constant(I64, k))])
            out = self.b.insert_element(out, lane, ir.Constant(I64, k))
        return out

    def _cast(self, v: ir.Value, src: str, dst: str, lanes: int) -> ir.Value:
        b = self.b
        if src == dst:
            return v
        if dst in HALF_FLOATS:
            if src not in FLOAT_TYPES and ITEMSIZE[src] > 2:  # exact in f64 up to 2**53
                v, src = self._cast(v, src, "f64", lanes), "f64"
            if src == "f64":
                v, src = self._to_f32_odd(v), "f32"
            return self._round(self._cast(v, src, "f32", lanes), dst)
        if src in HALF_FLOATS:
            src = "f32"  # the register value is an f32
        target = value_type(dst, lanes)
        if src == dst:
            return v
        if dst == "bool":
            zero = ir.Constant(v.type, None)
            if src in FLOAT_TYPES:
                return b.fcmp_unordered("!=", v, zero)
            return b.icmp_unsigned("!=", v, zero)
        if src in FLOAT_TYPES and dst in FLOAT_TYPES:
            return b.fpext(v, target) if src == "f32" else b.fptrunc(v, target)
        if src in FLOAT_TYPES:
            return b.fptoui(v, target) if dst in UNSIGNED else b.fptosi(v, target)
        if dst in FLOAT_TYPES:
            return b.uitofp(v, target) if src in UNSIGNED else b.sitofp(v, target)
        src_bits, dst_bits = v.type, target
        width = (src_bits.element if lanes > 1 else src_bits).width
        new_width = (dst_bits.element if lanes > 1 else dst_bits).width
        if new_width < width:
            return b.trunc(v, target)
        if new_width > width:
            return b.zext(v, target) if src in UNSIGNED else b.sext(v, target)
        return v


def _parallel_loop(body: Stmt) -> For | None:
    if isinstance(body, Block) and len(body.stmts) == 1:
        body = body.stmts[0]
    if isinstance(body, For) and body.kind == "parallel":
        return body
    return None


_NAME = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")


def kernel_key(kernel: Kernel) -> str:
    """The kernel's text with buffers numbered by their position in ``kernel.buffers``
    and other names (locals, loop and let variables) by first appearance: equal keys
    mean one body serves both kernels (symbols such as ``N`` keep their names)."""
    text = print_kernel(kernel)
    header, _, body = text.partition("\n")
    renames = {buf.name: f"%b{i}" for i, buf in enumerate(kernel.buffers)}
    local_names = {buf.name for buf in kernel.locals}
    bound = local_names | {m.group(1) for m in _BINDERS.finditer(body)}

    def rename(match: re.Match[str]) -> str:
        name = match.group(0)
        if name not in renames and name in bound:
            renames[name] = f"%v{len(renames)}"
        return renames.get(name, name)

    return _NAME.sub(rename, header.partition("(")[2]) + "\n" + _NAME.sub(rename, body)


_BINDERS = re.compile(r"(?:\bfor|\blet|\blocal)\s+([A-Za-z_][A-Za-z0-9_]*)")


def entry_symbol(program: Program) -> str:
    return f"{program.name}_run"


def translate_program(program: Program, target: Target | str, fast_math: bool = True,
                      lanes: int = 0) -> ir.Module:
    """The LLVM module for ``program`` on ``target`` (kernel functions, extents and the run
    entry); ``vector`` loops use ``lanes``-wide vectors (0: the target's f32 lanes)."""
    target = get_target(target)
    lanes = lanes or target.f32_lanes
    module = ir.Module(name=program.name)
    translator = KernelTranslator(module, program, target, fast_math, lanes)
    # Kernels that are the same up to buffer and loop-variable names (the GEMMs of every
    # layer of a transformer) share one body, so LLVM optimizes it once.
    keys = [kernel_key(k) for k in program.kernels]
    uses = Counter(keys)
    bodies: dict[str, ir.Function] = {}
    kernels = []
    for kernel, key in zip(program.kernels, keys):
        body = None
        if uses[key] > 1:
            body = bodies.get(key)
            if body is None:
                body = bodies[key] = translator.translate_body(
                    prepare_kernel(kernel, lanes), f"{program.name}_shared{len(bodies)}",
                    shared=True)
        kernels.append(translator.translate(kernel, body)[0])
    # The CPython fast entry is for native CPU code; a WebAssembly module has its own
    # exports (irkit.plugins.wasm).
    add_entries(module, entry_symbol(program), kernels,
                fast_call=target.entry in ("cpython", "c"))
    return module
