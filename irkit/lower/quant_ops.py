"""ONNX quantization ops: QuantizeLinear, DequantizeLinear, MatMulInteger, QLinearMatMul,
ConvInteger and QLinearConv on 8- and 16-bit integers.

The arithmetic follows the ONNX reference: quantization divides in the scale's precision
(an exactly rounded division, never a reciprocal multiply), rounds half to even, adds the
zero point and saturates; integer products accumulate in i32; requantization multiplies
the i32 accumulator by ``a_scale * b_scale / y_scale`` in f64 (numpy promotes i32 times
a float scale to f64). Float8 and 4- or 2-bit types are refused: the lowering has no
kernel-IR types for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from irkit.ir import DType, Node
from irkit.kir import (
    Binary,
    Buffer,
    Call,
    Cast,
    Const,
    Expr,
    For,
    Load,
    Select,
    Stmt,
    Store,
    block,
)
from irkit.kir.nodes import FLOATS
from irkit.lower.context import LoweringContext
from irkit.lower.tensor import (
    KIR_DTYPES,
    Index,
    LoweringError,
    TensorRef,
    broadcast_shape,
    buffer_ref,
    dims_equal,
    flat_index,
    is_static,
    product,
    static,
)

Reader = Callable[[Index], Expr]

RANGES = {"u8": (0, 255), "i8": (-128, 127), "u16": (0, 65535), "i16": (-32768, 32767)}
INT8 = ("u8", "i8")


def _as(e: Expr, dtype: str) -> Expr:
    return e if e.dtype == dtype else Cast(dtype, e)


def _f64(value: float) -> Const:
    return Const(float(value), "f64")


def _kir_dtype(onnx_type: int, what: str) -> str:
    dtype = KIR_DTYPES.get(DType(onnx_type))
    if dtype is None:
        raise LoweringError(f"{what} {DType(onnx_type).name} is not supported")
    return dtype


def _is_scalar(ref: TensorRef) -> bool:
    n = product(ref.shape)
    return ref.rank == 0 or (is_static(n) and static(n) == 1)


def _scalar(ref: TensorRef) -> Expr:
    return ref.read(tuple(Const(0) for _ in ref.shape))


def _granular(node: Node, x: TensorRef, ref: TensorRef, what: str) -> Reader:
    """A reader of scale or zero point ``ref`` at x's index: per tensor (one element), per
    axis (1-D along ``axis``) or blocked (x's rank, ``block_size`` elements of ``axis``
    share one value)."""
    if _is_scalar(ref):
        return lambda idx: _scalar(ref)
    axis = int(node.attr("axis", 1)) % x.rank
    block_size = int(node.attr("block_size", 0))
    if not block_size:
        if ref.rank != 1 or not dims_equal(ref.shape[0], x.shape[axis]):
            raise LoweringError(f"{node.op}: {what} of rank {ref.rank} is neither per tensor "
                                f"nor per axis {axis}")
        return lambda idx: ref.read((idx[axis],))
    blocks = math.ceil(static(x.shape[axis], f"{node.op} blocked axis") / block_size)
    if ref.rank != x.rank or static(ref.shape[axis], f"{node.op} {what} dim") != blocks or any(
            not dims_equal(ref.shape[d], x.shape[d]) for d in range(x.rank) if d != axis):
        raise LoweringError(f"{node.op}: {what} shape does not block axis {axis} of x by "
                            f"{block_size}")
    return lambda idx: ref.read(tuple(i // block_size if d == axis else i
                                      for d, i in enumerate(idx)))


def _inline(shape: Sequence[Expr], dtype: str, read: Reader, inputs: Sequence[TensorRef]
            ) -> TensorRef:
    from irkit.lower.elementwise import inline

    return inline(shape, dtype, read, inputs)


def _saturate(value: Expr, dtype: str) -> Expr:
    """f64 ``value`` (already integral) clamped to ``dtype``'s range and converted; NaN
    gives the low end (as numpy's cast to i32 followed by clip does)."""
    lo, hi = (_f64(v) for v in RANGES[dtype])
    clamped = Binary("min", Binary("max", value, lo), hi)
    return Cast(dtype, Select(Binary("ne", value, value), lo, clamped))


def _quant_dtype(node: Node, zero: TensorRef | None) -> str:
    if zero is not None:
        dtype = zero.dtype
    elif node.attr("output_dtype", 0):
        dtype = _kir_dtype(int(node.attr("output_dtype")), f"{node.op} output type")
    else:
        dtype = "u8"
    if dtype not in RANGES:
        raise LoweringError(f"{node.op} to {dtype} is not supported (u8, i8, u16, i16)")
    return dtype


def _promote(*dtypes: str) -> str:
    """numpy's result type of arithmetic on floats of ``dtypes``."""
    if "f64" in dtypes:
        return "f64"
    if "f32" in dtypes or len(set(dtypes)) > 1:
        return "f32"
    return dtypes[0]


def lower_quantize(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                   ) -> list[TensorRef]:
    """``saturate(round_half_even(x / scale) + zero_point)``."""
    x, scale = ins[0], ins[1]
    zero = ins[2] if len(ins) > 2 else None
    assert x is not None and scale is not None
    if x.dtype not in FLOATS or scale.dtype not in FLOATS:
        raise LoweringError(f"QuantizeLinear of {x.dtype} by a {scale.dtype} scale is not "
                            "supported")
    out = _quant_dtype(node, zero)
    if node.attr("precision", 0):
        precision = _kir_dtype(int(node.attr("precision")), "QuantizeLinear precision")
    else:
        precision = _promote(x.dtype, scale.dtype)
    scale_at = _granular(node, x, scale, "y_scale")
    zero_at = _granular(node, x, zero, "y_zero_point") if zero is not None else None

    def read(idx: Index) -> Expr:
        q = Call("fdiv", (_as(x.read(idx), precision), _as(scale_at(idx), precision)))
        v: Expr = Cast("f64", Call("round", (q,)))
        if zero_at is not None:
            v = v + Cast("f64", zero_at(idx))
        return _saturate(v, out)

    refs = [r for r in (x, scale, zero) if r is not None]
    return [_inline(x.shape, out, read, refs)]


def lower_dequantize(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                     ) -> list[TensorRef]:
    """``(x - zero_point) * scale``: the difference in f32, the product in the scale's
    precision (f64 for f64 scales), then the output type."""
    x, scale = ins[0], ins[1]
    zero = ins[2] if len(ins) > 2 else None
    assert x is not None and scale is not None
    if x.dtype not in (*RANGES, "i32") or scale.dtype not in FLOATS:
        raise LoweringError(f"DequantizeLinear of {x.dtype} by a {scale.dtype} scale is not "
                            "supported")
    if node.attr("output_dtype", 0):
        out = _kir_dtype(int(node.attr("output_dtype")), "DequantizeLinear output type")
    else:
        out = scale.dtype
    calc = "f64" if scale.dtype == "f64" else "f32"
    scale_at = _granular(node, x, scale, "x_scale")
    zero_at = _granular(node, x, zero, "x_zero_point") if zero is not None else None

    def read(idx: Index) -> Expr:
        diff: Expr = Cast("f32", x.read(idx))
        if zero_at is not None:
            diff = diff - Cast("f32", zero_at(idx))
        return _as(_as(diff, calc) * _as(scale_at(idx), calc), out)

    refs = [r for r in (x, scale, zero) if r is not None]
    return [_inline(x.shape, out, read, refs)]


# -- integer matrix products ----------------------------------------------------------
def _batch_read(ref: TensorRef, batch: Index, tail: Sequence[Expr]) -> Expr:
    """``ref`` at batch index ``batch`` (numpy-broadcast) and trailing ``tail``."""
    lead = ref.rank - len(tail)
    own = batch[len(batch) - lead :] if lead else ()
    idx = tuple(Const(0) if isinstance(d, Const) and d.value == 1 else i
                for d, i in zip(ref.shape[:lead], own))
    return ref.read((*idx, *tail))


def _zero_reader(node: Node, ref: TensorRef | None, of: TensorRef, row: bool, what: str
                 ) -> Callable[[Index, Expr], Expr] | None:
    """``(batch, m or n) -> i32`` for a MatMulInteger zero point: one element, a vector
    per column of B, or of A's / B's rank with the k dim 1 (per row of A / column of B).
    A 1-D zero point of A is refused: the spec reads it per row, the reference
    implementation broadcasts it along K."""
    if ref is None:
        return None
    if ref.dtype != of.dtype:
        raise LoweringError(f"{node.op}: {what} is {ref.dtype}, its input {of.dtype}")
    if _is_scalar(ref):
        return lambda batch, i: Cast("i32", _scalar(ref))
    along = of.shape[-1]
    if not row and ref.rank == 1 and dims_equal(ref.shape[0], along):
        return lambda batch, i: Cast("i32", ref.read((i,)))
    k_dim = ref.shape[-1] if row else ref.shape[-2]
    if ref.rank == of.rank and isinstance(k_dim, Const) and k_dim.value == 1:
        def read(batch: Index, i: Expr) -> Expr:
            tail = (i, Const(0)) if row else (Const(0), i)
            return Cast("i32", _batch_read(ref, batch, tail))

        return read
    raise LoweringError(f"{node.op}: {what} of shape {list(ref.shape)} is not one element "
                        f"or of the input's rank with a K dim of 1"
                        f"{'' if row else ', nor one per column'}")


def _int_matmul(ctx: LoweringContext, node: Node, a: TensorRef, b: TensorRef,
                a_zero: Callable[[Index, Expr], Expr] | None,
                b_zero: Callable[[Index, Expr], Expr] | None,
                out_dtype: str, finish: Callable[[Expr], Expr]) -> TensorRef:
    """``finish(sum_k (a - a_zero) * (b - b_zero))`` with an i32 accumulator, numpy
    matmul broadcasting over the batch dims (both inputs of rank >= 2)."""
    if a.dtype not in INT8 or b.dtype not in INT8:
        raise LoweringError(f"{node.op} on {a.dtype} x {b.dtype} is not supported (u8, i8)")
    if a.rank < 2 or b.rank < 2:
        raise LoweringError(f"{node.op} with a 1-D input is not supported")
    if not dims_equal(a.shape[-1], b.shape[-2]):
        raise LoweringError(f"{node.op}: inner dims {a.shape[-1]} and {b.shape[-2]} differ")
    batch_shape = broadcast_shape([a.shape[:-2], b.shape[:-2]])
    out_shape = (*batch_shape, a.shape[-2], b.shape[-1])
    out = ctx.new_buffer(node.op.lower(), out_dtype, product(out_shape))
    acc = Buffer(ctx.fresh("acc"), "i32", Const(1), "local")
    k = ctx.var("k")
    z = Const(0)

    def body(idx: Index) -> Stmt:
        batch, m, n = idx[:-2], idx[-2], idx[-1]
        av: Expr = Cast("i32", _batch_read(a, batch, (m, k)))
        bv: Expr = Cast("i32", _batch_read(b, batch, (k, n)))
        if a_zero is not None:
            av = av - a_zero(batch, m)
        if b_zero is not None:
            bv = bv - b_zero(batch, n)
        return block(
            Store(acc, z, Const(0, "i32")),
            For(k, a.shape[-1], Store(acc, z, Load(acc, z) + av * bv)),
            Store(out, flat_index(idx, out_shape), finish(Load(acc, z))),
        )

    ctx.add_kernel(node.op.lower(), ctx.loop_nest(out_shape, body), [acc])
    return buffer_ref(out, out_shape)


def lower_matmul_integer(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                         ) -> list[TensorRef]:
    a, b = ins[0], ins[1]
    assert a is not None and b is not None
    a_zero = _zero_reader(node, ins[2] if len(ins) > 2 else None, a, True, "a_zero_point")
    b_zero = _zero_reader(node, ins[3] if len(ins) > 3 else None, b, False, "b_zero_point")
    return [_int_matmul(ctx, node, a, b, a_zero, b_zero, "i32", lambda acc: acc)]


def _requantize(multiplier: Expr, zero: Expr | None, dtype: str) -> Callable[[Expr], Expr]:
    """i32 accumulator → ``saturate(round_half_even(acc * multiplier + zero))`` in f64."""
    def finish(acc: Expr) -> Expr:
        v: Expr = Cast("f64", acc) * Cast("f64", multiplier)
        if zero is not None:
            v = v + Cast("f64", zero)
        return _saturate(Call("round", (v,)), dtype)

    return finish


def _multiplier(node: Node, scales: Sequence[TensorRef], readers: Sequence[Expr]) -> Expr:
    """``s0 * s1 / s2`` in the scales' precision (16-bit floats round every step)."""
    dtypes = {s.dtype for s in scales}
    if len(dtypes) != 1 or not dtypes <= set(FLOATS):
        raise LoweringError(f"{node.op}: scales of types {sorted(dtypes)} are not supported")
    a, b, y = readers
    return Call("fdiv", (a * b, y))


def _qlinear_inputs(node: Node, ins: list[TensorRef | None]
                    ) -> tuple[TensorRef, TensorRef, list[TensorRef], list[TensorRef | None]]:
    refs = list(ins) + [None] * (8 - len(ins))
    x, w = refs[0], refs[3]
    scales = [refs[1], refs[4], refs[6]]
    zeros = [refs[2], refs[5], refs[7]]
    assert x is not None and w is not None
    if any(s is None for s in scales):
        raise LoweringError(f"{node.op} needs all three scales")
    return x, w, [s for s in scales if s is not None], zeros


def lower_qlinear_matmul(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                         ) -> list[TensorRef]:
    """Per-tensor QLinearMatMul (every scale and zero point one element)."""
    a, b, scales, zeros = _qlinear_inputs(node, ins)
    if not all(_is_scalar(r) for r in (*scales, *(z for z in zeros if z is not None))):
        raise LoweringError("QLinearMatMul supports per-tensor scales and zero points only")
    a_zp, b_zp, y_zp = zeros
    out = _quant_dtype(node, y_zp) if y_zp is not None else a.dtype
    mult = _multiplier(node, scales, [_scalar(s) for s in scales])
    a_zero = _zero_reader(node, a_zp, a, True, "a_zero_point")
    b_zero = _zero_reader(node, b_zp, b, False, "b_zero_point")
    finish = _requantize(mult, _scalar(y_zp) if y_zp is not None else None, out)
    return [_int_matmul(ctx, node, a, b, a_zero, b_zero, out, finish)]


# -- integer convolutions ---------------------------------------------------------------
def _int_conv(ctx: LoweringContext, node: Node, x: TensorRef, w: TensorRef,
              x_zero: Expr | None, w_zero: Callable[[Expr], Expr] | None,
              bias: TensorRef | None, out_dtype: str,
              finish: Callable[[Index, Expr], Expr]) -> TensorRef:
    """N-d grouped convolution with an i32 accumulator; padding contributes 0 (the
    reference pads after subtracting the zero point)."""
    from irkit.lower.heavy import conv_geometry

    if x.dtype not in INT8 or w.dtype not in INT8:
        raise LoweringError(f"{node.op} on {x.dtype} x {w.dtype} is not supported (u8, i8)")
    if x.rank < 3 or w.rank != x.rank:
        raise LoweringError(f"{node.op} needs x and w of the same rank >= 3")
    w_shape = [static(d, f"{node.op} weight dim") for d in w.shape]
    g = conv_geometry(node, x, np.empty(w_shape, np.int8), any_rank=True)
    if list(g["k"]) != w_shape[2:]:
        raise LoweringError(f"{node.op}: kernel_shape {g['k']} differs from W {w_shape[2:]}")
    groups = int(node.attr("group", 1))
    channels = static(x.shape[1], f"{node.op} channels")
    per_group = w_shape[1]
    if channels != per_group * groups or w_shape[0] % groups:
        raise LoweringError(f"{node.op}: {channels} channels do not split into {groups} groups "
                            f"of {per_group}")
    spatial = x.rank - 2
    out_shape = (x.shape[0], Const(w_shape[0]), *(Const(o) for o in g["out"]))
    out = ctx.new_buffer(node.op.lower(), out_dtype, product(out_shape))
    acc = Buffer(ctx.fresh("acc"), "i32", Const(1), "local")
    ci = ctx.var("ci")
    ks = [ctx.var(f"k{d}") for d in range(spatial)]
    z = Const(0)
    out_per_group = w_shape[0] // groups

    def body(idx: Index) -> Stmt:
        n, m, pix = idx[0], idx[1], idx[2:]
        pos = [pix[d] * g["s"][d] - g["p"][d] + ks[d] * g["d"][d] for d in range(spatial)]
        inside: Expr = Const(True, "bool")
        for d in range(spatial):
            inside = Binary("and", inside, Binary("and", Binary("ge", pos[d], z),
                                                  Binary("lt", pos[d], Const(g["in"][d]))))
        channel = (m // out_per_group) * per_group + ci if groups > 1 else ci
        xv: Expr = Cast("i32", x.read((n, channel, *(Select(inside, p, z) for p in pos))))
        if x_zero is not None:
            xv = xv - x_zero
        wv: Expr = Cast("i32", w.read((m, ci, *ks)))
        if w_zero is not None:
            wv = wv - w_zero(m)
        update: Stmt = Store(acc, z, Load(acc, z) + Select(inside, xv * wv, Const(0, "i32")))
        for d in reversed(range(spatial)):
            update = For(ks[d], Const(g["k"][d]), update)
        start: Expr = Const(0, "i32") if bias is None else _as(bias.read((m,)), "i32")
        return block(
            Store(acc, z, start),
            For(ci, Const(per_group), update),
            Store(out, flat_index(idx, out_shape), finish(idx, Load(acc, z))),
        )

    ctx.add_kernel(node.op.lower(), ctx.loop_nest(out_shape, body), [acc])
    return buffer_ref(out, out_shape)


def _w_zero_reader(node: Node, ref: TensorRef | None, w: TensorRef
                   ) -> Callable[[Expr], Expr] | None:
    if ref is None:
        return None
    if _is_scalar(ref):
        return lambda m: Cast("i32", _scalar(ref))
    if ref.rank == 1 and dims_equal(ref.shape[0], w.shape[0]):
        return lambda m: Cast("i32", ref.read((m,)))
    raise LoweringError(f"{node.op}: the weight zero point is neither per tensor nor per "
                        "output channel")


def _x_zero(node: Node, ref: TensorRef | None) -> Expr | None:
    if ref is None:
        return None
    if not _is_scalar(ref):
        raise LoweringError(f"{node.op}: the input zero point must be one element")
    return Cast("i32", _scalar(ref))


def lower_conv_integer(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                       ) -> list[TensorRef]:
    x, w = ins[0], ins[1]
    assert x is not None and w is not None
    x_zero = _x_zero(node, ins[2] if len(ins) > 2 else None)
    w_zero = _w_zero_reader(node, ins[3] if len(ins) > 3 else None, w)
    return [_int_conv(ctx, node, x, w, x_zero, w_zero, None, "i32", lambda idx, acc: acc)]


def lower_qlinear_conv(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                       ) -> list[TensorRef]:
    """QLinearConv: per-tensor input and output scales, per-tensor or per-output-channel
    weight scale and zero point, optional i32 bias."""
    x, w, scales, zeros = _qlinear_inputs(node, ins)
    bias = ins[8] if len(ins) > 8 else None
    x_scale, w_scale, y_scale = scales
    if not (_is_scalar(x_scale) and _is_scalar(y_scale)) or not all(
            _is_scalar(z) for z in (zeros[0], zeros[2]) if z is not None):
        raise LoweringError("QLinearConv needs per-tensor input and output scales and zero "
                            "points")
    if not (_is_scalar(w_scale) or (w_scale.rank == 1 and dims_equal(w_scale.shape[0],
                                                                      w.shape[0]))):
        raise LoweringError("QLinearConv: w_scale is neither per tensor nor per output "
                            "channel")
    y_zp = zeros[2]
    out = _quant_dtype(node, y_zp) if y_zp is not None else x.dtype
    if bias is not None and bias.dtype != "i32":
        raise LoweringError(f"QLinearConv bias of {bias.dtype} is not supported (i32)")

    def finish(idx: Index, acc: Expr) -> Expr:
        w_s = _scalar(w_scale) if _is_scalar(w_scale) else w_scale.read((idx[1],))
        mult = _multiplier(node, scales, [_scalar(x_scale), w_s, _scalar(y_scale)])
        return _requantize(mult, _scalar(y_zp) if y_zp is not None else None, out)(acc)

    return [_int_conv(ctx, node, x, w, _x_zero(node, zeros[0]),
                      _w_zero_reader(node, zeros[1], w), bias, out, finish)]


LOWERINGS = {
    "QuantizeLinear": lower_quantize, "DequantizeLinear": lower_dequantize,
    "MatMulInteger": lower_matmul_integer, "QLinearMatMul": lower_qlinear_matmul,
    "ConvInteger": lower_conv_integer, "QLinearConv": lower_qlinear_conv,
}  # fmt: skip
