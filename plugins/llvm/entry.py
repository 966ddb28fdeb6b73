"""The entry points a loader calls: ``run``, ``run_packed`` and ``run_call``.

``void @<program>_run(ptr io, ptr weights, ptr workspace, ptr dims)`` runs every kernel
in order on the calling thread. ``void @<program>_run_packed(ptr block)`` is the same
with its four pointers in one block (one ctypes argument to convert per call).

``ptr @<program>_run_call(ptr self, ptr args, i64 nargs)`` is the in-process fast path of
:mod:`irkit.runtime.backends.llvm`: a CPython ``METH_FASTCALL`` function, which the loader
wraps in a builtin function object, so that Python calls it with no ctypes conversions.
``args`` are numpy arrays, the inputs and then the freshly allocated outputs. The global
``@<program>_run_table`` holds the address of an ``int64`` table that the loader builds
from the manifest and from the CPython/numpy struct layout it verified at load time. For
each array the function checks its type, dtype, flags, rank and every dim against the
table and stores its data pointer in the io block; when all pass it releases the GIL,
calls ``run_packed``, takes the GIL back and returns True. At the first mismatch it
returns False without running anything, and the loader takes its checked Python path.
Every CPython object and function it uses comes from the table, so the object file
links without Python (``emit="shared"``). It knows no model, op or dtype.

Table layout (``int64`` words)::

    0 address of numpy.ndarray              7 address of the packed block {io,
    1 offset of ob_type in an object          weights, workspace, dims}
    2 offset of data (ptr) in an array      8 number of arrays K
    3 offset of nd (i32) in an array        9 address of True    10 of False
    4 offset of dimensions (ptr)           11 Py_IncRef         12 PyEval_SaveThread
    5 offset of descr (ptr)                13 PyEval_RestoreThread
    6 offset of flags (i32)
    then per array: descr address, required flag bits, io slot, rank,
                    and per axis (a, b, symbol index or -1): dim == a * dims[symbol] + b

A dim must also be positive: empty arrays take the Python path.
"""

from __future__ import annotations

from collections.abc import Sequence

from llvmlite import ir

I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()
VOID = ir.VoidType()
HEADER_WORDS = 14
RECORD_WORDS = 4  # descr, flags, slot, rank; then 3 words per axis
AXIS_WORDS = 3


def call_symbol(run_symbol: str) -> str:
    return f"{run_symbol}_call"


def table_symbol(run_symbol: str) -> str:
    return f"{run_symbol}_table"


def add_entries(module: ir.Module, name: str, kernels: Sequence[ir.Function],
                fast_call: bool = True) -> ir.Function:
    """Add ``name`` (run), ``name_packed`` and, with ``fast_call``, ``name_call`` and its
    table global to ``module``; returns run."""
    run = ir.Function(module, ir.FunctionType(VOID, [PTR, PTR, PTR, PTR]), name=name)
    b = ir.IRBuilder(run.append_basic_block("entry"))
    io, weights, ws, dims = run.args
    for kernel_fn in kernels:
        extent = b.call(module.get_global(f"{kernel_fn.name}_extent"), [dims])
        b.call(kernel_fn, [io, weights, ws, dims, ir.Constant(I64, 0), extent])
    b.ret_void()

    packed = ir.Function(module, ir.FunctionType(VOID, [PTR]), name=f"{name}_packed")
    b = ir.IRBuilder(packed.append_basic_block("entry"))
    b.call(run, [_load_word(b, packed.args[0], i, PTR) for i in range(4)])
    b.ret_void()

    if fast_call:
        _add_call(module, name, packed)
    return run


def add_facts(module: ir.Module, run_symbol: str, facts: bytes) -> None:
    """The constant ``<run>_facts = {i64 length, [length x i8] JSON}`` the loader checks
    the manifest against (:mod:`irkit.runtime.facts`)."""
    from irkit.runtime.facts import facts_symbol

    data = ir.ArrayType(ir.IntType(8), len(facts))
    typ = ir.LiteralStructType([I64, data])
    facts_global = ir.GlobalVariable(module, typ, facts_symbol(run_symbol))
    facts_global.initializer = ir.Constant(typ, [ir.Constant(I64, len(facts)),
                                                 ir.Constant(data, bytearray(facts))])
    facts_global.global_constant = True
    facts_global.align = 8


def _load_word(b: ir.IRBuilder, base: ir.Value, index: int | ir.Value, typ: ir.Type = I64
               ) -> ir.Value:
    """``((typ*)base)[index]`` for 8-byte ``typ``."""
    at = ir.Constant(I64, index) if isinstance(index, int) else index
    return b.load(b.gep(base, [at], source_etype=I64), typ=typ)


def _field(b: ir.IRBuilder, obj: ir.Value, offset: ir.Value, typ: ir.Type) -> ir.Value:
    """The ``typ`` at byte ``offset`` of ``obj``."""
    return b.load(b.gep(obj, [offset], source_etype=ir.IntType(8)), typ=typ)


def _record_word(b: ir.IRBuilder, table: ir.Value, cursor: ir.Value, k: int) -> ir.Value:
    """Word ``k`` of the array record starting at ``cursor``."""
    return _load_word(b, table, b.add(cursor, ir.Constant(I64, k)))


