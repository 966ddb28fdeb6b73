"""The kernel IR interpreter: what a :class:`~irkit.kir.Program` means.

Every KIR backend (llvm today; numba, cuda, wasm later) is tested against this
interpreter, so its rules are the definition of kernel IR. Backends may differ only where
a rule says so (fast-math licence, the accuracy of math functions, undefined behaviour).

**Memory.** A buffer is flat typed memory of ``size`` elements (``size`` an expression in
the symbolic dims), addressed by an ``i64`` element index; reading or writing outside
``[0, size)`` is undefined (the interpreter raises :class:`KirExecutionError`). A global
buffer lives where its :class:`~irkit.kir.Placement` says: ``io`` is the array of
``program.io_order[index]``; ``weights`` starts ``offset_c`` bytes into ``program.weights``
(read-only); ``workspace`` starts ``offset_n * N + offset_c + sum(c * prod(symbols))``
bytes into one scratch arena of ``workspace_n * N + workspace_c + workspace_terms`` bytes.
The memory planner reuses arena bytes between buffers of different dtypes, so memory is
bytes: a load reinterprets whatever bytes the last store left (little-endian), and the
interpreter keeps one ``uint8`` arena and views it per buffer. Buffers that one kernel
uses never overlap (backends mark them ``noalias``; the interpreter checks it). Arena,
local buffers and preallocated outputs start with unspecified contents (the interpreter
fills them with ``0xFF`` bytes: NaN floats, -1 integers), so reading before writing
shows. Local buffers (``Kernel.locals``, constant ``size``) are fresh per kernel run.
Storage types: ``bool`` is one byte (a load is ``byte != 0``, a store writes 0 or 1);
``f16`` is IEEE binary16 and ``bf16`` the top 16 bits of an f32. Buffers are placed by
name: a ``Load`` or ``Store`` whose ``Buffer`` has a kernel buffer's name but another
dtype and size *views* that memory as elements of its own type (quantized kernels write
u8 bytes and read them back as i32 words), its index and bounds in its own elements.

**Integers** (``i8`` … ``i64``; ``u8`` … ``u64`` unsigned): ``add``/``sub``/``mul``/``neg``
wrap modulo ``2**bits``. ``div`` truncates toward zero and ``mod`` takes the sign of the
dividend (C, LLVM ``sdiv``/``srem``; ``udiv``/``urem`` for unsigned types): ``-7 / 2 == -3``,
``-7 % 2 == -1``, ``7 / -2 == -3``, ``7 % -2 == 1``. Division by zero and ``MIN / -1`` are
undefined (raise). Compares and ``max``/``min`` read unsigned types as unsigned. ``and``,
``or``, ``xor``, ``not`` are bitwise (logical on ``bool``; ``bool`` arithmetic is modulo 2). ``shl(x, n)`` wraps; ``shr(x, n)`` is
arithmetic for signed and logical for unsigned types; ``n`` outside ``[0, bits)`` is
undefined (raise). ``dot4_u8s8(acc, a, b)`` on ``i32``:
``acc + sum_t u8(byte t of a) * s8(byte t of b)`` over the four little-endian bytes,
wrapping; the products are exact (no 16-bit saturation). ``dot4_u8s7`` is the same sum
when every byte of ``b`` lies in [-64, 64], and undefined (raise) otherwise: the lowering
emits it only with such weights, where x86's ``vpmaddubsw`` pair sums cannot saturate.
``dot8_u8s6(acc, a0, b0, a1, b1)`` is ``dot4_u8s8(dot4_u8s8(acc, a0, b0), a1, b1)`` when
every byte of ``b0`` and ``b1`` lies in [-32, 32], undefined (raise) otherwise.

**Floats.** ``f32``/``f64`` arithmetic is IEEE 754, round to nearest even, one rounding
per operation; ``div`` is the IEEE quotient and ``mod`` is C ``fmod``. Compares are
ordered (false when either side is NaN) except ``ne``, which is unordered (true with
NaN). ``max(x, y) = x if not (x <= y) else y`` and ``min(x, y) = x if not (x >= y) else
y`` (codegen's ``select(fcmp_unordered(pred, x, y), x, y)``): NaN in ``x`` propagates, NaN
in ``y`` gives ``x``; ``max(0.0, -0.0) == -0.0``. Backends may apply the fast-math licence
of reassociation, contraction into FMA, reciprocal division and ignoring the sign of
zero (llvm's ``fast_math=True``), never assumptions that NaN or Inf are absent: results
then differ by rounding only. ``fdiv`` is the exact quotient even then.

**16-bit floats** (``f16``, ``bf16``) compute as f32 and every result is rounded back to
nearest even (the llvm backend's ``_round``), so a value is always one the type holds;
``max``/``min``, compares, ``neg``, ``abs``, ``floor``, ``ceil`` and ``round`` need no
rounding. bf16 rounding quiets NaN and keeps its payload (as ml_dtypes does).

**Calls** (``CALLS``) take floats, except ``shl``/``shr`` (integers) and ``dot4_u8s8``:
``abs``, ``floor``, ``ceil``, ``round`` (half to even) are exact; ``fma(a, b, c)`` is
``a * b + c`` rounded once; ``fdiv`` is ``a / b``. The others (``exp``, ``log``, ``tanh``,
``erf``, ``sqrt``, ``pow``, trigonometric and hyperbolic functions and their inverses)
are the mathematical function: the interpreter evaluates f32 calls in f64 (numpy, and
``math.erf``) and rounds to f32; backends may be less accurate (llvm: ``exp``/``tanh``/
``erf`` within a few ulp, see :mod:`irkit.plugins.llvm.mathlib`). 16-bit calls are the
f32 call rounded once more.

**Casts** (``Cast(type, x)``): integer to integer keeps the value modulo ``2**bits`` (sign-
or zero-extends by the *source* type); integer to float rounds once to nearest even; float
to integer truncates toward zero, and a value whose truncation the type cannot hold (NaN,
Inf, out of range) is undefined (LLVM ``fptosi``/``fptoui`` give poison; the interpreter
raises); float to ``bool`` is ``x != 0`` (NaN is true), integer to ``bool`` is ``x != 0``;
``bool`` to a number is 0 or 1. f64 to f32 rounds to nearest even. To ``f16``/``bf16``:
from f32 (or the other 16-bit type) one rounding; from f64 via f32 *rounded to odd*, then
to nearest even, which equals one direct rounding; from integers wider than 16 bits via
f64 (nearest even), then as from f64; from narrower integers via f32 (exact).

**Expressions and statements.** ``Const`` values are rounded or wrapped to their type.
``Select`` evaluates both arms (so an undefined operation in either is undefined) and picks
lane-wise. ``Load(buf, i, vlanes, stride)`` reads ``buf[i + k * stride]`` for
``k < vlanes``; ``Broadcast`` repeats a scalar; a vector operation applies lane by lane
and a scalar operand is broadcast; a vector ``Store`` writes consecutive elements.
``Let`` binds for the rest of the enclosing block, including nested blocks, and ends with
the enclosing ``For`` body or ``If`` branch. ``If`` runs one branch. ``For`` runs
``var = start .. start + extent - 1`` in order (none when ``extent <= 0``); its kinds
(``serial``, ``parallel``, ``vector``, ``unroll``) are scheduling hints that do not change
the meaning: a ``parallel`` loop's iterations must be independent, so running them in
order is one of the allowed schedules. The symbolic dims (``program.symbols``) are in
scope in every kernel; kernels run in program order. ``prepare_kernel`` (unrolling,
vectorization, simplification) must keep this meaning: the tests run both forms.

Kernels are compiled once into nested Python closures (one per node, with the common
integer index arithmetic inlined) over a frame of slots; vectors are small numpy arrays.
Subtrees of constants are computed once at compile time by the same rules (an undefined
one is left to raise when it runs), and integer ``x+0``, ``x*1``, ``x/1`` pass ``x``
through. The loops are interpreted, element by element; no numpy kernel stands in for an
op. :func:`irkit.lower.interpret.interpret_lowered` runs a whole lowered graph.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from irkit.kir.nodes import (
    ITEMSIZE,
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
from irkit.kir.numerics import (
    BF16_TO_F32,
    HIGH,
    INTEGERS,
    LOW,
    MEMORY_NP,
    REGISTER_NP,
    KirExecutionError,
    binary_fn,
    call_fn,
    cast_fn,
    scalar_const,
    unary_fn,
    wrap_int,
)
from irkit.kir.transforms import KirError, prepare_kernel
from irkit.kir.verifier import verify_kernel
from irkit.kir.visit import children

Frame = list[Any]
Eval = Callable[[Frame], Any]
Exec = Callable[[Frame], None]
GARBAGE = 0xFF  # the byte unwritten memory holds

__all__ = ["KirExecutionError", "ProgramInterpreter", "run_program"]


def _out_of_bounds(buf: Buffer, index: int, lanes: int, size: int) -> KirExecutionError:
    what = f"[{index}]" if lanes == 1 else f"[{index} : +{lanes}]"
    return KirExecutionError(f"{buf.name}{what} is outside the buffer of {size} elements")


class _KernelCompiler:
    """Turns one kernel into closures over a frame (a list of slots): symbols, buffer
    arrays, loop variables and lets each get a slot."""

    def __init__(self, kernel: Kernel, symbols: tuple[str, ...]) -> None:
        self.kernel = kernel
        self.count = 0
        self.scope: dict[str, int] = {}
        self.symbol_slots = [(name, self._bind(name)) for name in symbols]
        self.memory = {buf.name for buf in (*kernel.buffers, *kernel.locals)}
        # One slot per typed view: a Load or Store may name a kernel buffer with another
        # dtype and size (quantized kernels read u8 bytes as i32 words).
        self.view_slots: dict[Buffer, int] = {}
        for buf in (*kernel.buffers, *kernel.locals):
            self.view_slot(buf)

    def view_slot(self, buf: Buffer) -> int:
        if buf.name not in self.memory:
            raise KirError(f"kernel {self.kernel.name}: {buf.name} is not a buffer of it")
        if buf not in self.view_slots:
            self.view_slots[buf] = self._new_slot()
        return self.view_slots[buf]

    def _new_slot(self) -> int:
        self.count += 1
        return self.count - 1

    def _bind(self, name: str) -> int:
        slot = self._new_slot()
        self.scope[name] = slot
        return slot

    # -- statements --------------------------------------------------------------------
    def stmt(self, stmt: Stmt) -> Exec:
        match stmt:
            case Block(stmts=stmts):
                return self._block([self.stmt(s) for s in stmts])
            case Let(var=var, value=value):
                compute = self.expr(value)
                slot = self._bind(var.name)

                def let(f: Frame) -> None:
                    f[slot] = compute(f)
                return let
            case Store(buf=buf, index=index, value=value):
                return self._store(buf, self.expr(index), self.expr(value), value.lanes)
            case For():
                return self._for(stmt)
            case If(cond=cond, then=then, orelse=orelse):
                test = self.expr(cond)
                run_then = self._scoped(then)
                if orelse is None:
                    def if_then(f: Frame) -> None:
                        if test(f):
                            run_then(f)
                    return if_then
                run_else = self._scoped(orelse)

                def if_else(f: Frame) -> None:
                    if test(f):
                        run_then(f)
                    else:
                        run_else(f)
                return if_else
        raise KirError(f"kernel {self.kernel.name}: cannot interpret statement {stmt!r}")

    @staticmethod
    def _block(parts: list[Exec]) -> Exec:
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 2:
            first, second = parts

            def pair(f: Frame) -> None:
                first(f)
                second(f)
            return pair
        steps = tuple(parts)

        def run(f: Frame) -> None:
            for step in steps:
                step(f)
        return run

    def _scoped(self, stmt: Stmt) -> Exec:
        saved = dict(self.scope)
        run = self.stmt(stmt)
        self.scope = saved
        return run

    def _for(self, loop: For) -> Exec:
        start, extent = self.expr(loop.start), self.expr(loop.extent)
        saved = dict(self.scope)
        slot = self._bind(loop.var.name)
        body = self.stmt(loop.body)
        self.scope = saved
        if loop.start == Const(0):
            def run_from_zero(f: Frame) -> None:
                for value in range(extent(f)):
                    f[slot] = value
                    body(f)
            return run_from_zero

        def run(f: Frame) -> None:
            lo = start(f)
            for value in range(lo, lo + extent(f)):
                f[slot] = value
                body(f)
        return run

    def _store(self, buf: Buffer, index: Eval, value: Eval, lanes: int) -> Exec:
        slot = self.view_slot(buf)
        dtype = buf.dtype
        if lanes > 1:
            if dtype == "bf16":
                def to_memory(v: Any) -> Any:
                    return (np.asarray(v, np.float32).view(np.uint32) >> 16).astype(np.uint16)
            elif dtype == "bool":
                def to_memory(v: Any) -> Any:
                    return np.asarray(v, np.uint8)
            else:
                def to_memory(v: Any) -> Any:
                    return v

            def store_vector(f: Frame) -> None:
                v = to_memory(value(f))
                i = index(f)
                array = f[slot]
                if i < 0 or i + lanes > len(array):
                    raise _out_of_bounds(buf, i, lanes, len(array))
                array[i : i + lanes] = v
            return store_vector
        if dtype == "bf16":
            def store_bf16(f: Frame) -> None:
                v = value(f)
                i = index(f)
                if i < 0:
                    raise _out_of_bounds(buf, i, 1, len(f[slot]))
                f[slot][i] = int(np.float32(v).view(np.uint32)) >> 16
            return store_bf16

        def store(f: Frame) -> None:
            v = value(f)
            i = index(f)
            if i < 0:
                raise _out_of_bounds(buf, i, 1, len(f[slot]))
            f[slot][i] = v
        return store

    # -- expressions -------------------------------------------------------------------
    def expr(self, e: Expr) -> Eval:
        match e:
            case Var(name=name):
                if name not in self.scope:
                    raise KirError(f"kernel {self.kernel.name}: {name} is not in scope")
                return operator.itemgetter(self.scope[name])
            case Const(value=value, type=dtype):
                return _constant(scalar_const(value, dtype))
            case Load(buf=buf, index=index, vlanes=lanes, stride=stride):
                return self._load(buf, self.expr(index), lanes, stride)
        parts = [self.expr(child) for child in children(e)]
        run = self._operation(e, parts)
        if all(hasattr(part, CONSTANT) for part in parts):
            try:  # a subtree of constants is computed once, by the same rules
                with np.errstate(all="ignore"):
                    return _constant(run([]))
            except (KirExecutionError, ArithmeticError, ValueError):
                pass  # undefined: raises when (and only if) it runs
        return run

    def _operation(self, e: Expr, parts: list[Eval]) -> Eval:
        vector = e.lanes > 1
        match e:
            case Binary(op=op, a=a):
                return _binary(op, a.dtype, vector, *parts)
            case Unary(op=op, x=x):
                fn = unary_fn(op, x.dtype, vector)
                (arg,) = parts
                return lambda f: fn(arg(f))
            case Call(fn=name, args=args):
                call = call_fn(name, args[0].dtype, vector)
                if len(parts) == 1:
                    (only,) = parts
                    return lambda f: call(only(f))
                if len(parts) == 2:
                    first, second = parts
                    return lambda f: call(first(f), second(f))
                if len(parts) == 3:
                    one, two, three = parts
                    return lambda f: call(one(f), two(f), three(f))
                return lambda f: call(*[p(f) for p in parts])
            case Cast(type=dtype, x=x):
                convert = cast_fn(x.dtype, dtype, vector)
                (arg,) = parts
                return lambda f: convert(arg(f))
            case Select():
                pick, when_true, when_false = parts
                return self._select(pick, when_true, when_false, e)
            case Broadcast(x=x, vlanes=lanes):
                (arg,) = parts
                if lanes == 1:
                    return arg  # one lane is the scalar itself
                np_type = REGISTER_NP[x.dtype]

                def broadcast(f: Frame) -> np.ndarray:
                    lanes_ = np.empty(lanes, np_type)
                    lanes_[...] = arg(f)
                    return lanes_
                return broadcast
        raise KirError(f"kernel {self.kernel.name}: cannot interpret expression {e!r}")

    @staticmethod
    def _select(cond: Eval, a: Eval, b: Eval, e: Select) -> Eval:
        if e.lanes == 1:
            def pick(f: Frame) -> Any:
                c, x, y = cond(f), a(f), b(f)  # both arms are evaluated
                return x if c else y
            return pick
        np_type = REGISTER_NP[e.dtype]
        return lambda f: np.asarray(np.where(cond(f), a(f), b(f))).astype(np_type, copy=False)

    def _load(self, buf: Buffer, index: Eval, lanes: int, stride: int) -> Eval:
        slot = self.view_slot(buf)
        dtype = buf.dtype
        if lanes > 1:
            span = (lanes - 1) * stride + 1
            from_memory = _vector_from_memory(dtype)

            def load_vector(f: Frame) -> Any:
                i = index(f)
                array = f[slot]
                if i < 0 or i + span > len(array):
                    raise _out_of_bounds(buf, i, span, len(array))
                return from_memory(array[i : i + span : stride])
            return load_vector
        if dtype in ("f32", "f64"):
            def load_float(f: Frame) -> Any:
                i = index(f)
                if i < 0:
                    raise _out_of_bounds(buf, i, 1, len(f[slot]))
                return f[slot][i]
            return load_float
        if dtype in INTEGERS:
            def load_int(f: Frame) -> Any:
                i = index(f)
                if i < 0:
                    raise _out_of_bounds(buf, i, 1, len(f[slot]))
                return f[slot].item(i)
            return load_int
        convert: Callable[[Any], Any] = {
            "bool": lambda byte: byte != 0,
            "f16": np.float32,
            "bf16": BF16_TO_F32.__getitem__,
        }[dtype]

        def load_converted(f: Frame) -> Any:
            i = index(f)
            if i < 0:
                raise _out_of_bounds(buf, i, 1, len(f[slot]))
            return convert(f[slot].item(i) if dtype != "f16" else f[slot][i])
        return load_converted


CONSTANT = "kir_constant"  # the attribute that marks a closure of a constant


def _constant(value: Any) -> Eval:
    def constant(f: Frame) -> Any:
        return value
    setattr(constant, CONSTANT, value)
    return constant


def _binary(op: str, dtype: str, vector: bool, left: Eval, right: Eval) -> Eval:
    a_const, b_const = getattr(left, CONSTANT, None), getattr(right, CONSTANT, None)
    if not vector and dtype in INTEGERS:
        # Integer identities keep every operand that is evaluated: x+0, 0+x, x-0, x*1,
        # 1*x, x/1 (exact in wrapping arithmetic).
        if (b_const == 0 and op in ("add", "sub")) or (b_const == 1 and op in ("mul", "div")):
            return left
        if (a_const == 0 and op == "add") or (a_const == 1 and op == "mul"):
            return right
        if op in ("add", "mul") and a_const is not None and b_const is None:
            return _int_arith(op, dtype, right, left, a_const)  # c + x == x + c
        if op in ("add", "sub", "mul"):
            return _int_arith(op, dtype, left, right, b_const)
        if op in ("div", "mod") and b_const is not None and b_const > 0:
            return _int_div_const(op, left, b_const)
    fn = binary_fn(op, dtype, vector)
    if b_const is not None:
        return lambda f: fn(left(f), b_const)
    return lambda f: fn(left(f), right(f))


def _int_div_const(op: str, left: Eval, c: int) -> Eval:
    """C division and remainder by a positive constant (index arithmetic)."""
    if op == "div":
        def div(f: Frame) -> int:
            x = left(f)
            return x // c if x >= 0 else -(-x // c)
        return div

    def mod(f: Frame) -> int:
        x = left(f)
        return x % c if x >= 0 else -(-x % c)
    return mod


def _vector_from_memory(dtype: str) -> Callable[[np.ndarray], np.ndarray]:
    if dtype == "bool":
        return lambda raw: raw != 0
    if dtype == "f16":
        return lambda raw: raw.astype(np.float32)
    if dtype == "bf16":
        return lambda raw: BF16_TO_F32[raw]
    return lambda raw: raw.copy()  # registers do not alias memory


def _int_arith(op: str, dtype: str, left: Eval, right: Eval, constant: int | None) -> Eval:
    """Scalar integer ``add``/``sub``/``mul`` with the wrap check inlined: index
    arithmetic is most of what a kernel computes."""
    low, high = LOW[dtype], HIGH[dtype]
    if constant is not None:
        c = constant
        if op == "add":
            def add_const(f: Frame) -> int:
                r = left(f) + c
                return r if low <= r <= high else wrap_int(r, dtype)
            return add_const
        if op == "mul":
            def mul_const(f: Frame) -> int:
                r = left(f) * c
                return r if low <= r <= high else wrap_int(r, dtype)
            return mul_const
    if op == "add":
        def add(f: Frame) -> int:
            r = left(f) + right(f)
            return r if low <= r <= high else wrap_int(r, dtype)
        return add
    if op == "mul":
        def mul(f: Frame) -> int:
            r = left(f) * right(f)
            return r if low <= r <= high else wrap_int(r, dtype)
        return mul

    def sub(f: Frame) -> int:
        r = left(f) - right(f)
        return r if low <= r <= high else wrap_int(r, dtype)
    return sub


class _CompiledKernel:
    def __init__(self, kernel: Kernel, symbols: tuple[str, ...]) -> None:
        verify_kernel(kernel)
        compiler = _KernelCompiler(kernel, symbols)
        with np.errstate(all="ignore"):
            self.body = compiler.stmt(kernel.body)
            # Buffer sizes are expressions in the symbols only.
            sizes = _KernelCompiler(Kernel(kernel.name, (), Block(())), symbols)
            self.sizes = {buf: sizes.expr(buf.size) for buf in compiler.view_slots}
        self.views = list(compiler.view_slots.items())
        self.kernel = kernel
        self.slots = compiler.count
        self.symbol_slots = compiler.symbol_slots

    def size_of(self, buf: Buffer, dims: Mapping[str, int]) -> int:
        """``buf.size`` (elements) at these symbol values."""
        return int(self.sizes[buf]([dims[name] for name, _ in self.symbol_slots]))

    def run(self, memory: Mapping[str, np.ndarray], dims: Mapping[str, int]) -> None:
        """Run once over ``memory``: the bytes of each global buffer (by name)."""
        frame: Frame = [None] * self.slots
        for name, slot in self.symbol_slots:
            frame[slot] = dims[name]
        raw = dict(memory)
        for buf in self.kernel.locals:
            raw[buf.name] = np.full(self.size_of(buf, dims) * ITEMSIZE[buf.dtype], GARBAGE,
                                    np.uint8)
        for buf, slot in self.views:
            frame[slot] = _typed_view(raw[buf.name], buf, self.size_of(buf, dims))
        try:
            self.body(frame)
        except IndexError as exc:  # numpy's bounds check of a scalar access
            raise KirExecutionError(f"kernel {self.kernel.name}: {exc}") from None
        except KirExecutionError as exc:
            raise KirExecutionError(f"kernel {self.kernel.name}: {exc}") from None
        except ValueError as exc:
            if "read-only" in str(exc):
                raise KirExecutionError(f"kernel {self.kernel.name} writes a read-only "
                                        f"buffer (an input or the weights): {exc}") from None
            raise


def _typed_view(raw: np.ndarray, buf: Buffer, size: int) -> np.ndarray:
    """The first ``size`` elements of ``buf``'s type in the bytes ``raw``."""
    nbytes = size * ITEMSIZE[buf.dtype]
    if size < 0 or nbytes > len(raw):
        raise KirExecutionError(f"{buf.name}: {size} {buf.dtype} elements need {nbytes} "
                                f"bytes, its memory has {len(raw)}")
    return raw[:nbytes].view(MEMORY_NP[buf.dtype])


