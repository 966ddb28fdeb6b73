"""Translate a kernel-IR :class:`~irkit.kir.Program` into an llvmlite module.

Every kernel becomes ``void @<kernel>(ptr io, ptr weights, ptr workspace, ptr dims,
i64 start, i64 end)``: ``dims`` points at the values of the symbolic dims (``i64``
each, in ``program.symbols`` order: ``N``, ``N1``…), the kernel computes its buffer
pointers from the program's placements (offsets are polynomials in those values) and,
when its body is a top-level ``parallel`` loop, runs only iterations ``[start, end)``;
``i64 @<kernel>_extent(ptr dims)`` gives that loop's trip count (1 for other kernels).
``void @<program>_run(ptr io, ptr weights, ptr workspace, ptr dims)`` runs all kernels
in order on the calling thread.

This module knows kernel IR and LLVM, nothing about graph ops.
"""

from __future__ import annotations

from collections.abc import Sequence

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
from irkit.plugins.llvm.intrinsics import EXTENSION_CALLS, emit_extension_call
from irkit.plugins.llvm.mathlib import MathEmitter

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I64 = ir.IntType(64)
PTR = ir.PointerType()
VOID = ir.VoidType()
LLVM_TYPES: dict[str, ir.Type] = {
    "f32": ir.FloatType(),
    "f64": ir.DoubleType(),
    "i64": I64,
    "i32": ir.IntType(32),
    "i8": I8,
    "u8": I8,
    "bool": I1,
}
MEMORY_TYPES = {**LLVM_TYPES, "bool": I8}
FLOAT_TYPES = ("f32", "f64")
UNSIGNED = ("u8", "bool")
FCMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
INTRINSIC_CALLS = {
    "sqrt": "llvm.sqrt", "abs": "llvm.fabs", "floor": "llvm.floor", "ceil": "llvm.ceil",
    "round": "llvm.roundeven", "log": "llvm.log", "sin": "llvm.sin", "cos": "llvm.cos",
    "pow": "llvm.pow", "fma": "llvm.fma", "exp": "llvm.exp", "tanh": "llvm.tanh",
}  # fmt: skip
FAST_FLAGS = ("reassoc", "contract", "nsz", "arcp", "afn")


def value_type(dtype: str, lanes: int = 1, memory: bool = False) -> ir.Type:
    base = (MEMORY_TYPES if memory else LLVM_TYPES)[dtype]
    return base if lanes == 1 else ir.VectorType(base, lanes)


