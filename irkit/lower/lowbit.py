"""Low-bit element types in lowering: float8 (e4m3fn, e4m3fnuz, e5m2, e5m2fnuz, e8m0),
float4e2m1, int4/uint4 and int2/uint2.

Memory layout: one element per byte, holding the type's code in its low bits (the layout
``ml_dtypes`` arrays have, so graph inputs and outputs pass through unchanged). Kernel IR
sees these values as ``u8`` codes; no other kernel-IR type exists for them, so backends
need nothing new.

- **Widening** (a low-bit value read as a number) looks the code up in a 256-entry f32
  table built by ``ml_dtypes`` — exact by construction, for every code.
- **Narrowing** from a float follows ONNX's Cast: round to nearest even on the type's
  value grid, with ``saturate`` (the default) clamping out-of-range values and
  infinities to the largest finite value, and without it giving NaN (or ±inf for e5m2);
  NaN stays NaN; fnuz types have no negative zero. The code is computed arithmetically:
  for ``a = |x|`` in the binade of exponent ``e' = max(floor(log2 a), emin)``, the grid
  step is ``q = 2^(e' - mantissa_bits)`` and the code magnitude is
  ``(e' - emin) * 2^mantissa_bits + round_half_even(a / q)`` — the positive codes of these
  formats are their values in increasing order, so a carry into the next binade lands on
  the right code. float4e2m1 always saturates (no infinities or NaN; NaN gives -0, as
  ml_dtypes does). Integer targets of Cast truncate toward zero and keep the low bits
  (numpy's ``astype``); QuantizeLinear saturates them to the type's range instead.
- float8e8m0 (a power of two) is written by Cast with ONNX's ``round_mode`` (up, down,
  nearest) and ``saturate``, as ``onnx.numpy_helper.to_float8e8m0`` defines them;
  QuantizeLinear to it is refused.

Ops that only move elements (Reshape, Transpose, Slice, Concat…) work on the codes as
they are; any other op on a low-bit value is refused (never computed on codes as if they
were ``u8`` numbers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from irkit.ir import DType, Node, Value
from irkit.kir import Binary, Call, Cast, Const, Expr, Select, Unary
from irkit.lower.context import LoweringContext
from irkit.lower.tensor import KIR_DTYPES, Index, LoweringError, TensorRef

STORAGE = "u8"


@dataclass(frozen=True)
class FloatFormat:
    mantissa: int  # explicit mantissa bits
    emin: int  # exponent of the smallest normal value
    emax: int  # exponent of the largest finite value's binade
    max_code: int  # code (magnitude) of the largest finite value
    nan_code: int  # the code written for NaN
    overflow_code: int  # written for out-of-range values without saturation (no sign)
    sign_bit: int
    negative_zero: bool  # whether -0 has a code (fnuz types: no)
    signed_overflow: bool  # whether overflow_code takes x's sign (e5m2's ±inf)


FLOAT_FORMATS: dict[DType, FloatFormat] = {
    DType.FLOAT8E4M3FN: FloatFormat(3, -6, 8, 0x7E, 0x7F, 0x7F, 0x80, True, True),
    DType.FLOAT8E4M3FNUZ: FloatFormat(3, -7, 7, 0x7F, 0x80, 0x80, 0x80, False, False),
    DType.FLOAT8E5M2: FloatFormat(2, -14, 15, 0x7B, 0x7F, 0x7C, 0x80, True, True),
    DType.FLOAT8E5M2FNUZ: FloatFormat(2, -15, 15, 0x7F, 0x80, 0x80, 0x80, False, False),
    DType.FLOAT4E2M1: FloatFormat(1, 0, 2, 0x7, 0x8, 0x7, 0x8, True, True),
}
INT_BITS: dict[DType, tuple[int, bool]] = {  # bits, signed
    DType.INT4: (4, True), DType.UINT4: (4, False),
    DType.INT2: (2, True), DType.UINT2: (2, False),
}
LOW_BIT = frozenset([*FLOAT_FORMATS, *INT_BITS, DType.FLOAT8E8M0])
CODE_BITS = {DType.FLOAT4E2M1: 4, **{d: bits for d, (bits, _) in INT_BITS.items()}}

# Ops that only move, select or describe elements: they run on the codes unchanged.
MOVES = frozenset([
    "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice",
    "Concat", "Split", "Gather", "Expand", "Tile", "Shape", "Size",
])


def is_low_bit(dtype: DType | None) -> bool:
    return dtype in LOW_BIT


def touches(node: Node) -> bool:
    """Whether ``node`` reads or writes a low-bit value, or is a MatMul by packed int4
    weights (:mod:`irkit.lower.int4_matmul`)."""
    from irkit.lower import int4_matmul

    return any(v is not None and is_low_bit(v.dtype) for v in (*node.inputs, *node.outputs)
               ) or int4_matmul.matches(node)


def codes(array: Any) -> np.ndarray:
    """A low-bit numpy array as its one-byte codes (``u8``)."""
    arr = np.ascontiguousarray(array)
    return arr.view(np.uint8) if arr.dtype.itemsize == 1 else arr.astype(np.uint8)


def decode_table(dtype: DType) -> np.ndarray:
    """f32 value of each of the 256 byte codes (the type's code in the low bits)."""
    bits = CODE_BITS.get(dtype, 8)
    raw = (np.arange(256, dtype=np.uint16) & ((1 << bits) - 1)).astype(np.uint8)
    return raw.view(dtype.numpy).astype(np.float32)


def widen(ctx: LoweringContext, ref: TensorRef, dtype: DType) -> TensorRef:
    """``ref`` (codes of low-bit ``dtype``) read as f32 values."""
    if ref.const is not None:
        return ctx.const_ref(decode_table(dtype)[np.asarray(ref.const, np.uint8)], "f32")
    table = ctx.const_ref(decode_table(dtype), "f32")
    return TensorRef(ref.shape, "f32",
                     lambda idx: table.read((Cast("i64", ref.read(idx)),)),
                     cost=ref.cost + 2)


def _float(value: float, calc: str) -> Const:
    return Const(float(np.float32(value)) if calc == "f32" else float(value), calc)


def narrow_float(x: Expr, fmt: FloatFormat, saturate: bool) -> Expr:
    """The code (u8) of float ``x`` rounded to ``fmt`` (see the module docstring)."""
    calc = "f64" if x.dtype == "f64" else "f32"
    if x.dtype != calc:
        x = Cast(calc, x)
    a = Call("abs", (x,))
    step: Expr = _float(2.0 ** (fmt.emin - fmt.mantissa), calc)
    offset: Expr = _float(0.0, calc)
    for e in range(fmt.emin + 1, fmt.emax + 1):
        above = Binary("ge", a, _float(2.0 ** e, calc))
        step = Select(above, _float(2.0 ** (e - fmt.mantissa), calc), step)
        offset = Select(above, _float((e - fmt.emin) * 2 ** fmt.mantissa, calc), offset)
    mag = offset + Call("round", (Call("fdiv", (a, step)),))
    over = Binary("gt", mag, _float(fmt.max_code, calc))
    top = _float(fmt.max_code if saturate else fmt.overflow_code, calc)
    signed_top = saturate or fmt.signed_overflow
    mag = Select(over, top, mag)
    negative: Expr = Select(Binary("eq", x, _float(0.0, calc)),
                      Binary("lt", Call("fdiv", (_float(1.0, calc), x)), _float(0.0, calc)),
                      Binary("lt", x, _float(0.0, calc)))
    if not fmt.negative_zero:
        negative = Binary("and", negative, Binary("ne", mag, _float(0.0, calc)))
    if not signed_top:
        negative = Binary("and", negative, Unary("not", over))
    code = Select(negative, mag + _float(fmt.sign_bit, calc), mag)
    code = Select(Binary("ne", x, x), _float(fmt.nan_code, calc), code)
    return Cast(STORAGE, Cast("i32", code))


def int_code(value: Expr, dtype: DType) -> Expr:
    """The code of an integer-valued expression: its low bits (two's complement)."""
    bits, _ = INT_BITS[dtype]
    v = value if value.dtype == "i64" else Cast("i64", value)
    return Cast(STORAGE, Binary("and", v, Const((1 << bits) - 1)))


def int_range(dtype: DType) -> tuple[int, int]:
    bits, signed = INT_BITS[dtype]
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _truncate(x: Expr) -> Expr:
    """Float ``x`` truncated toward zero as i64 (NaN gives 0, huge values are clamped, so
    the conversion is always defined)."""
    calc = "f64" if x.dtype == "f64" else "f32"
    if x.dtype != calc:
        x = Cast(calc, x)
    clamped = Binary("min", Binary("max", x, _float(-2.0 ** 62, calc)), _float(2.0 ** 62, calc))
    return Cast("i64", Select(Binary("ne", x, x), _float(0.0, calc), clamped))


def narrow(x: Expr, from_kir: str, to: DType, saturate: bool, node: Node) -> Expr:
    """Element ``x`` (a kernel-IR number of type ``from_kir``) cast to low-bit ``to``."""
    if to in FLOAT_FORMATS:
        fmt = FLOAT_FORMATS[to]
        value = x if from_kir in ("f32", "f64") else Cast("f32", x)
        return narrow_float(value, fmt, saturate or to is DType.FLOAT4E2M1)
    if to in INT_BITS:
        if from_kir == "bool":
            return Cast(STORAGE, x)
        integer = _truncate(x) if from_kir in ("f32", "f64", "f16", "bf16") else x
        return int_code(integer, to)
    raise LoweringError(f"{node.op} to {to.name} is not supported (Cast to it is)")


def narrow_e8m0(x: Expr, pow2: TensorRef, round_mode: str, saturate: bool) -> Expr:
    """The float8e8m0 code of ``x`` (its f32 exponent field, as ONNX's ``to_float8e8m0``
    computes it): ``floor(log2 |x|)`` from ``log`` corrected by one either way against an
    exact table of powers of two, then rounded ``up`` (any fraction), ``down`` or to
    ``nearest``; ``saturate`` keeps 254 from rounding up to 255 (NaN); NaN and infinities
    give 255; the sign is ignored (the exponent bits of a negative number)."""
    x = x if x.dtype == "f32" else Cast("f32", x)
    a = Call("abs", (x,))

    def f(v: float) -> Const:
        return Const(float(v), "f32")

    def power(e: Expr) -> Expr:  # 2**e for an integral f32 e in [-149, 128]
        clamped = Binary("min", Binary("max", e, f(-149.0)), f(128.0))
        return pow2.read((Cast("i64", clamped) + 149,))

    raw: Expr = Call("floor", (Call("log", (a,)) * f(1.0 / np.log(2.0)),))
    e0 = Select(Binary("ne", raw, raw), f(0.0), Binary("min", Binary("max", raw, f(-149.0)),
                                                         f(128.0)))
    p0 = power(e0)
    e = Select(Binary("gt", p0, a), e0 - f(1.0),
               Select(Binary("le", p0 * f(2.0), a), e0 + f(1.0), e0))
    p = power(e)
    normal = Binary("ge", a, f(2.0 ** -126))
    exponent = Select(normal, e + f(127.0), f(0.0))
    up: Expr
    if round_mode == "up":
        up = Select(normal, Binary("ne", a, p), Binary("ne", a, f(0.0)))
    elif round_mode == "nearest":
        up = Select(normal, Binary("ge", a, p * f(1.5)), Binary("gt", a, f(2.0 ** -127)))
    else:
        up = Const(False, "bool")
    if saturate:
        up = Binary("and", up, Binary("ne", exponent, f(254.0)))
    code = Select(up, exponent + f(1.0), exponent)
    special = Binary("or", Binary("ne", x, x), Binary("gt", a, f(float(np.finfo(np.float32).max))))
    return Cast(STORAGE, Cast("i32", Select(special, f(255.0), code)))


# -- ops ------------------------------------------------------------------------------
def _dtype_of(value: Value | None) -> DType | None:
    return value.dtype if value is not None else None


def _inline(shape: tuple[Expr, ...], dtype: str, read: Callable[[Index], Expr],
            inputs: list[TensorRef]) -> TensorRef:
    from irkit.lower.elementwise import inline

    return inline(shape, dtype, read, inputs)


def _kir(dtype: DType, node: Node) -> str:
    if is_low_bit(dtype):
        return STORAGE
    kir = KIR_DTYPES.get(dtype)
    if kir is None:
        raise LoweringError(f"{node.op} with {dtype.name} is not supported")
    return kir


def _cast_to(ctx: LoweringContext, node: Node, x: TensorRef, src: DType, to: DType
             ) -> TensorRef:
    saturate = bool(node.attr("saturate", 1))
    if is_low_bit(src):
        if src == to:
            return x
        x = widen(ctx, x, src)
        src = DType.FLOAT32
    src_kir = x.dtype
    if to is DType.FLOAT8E8M0:
        mode = node.attr("round_mode", "up")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode not in ("up", "down", "nearest"):
            raise LoweringError(f"{node.op} round_mode {mode!r} is not up, down or nearest")
        with np.errstate(over="ignore"):  # 2**128 is inf, on purpose
            table = np.ldexp(np.float32(1.0), np.arange(-149, 129)).astype(np.float32)
        pow2 = ctx.const_ref(table, "f32")
        return _inline(x.shape, STORAGE, lambda idx: narrow_e8m0(x.read(idx), pow2, mode,
                                                                 saturate), [x])
    if is_low_bit(to):
        return _inline(x.shape, STORAGE, lambda idx: narrow(x.read(idx), src_kir, to,
                                                            saturate, node), [x])
    out = _kir(to, node)
    if out == "bool":
        return _inline(x.shape, out, lambda idx: Binary("ne", x.read(idx),
                                                        Const(0.0, "f32")), [x])
    return _inline(x.shape, out, lambda idx: Cast(out, x.read(idx)), [x])


def lower_cast(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]) -> TensorRef:
    x = ins[0]
    assert x is not None
    src = _dtype_of(node.inputs[0])
    to = DType(node.attr("to")) if node.op == "Cast" else _dtype_of(node.inputs[1])
    assert src is not None and to is not None
    return _cast_to(ctx, node, x, src, to)


