"""The kernel IR interpreter's rules (irkit/kir/interpret.py), one hand-built kernel each,
with asserted values: C division, wrapping, shifts, unsigned compares, NaN in min/max,
16-bit float rounding, casts, the int8 dot, fma, calls, vector and strided loads, scoping,
byte-addressed workspace reuse and the undefined cases that raise. Kernels with a
``vector`` loop run in both forms (as lowered, and after ``prepare_kernel``)."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import ml_dtypes
import numpy as np
import pytest

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
    Placement,
    Program,
    Select,
    Stmt,
    Store,
    Unary,
    Var,
)
from irkit.kir.interpret import KirExecutionError, run_program
from irkit.kir.numerics import f64_to_f32_odd, int_to_f32, round_half
from irkit.kir.transforms import KirError
from irkit.lower.random_ops import draw, draws

BF16 = ml_dtypes.bfloat16
KIR = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.float16): "f16",
       np.dtype(BF16): "bf16", np.dtype(np.int64): "i64", np.dtype(np.int32): "i32",
       np.dtype(np.int16): "i16", np.dtype(np.int8): "i8", np.dtype(np.uint64): "u64",
       np.dtype(np.uint32): "u32", np.dtype(np.uint16): "u16", np.dtype(np.uint8): "u8",
       np.dtype(np.bool_): "bool"}
IDX = Var("i")


def buf(name: str, array: np.ndarray) -> Buffer:
    return Buffer(name, KIR[array.dtype], Const(array.size))


def run(body: Stmt, arrays: dict[str, np.ndarray], *, locals_: tuple[Buffer, ...] = (),
        lanes: int | None = None) -> dict[str, np.ndarray]:
    """One kernel over io buffers named like ``arrays`` (written in place)."""
    names = tuple(arrays)
    kernel = Kernel("k", tuple(buf(n, arrays[n]) for n in names), body, locals_)
    program = Program("t", (kernel,), {n: Placement("io", index=i) for i, n in enumerate(names)},
                      names)
    run_program(program, arrays, {"N": 1}, lanes=lanes)
    return arrays


def elementwise(fn: Any, out_dtype: Any, *inputs: np.ndarray, vector: bool = False,
                lanes: int | None = None) -> np.ndarray:
    """``out[i] = fn(a[i], b[i], …)`` over the inputs' length; ``vector`` marks the loop."""
    names = [f"in{k}" for k in range(len(inputs))]
    arrays = {n: a for n, a in zip(names, inputs)}
    arrays["out"] = np.zeros(inputs[0].size, out_dtype)
    loads = [Load(buf(n, a), IDX) for n, a in zip(names, inputs)]
    value = fn(*loads)
    loop = For(IDX, Const(inputs[0].size), Store(buf("out", arrays["out"]), IDX, value),
               "vector" if vector else "serial")
    return run(loop, arrays, lanes=lanes)["out"]


BOTH_FORMS = pytest.mark.parametrize("lanes", [None, 4, 8], ids=["lowered", "v4", "v8"])


# -- integers ----------------------------------------------------------------------------
@BOTH_FORMS
@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
def test_division_truncates_and_remainder_takes_the_dividends_sign(dtype: Any,
                                                                   lanes: int | None) -> None:
    a = np.array([-7, 7, -7, 7, 0, -1, 6, -6, 5], dtype)
    b = np.array([2, 2, -2, -2, 3, 2, -3, -3, 5], dtype)
    div = elementwise(lambda x, y: Binary("div", x, y), dtype, a, b, vector=True, lanes=lanes)
    rem = elementwise(lambda x, y: Binary("mod", x, y), dtype, a, b, vector=True, lanes=lanes)
    assert div.tolist() == [-3, 3, 3, -3, 0, 0, -2, 2, 1]
    assert rem.tolist() == [-1, 1, -1, 1, 0, -1, 0, 0, 0]


def test_unsigned_division_and_compares_read_unsigned() -> None:
    a = np.array([4294967295, 2147483648, 7], np.uint32)
    b = np.array([2, 1, 4294967295], np.uint32)
    assert elementwise(lambda x, y: Binary("div", x, y), np.uint32, a, b).tolist() == [
        2147483647, 2147483648, 0]
    assert elementwise(lambda x, y: Binary("mod", x, y), np.uint32, a, b).tolist() == [1, 0, 7]
    assert elementwise(lambda x, y: Binary("gt", x, y), np.bool_, a, b).tolist() == [
        True, True, False]
    u8 = np.array([200, 3], np.uint8), np.array([100, 250], np.uint8)
    assert elementwise(lambda x, y: Binary("max", x, y), np.uint8, *u8).tolist() == [200, 250]