def _add_call(module: ir.Module, run_symbol: str, packed: ir.Function) -> None:
    table_global = ir.GlobalVariable(module, I64, table_symbol(run_symbol))
    table_global.initializer = ir.Constant(I64, 0)
    fn = ir.Function(module, ir.FunctionType(PTR, [PTR, PTR, I64]), name=call_symbol(run_symbol))
    _, args, nargs = fn.args
    entry = fn.append_basic_block("entry")
    start, next_array, check, next_axis, axis_body, store, done, fail = (
        fn.append_basic_block(n) for n in
        ("start", "next_array", "check", "next_axis", "axis_body", "store", "done", "fail"))
    b = ir.IRBuilder(entry)
    table = b.inttoptr(b.load(table_global, typ=I64), PTR)
    head = [_load_word(b, table, i) for i in range(HEADER_WORDS)]
    ndarray, off_type, off_data, off_nd, off_dims, off_descr, off_flags = head[:7]
    block = b.inttoptr(head[7], PTR)
    count = head[8]
    index_slot, cursor_slot, axis_slot = b.alloca(I64), b.alloca(I64), b.alloca(I64)
    b.store(ir.Constant(I64, 0), index_slot)
    b.store(ir.Constant(I64, HEADER_WORDS), cursor_slot)
    b.cbranch(b.icmp_signed("==", nargs, count), start, fail)

    b = ir.IRBuilder(start)
    io = _load_word(b, block, 0, PTR)
    dims = _load_word(b, block, 3, PTR)
    b.branch(next_array)

    b = ir.IRBuilder(next_array)
    index = b.load(index_slot)
    b.cbranch(b.icmp_signed("<", index, count), check, done)

    b = ir.IRBuilder(check)
    obj = _load_word(b, args, index, PTR)
    cursor = b.load(cursor_slot)
    ok_type = b.icmp_unsigned("==", _field(b, obj, off_type, I64), ndarray)
    descr = _record_word(b, table, cursor, 0)
    ok_descr = b.icmp_unsigned("==", _field(b, obj, off_descr, I64), descr)
    required = _record_word(b, table, cursor, 1)
    flags = b.zext(_field(b, obj, off_flags, I32), I64)
    ok_flags = b.icmp_unsigned("==", b.and_(flags, required), required)
    rank = _record_word(b, table, cursor, 3)
    ok_rank = b.icmp_signed("==", b.sext(_field(b, obj, off_nd, I32), I64), rank)
    # The type test must pass before any array field is trusted: branch on it first.
    b.store(ir.Constant(I64, 0), axis_slot)
    fields = fn.append_basic_block("fields")
    b.cbranch(ok_type, fields, fail)
    b = ir.IRBuilder(fields)
    ok = b.and_(ok_descr, b.and_(ok_flags, ok_rank))
    b.cbranch(ok, next_axis, fail)

    b = ir.IRBuilder(next_axis)
    axis = b.load(axis_slot)
    b.cbranch(b.icmp_signed("<", axis, rank), axis_body, store)

    b = ir.IRBuilder(axis_body)
    shape = _field(b, obj, off_dims, PTR)
    size = _load_word(b, shape, axis)
    at = b.add(b.add(cursor, ir.Constant(I64, RECORD_WORDS)),
               b.mul(axis, ir.Constant(I64, AXIS_WORDS)))
    scale, offset, symbol = (_load_word(b, table, b.add(at, ir.Constant(I64, k)))
                             for k in range(3))
    fixed = b.icmp_signed("<", symbol, ir.Constant(I64, 0))
    value = _load_word(b, dims, b.select(fixed, ir.Constant(I64, 0), symbol))
    term = b.select(fixed, ir.Constant(I64, 0), b.mul(scale, value))
    expected = b.add(offset, term)
    ok = b.and_(b.icmp_signed("==", size, expected),
                b.icmp_signed(">", size, ir.Constant(I64, 0)))
    b.store(b.add(axis, ir.Constant(I64, 1)), axis_slot)
    b.cbranch(ok, next_axis, fail)

    b = ir.IRBuilder(store)
    b.store(_field(b, obj, off_data, I64),
            b.gep(io, [_record_word(b, table, cursor, 2)], source_etype=I64))
    b.store(b.add(cursor, b.add(ir.Constant(I64, RECORD_WORDS),
                                b.mul(rank, ir.Constant(I64, AXIS_WORDS)))), cursor_slot)
    b.store(b.add(index, ir.Constant(I64, 1)), index_slot)
    b.branch(next_array)

    b = ir.IRBuilder(done)
    state = _call_pointer(b, head[12], PTR, [])  # release the GIL
    b.call(packed, [block])
    _call_pointer(b, head[13], VOID, [state])
    b.ret(_new_reference(b, head[9], head[11]))

    b = ir.IRBuilder(fail)
    b.ret(_new_reference(b, head[10], head[11]))


def _call_pointer(b: ir.IRBuilder, address: ir.Value, result: ir.Type,
                  args: list[ir.Value]) -> ir.Value:
    """Call the C function whose address is the table word ``address``."""
    fn_type = ir.FunctionType(result, [PTR] * len(args))
    return b.call(b.inttoptr(address, ir.PointerType(fn_type)), args)


def _new_reference(b: ir.IRBuilder, obj_word: ir.Value, incref_word: ir.Value) -> ir.Value:
    """``obj`` after ``Py_IncRef(obj)``: a METH_FASTCALL result is a new reference."""
    obj = b.inttoptr(obj_word, PTR)
    _call_pointer(b, incref_word, VOID, [obj])
    return obj