def lower_dequantize(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                     ) -> TensorRef:
    """``(x - zero_point) * scale`` with x (and the zero point) widened from codes."""
    from irkit.lower.quant_ops import _granular

    x, scale = ins[0], ins[1]
    zero = ins[2] if len(ins) > 2 else None
    assert x is not None and scale is not None
    src = _dtype_of(node.inputs[0])
    if not is_low_bit(src) or scale.dtype not in ("f32", "f64", "f16", "bf16"):
        raise LoweringError(f"DequantizeLinear of {src} by a {scale.dtype} scale is not "
                            "supported")
    assert src is not None
    xf = widen(ctx, x, src)
    zf = widen(ctx, zero, src) if zero is not None else None
    out = (_kir(DType(int(node.attr("output_dtype"))), node) if node.attr("output_dtype", 0)
           else scale.dtype)
    calc = "f64" if scale.dtype == "f64" else "f32"
    scale_at = _granular(node, x, scale, "x_scale")
    zero_at = _granular(node, x, zf, "x_zero_point") if zf is not None else None

    def read(idx: Index) -> Expr:
        diff = xf.read(idx)
        if zero_at is not None:
            diff = diff - zero_at(idx)
        if calc != "f32":
            diff = Cast(calc, diff)
        s = scale_at(idx)
        value = diff * (s if s.dtype == calc else Cast(calc, s))
        return value if out == calc else Cast(out, value)

    return _inline(x.shape, out, read, [r for r in (x, scale, zero) if r is not None])