@pytest.mark.parametrize("a,b", [(5, 0), (-128, -1)])
def test_division_by_zero_and_overflow_are_undefined(a: int, b: int) -> None:
    x, y = np.array([a], np.int8), np.array([b], np.int8)
    with pytest.raises(KirExecutionError, match="division"):
        elementwise(lambda p, q: Binary("div", p, q), np.int8, x, y)


@BOTH_FORMS
def test_integer_arithmetic_wraps(lanes: int | None) -> None:
    i32 = np.array([2**31 - 1, -2**31, 65536], np.int32)
    one = np.array([1, -1, 65536], np.int32)
    assert elementwise(lambda x, y: x + y, np.int32, i32, one, vector=True,
                       lanes=lanes).tolist() == [-2**31, 2**31 - 1, 131072]
    assert elementwise(lambda x, y: x * y, np.int32, i32, one, vector=True,
                       lanes=lanes).tolist() == [2**31 - 1, -2**31, 0]
    u8 = np.array([200, 0, 255], np.uint8)
    assert elementwise(lambda x: x * Const(2, "u8"), np.uint8, u8, vector=True,
                       lanes=lanes).tolist() == [144, 0, 254]
    assert elementwise(lambda x: Unary("neg", x), np.uint8, u8).tolist() == [56, 0, 1]
    i64 = np.array([-2**63, 2**62], np.int64)
    assert elementwise(lambda x: Unary("neg", x), np.int64, i64).tolist() == [-2**63, -2**62]
    assert elementwise(lambda x: x * Const(4), np.int64, i64).tolist() == [0, 0]
    assert elementwise(lambda x: Unary("not", x), np.uint8, u8).tolist() == [55, 255, 0]


@BOTH_FORMS
def test_shifts(lanes: int | None) -> None:
    i32 = np.array([-8, 1, 2**30, -1], np.int32)
    by = np.array([1, 31, 1, 31], np.int32)
    assert elementwise(lambda x, y: Call("shr", (x, y)), np.int32, i32, by, vector=True,
                       lanes=lanes).tolist() == [-4, 0, 2**29, -1]
    assert elementwise(lambda x, y: Call("shl", (x, y)), np.int32, i32, by, vector=True,
                       lanes=lanes).tolist() == [-16, -2**31, -2**31, -2**31]
    u32 = np.array([0x80000000, 0xFFFFFFFF], np.uint32)
    amount = np.array([31, 4], np.uint32)
    assert elementwise(lambda x, y: Call("shr", (x, y)), np.uint32, u32,
                       amount).tolist() == [1, 0x0FFFFFFF]
    with pytest.raises(KirExecutionError, match=r"\[0, 32\)"):
        elementwise(lambda x, y: Call("shl", (x, y)), np.int32, i32, np.full(4, 32, np.int32))


@BOTH_FORMS
def test_xor_and_the_random_generator(lanes: int | None) -> None:
    i32 = np.array([-8, 5, 2**31 - 1, -1], np.int32)
    other = np.array([3, 5, -1, 0x0F0F0F0F], np.int32)
    assert elementwise(lambda x, y: Binary("xor", x, y), np.int32, i32, other, vector=True,
                       lanes=lanes).tolist() == (i32 ^ other).tolist()
    flags = np.array([True, True, False, False]), np.array([True, False, True, False])
    assert elementwise(lambda x, y: Binary("xor", x, y), np.bool_, *flags, vector=True,
                       lanes=lanes).tolist() == [False, True, True, False]
    # SplitMix64 in kernel IR (u64 xor, logical shr, wrapping mul) gives numpy's bits
    index = np.array([0, 1, 2**40, 2**63 - 1], np.int64)
    key = 0xDEADBEEFCAFEF00D
    got = elementwise(lambda i: draw(key, i), np.uint64, index, vector=True, lanes=lanes)
    assert got.tolist() == draws(key, index.astype(np.uint64)).tolist()


@BOTH_FORMS
def test_dot4_u8s8_with_extreme_bytes(lanes: int | None) -> None:
    def word(*data: int) -> int:  # four bytes, little-endian, as an i32
        return int(np.frombuffer(bytes(b & 0xFF for b in data), np.int32)[0])

    acc = np.array([0, 0, 2**31 - 1, -5, 7, 0, 0, 0, 1], np.int32)
    a = np.array([word(255, 255, 255, 255), word(255, 0, 1, 128), word(255, 255, 255, 255),
                  word(0, 0, 0, 0), word(1, 2, 3, 4), word(128, 128, 128, 128),
                  word(255, 255, 255, 255), 0, word(9, 0, 0, 0)], np.int32)
    b = np.array([word(-128, -128, -128, -128), word(127, 5, -1, -128), word(127, 127, 127, 127),
                  word(-128, 1, 2, 3), word(-1, -2, -3, -4), word(127, 127, 127, 127),
                  word(127, 127, 127, 127), 0, word(-1, 0, 0, 0)], np.int32)
    got = elementwise(lambda c, x, y: Call("dot4_u8s8", (c, x, y)), np.int32, acc, a, b,
                      vector=True, lanes=lanes)
    want = [4 * 255 * -128, 255 * 127 + 0 - 1 + 128 * -128,
            (2**31 - 1 + 4 * 255 * 127) - 2**32, -5, 7 - 1 - 4 - 9 - 16,
            4 * 128 * 127, 4 * 255 * 127, 0, 1 - 9]
    assert got.tolist() == want


