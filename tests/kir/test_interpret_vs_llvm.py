"""The llvm backend against the kernel IR interpreter on hand-built kernels, one per rule
of irkit/kir/interpret.py: C division, wrapping, shifts, the int8 dot, NaN in min/max,
compares, 16-bit float rounding, fma, calls, casts, strided loads, a parallel loop with a
start and byte-reinterpreted workspace. The program is translated by
``irkit.plugins.llvm.codegen`` (without fast-math, at 8 and 16 lanes), JIT-compiled in
process and run on the same inputs; results must be bit-identical, except the inline
``exp``/``tanh``/``erf`` (within 3e-6 relative, the accuracy mathlib.py states)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import pytest

llvm = pytest.importorskip("llvmlite.binding")

from irkit.kir import (  # noqa: E402
    Binary,
    Buffer,
    Call,
    Cast,
    Const,
    Expr,
    For,
    Kernel,
    Load,
    Placement,
    Program,
    Store,
    Unary,
    Var,
)
from irkit.kir.interpret import run_program  # noqa: E402
from irkit.lower.random_ops import mix64  # noqa: E402

BF16 = ml_dtypes.bfloat16
KIR = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.float16): "f16",
       np.dtype(BF16): "bf16", np.dtype(np.int64): "i64", np.dtype(np.int32): "i32",
       np.dtype(np.int8): "i8", np.dtype(np.uint32): "u32", np.dtype(np.uint8): "u8",
       np.dtype(np.uint64): "u64", np.dtype(np.bool_): "bool"}
IDX = Var("i")
NAN = float("nan")


def run_on_llvm(program: Program, io: dict[str, np.ndarray], lanes: int,
                arch: str = "native") -> None:
    """``program`` translated for ``arch``, JIT-compiled (MCJIT) and run once with N = 1."""
    from irkit.plugins.llvm.codegen import entry_symbol, translate_program
    from irkit.plugins.llvm.emit import target_machine
    from irkit.target import get_target

    target = get_target(arch)
    machine = target_machine(target)  # the engine takes ownership of it
    module = translate_program(program, target, fast_math=False, lanes=lanes)
    module.triple = target.triple
    module.data_layout = str(machine.target_data)
    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    engine = llvm.create_mcjit_compiler(parsed, machine)
    engine.finalize_object()
    entry = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 4)(
        engine.get_function_address(entry_symbol(program)))
    pointers = (ctypes.c_void_p * len(program.io_order))(
        *[io[name].ctypes.data for name in program.io_order])
    weights = np.frombuffer(program.weights + b"\0" * 64, np.uint8).copy()
    workspace = np.zeros(program.workspace_n + program.workspace_c + 64, np.uint8)
    dims = (ctypes.c_int64 * len(program.symbols))(*[1] * len(program.symbols))
    entry(pointers, weights.ctypes.data, workspace.ctypes.data, ctypes.addressof(dims))
    del engine  # after the call: the engine owns the code


def elementwise(fn: Callable[..., Expr], out_dtype: Any, *inputs: np.ndarray,
                extent: int | None = None) -> Program:
    """``out[i] = fn(in0, in1, …)`` (each input a Buffer) in a ``vector`` loop over
    ``extent`` elements (default: the inputs' length)."""
    arrays = {f"in{k}": a for k, a in enumerate(inputs)}
    bufs = {n: Buffer(n, KIR[a.dtype], Const(a.size)) for n, a in arrays.items()}
    size = inputs[0].size if extent is None else extent
    out = Buffer("out", KIR[np.dtype(out_dtype)], Const(size))
    value = fn(*bufs.values())
    names = (*arrays, "out")
    kernel = Kernel("k", (*bufs.values(), out),
                    For(IDX, Const(size), Store(out, IDX, value), "vector"))
    return Program("rule", (kernel,), {n: Placement("io", index=i) for i, n in enumerate(names)},
                   names)


def word(*data: int) -> int:
    """Four bytes (little-endian) as an i32."""
    return int(np.frombuffer(bytes(b & 0xFF for b in data), np.int32)[0])


R = np.random.default_rng(4)
I32S = R.integers(-2**31, 2**31, 37).astype(np.int32)
DRAWN = R.integers(-9, 9, 37)
DIVISORS = np.where(DRAWN == 0, 3, DRAWN).astype(np.int32)
F32S = np.concatenate([R.standard_normal(29), [NAN, 0.0, -0.0, 1.0, NAN, -2.5, 0.5, 3e38]]
                      ).astype(np.float32)
F32T = np.concatenate([R.standard_normal(29), [1.0, -0.0, 0.0, NAN, NAN, 2.5, -0.5, 3e38]]
                      ).astype(np.float32)
HALF_TIES = np.array([1.0, 1 + 2**-10, 65504.0, 2048.0, -1.0, 3.0, 0.1, 7.0] * 4, np.float32)
HALF_STEPS = np.array([2**-11, 2**-11, 16.0, 1.0, -(2**-11), 1 / 3, 0.2, 2**-8] * 4,
                      np.float32)
WORDS_A = np.array([word(255, 255, 255, 255), word(255, 0, 1, 128), word(1, 2, 3, 4),
                    word(128, 128, 128, 128)] * 5, np.int32)
WORDS_B = np.array([word(-128, -128, -128, -128), word(127, 5, -1, -128),
                    word(-1, -2, -3, -4), word(127, 127, 127, 127)] * 5, np.int32)
ACC = np.array([0, 2**31 - 1, -5, -2**31] * 5, np.int32)

@dataclass
class Rule:
    """``out[i] = value(in0[i], in1[i], …)``; ``value_of_buffers`` builds the value
    from the input buffers instead (strided reads)."""

    out: Any
    inputs: tuple[np.ndarray, ...]
    value: Callable[..., Expr] | None = None
    value_of_buffers: Callable[..., Expr] | None = None
    extent: int | None = None
    approximate: bool = False  # llvm's inline exp/tanh/erf (mathlib.py)

    def program(self) -> Program:
        if self.value is not None:
            element = self.value
            return elementwise(lambda *bufs: element(*(Load(b, IDX) for b in bufs)),
                               self.out, *self.inputs, extent=self.extent)
        assert self.value_of_buffers is not None
        return elementwise(self.value_of_buffers, self.out, *self.inputs, extent=self.extent)


def div(a: Expr, b: Expr) -> Expr:
    return Binary("div", a, b)


def mod(a: Expr, b: Expr) -> Expr:
    return Binary("mod", a, b)


SHIFTS = (np.abs(DIVISORS) * 3).astype(np.int32)  # 3 .. 27
FMA = (np.array([2**-12 * (1 + 2**-16), 1 + 2**-12] * 8, np.float32),
       np.array([-(2**-12) * (1 - 2**-16), 1 + 2**-12] * 8, np.float32),
       np.array([1 + 2**-23, -1.0] * 8, np.float32))
BIG_INTS = np.array([2**60 + 2**36 + 1, 2**24 + 3, -(2**53) - 3, 2**63 - 1] * 4, np.int64)
F64_TO_HALF = np.array([1 + 2**-11 + 2**-40, 1 + 2**-11, 1e300, 65519.9, -2.5e-8] * 4)
F64_TO_BF16 = np.array([1 + 2**-8 + 2**-40, 1 + 2**-8, 1e300, 3.4e38, NAN] * 4)
F16_PAIR = (HALF_TIES.astype(np.float16), HALF_STEPS.astype(np.float16))
RULES: dict[str, Rule] = {
    "div_i32": Rule(np.int32, (I32S, DIVISORS), div),
    "mod_i32": Rule(np.int32, (I32S, DIVISORS), mod),
    "div_i8": Rule(np.int8, (I32S.astype(np.int8) | 1, DIVISORS.astype(np.int8)), div),
    "div_u32": Rule(np.uint32, (I32S.view(np.uint32), DIVISORS.view(np.uint32)), div),
    "mod_u32": Rule(np.uint32, (I32S.view(np.uint32), DIVISORS.view(np.uint32)), mod),
    "mul_add_wrap_i32": Rule(np.int32, (I32S, I32S[::-1].copy()), lambda a, b: a * b + a),
    "neg_not_u8": Rule(np.uint8, (I32S.astype(np.uint8),),
                       lambda a: Unary("not", Unary("neg", a))),
    "compare_u32": Rule(np.bool_, (I32S.view(np.uint32), I32S[::-1].copy().view(np.uint32)),
                        lambda a, b: Binary("lt", a, b)),
    "shifts_i32": Rule(np.int32, (I32S, SHIFTS),
                       lambda a, b: Call("shr", (Call("shl", (a, b)), b))),
    "xor_i32": Rule(np.int32, (I32S, I32S[::-1].copy()), lambda a, b: Binary("xor", a, b)),
    # the random ops' generator: u64 xor, logical shifts and wrapping multiplies
    "splitmix_u64": Rule(np.uint64, (BIG_INTS.view(np.uint64),), mix64),
    "shr_u32": Rule(np.uint32, (I32S.view(np.uint32), SHIFTS.view(np.uint32)),
                    lambda a, b: Call("shr", (a, b))),
    "dot4_u8s8": Rule(np.int32, (ACC, WORDS_A, WORDS_B),
                      lambda c, a, b: Call("dot4_u8s8", (c, a, b))),
    "max_f32": Rule(np.float32, (F32S, F32T), lambda a, b: Binary("max", a, b)),
    "min_f32": Rule(np.float32, (F32S, F32T), lambda a, b: Binary("min", a, b)),
    "ne_f32": Rule(np.bool_, (F32S, F32T), lambda a, b: Binary("ne", a, b)),
    "le_f32": Rule(np.bool_, (F32S, F32T), lambda a, b: Binary("le", a, b)),
    "add_f16": Rule(np.float16, F16_PAIR, lambda a, b: a + b),
    "mul_div_f16": Rule(np.float16, F16_PAIR, lambda a, b: a * b / (a + b)),
    "add_bf16": Rule(BF16, (HALF_TIES.astype(BF16), HALF_STEPS.astype(BF16)),
                     lambda a, b: a + b),
    "mul_bf16": Rule(BF16, (F32S.astype(BF16), F32T.astype(BF16)), lambda a, b: a * b),
    "fma_f32": Rule(np.float32, FMA, lambda a, b, c: Call("fma", (a, b, c))),
    "round_floor_ceil_f32": Rule(np.float32, (F32S * np.float32(0.25),),
                                 lambda a: Call("round", (a,)) + Call("floor", (a,)) * Call(
                                     "ceil", (Call("abs", (a,)),))),
    "fdiv_sqrt_f32": Rule(np.float32, (F32S, F32T),
                          lambda a, b: Call("fdiv", (Call("sqrt", (Call("abs", (a,)),)), b))),
    "exp_f32": Rule(np.float32, (F32S,), lambda a: Call("exp", (a,)), approximate=True),
    "tanh_erf_f32": Rule(np.float32, (F32S,),
                         lambda a: Call("tanh", (a,)) + Call("erf", (a,)), approximate=True),
    "f32_to_i32": Rule(np.int32, (F32S[:29] * 1000,), lambda a: Cast("i32", a)),
    "f32_to_u8": Rule(np.uint8, (np.abs(F32S[:29]) * 50,), lambda a: Cast("u8", a)),
    "i32_to_u8_to_i8": Rule(np.int8, (I32S,), lambda a: Cast("i8", Cast("u8", a))),
    "i64_to_f32": Rule(np.float32, (BIG_INTS,), lambda a: Cast("f32", a)),
    "f64_to_f16": Rule(np.float16, (F64_TO_HALF,), lambda a: Cast("f16", a)),
    "f64_to_bf16": Rule(BF16, (F64_TO_BF16,), lambda a: Cast("bf16", a)),
    "i32_to_f16": Rule(np.float16, (np.array([2049, 2051, 70000, -3] * 4, np.int32),),
                       lambda a: Cast("f16", a)),
    "float_to_bool": Rule(np.bool_, (F32S,), lambda a: Cast("bool", a)),
    "strided_loads": Rule(np.float32, ((np.arange(80) * 0.25).astype(np.float32),),
                          value_of_buffers=lambda b: Load(b, IDX * 2 + 1) * Load(b, IDX + 3),
                          extent=38),
}


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("name", sorted(RULES))
def test_llvm_matches_the_interpreter(name: str, lanes: int) -> None:
    rule = RULES[name]
    program = rule.program()
    results = []
    for run in ("interpreter", "llvm"):
        arrays = {f"in{k}": a.copy() for k, a in enumerate(rule.inputs)}
        size = rule.inputs[0].size if rule.extent is None else rule.extent
        arrays["out"] = np.zeros(size, rule.out)
        if run == "llvm":
            run_on_llvm(program, arrays, lanes)
        else:
            run_program(program, arrays, {"N": 1}, lanes=lanes)
        results.append(arrays["out"])
    mine, theirs = results
    if rule.approximate:
        np.testing.assert_allclose(theirs, mine, rtol=3e-6, atol=1e-7, err_msg=name)
    else:
        bits = np.dtype(f"u{mine.dtype.itemsize}")
        assert theirs.view(bits).tolist() == mine.view(bits).tolist(), name


@pytest.mark.parametrize("lanes", [1, 8, 16])
@pytest.mark.parametrize("arch,call", [("x86-64", "dot4_u8s8"), ("x86-64-v3", "dot4_u8s8"),
                                       ("x86-64-v3", "dot4_u8s7"), ("x86-64-v4", "dot4_u8s7")])
def test_int8_dot_without_vnni_matches_the_interpreter(lanes: int, arch: str, call: str
                                                       ) -> None:
    """Targets without VNNI: dot4_u8s8 is the widening expansion, dot4_u8s7 is vpmaddubsw
    + vpmaddwd where the target has it (weights within [-64, 64]); ``lanes`` 1 runs every
    element through the scalar remainder loop."""
    from irkit.runtime.hostcpu import host
    from irkit.target import get_target

    if host().missing(get_target(arch).requirements()):
        pytest.skip(f"this CPU cannot run {arch} code")
    acc, a, b = RULES["dot4_u8s8"].inputs
    if call == "dot4_u8s7":  # weight bytes within [-64, 64]
        b = (b.view(np.int8).astype(np.int16) // 2).astype(np.int8).view(b.dtype)
    program = elementwise(lambda c, x, y: Call(call, (Load(c, IDX), Load(x, IDX),
                                                      Load(y, IDX))), np.int32, acc, a, b)
    results = []
    for run in ("interpreter", "llvm"):
        arrays = {"in0": acc.copy(), "in1": a.copy(), "in2": b.copy(),
                  "out": np.zeros(acc.size, np.int32)}
        if run == "llvm":
            run_on_llvm(program, arrays, lanes, arch)
        else:
            run_program(program, arrays, {"N": 1}, lanes=lanes)
        results.append(arrays["out"].tolist())
    assert results[0] == results[1]


def test_parallel_loop_runs_from_its_start() -> None:
    """A top-level parallel loop with a start: the llvm kernel took [0, extent) before."""
    out = Buffer("out", "i64", Const(8))
    j = Var("j")
    kernel = Kernel("k", (out,), For(j, Const(3), Store(out, j, j * 10), "parallel",
                                     start=Const(2)))
    program = Program("p", (kernel,), {"out": Placement("io", index=0)}, ("out",))
    for run in (lambda io: run_program(program, io, {"N": 1}),
                lambda io: run_on_llvm(program, io, 8)):
        io = {"out": np.zeros(8, np.int64)}
        run(io)
        assert io["out"].tolist() == [0, 0, 20, 30, 40, 0, 0, 0]


def test_workspace_reuse_reads_the_same_bytes() -> None:
    """An f32 buffer, then an i32 buffer over the same workspace bytes."""
    out = np.zeros(4, np.int32)
    w, r = Buffer("w", "f32", Const(4)), Buffer("r", "i32", Const(4))
    b_out = Buffer("out", "i32", Const(4))
    program = Program("reuse", (
        Kernel("write", (w,), For(IDX, Const(4), Store(w, IDX, Cast("f32", IDX) - Const(
            1.5, "f32")))),
        Kernel("read", (r, b_out), For(IDX, Const(4), Store(b_out, IDX, Load(r, IDX)))),
    ), {"w": Placement("workspace"), "r": Placement("workspace"),
        "out": Placement("io", index=0)}, ("out",), workspace_c=64)
    want = (np.arange(4, dtype=np.float32) - 1.5).view(np.int32).tolist()
    for run in ("interpreter", "llvm"):
        io = {"out": out.copy()}
        if run == "llvm":
            run_on_llvm(program, io, 8)
        else:
            run_program(program, io, {"N": 1})
        assert io["out"].tolist() == want, run


@pytest.mark.parametrize("lanes", [1, 8, 16])
@pytest.mark.parametrize("arch", ["x86-64-v3", "x86-64-v4"])
def test_paired_int8_dot_matches_the_interpreter(lanes: int, arch: str) -> None:
    """dot8_u8s6 (two vpmaddubsw results added in int16, then one vpmaddwd): exact for
    weight bytes within [-32, 32], including the extremes, where an int16 lane holds
    4 * 255 * 32 = 32640 or -32640."""
    from irkit.runtime.hostcpu import host
    from irkit.target import get_target

    if host().missing(get_target(arch).requirements()):
        pytest.skip(f"this CPU cannot run {arch} code")
    rng = np.random.default_rng(6)
    n = 37
    acc = rng.integers(-2**31, 2**31, n).astype(np.int32)
    a0, a1 = (rng.integers(0, 256, (n, 4)).astype(np.uint8) for _ in range(2))
    b0, b1 = (rng.integers(-32, 33, (n, 4)).astype(np.int8) for _ in range(2))
    a0[:4] = a1[:4] = 255
    b0[:2] = b1[:2] = 32
    b0[2:4] = b1[2:4] = -32
    words = [x.view(np.int32).reshape(n) for x in (a0, b0, a1, b1)]
    program = elementwise(lambda c, p, q, r, s: Call("dot8_u8s6", tuple(
        Load(buf, IDX) for buf in (c, p, q, r, s))), np.int32, acc, *words)
    results = []
    for run in ("interpreter", "llvm"):
        arrays = {"in0": acc.copy(), **{f"in{k + 1}": w.copy() for k, w in enumerate(words)},
                  "out": np.zeros(n, np.int32)}
        if run == "llvm":
            run_on_llvm(program, arrays, lanes, arch)
        else:
            run_program(program, arrays, {"N": 1}, lanes=lanes)
        results.append(arrays["out"].tolist())
    want = (acc.astype(np.int64) + (a0.astype(np.int64) * b0).sum(1)
            + (a1.astype(np.int64) * b1).sum(1))
    assert results[0] == results[1] == ((want + 2**31) % 2**32 - 2**31).tolist()
    assert results[0][0] - int(acc[0]) == 8 * 255 * 32