def _evaluate_terms(terms: tuple[tuple[tuple[str, ...], int], ...],
                    dims: Mapping[str, int]) -> int:
    total = 0
    for monomial, coefficient in terms:
        term = coefficient
        for symbol in monomial:
            term *= dims[symbol]
        total += term
    return total


class ProgramInterpreter:
    """A program's kernels compiled once (as lowered, or in ``prepare_kernel(kernel,
    lanes)`` form when ``lanes`` is given), run with :meth:`run`."""

    def __init__(self, program: Program, lanes: int | None = None) -> None:
        self.program = program
        self.lanes = lanes
        kernels = [k if lanes is None else prepare_kernel(k, lanes) for k in program.kernels]
        self.kernels = [_CompiledKernel(k, program.symbols) for k in kernels]

    def run(self, io: Mapping[str, np.ndarray], dims: Mapping[str, int]) -> None:
        """See :func:`run_program`."""
        program = self.program
        missing = [s for s in program.symbols if s not in dims]
        if missing:
            raise KirExecutionError(f"program {program.name}: no value for the symbolic "
                                    f"dim(s) {', '.join(missing)}")
        values = {s: int(dims[s]) for s in program.symbols}
        n = values.get("N", 0)
        workspace = np.full(max(0, program.workspace_n * n + program.workspace_c
                                + _evaluate_terms(program.workspace_terms, values)),
                            GARBAGE, np.uint8)
        weights = np.frombuffer(program.weights, np.uint8)
        with np.errstate(all="ignore"):
            for kernel in self.kernels:
                memory: dict[str, np.ndarray] = {}
                extents: list[tuple[str, int, int]] = []
                for buf in kernel.kernel.buffers:
                    size = kernel.size_of(buf, values)
                    memory[buf.name] = self._place(buf, size, io, weights, workspace, values,
                                                   extents)
                _check_disjoint(kernel.kernel.name, extents)
                kernel.run(memory, values)

    def _place(self, buf: Buffer, size: int, io: Mapping[str, np.ndarray], weights: np.ndarray,
               workspace: np.ndarray, dims: Mapping[str, int],
               extents: list[tuple[str, int, int]]) -> np.ndarray:
        """The bytes of global buffer ``buf`` (``size`` elements) where it is placed."""
        program = self.program
        place = program.placements.get(buf.name)
        if place is None:
            raise KirExecutionError(f"program {program.name}: buffer {buf.name} has no "
                                    "placement")
        nbytes = size * ITEMSIZE[buf.dtype]
        if place.kind == "io":
            name = program.io_order[place.index]
            if name not in io:
                raise KirExecutionError(f"program {program.name}: no array for {name!r}")
            array = io[name]
            if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
                raise KirExecutionError(f"{name}: a C-contiguous numpy array is required")
            if array.dtype.itemsize != ITEMSIZE[buf.dtype]:
                raise KirExecutionError(f"{name}: {array.dtype} elements for a "
                                        f"{buf.dtype} buffer")
            if array.size < size:
                raise KirExecutionError(f"{name}: {array.size} elements, the program "
                                        f"needs {size}")
            return array.reshape(-1).view(np.uint8)
        if place.kind == "weights":
            memory, offset = weights, place.offset_c
        elif place.kind == "workspace":
            memory = workspace
            offset = (place.offset_n * dims.get("N", 0) + place.offset_c
                      + _evaluate_terms(place.offset_terms, dims))
            extents.append((buf.name, offset, offset + nbytes))
        else:
            raise KirExecutionError(f"buffer {buf.name}: unknown placement {place.kind!r}")
        if offset < 0 or offset + nbytes > len(memory):
            raise KirExecutionError(f"buffer {buf.name} ({nbytes} bytes at {offset}) lies "
                                    f"outside the {place.kind} ({len(memory)} bytes)")
        return memory[offset : offset + nbytes]