# -- floats ------------------------------------------------------------------------------
NAN = float("nan")


@BOTH_FORMS
def test_nan_in_min_and_max_follows_the_first_operand(lanes: int | None) -> None:
    x = np.array([NAN, 1.0, NAN, 0.0, -0.0, 2.0, 1.0], np.float32)
    y = np.array([1.0, NAN, NAN, -0.0, 0.0, 3.0, -1.0], np.float32)
    mx = elementwise(lambda p, q: Binary("max", p, q), np.float32, x, y, vector=True,
                     lanes=lanes)
    mn = elementwise(lambda p, q: Binary("min", p, q), np.float32, x, y, vector=True,
                     lanes=lanes)
    assert np.isnan(mx[0]) and mx[1] == 1.0 and np.isnan(mx[2])
    assert np.isnan(mn[0]) and mn[1] == 1.0 and np.isnan(mn[2])
    # Equal zeros give the second operand.
    assert math.copysign(1, mx[3]) == -1 and math.copysign(1, mx[4]) == 1
    assert math.copysign(1, mn[3]) == -1 and math.copysign(1, mn[4]) == 1
    assert mx[5:].tolist() == [3.0, 1.0] and mn[5:].tolist() == [2.0, -1.0]


def test_compares_are_ordered_except_ne() -> None:
    x = np.array([NAN, 1.0, 1.0], np.float32)
    y = np.array([1.0, NAN, 1.0], np.float32)
    got = {op: elementwise(lambda p, q, op=op: Binary(op, p, q), np.bool_, x, y).tolist()
           for op in ("lt", "le", "gt", "ge", "eq", "ne")}
    assert got == {"lt": [False, False, False], "le": [False, False, True],
                   "gt": [False, False, False], "ge": [False, False, True],
                   "eq": [False, False, True], "ne": [True, True, False]}


@BOTH_FORMS
def test_f16_arithmetic_rounds_ties_to_even(lanes: int | None) -> None:
    a = np.array([1.0, 1 + 2**-10, 65504.0, 2048.0, -1.0], np.float16)
    b = np.array([2**-11, 2**-11, 16.0, 1.0, -(2**-11)], np.float16)
    got = elementwise(lambda p, q: p + q, np.float16, a, b, vector=True, lanes=lanes)
    assert got.astype(np.float64).tolist() == [1.0, 1 + 2**-9, math.inf, 2048.0, -1.0]


@BOTH_FORMS
def test_bf16_arithmetic_rounds_ties_to_even(lanes: int | None) -> None:
    a = np.array([1.0, 1 + 2**-7, 1.0, 3.0], BF16)
    b = np.array([2**-8, 2**-8, 3 * 2**-9, 1 / 3], BF16)
    got = elementwise(lambda p, q: p + q, BF16, a, b, vector=True, lanes=lanes)
    assert got.astype(np.float64).tolist() == [1.0, 1 + 2**-6, 1 + 2**-7,
                                                float(np.float32(3.0 + float(b[3])).astype(BF16))]
    products = elementwise(lambda p, q: p * q, BF16, a, b, vector=True, lanes=lanes)
    assert products.view(np.uint16).tolist() == (a.astype(np.float32) * b.astype(np.float32)
                                                 ).astype(BF16).view(np.uint16).tolist()


def test_bf16_rounding_quiets_nan_and_overflows_to_inf() -> None:
    bits = np.array([0x7F7FFFFF, 0xFF7FFFFF, 0x7F800001, 0x3F808000, 0x3F818000], np.uint32)
    got = round_half(bits.view(np.float32), "bf16")
    assert got[0] == np.inf and got[1] == -np.inf
    assert np.isnan(got[2]) and got.view(np.uint32)[2] == 0x7FC00000
    assert got[3:].tolist() == [1.0, 1.015625]
    for k, value in enumerate(bits.view(np.float32)):  # scalars agree with vectors
        scalar = round_half(np.float32(value), "bf16")
        assert scalar.view(np.uint32) == got.view(np.uint32)[k]