def lower_quantize(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                   ) -> TensorRef:
    """int4/int2: ``clamp(round_half_even(x / scale) + zero_point)``; float8/float4:
    ``cast(x / scale + zero_point)`` with the Cast's rounding and saturation."""
    from irkit.lower.quant_ops import _granular, _promote

    x, scale = ins[0], ins[1]
    zero = ins[2] if len(ins) > 2 else None
    assert x is not None and scale is not None
    to = _dtype_of(node.outputs[0])
    assert to is not None and is_low_bit(to)
    if x.dtype not in ("f32", "f64", "f16", "bf16") or scale.dtype not in (
            "f32", "f64", "f16", "bf16"):
        raise LoweringError(f"QuantizeLinear of {x.dtype} by a {scale.dtype} scale is not "
                            "supported")
    if node.attr("precision", 0):
        precision = _kir(DType(int(node.attr("precision"))), node)
    else:
        precision = _promote(x.dtype, scale.dtype)
    zf = widen(ctx, zero, to) if zero is not None else None
    scale_at = _granular(node, x, scale, "y_scale")
    zero_at = _granular(node, x, zf, "y_zero_point") if zf is not None else None
    saturate = bool(node.attr("saturate", 1))

    def as_(e: Expr, dtype: str) -> Expr:
        return e if e.dtype == dtype else Cast(dtype, e)

    def read(idx: Index) -> Expr:
        q = Call("fdiv", (as_(x.read(idx), precision), as_(scale_at(idx), precision)))
        if to in INT_BITS:
            v: Expr = Cast("f64", Call("round", (q,)))
            if zero_at is not None:
                v = v + Cast("f64", zero_at(idx))
            lo, hi = int_range(to)
            v = Binary("min", Binary("max", v, Const(float(lo), "f64")), Const(float(hi), "f64"))
            v = Select(Binary("ne", v, v), Const(float(lo), "f64"), v)
            return int_code(Cast("i64", v), to)
        calc = "f64" if precision == "f64" else "f32"
        v = as_(q, calc)
        if zero_at is not None:
            v = v + as_(zero_at(idx), calc)
        return narrow(v, calc, to, saturate, node)

    return _inline(x.shape, STORAGE, read, [r for r in (x, scale, zero) if r is not None])