def _check_disjoint(kernel: str, extents: list[tuple[str, int, int]]) -> None:
    """Buffers of one kernel must not share bytes (backends mark them ``noalias``)."""
    spans = sorted((e for e in extents if e[2] > e[1]), key=lambda e: e[1])
    reach, holder = -1, ""
    for name, start, end in spans:
        if start < reach:
            raise KirExecutionError(f"kernel {kernel}: workspace buffers {holder} and "
                                    f"{name} overlap")
        if end > reach:
            reach, holder = end, name


_CACHE: dict[tuple[int, int | None], ProgramInterpreter] = {}
_CACHE_SIZE = 32


def run_program(program: Program, io: Mapping[str, np.ndarray], dims: Mapping[str, int],
                *, lanes: int | None = None) -> None:
    """Execute every kernel of ``program`` in order. ``io`` maps each name of
    ``program.io_order`` to a C-contiguous array (inputs filled, outputs preallocated;
    written in place); ``dims`` gives the value of each symbolic dim (``program.symbols``).
    Weights come from ``program.weights`` and ``program.placements``; the workspace is
    allocated here. ``lanes`` runs the kernels in their ``prepare_kernel(kernel, lanes)``
    form (vector loops as vectors, unroll loops unrolled), which must mean the same.

    Raises :class:`KirExecutionError` where the program does something kernel IR leaves
    undefined, and :class:`KirError` for malformed kernels. Compiled kernels are cached
    per program object."""
    key = (id(program), lanes)
    interpreter = _CACHE.get(key)
    if interpreter is None or interpreter.program is not program:
        interpreter = ProgramInterpreter(program, lanes)
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = interpreter
    interpreter.run(io, dims)