def test_fma_rounds_once() -> None:
    # 2^-12(1+2^-16) * -2^-12(1-2^-16) + (1+2^-23) = 1 + 2^-24 + 2^-56: just above the tie
    # between 1 and 1 + 2^-23, where an f64 sum would land on the tie and round to even.
    a = np.array([2**-12 * (1 + 2**-16), 1 + 2**-12, 3.0], np.float32)
    b = np.array([-(2**-12) * (1 - 2**-16), 1 + 2**-12, 1e38], np.float32)
    c = np.array([1 + 2**-23, -1.0, -np.inf], np.float32)
    for lanes in (None, 4):
        got = elementwise(lambda x, y, z: Call("fma", (x, y, z)), np.float32, a, b, c,
                          vector=True, lanes=lanes)
        assert got.astype(np.float64).tolist() == [1 + 2**-23, 2**-11 + 2**-24, -math.inf]


def _round_f32(exact: Fraction) -> float:
    """``exact`` rounded to nearest even f32 (normal range)."""
    if exact == 0:
        return 0.0
    e = math.floor(math.log2(abs(exact)))
    while Fraction(2) ** e > abs(exact):
        e -= 1
    while Fraction(2) ** (e + 1) <= abs(exact):
        e += 1
    scaled = exact * Fraction(2) ** (23 - e)
    q = round(scaled)  # Fraction rounds half to even
    return float(np.float32(float(q * Fraction(2) ** (e - 23))))


def test_fma_matches_exact_rounding_on_random_triples() -> None:
    rng = np.random.default_rng(5)
    a = (rng.standard_normal(400) * 2.0 ** rng.integers(-20, 20, 400)).astype(np.float32)
    b = (rng.standard_normal(400) * 2.0 ** rng.integers(-20, 20, 400)).astype(np.float32)
    c = (rng.standard_normal(400) * 2.0 ** rng.integers(-30, 30, 400)).astype(np.float32)
    want = [_round_f32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))
            for x, y, z in zip(a, b, c)]
    for lanes in (None, 8):
        got = elementwise(lambda x, y, z: Call("fma", (x, y, z)), np.float32, a, b, c,
                          vector=True, lanes=lanes)
        assert got.astype(np.float64).tolist() == want


@BOTH_FORMS
def test_calls(lanes: int | None) -> None:
    x = np.array([2.5, -0.5, 1.5, -2.5, 0.0, 1.0, 0.25, 4.0], np.float32)
    calls = {"round": [2, -0.0, 2, -2, 0, 1, 0, 4], "floor": [2, -1, 1, -3, 0, 1, 0, 4],
             "ceil": [3, -0.0, 2, -2, 0, 1, 1, 4], "abs": [2.5, 0.5, 1.5, 2.5, 0, 1, 0.25, 4]}
    for fn, want in calls.items():
        got = elementwise(lambda v, fn=fn: Call(fn, (v,)), np.float32, x, vector=True,
                          lanes=lanes)
        assert got.tolist() == want and [math.copysign(1, g) for g in got] == [
            math.copysign(1, w) for w in want], fn
    for fn, ref in {"exp": math.exp, "erf": math.erf, "tanh": math.tanh, "atan": math.atan,
                    "asinh": math.asinh, "sin": math.sin}.items():
        got = elementwise(lambda v, fn=fn: Call(fn, (v,)), np.float32, x, vector=True,
                          lanes=lanes)
        assert got.tolist() == [float(np.float32(ref(float(v)))) for v in x], fn
    y = np.array([3.0] * 8, np.float32)
    quotient = elementwise(lambda p, q: Call("fdiv", (p, q)), np.float32, x, y, vector=True,
                           lanes=lanes)
    assert quotient.tolist() == (x / y).tolist()
    assert elementwise(lambda p, q: Call("pow", (p, q)), np.float32, np.abs(x), y).tolist() == [
        float(np.float32(abs(float(v)) ** 3)) for v in x]
    f16 = elementwise(lambda v: Call("exp", (v,)), np.float16, x.astype(np.float16))
    assert f16.tolist() == np.exp(x.astype(np.float64)).astype(np.float32).astype(
        np.float16).tolist()


def test_special_values_of_calls() -> None:
    x = np.array([NAN, math.inf, -math.inf, -1.0], np.float32)
    assert np.isnan(elementwise(lambda v: Call("log", (v,)), np.float32, x)[[0, 3]]).all()
    assert elementwise(lambda v: Call("exp", (v,)), np.float32, x)[1:3].tolist() == [
        math.inf, 0.0]
    f64 = np.array([1.0, 0.0, -1.0], np.float64)
    quotients = elementwise(lambda v: v / Const(0.0, "f64"), np.float64, f64)
    assert quotients[[0, 2]].tolist() == [math.inf, -math.inf] and np.isnan(quotients[1])
    remainders = elementwise(lambda v: Binary("mod", v, Const(-0.75, "f64")), np.float64,
                             np.array([2.0, -2.0, 0.5]))
    assert remainders.tolist() == [0.5, -0.5, 0.5]  # C fmod: the dividend's sign