def lower_constant(ctx: LoweringContext, node: Node) -> TensorRef:
    value = node.attr("value", None)
    if value is None:
        raise LoweringError("Constant without a tensor value")
    return ctx.const_ref(codes(value), STORAGE)


def lower_node(ctx: LoweringContext, node: Node, ins: list[TensorRef | None],
               lowerings: Mapping[str, Callable[..., list[TensorRef]]]) -> list[TensorRef]:
    """The refs of a node that reads or writes low-bit values."""
    if node.domain not in ("", "ai.onnx"):
        raise LoweringError(f"{node.op} on low-bit types is not supported")
    if node.op in ("Cast", "CastLike"):
        return [lower_cast(ctx, node, ins)]
    from irkit.lower import int4_matmul

    if node.op == "MatMul" and int4_matmul.matches(node):
        return int4_matmul.lower(ctx, node, ins)
    if node.op == "DequantizeLinear":
        if int4_matmul.only_for_packed(node):
            return [int4_matmul.unused(node)]
        return [lower_dequantize(ctx, node, ins)]
    if node.op == "QuantizeLinear":
        return [lower_quantize(ctx, node, ins)]
    if node.op == "Constant":
        return [lower_constant(ctx, node)]
    if node.op in MOVES and node.op in lowerings:
        return lowerings[node.op](ctx, node, ins)
    kinds = sorted({v.dtype.name for v in (*node.inputs, *node.outputs)
                    if v is not None and v.dtype is not None and is_low_bit(v.dtype)})
    raise LoweringError(f"{node.op} on {', '.join(kinds)} is not supported (low-bit types "
                        "are cast, quantized, dequantized or moved)")


__all__ = ["LOW_BIT", "STORAGE", "codes", "decode_table", "is_low_bit", "lower_node",
           "narrow", "touches", "widen"]
