"""Value-level semantics of kernel IR for the interpreter (:mod:`irkit.kir.interpret`).

Each function here returns a plain Python function for one operation on one element type,
either on scalars or on lane vectors. Register values are:

- integers (``i8`` … ``u64``): Python ints in the type's range (signed types in two's
  complement range, unsigned types in ``[0, 2**bits)``); vectors: numpy arrays of the type;
- ``bool``: Python bools (or numpy bools); vectors: numpy bool arrays;
- ``f32``, ``f16``, ``bf16``: ``np.float32`` (a 16-bit value is an f32 holding a value
  the 16-bit type represents exactly); vectors: float32 arrays;
- ``f64``: ``np.float64``; vectors: float64 arrays.

The rules themselves are written down in :mod:`irkit.kir.interpret`'s docstring; this
module implements them. Undefined behaviour (division by zero, shifts by the width or
more, float to integer casts out of range) raises :class:`KirExecutionError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from irkit.kir.nodes import FLOATS, HALF_FLOATS, ITEMSIZE, UNSIGNED
from irkit.kir.transforms import KirError

Fn = Callable[..., Any]


class KirExecutionError(KirError):
    """A kernel did something kernel IR leaves undefined (out-of-bounds access, division
    by zero, an out-of-range shift or cast), or was run with bad arguments."""


INTEGERS = ("i64", "i32", "i16", "i8", "u64", "u32", "u16", "u8")
BITS = {t: 8 * ITEMSIZE[t] for t in INTEGERS} | {"bool": 1}
LOW = {t: 0 if t in UNSIGNED else -(1 << (BITS[t] - 1)) for t in BITS}
HIGH = {t: (1 << BITS[t]) - 1 if t in UNSIGNED else (1 << (BITS[t] - 1)) - 1 for t in BITS}

# Element types of vector registers and of memory.
REGISTER_NP: dict[str, Any] = {
    "f32": np.float32, "f64": np.float64, "f16": np.float32, "bf16": np.float32,
    "i64": np.int64, "i32": np.int32, "i16": np.int16, "i8": np.int8,
    "u64": np.uint64, "u32": np.uint32, "u16": np.uint16, "u8": np.uint8, "bool": np.bool_,
}  # fmt: skip
MEMORY_NP: dict[str, Any] = {**REGISTER_NP, "f16": np.float16, "bf16": np.uint16,
                             "bool": np.uint8}

# bf16 bit patterns -> their f32 values (a load is one table lookup).
BF16_TO_F32 = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)


def wrap_int(value: int, dtype: str) -> int:
    """``value`` modulo ``2**bits``, in the range of integer type ``dtype``."""
    if LOW[dtype] <= value <= HIGH[dtype]:
        return value
    bits = BITS[dtype]
    value &= (1 << bits) - 1
    return value - (1 << bits) if dtype not in UNSIGNED and value >> (bits - 1) else value


def scalar_const(value: int | float | bool, dtype: str) -> Any:
    """A ``Const``'s register value: integers wrap, f32 rounds to nearest even, 16-bit
    floats round once from the (f64) literal."""
    if dtype == "bool":
        return bool(value)
    if dtype == "f64":
        return np.float64(value)
    if dtype == "f32":
        return np.float32(value)
    if dtype in HALF_FLOATS:
        return round_half(f64_to_f32_odd(np.float64(value)), dtype)
    return wrap_int(int(value), dtype)


# -- 16-bit floats and rounding to odd ------------------------------------------------------
def round_half(value: Any, dtype: str) -> Any:
    """An f32 scalar or array rounded to nearest even ``dtype`` (f16/bf16), still f32."""
    if dtype == "f16":
        if isinstance(value, np.ndarray):
            return value.astype(np.float16).astype(np.float32)
        return np.float32(np.float16(value))
    if isinstance(value, np.ndarray):
        words = value.astype(np.float32).view(np.uint32)
        rounded = words + (((words >> 16) & 1) + 0x7FFF)
        quiet = words | 0x00400000
        kept = np.where(np.isnan(value), quiet, rounded) & np.uint32(0xFFFF0000)
        return kept.astype(np.uint32).view(np.float32)
    bits = int(np.float32(value).view(np.uint32))
    if value != value:  # NaN: quieted, payload kept (as ml_dtypes)
        bits |= 0x00400000
    else:
        bits += ((bits >> 16) & 1) + 0x7FFF
    return BF16_TO_F32[(bits >> 16) & 0xFFFF]


def f64_to_f32_odd(value: Any) -> Any:
    """f64 -> f32 rounded to odd: inexact results get an odd last bit, so rounding the
    f32 again to a narrower type equals rounding ``value`` directly."""
    if isinstance(value, np.ndarray):
        near = value.astype(np.float32)
        words = near.view(np.uint32)
        inexact = (near.astype(np.float64) != value) & ~np.isnan(value) & ((words & 1) == 0)
        away = np.abs(near.astype(np.float64)) > np.abs(value)
        step = np.where(away, np.uint32(0xFFFFFFFF), np.uint32(1))  # -1 or +1
        return np.where(inexact, words + step, words).astype(np.uint32).view(np.float32)
    t = np.float32(value)
    if np.float64(t) == value or not math.isfinite(value):
        return t
    bits = int(t.view(np.uint32))
    if bits & 1 == 0:
        bits += -1 if abs(float(t)) > abs(float(value)) else 1
    return np.uint32(bits).view(np.float32)


def _odd_double(exact_sum: float, error: float) -> float:
    """``exact_sum + error`` (error below half an ulp) rounded to odd in f64."""
    if error == 0 or not math.isfinite(exact_sum):
        return exact_sum
    mantissa, _ = math.frexp(exact_sum)
    if int(abs(mantissa) * (1 << 53)) & 1:
        return exact_sum
    return math.nextafter(exact_sum, math.copysign(math.inf, error))


def int_to_f64(value: int) -> np.float64:
    """An integer rounded to nearest even f64 (Python's int -> float is exact rounding)."""
    return np.float64(float(value))


def int_to_f32(value: int) -> np.float32:
    """An integer rounded once (nearest even) to f32."""
    if -(1 << 53) <= value <= 1 << 53:
        return np.float32(float(value))
    magnitude = abs(value)
    shift = magnitude.bit_length() - 53
    # Rounded to odd at 53 bits (exact in f64): the last bit is set when any dropped one is.
    top = (magnitude >> shift) | (1 if magnitude & ((1 << shift) - 1) else 0)
    wide = math.ldexp(float(top), shift)
    return np.float32(-wide if value < 0 else wide)


# -- binary operators -----------------------------------------------------------------------
def _check_divisor(y: Any, x: Any, dtype: str) -> None:
    if np.any(np.asarray(y) == 0):
        raise KirExecutionError(f"{dtype} division by zero")
    if dtype not in UNSIGNED and np.any((np.asarray(x) == LOW[dtype]) & (np.asarray(y) == -1)):
        raise KirExecutionError(f"{dtype} division overflow ({LOW[dtype]} / -1)")


def c_div(x: int, y: int, dtype: str) -> int:
    """Integer quotient truncated toward zero (C, LLVM ``sdiv``/``udiv``)."""
    if y == 0 or (x == LOW[dtype] and y == -1 and dtype not in UNSIGNED):
        _check_divisor(y, x, dtype)
    q = abs(x) // abs(y)
    return -q if (x < 0) != (y < 0) else q


def c_rem(x: int, y: int, dtype: str) -> int:
    """Remainder with the sign of the dividend: ``x - c_div(x, y) * y``."""
    return x - c_div(x, y, dtype) * y


def _c_div_vec(x: np.ndarray, y: Any, dtype: str) -> np.ndarray:
    _check_divisor(y, x, dtype)
    q = x // y
    if dtype not in UNSIGNED:  # numpy floors: a negative inexact quotient is one too low
        inexact = (x - q * y) != 0
        q = q + (inexact & ((np.asarray(x) < 0) != (np.asarray(y) < 0))).astype(q.dtype)
    return q


def _c_rem_vec(x: np.ndarray, y: Any, dtype: str) -> np.ndarray:
    return x - _c_div_vec(x, y, dtype) * y


def _fmax(x: Any, y: Any) -> Any:
    return x if not x <= y else y


def _fmin(x: Any, y: Any) -> Any:
    return x if not x >= y else y


def _fmax_vec(x: Any, y: Any) -> Any:
    return np.where(x <= y, y, x)


def _fmin_vec(x: Any, y: Any) -> Any:
    return np.where(x >= y, y, x)


_COMPARE: dict[str, Fn] = {
    "lt": lambda x, y: x < y, "le": lambda x, y: x <= y, "gt": lambda x, y: x > y,
    "ge": lambda x, y: x >= y, "eq": lambda x, y: x == y, "ne": lambda x, y: x != y,
}  # fmt: skip


def binary_fn(op: str, dtype: str, vector: bool) -> Fn:
    """``f(x, y)`` for ``Binary(op)`` on operands of ``dtype`` (a compare gives bool)."""
    if op in _COMPARE:
        return _COMPARE[op]
    if dtype in FLOATS:
        return _float_binary(op, dtype, vector)
    return _int_binary(op, dtype, vector)


def _float_binary(op: str, dtype: str, vector: bool) -> Fn:
    table: dict[str, Fn] = {
        "add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
        "div": lambda x, y: x / y, "mod": np.fmod,
        "max": _fmax_vec if vector else _fmax, "min": _fmin_vec if vector else _fmin,
    }  # fmt: skip
    if op not in table:
        raise KirError(f"no {op} for {dtype}")
    fn = table[op]
    if dtype in HALF_FLOATS and op not in ("max", "min"):
        return lambda x, y: round_half(fn(x, y), dtype)
    return fn


def _int_binary(op: str, dtype: str, vector: bool) -> Fn:
    if op in ("and", "or", "xor"):
        bitwise: dict[str, Fn] = {"and": lambda x, y: x & y, "or": lambda x, y: x | y,
                                  "xor": lambda x, y: x ^ y}
        return bitwise[op]
    if vector and dtype == "bool":  # i1 arithmetic: modulo 2
        bools: dict[str, Fn] = {"add": np.logical_xor, "sub": np.logical_xor,
                                "mul": np.logical_and, "max": np.logical_or,
                                "min": np.logical_and}
        if op not in bools:
            raise KirError(f"no {op} for {dtype}")
        return bools[op]
    if vector:
        table: dict[str, Fn] = {
            "add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
            "div": lambda x, y: _c_div_vec(x, y, dtype),
            "mod": lambda x, y: _c_rem_vec(x, y, dtype),
            "max": np.maximum, "min": np.minimum,
        }  # fmt: skip
        if op not in table:
            raise KirError(f"no {op} for {dtype}")
        return table[op]
    low, high = LOW[dtype], HIGH[dtype]
    if dtype == "bool":
        scalar: dict[str, Fn] = {
            "add": lambda x, y: bool((x + y) & 1), "sub": lambda x, y: bool((x - y) & 1),
            "mul": lambda x, y: bool(x and y), "max": lambda x, y: bool(x or y),
            "min": lambda x, y: bool(x and y),
        }  # fmt: skip
    else:
        def checked(fn: Fn) -> Fn:
            def run(x: int, y: int) -> int:
                r = fn(x, y)
                return r if low <= r <= high else wrap_int(r, dtype)
            return run

        scalar = {
            "add": checked(lambda x, y: x + y), "sub": checked(lambda x, y: x - y),
            "mul": checked(lambda x, y: x * y),
            "div": lambda x, y: c_div(x, y, dtype), "mod": lambda x, y: c_rem(x, y, dtype),
            "max": max, "min": min,
        }  # fmt: skip
    if op not in scalar:
        raise KirError(f"no {op} for {dtype}")
    return scalar[op]


# -- unary operators ------------------------------------------------------------------------
def unary_fn(op: str, dtype: str, vector: bool) -> Fn:
    if op == "neg":
        if dtype in FLOATS or vector:
            return lambda x: -x
        return lambda x: wrap_int(-x, dtype)
    if op == "not":
        if vector:
            return np.invert  # logical on bool vectors, bitwise on integers
        if dtype == "bool":
            return lambda x: not x
        if dtype not in FLOATS:
            return lambda x: wrap_int(~x, dtype)
    raise KirError(f"no {op} for {dtype}")


# -- calls ----------------------------------------------------------------------------------
_F64_MATH: dict[str, Fn] = {
    "exp": np.exp, "log": np.log, "tanh": np.tanh, "sqrt": np.sqrt, "sin": np.sin,
    "cos": np.cos, "tan": np.tan, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan,
    "sinh": np.sinh, "cosh": np.cosh, "asinh": np.arcsinh, "acosh": np.arccosh,
    "atanh": np.arctanh, "pow": np.power,
}  # fmt: skip
_EXACT: dict[str, Fn] = {"abs": np.abs, "floor": np.floor, "ceil": np.ceil, "round": np.rint}


def _erf(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return np.array([math.erf(v) for v in x.tolist()], np.float64)
    return np.float64(math.erf(float(x)))


def _fma_f64(a: Any, b: Any, c: Any) -> Any:
    """``a * b + c`` rounded once (exact rational arithmetic)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) or isinstance(c, np.ndarray):
        a, b, c = np.broadcast_arrays(np.asarray(a), np.asarray(b), np.asarray(c))
        return np.array([_fma_f64(*t) for t in zip(a.tolist(), b.tolist(), c.tolist())],
                        np.float64)
    a, b, c = float(a), float(b), float(c)
    if not all(map(math.isfinite, (a, b, c))):
        return np.float64(np.float64(a) * np.float64(b) + np.float64(c))
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    if exact == 0:
        return np.float64(a * b + c)  # the sign of an exact zero as IEEE gives it
    try:
        return np.float64(float(exact))
    except OverflowError:
        return np.float64(math.copysign(math.inf, exact))


_F32_MIDPOINT_BITS, _F32_MIDPOINT = np.uint64((1 << 29) - 1), np.uint64(1 << 28)
_ABS_BITS = np.uint64((1 << 63) - 1)
_F32_NORMAL_BITS = np.uint64((1023 - 126) << 52)  # f64 bits of 2**-126, f32's least normal


def _fma_f32(a: Any, b: Any, c: Any) -> Any:
    """``a * b + c`` rounded once to f32: the product is exact in f64; where the f64 sum
    could round twice (it lies on an f32 midpoint, or below f32's normal range) the sum
    is rounded to odd in f64 first (two-sum error term), then to nearest even f32."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) or isinstance(c, np.ndarray):
        p = np.multiply(a, b, dtype=np.float64)
        s = np.add(p, c, dtype=np.float64)
        bits = s.view(np.uint64)
        risky = ((bits & _F32_MIDPOINT_BITS) == _F32_MIDPOINT) | (
            (bits & _ABS_BITS) - np.uint64(1) < _F32_NORMAL_BITS - np.uint64(1))
        if not risky.any():
            return s.astype(np.float32)
        c64 = np.asarray(c, np.float64)
        t = s - p
        err = (p - (s - t)) + (c64 - t)
        fix = np.isfinite(s) & (err != 0) & ((bits & np.uint64(1)) == 0)
        up = (err > 0) == (s > 0)  # away from zero: the bit pattern grows
        step = np.where(up, np.uint64(1), np.uint64(0xFFFFFFFFFFFFFFFF))
        odd = np.where(fix, bits + step, bits).astype(np.uint64).view(np.float64)
        return odd.astype(np.float32)
    product = float(a) * float(b)
    addend = float(c)
    total = product + addend
    if not math.isfinite(total):
        return np.float32(np.float64(a) * np.float64(b) + np.float64(c))
    part = total - product
    return np.float32(_odd_double(total, (product - (total - part)) + (addend - part)))


def _shift(fn: str, dtype: str, vector: bool) -> Fn:
    bits = BITS[dtype]

    def check(y: Any) -> None:
        if np.any(np.asarray(y) < 0) or np.any(np.asarray(y) >= bits):
            raise KirExecutionError(f"{fn} of {dtype} by {y}: the amount must be in "
                                    f"[0, {bits})")

    if vector:
        op = np.left_shift if fn == "shl" else np.right_shift
        np_type = REGISTER_NP[dtype]

        def vec(x: Any, y: Any) -> Any:
            check(y)
            return op(np.asarray(x, np_type), np.asarray(y, np_type))
        return vec

    def scalar(x: int, y: int) -> int:
        if not 0 <= y < bits:
            check(y)
        return wrap_int(x << y, dtype) if fn == "shl" else x >> y
    return scalar


def _lane_bytes(value: Any, lanes: int, signed: bool) -> np.ndarray:
    """The four little-endian bytes of each i32 lane, as a (lanes, 4) array."""
    words = np.asarray(value, "<i4")
    if words.shape != (lanes,):
        words = np.full(lanes, words, "<i4")
    return words.view(np.int8 if signed else np.uint8).reshape(lanes, 4)


def _dot4_u8s8(acc: Any, a: Any, b: Any) -> Any:
    """i32: ``acc + sum_t u8(byte t of a) * s8(byte t of b)``, wrapping."""
    if isinstance(acc, np.ndarray) or isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        lanes = max(np.size(acc), np.size(a), np.size(b))
        products = _lane_bytes(a, lanes, False).astype(np.int32) * _lane_bytes(b, lanes, True)
        total = products.sum(axis=1, dtype=np.int64) + np.asarray(acc, np.int64)
        return total.astype(np.int32)  # two's complement wrap
    total = acc
    for t in range(4):
        ub = (a >> (8 * t)) & 0xFF
        sb = (b >> (8 * t)) & 0xFF
        total += ub * (sb - 256 if sb >= 128 else sb)
    return wrap_int(total, "i32")


def _dot4_u8s7(acc: Any, a: Any, b: Any) -> Any:
    """``dot4_u8s8`` whose ``b`` bytes must all lie in [-64, 64] (two u8 x s8 products
    then sum within int16, which ``vpmaddubsw`` needs to be exact); outside it the call
    is undefined, and the interpreter says so."""
    lanes = max(np.size(acc), np.size(a), np.size(b))
    if np.abs(_lane_bytes(b, lanes, True).astype(np.int16)).max() > 64:
        raise KirExecutionError("dot4_u8s7 with a weight byte outside [-64, 64]")
    return _dot4_u8s8(acc, a, b)


def _dot8_u8s6(acc: Any, a0: Any, b0: Any, a1: Any, b1: Any) -> Any:
    """``dot4_u8s8`` of two word pairs whose ``b`` bytes must all lie in [-32, 32] (the
    four u8 x s8 products of an int16 lane then sum within int16, which adding two
    ``vpmaddubsw`` results needs to be exact); outside it the call is undefined, and the
    interpreter says so."""
    lanes = max(np.size(acc), np.size(a0), np.size(b0), np.size(a1), np.size(b1))
    for b in (b0, b1):
        if np.abs(_lane_bytes(b, lanes, True).astype(np.int16)).max() > 32:
            raise KirExecutionError("dot8_u8s6 with a weight byte outside [-32, 32]")
    return _dot4_u8s8(_dot4_u8s8(acc, a0, b0), a1, b1)


def call_fn(name: str, dtype: str, vector: bool) -> Fn:
    """``f(*args)`` for ``Call(name)`` whose first argument has ``dtype``."""
    if name in ("dot4_u8s8", "dot4_u8s7"):
        if dtype != "i32":
            raise KirError(f"{name} takes i32 lanes, not {dtype}")
        return _dot4_u8s8 if name == "dot4_u8s8" else _dot4_u8s7
    if name == "dot8_u8s6":
        if dtype != "i32":
            raise KirError(f"{name} takes i32 lanes, not {dtype}")
        return _dot8_u8s6
    if name in ("shl", "shr"):
        if dtype not in INTEGERS:
            raise KirError(f"{name} takes integers, not {dtype}")
        return _shift(name, dtype, vector)
    if dtype not in FLOATS:
        raise KirError(f"{name} takes floats, not {dtype}")
    if name in _EXACT:
        return _EXACT[name]  # exact in every float type
    if dtype in HALF_FLOATS:  # the f32 function, rounded once more
        inner = call_fn(name, "f32", vector)
        return lambda *args: round_half(inner(*args), dtype)
    if name == "fma":
        return _fma_f32 if dtype == "f32" else _fma_f64
    if name == "fdiv":
        return lambda x, y: x / y  # numpy's division is the correctly rounded quotient
    fn = _erf if name == "erf" else _F64_MATH[name]
    if dtype == "f64":
        return fn
    if vector:
        return lambda *args: np.asarray(fn(*(np.asarray(a, np.float64) for a in args)),
                                        np.float64).astype(np.float32)
    return lambda *args: np.float32(fn(*(np.float64(a) for a in args)))


# -- casts ----------------------------------------------------------------------------------
def _float_to_int_scalar(dtype: str) -> Fn:
    low, high = LOW[dtype], HIGH[dtype]

    def run(x: Any) -> int:
        if math.isfinite(x):
            value = int(x)  # truncates toward zero
            if low <= value <= high:
                return value
        raise KirExecutionError(f"cast of {float(x)!r} to {dtype} is out of range")
    return run


def _float_to_int_vector(dtype: str) -> Fn:
    low, above = float(LOW[dtype]), float(HIGH[dtype] + 1)  # powers of two: exact

    def run(x: np.ndarray) -> np.ndarray:
        t = np.trunc(np.asarray(x, np.float64))
        if not (np.isfinite(t).all() and (t >= low).all() and (t < above).all()):
            raise KirExecutionError(f"cast of {x.tolist()} to {dtype} is out of range")
        return t.astype(REGISTER_NP[dtype])
    return run


def _int_to_float_scalar(dst: str) -> Fn:
    if dst == "f64":
        return int_to_f64
    return int_to_f32  # halves round once more (see cast_fn)


def cast_fn(src: str, dst: str, vector: bool) -> Fn:
    """``f(x)`` for ``Cast(dst, x)`` with ``x`` of ``src``, exactly as the llvm backend
    computes it (see the rules in :mod:`irkit.kir.interpret`)."""
    if src == dst:
        return lambda x: x
    if dst in HALF_FLOATS:
        if src in FLOATS and src != "f64":  # f32 or the other 16-bit type: round once
            return lambda x: round_half(np.asarray(x, np.float32) if vector else
                                        np.float32(x), dst)
        if src == "f64":
            return lambda x: round_half(f64_to_f32_odd(x), dst)
        if ITEMSIZE[src] > 2:  # through f64 (exact up to 2**53), then to odd f32
            wide = cast_fn(src, "f64", vector)
            return lambda x: round_half(f64_to_f32_odd(wide(x)), dst)
        small = cast_fn(src, "f32", vector)  # exact in f32
        return lambda x: round_half(small(x), dst)
    if src in HALF_FLOATS:
        src = "f32"
        if dst == "f32":
            return lambda x: x
    if dst == "bool":
        if vector:
            return lambda x: np.asarray(x) != 0
        return lambda x: bool(x != 0)  # NaN != 0: true
    if src in FLOATS and dst in FLOATS:
        np_type = REGISTER_NP[dst]
        if vector:
            return lambda x: np.asarray(x).astype(np_type)
        return np_type
    if src in FLOATS:
        return _float_to_int_vector(dst) if vector else _float_to_int_scalar(dst)
    if dst in FLOATS:
        if vector:
            np_type = REGISTER_NP[dst]
            return lambda x: np.asarray(x).astype(np_type)  # C conversion: one rounding
        if src == "bool":
            return lambda x: REGISTER_NP[dst](1.0 if x else 0.0)
        return _int_to_float_scalar(dst)
    # integer -> integer: the value (read per the source's signedness) modulo 2**bits
    if vector:
        np_type = REGISTER_NP[dst]
        return lambda x: np.asarray(x).astype(np_type)
    if src == "bool":
        return lambda x: 1 if x else 0
    return lambda x: wrap_int(int(x), dst)