# -- casts -------------------------------------------------------------------------------
def cast(values: np.ndarray, dst: Any) -> np.ndarray:
    return elementwise(lambda v: Cast(KIR[np.dtype(dst)], v), dst, values)


def test_float_to_int_truncates_and_out_of_range_is_undefined() -> None:
    x = np.array([-2.7, 2.7, -0.5, 127.9, -128.9], np.float32)
    assert cast(x, np.int8).tolist() == [-2, 2, 0, 127, -128]
    assert cast(np.array([0.9, 255.5, -0.9], np.float64), np.uint8).tolist() == [0, 255, 0]
    for bad, dst in ((NAN, np.int32), (3e9, np.int32), (-1.0, np.uint8), (math.inf, np.int64),
                     (2.0**63, np.int64), (256.0, np.uint8)):
        with pytest.raises(KirExecutionError, match="out of range"):
            cast(np.array([bad], np.float64), dst)


def test_integer_casts_wrap_by_the_source_sign() -> None:
    assert cast(np.array([-1, 256, 511], np.int32), np.uint8).tolist() == [255, 0, 255]
    assert cast(np.array([255, 128], np.uint8), np.int32).tolist() == [255, 128]
    assert cast(np.array([-1, -128], np.int8), np.uint32).tolist() == [4294967295, 4294967168]
    assert cast(np.array([2**63], np.uint64), np.int64).tolist() == [-2**63]
    assert cast(np.array([0, 2, -3], np.int16), np.bool_).tolist() == [False, True, True]
    assert cast(np.array([True, False]), np.int64).tolist() == [1, 0]
    assert cast(np.array([True, False]), np.float32).tolist() == [1.0, 0.0]


def test_float_to_bool_is_nonzero_and_nan_is_true() -> None:
    assert cast(np.array([0.0, -0.0, NAN, 1e-45], np.float32), np.bool_).tolist() == [
        False, False, True, True]


def test_integers_to_floats_round_once() -> None:
    big = np.array([2**60 + 1, 2**24 + 1, -(2**53) - 3, 2**63 - 1], np.int64)
    assert cast(big, np.float32).tolist() == [2.0**60, 2.0**24, -(2.0**53), 2.0**63]
    # 2^25 + 3 is above the midpoint of 2^25 and 2^25 + 4; 2^24 + 3 is the midpoint of
    # 2^24 + 2 (odd) and 2^24 + 4 (even).
    assert cast(np.array([2**25 + 3, 2**24 + 3], np.int64), np.float32).tolist() == [
        2.0**25 + 4, 2.0**24 + 4]
    assert [float(int_to_f32(v)) for v in (2**60 + 2**36 + 1, -(2**60 + 2**36 + 1))] == [
        2.0**60 + 2**37, -(2.0**60 + 2**37)]
    assert cast(np.array([2**64 - 1], np.uint64), np.float32).tolist() == [2.0**64]


@pytest.mark.parametrize("dst", [np.float16, BF16], ids=["f16", "bf16"])
def test_f64_to_16_bit_rounds_once(dst: Any) -> None:
    ulp = 2**-10 if dst is np.float16 else 2**-7
    x = np.array([1 + ulp / 2 + 2**-40, -(1 + ulp / 2 + 2**-40), 1 + ulp / 2, 1e300, -1e300],
                 np.float64)
    assert cast(x, dst).astype(np.float64).tolist() == [1 + ulp, -(1 + ulp), 1.0, math.inf,
                                                         -math.inf]
    # Integers wider than 16 bits go through f64, then the same single rounding.
    assert cast(np.array([2049, 2051], np.int32), np.float16).tolist() == [2048.0, 2052.0]
    assert f64_to_f32_odd(np.float64(1 + 2**-30)).view(np.uint32) == np.float32(1).view(
        np.uint32) + 1