class KernelTranslator:
    """Emits one kernel's function body."""

    def __init__(self, module: ir.Module, program: Program, fast_math: bool,
                 lanes: int = 8) -> None:
        self.lanes = lanes
        self.module = module
        self.program = program
        self.flags = FAST_FLAGS if fast_math else ()

    def translate(self, kernel: Kernel) -> tuple[ir.Function, ir.Function]:
        kernel = prepare_kernel(kernel, self.lanes)
        verify_kernel(kernel)
        fnty = ir.FunctionType(VOID, [PTR, PTR, PTR, PTR, I64, I64])
        fn = ir.Function(self.module, fnty, name=kernel.name)
        io, weights, workspace, dims, start, end = fn.args
        for arg, name in zip(fn.args, ("io", "weights", "workspace", "dims", "start", "end")):
            arg.name = name
        for i in range(4):
            fn.args[i].add_attribute("noalias")
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.math = MathEmitter(self.b, self.module, ("contract", "nsz"))
        self.scope: dict[str, ir.Value] = self._load_symbols(dims)
        self.ptrs: dict[str, ir.Value] = {}
        for buf in kernel.buffers:
            self.ptrs[buf.name] = self._global_pointer(buf, io, weights, workspace)
        for buf in kernel.locals:
            if not isinstance(buf.size, Const):
                raise ValueError(f"local buffer {buf.name} needs a constant size")
            slot = self.b.alloca(value_type(buf.dtype, memory=True),
                                 size=ir.Constant(I64, int(buf.size.value)), name=buf.name)
            slot.align = 64
            self.ptrs[buf.name] = slot
        body = kernel.body
        parallel = _parallel_loop(body)
        if parallel is not None:
            self._loop(parallel, lo=start, hi=end)
        else:
            self.stmt(body)
        self.b.ret_void()
        return fn, self._extent_function(kernel.name, parallel)

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
                val = self.expr(value)
                if buf.dtype == "bool":
                    val = self.b.zext(val, value_type("bool", value.lanes, memory=True))
                ptr = self._typed(self._address(buf, index), val.type)
                store = self.b.store(val, ptr)
                store.align = MEMORY_ITEMSIZE[buf.dtype]
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
                return ir.Constant(LLVM_TYPES[dtype], int(value) if dtype == "bool" else value)
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
            case Load(buf=buf, index=index, vlanes=lanes):
                vty = value_type(buf.dtype, lanes, memory=True)
                ptr = self._typed(self._address(buf, index), vty)
                val = self.b.load(ptr, typ=vty)
                val.align = MEMORY_ITEMSIZE[buf.dtype]
                if buf.dtype == "bool":
                    val = self.b.icmp_unsigned("!=", val, ir.Constant(val.type, None))
                return val
            case Broadcast(x=x, vlanes=lanes):
                return self._splat(self.expr(x), lanes)
        raise TypeError(f"cannot translate expression {e!r}")

    def _binary(self, op: str, x: ir.Value, y: ir.Value, dtype: str) -> ir.Value:
        b = self.b
        if dtype in FLOAT_TYPES:
            arith = {"add": b.fadd, "sub": b.fsub, "mul": b.fmul, "div": b.fdiv, "mod": b.frem}
            if op in arith:
                return self._fl(arith[op](x, y))
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
        raise TypeError(f"no {op} for {dtype}")

    def _minmax(self, x: ir.Value, y: ir.Value, pred: str) -> ir.Value:
        # NaN in x propagates like numpy's maximum for the common relu case max(x, 0).
        keep_x = self.b.fcmp_unordered(pred, x, y)
        return self.b.select(keep_x, x, y)

    def _call(self, fn: str, args: Sequence[ir.Value], dtype: str) -> ir.Value:
        if fn in EXTENSION_CALLS:
            return emit_extension_call(self.b, self.module, fn, args)
        if dtype == "f32" and fn in ("exp", "tanh", "erf"):
            return getattr(self.math, fn)(args[0])
        if fn == "erf":
            raise TypeError("erf is only implemented for f32")
        name = INTRINSIC_CALLS[fn]
        inst = self.math.intrinsic(name, *args)
        return inst

    def _cast(self, v: ir.Value, src: str, dst: str, lanes: int) -> ir.Value:
        b = self.b
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


MEMORY_ITEMSIZE = {"f32": 4, "f64": 8, "i64": 8, "i32": 4, "i8": 1, "u8": 1, "bool": 1}


def _parallel_loop(body: Stmt) -> For | None:
    if isinstance(body, Block) and len(body.stmts) == 1:
        body = body.stmts[0]
    if isinstance(body, For) and body.kind == "parallel":
        return body
    return None


def entry_symbol(program: Program) -> str:
    return f"{program.name}_run"


def translate_program(program: Program, fast_math: bool = True, lanes: int = 8) -> ir.Module:
    """The LLVM module for ``program`` (kernel functions, extents and the run entry);
    ``vector`` loops use ``lanes``-wide vectors."""
    module = ir.Module(name=program.name)
    translator = KernelTranslator(module, program, fast_math, lanes)
    kernels = [translator.translate(k)[0] for k in program.kernels]
    run = ir.Function(module, ir.FunctionType(VOID, [PTR, PTR, PTR, PTR]),
                      name=entry_symbol(program))
    b = ir.IRBuilder(run.append_basic_block("entry"))
    io, weights, ws, dims = run.args
    for kernel_fn in kernels:
        extent_fn = module.get_global(f"{kernel_fn.name}_extent")
        extent = b.call(extent_fn, [dims])
        b.call(kernel_fn, [io, weights, ws, dims, ir.Constant(I64, 0), extent])
    b.ret_void()
    # The same entry with its four pointer arguments in one block (one ctypes argument to
    # convert per call instead of four: the batch-1 call path is dominated by overhead).
    packed = ir.Function(module, ir.FunctionType(VOID, [PTR]), name=f"{run.name}_packed")
    b = ir.IRBuilder(packed.append_basic_block("entry"))
    block_ptr = packed.args[0]
    values = []
    for i, ty in enumerate((PTR, PTR, PTR, PTR)):
        slot = b.gep(block_ptr, [ir.Constant(I64, i)], source_etype=I64)
        values.append(b.load(slot, typ=ty))
    b.call(run, values)
    b.ret_void()
    return module