# -- loads, stores, memory ---------------------------------------------------------------
def test_vector_and_strided_loads() -> None:
    src = np.arange(20, dtype=np.float32)
    out = np.zeros(12, np.float32)
    b_src, b_out = buf("src", src), buf("out", out)
    body = Block((
        Store(b_out, Const(0), Load(b_src, Const(3), 4)),
        Store(b_out, Const(4), Load(b_src, Const(1), 4, 2)),
        Store(b_out, Const(8), Broadcast(Load(b_src, Const(19)), 4)),
    ))
    run(body, {"src": src, "out": out})
    assert out.tolist() == [3, 4, 5, 6, 1, 3, 5, 7, 19, 19, 19, 19]
    run(Store(b_out, Const(0), Load(b_src, Const(13), 4, 2)), {"src": src, "out": out})
    assert out[:4].tolist() == [13, 15, 17, 19]  # ends at the last element
    with pytest.raises(KirExecutionError, match=r"src\[14 : \+7\]"):
        run(Store(b_out, Const(0), Load(b_src, Const(14), 4, 2)), {"src": src, "out": out})


@pytest.mark.parametrize("lanes", [None, 4, 8, 16])
def test_vectorized_strided_loop_matches_the_scalar_loop(lanes: int | None) -> None:
    src = np.arange(41, dtype=np.float32) * 0.5
    got = np.zeros(19, np.float32)
    b_src, b_out = buf("src", src), buf("out", got)
    value = Load(b_src, IDX * 2 + 1) * Load(b_src, Const(40)) + Load(b_src, IDX + 2)
    run(For(IDX, Const(19), Store(b_out, IDX, value), "vector"), {"src": src, "out": got},
        lanes=lanes)
    assert got.tolist() == (src[1:39:2] * src[40] + src[2:21]).tolist()


def test_out_of_bounds_accesses_are_undefined() -> None:
    src, out = np.zeros(4, np.float32), np.zeros(4, np.float32)
    for index in (Const(4), Const(-1)):
        with pytest.raises(KirExecutionError, match=r"outside|out of bounds"):
            run(Store(buf("out", out), Const(0), Load(buf("src", src), index)),
                {"src": src, "out": out})
        with pytest.raises(KirExecutionError, match=r"outside|out of bounds"):
            run(Store(buf("out", out), index, Const(1.0, "f32")), {"src": src, "out": out})


def workspace_program(writer: Buffer, value: Expr, reader: Buffer, out: np.ndarray,
                      offset: int = 0) -> tuple[Program, dict[str, np.ndarray]]:
    """Kernel 1 stores ``value`` into ``writer``; kernel 2 copies ``reader`` (placed at
    ``offset`` bytes, over the same workspace bytes) to the output."""
    b_out = buf("out", out)
    first = Kernel("write", (writer,), For(IDX, writer.size, Store(writer, IDX, value)))
    second = Kernel("read", (reader, b_out), For(IDX, b_out.size,
                                                 Store(b_out, IDX, Load(reader, IDX))))
    placements = {writer.name: Placement("workspace"),
                  reader.name: Placement("workspace", offset_c=offset),
                  "out": Placement("io", index=0)}
    return Program("reuse", (first, second), placements, ("out",), workspace_c=64), {"out": out}


def test_workspace_bytes_are_reinterpreted_across_dtypes() -> None:
    out = np.zeros(2, np.int32)
    program, io = workspace_program(Buffer("w", "f32", Const(2)), Const(1.0, "f32"),
                                    Buffer("r", "i32", Const(2)), out)
    run_program(program, io, {"N": 1})
    assert out.tolist() == [0x3F800000, 0x3F800000]
    halves = np.zeros(4, np.uint16)
    program, io = workspace_program(Buffer("w", "f32", Const(2)), Const(-2.0, "f32"),
                                    Buffer("r", "bf16", Const(4)), halves.view(BF16))
    run_program(program, io, {"N": 1})
    assert halves.tolist() == [0, 0xC000, 0, 0xC000]  # little-endian: low half first
    flags = np.zeros(4, np.bool_)
    program, io = workspace_program(Buffer("w", "u8", Const(4)), Const(2, "u8"),
                                    Buffer("r", "bool", Const(4)), flags)
    run_program(program, io, {"N": 1})
    assert flags.tolist() == [True] * 4  # any nonzero byte is true
    odd = np.zeros(1, np.int16)
    program, io = workspace_program(Buffer("w", "i32", Const(1)), Const(0x12345678, "i32"),
                                    Buffer("r", "i16", Const(1)), odd, offset=2)
    run_program(program, io, {"N": 1})
    assert odd.tolist() == [0x1234]


def test_unwritten_workspace_is_not_zero_and_buffers_of_one_kernel_must_not_overlap() -> None:
    out = np.zeros(1, np.float32)
    ws = Buffer("w", "f32", Const(1))
    kernel = Kernel("k", (ws, buf("out", out)), Store(buf("out", out), Const(0),
                                                      Load(ws, Const(0))))
    program = Program("p", (kernel,), {"w": Placement("workspace"),
                                       "out": Placement("io", index=0)}, ("out",),
                      workspace_c=64)
    run_program(program, {"out": out}, {"N": 1})
    assert np.isnan(out[0])  # 0xFF bytes
    other = Buffer("v", "i32", Const(4))
    both = Kernel("k2", (ws, other), Store(other, Const(0), Const(1, "i32")))
    clash = Program("p", (both,), {"w": Placement("workspace"),
                                   "v": Placement("workspace", offset_c=2)}, (), workspace_c=64)
    with pytest.raises(KirExecutionError, match="overlap"):
        run_program(clash, {}, {"N": 1})


def test_symbolic_sizes_and_workspace_offsets() -> None:
    n = Var("N")
    x = Buffer("x", "i64", n * 3)
    w = Buffer("w", "i64", n * 3)
    out = Buffer("out", "i64", n * 3)
    fill = Kernel("fill", (x, w), For(IDX, n * 3, Store(w, IDX, Load(x, IDX) * Const(10))))
    copy = Kernel("copy", (w, out), For(IDX, n * 3, Store(out, IDX, Load(w, IDX) + Var("N1"))))
    program = Program("sym", (fill, copy), {
        "x": Placement("io", index=0), "out": Placement("io", index=1),
        "w": Placement("workspace", offset_n=8, offset_c=16, offset_terms=((("N", "N1"), 8),)),
    }, ("x", "out"), workspace_n=32, workspace_c=16, symbols=("N", "N1"),
        workspace_terms=((("N", "N1"), 8),))
    io = {"x": np.arange(6, dtype=np.int64), "out": np.zeros(6, np.int64)}
    run_program(program, io, {"N": 2, "N1": 5})
    assert io["out"].tolist() == [5, 15, 25, 35, 45, 55]
    with pytest.raises(KirExecutionError, match="N1"):
        run_program(program, io, {"N": 2})


# -- statements --------------------------------------------------------------------------
def test_let_scoping_if_and_loop_bounds() -> None:
    out = np.zeros(8, np.int64)
    b = buf("out", out)
    x = Var("x")
    j = Var("j")
    body = Block((
        Let(x, Const(1)),
        For(j, Const(3), Block((Let(x, Const(100)), Store(b, j, x))), start=Const(0)),
        Store(b, Const(3), x),  # the loop's x ended with the loop body
        For(j, Const(2), Store(b, j + 4, j * 10), "unroll", start=Const(1)),  # j = 1, 2
        For(j, Const(-3), Store(b, Const(0), Const(-1))),  # no iterations
        If(Binary("lt", x, Const(0)), Store(b, Const(6), Const(6)), Store(b, Const(6),
                                                                             Const(7))),
        If(Binary("gt", x, Const(0)), Block((Let(x, Const(9)), Store(b, Const(7), x)))),
    ))
    for kind in ("serial", "parallel"):
        outer = For(Var("o"), Const(1), body, kind)
        out[:] = 0
        run(outer, {"out": out})
        assert out.tolist() == [100, 100, 100, 1, 0, 10, 7, 9], kind


def test_select_evaluates_both_arms_and_picks_per_lane() -> None:
    a = np.array([1, 2, 3, 4], np.int32)
    z = np.array([1, 0, 1, 1], np.int32)
    with pytest.raises(KirExecutionError, match="division by zero"):
        elementwise(lambda x, y: Select(Binary("ne", y, Const(0, "i32")), x / y, x), np.int32,
                    a, z)
    picked = elementwise(lambda x, y: Select(Binary("gt", x, Const(2, "i32")), x, y), np.int32,
                         a, z, vector=True, lanes=4)
    assert picked.tolist() == [1, 0, 3, 4]


def test_local_buffers_are_fresh_per_run() -> None:
    out = np.zeros(3, np.float32)
    acc = Buffer("acc", "f32", Const(1), "local")
    b = buf("out", out)
    body = Block((Store(acc, Const(0), Const(0.0, "f32")),
                  For(IDX, Const(3), Block((
                      Store(acc, Const(0), Load(acc, Const(0)) + Const(0.5, "f32")),
                      Store(b, IDX, Load(acc, Const(0))))))))
    for _ in range(2):
        run(body, {"out": out}, locals_=(acc,))
        assert out.tolist() == [0.5, 1.0, 1.5]


def test_bool_logic_and_16_bit_constants() -> None:
    flags = np.array([True, False, True])
    for lanes in (None, 4):
        got = elementwise(lambda v: Unary("not", v), np.bool_, flags, vector=True, lanes=lanes)
        assert got.tolist() == [False, True, False]
        both = elementwise(lambda v, w: Binary("and", v, w), np.bool_, flags,
                           np.array([True, True, False]), vector=True, lanes=lanes)
        assert both.tolist() == [True, False, False]
    tenth = elementwise(lambda v: v + Const(0.1, "f16"), np.float16, np.zeros(1, np.float16))
    assert tenth.tolist() == [float(np.float16(0.1))]
    assert elementwise(lambda v: v + Const(0.1, "f32"), np.float32,
                       np.zeros(1, np.float32)).tolist() == [float(np.float32(0.1))]


def test_bad_arguments_are_reported() -> None:
    src, out = np.zeros(4, np.float32), np.zeros(4, np.float32)
    b_src, b_out = buf("src", src), buf("out", out)
    kernel = Kernel("k", (b_src, b_out), Store(b_out, Const(0), Load(b_src, Const(0))))
    program = Program("p", (kernel,), {"src": Placement("io", index=0),
                                       "out": Placement("io", index=1)}, ("src", "out"))
    with pytest.raises(KirExecutionError, match="no array for 'src'"):
        run_program(program, {"out": out}, {"N": 1})
    with pytest.raises(KirExecutionError, match="C-contiguous"):
        run_program(program, {"src": np.zeros((4, 2), np.float32)[:, 0], "out": out}, {"N": 1})
    with pytest.raises(KirExecutionError, match="float64 elements for a f32 buffer"):
        run_program(program, {"src": np.zeros(4), "out": out}, {"N": 1})
    with pytest.raises(KirExecutionError, match="3 elements, the program needs 4"):
        run_program(program, {"src": np.zeros(3, np.float32), "out": out}, {"N": 1})
    frozen = np.zeros(4, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(KirExecutionError, match="read-only"):
        run_program(program, {"src": src, "out": frozen}, {"N": 1})
    with pytest.raises(KirError, match="not in scope"):
        run(Store(b_out, Var("q"), Const(0.0, "f32")), {"out": out})


# -- prepare_kernel keeps the meaning ---------------------------------------------------
def _both_forms(value: Expr, out_dtype: Any) -> list[Any]:
    """``out[i] = value`` (``src`` in scope) as lowered and as prepared (simplified)."""
    src = np.zeros(1, np.float32)
    results = []
    for lanes in (None, 8):
        out = np.zeros(1, out_dtype)
        body = For(IDX, Const(1), Store(buf("out", out), IDX, value), "vector")
        results.append(run(body, {"src": src, "out": out}, lanes=lanes)["out"].tolist())
    return results


def test_prepared_kernels_fold_f32_constants_as_f32() -> None:
    """The simplifier folds constants by the same rules: f32 operands and results round
    to f32 (it folded in f64 before: 16777217 + 1 gave 16777218, not 16777216)."""
    src = Buffer("src", "f32", Const(1))
    big = Const(16777217.0, "f32") + Const(1.0, "f32")
    assert _both_forms(Load(src, IDX) + big, np.float32) == [[16777216.0]] * 2
    tenth = Cast("f64", Const(0.1, "f32"))
    assert _both_forms(tenth, np.float64) == [[float(np.float32(0.1))]] * 2
    zeros = Binary("max", Const(0.0, "f32"), Const(-0.0, "f32"))
    assert [math.copysign(1, v[0]) for v in _both_forms(zeros, np.float32)] == [-1, -1]
    huge = Cast("f32", Const(2**60 + 2**36 + 1))
    assert _both_forms(huge, np.float32) == [[2.0**60 + 2**37]] * 2
    remainder = Binary("mod", Const(-(2**62) - 7), Const(1000))  # folded via f64: -904
    assert _both_forms(Cast("f64", remainder), np.float64) == [[-911.0]] * 2


def test_interpret_lowered_binds_dims_and_reports_bad_inputs() -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from irkit.lower.interpret import interpret_lowered
    from irkit.testing.interpreted import lower_model

    graph = helper.make_graph(
        [helper.make_node("Concat", ["a", "b"], ["y"], axis=1)], "cat",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "S"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S + 3"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    lowered = lower_model(onnx.shape_inference.infer_shapes(model))
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = -np.arange(8, dtype=np.float32).reshape(2, 4)
    got = interpret_lowered(lowered, {"a": a, "b": b})["y"]
    assert got.tolist() == np.concatenate([a, b], axis=1).tolist()
    with pytest.raises(ValueError, match="missing input 'b'"):
        interpret_lowered(lowered, {"a": a})
    with pytest.raises(ValueError, match="input 'a' is float64, the model takes float32"):
        interpret_lowered(lowered, {"a": a.astype(np.float64), "b": b})
    with pytest.raises(ValueError, match=r"input 'b' has shape \(2, 4\); the model takes "
                                         r"\(3, 4\)"):  # N = 3 from a
        interpret_lowered(lowered, {"a": np.zeros((3, 3), np.float32), "b": b})
