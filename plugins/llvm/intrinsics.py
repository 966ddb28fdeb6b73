"""Target-specific expansions of kernel-IR calls that are not plain math functions.

``dot4_u8s8(acc, a, b)`` (i32 lanes): ``acc[l] + sum_t u8(a[l].byte[t]) * s8(b[l].byte[t])``
for t in 0..3, wrapping on overflow. On a target with AVX-512 VNNI (``vpdpbusd``) or
AVX-VNNI at the accumulator's width it is one instruction; elsewhere it is expanded into
zero/sign extends to i32, a multiply and an add of the four byte groups (exact, no i16
saturation), and LLVM picks the widening instructions the target has. The choice reads
the :class:`~irkit.target.Target`, never the build host
(:meth:`~irkit.target.Target.int8_dot`).

``dot4_u8s7(acc, a, b)`` is the same sum where every byte of ``b`` lies in [-64, 64], as
the lowering guarantees (7-bit weights, or full-range weights split in two halves). Two
u8 * s8 products then add up within int16 (255 * 64 * 2 = 32640), so on x86 targets
without VNNI it is ``vpmaddubsw`` (u8 x s8 byte pairs into saturating int16, exact here)
then ``vpmaddwd`` by ones (int16 pairs into int32) and an add: 32 multiply-adds in three
instructions, where the widening expansion of ``dot4_u8s8`` needs a 32-bit multiply per
four. With VNNI it is ``vpdpbusd`` like ``dot4_u8s8``.

``dot8_u8s6(acc, a0, b0, a1, b1)`` is two such steps where every byte of ``b0`` and ``b1``
lies in [-32, 32]: the four products of an int16 lane then add up within int16
(255 * 32 * 4 = 32640), so without VNNI it is two ``vpmaddubsw``, a ``vpaddw`` and one
``vpmaddwd``: three multiply-port instructions for 64 multiply-adds instead of four.
"""

from __future__ import annotations

from collections.abc import Sequence

from llvmlite import ir

from irkit.target import Target

I8 = ir.IntType(8)
I32 = ir.IntType(32)

EXTENSION_CALLS = ("dot4_u8s8", "dot4_u8s7", "dot8_u8s6")
I16 = ir.IntType(16)
# lanes -> (vpmaddubsw, vpmaddwd) intrinsics of that register width.
_MADD = {
    4: ("llvm.x86.ssse3.pmadd.ub.sw.128", "llvm.x86.sse2.pmadd.wd"),
    8: ("llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd"),
    16: ("llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512"),
}


def emit_extension_call(b: ir.IRBuilder, module: ir.Module, target: Target, fn: str,
                        args: Sequence[ir.Value]) -> ir.Value:
    """The LLVM value of extension call ``fn`` on ``args`` (already splatted to lanes)."""
    if fn == "dot4_u8s8":
        return _dot4_u8s8(b, module, target, args[0], args[1], args[2])
    if fn == "dot4_u8s7":
        lanes = _lanes(args[0])
        if target.int8_dot(lanes) == "vpmaddubsw":
            return _dot4_madd(b, module, lanes, args[0], args[1], args[2])
        return _dot4_u8s8(b, module, target, args[0], args[1], args[2])
    if fn == "dot8_u8s6":
        lanes = _lanes(args[0])
        if target.int8_dot(lanes) == "vpmaddubsw":
            return _dot8_madd(b, module, lanes, *args)
        first = emit_extension_call(b, module, target, "dot4_u8s7", args[:3])
        return emit_extension_call(b, module, target, "dot4_u8s7", [first, *args[3:]])
    raise TypeError(f"unknown extension call {fn}")


def _lanes(value: ir.Value) -> int:
    return value.type.count if isinstance(value.type, ir.VectorType) else 1


def _dot4_u8s8(b: ir.IRBuilder, module: ir.Module, target: Target, acc: ir.Value,
               a: ir.Value, w: ir.Value) -> ir.Value:
    lanes = _lanes(acc)
    name = None
    if target.int8_dot(lanes) == "vpdpbusd":
        name = f"llvm.x86.avx512.vpdpbusd.{32 * lanes}"
    bytes_ty = ir.VectorType(I8, 4 * lanes)
    if name is not None:
        fnty = ir.FunctionType(acc.type, [acc.type, bytes_ty, bytes_ty])
        try:
            intrinsic = module.get_global(name)
        except KeyError:
            intrinsic = ir.Function(module, fnty, name=name)
        return b.call(intrinsic, [acc, b.bitcast(a, bytes_ty), b.bitcast(w, bytes_ty)])
    # Portable expansion: widen the bytes to i32, multiply, add each group of four.
    wide = ir.VectorType(I32, 4 * lanes)
    prod = b.mul(b.zext(b.bitcast(a, bytes_ty), wide), b.sext(b.bitcast(w, bytes_ty), wide))
    total = acc
    for t in range(4):
        mask = ir.Constant(ir.VectorType(I32, lanes), [4 * lane + t for lane in range(lanes)])
        part = b.shuffle_vector(prod, ir.Constant(wide, ir.Undefined), mask)
        if lanes == 1:  # a scalar call: the one lane of the <1 x i32> shuffle
            part = b.extract_element(part, ir.Constant(I32, 0))
        total = b.add(total, part)
    return total


def _intrinsic(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    try:
        return module.get_global(name)  # type: ignore[no-any-return]
    except KeyError:
        return ir.Function(module, fnty, name=name)


def _dot4_madd(b: ir.IRBuilder, module: ir.Module, lanes: int, acc: ir.Value, a: ir.Value,
               w: ir.Value) -> ir.Value:
    """``acc + pmaddwd(pmaddubsw(a, w), 1)``: exact when |w bytes| <= 64."""
    maddubs, maddwd = _MADD[lanes]
    bytes_ty = ir.VectorType(I8, 4 * lanes)
    words_ty = ir.VectorType(I16, 2 * lanes)
    pairs = b.call(_intrinsic(module, maddubs, ir.FunctionType(words_ty, [bytes_ty, bytes_ty])),
                   [b.bitcast(a, bytes_ty), b.bitcast(w, bytes_ty)])
    ones = ir.Constant(words_ty, [1] * (2 * lanes))
    sums = b.call(_intrinsic(module, maddwd, ir.FunctionType(acc.type, [words_ty, words_ty])),
                  [pairs, ones])
    return b.add(acc, sums)


def _dot8_madd(b: ir.IRBuilder, module: ir.Module, lanes: int, acc: ir.Value, a0: ir.Value,
               w0: ir.Value, a1: ir.Value, w1: ir.Value) -> ir.Value:
    """``acc + pmaddwd(pmaddubsw(a0, w0) + pmaddubsw(a1, w1), 1)``: exact when every
    weight byte lies in [-32, 32]."""
    maddubs, maddwd = _MADD[lanes]
    bytes_ty = ir.VectorType(I8, 4 * lanes)
    words_ty = ir.VectorType(I16, 2 * lanes)
    fn = _intrinsic(module, maddubs, ir.FunctionType(words_ty, [bytes_ty, bytes_ty]))
    pairs = b.add(b.call(fn, [b.bitcast(a0, bytes_ty), b.bitcast(w0, bytes_ty)]),
                  b.call(fn, [b.bitcast(a1, bytes_ty), b.bitcast(w1, bytes_ty)]))
    ones = ir.Constant(words_ty, [1] * (2 * lanes))
    sums = b.call(_intrinsic(module, maddwd, ir.FunctionType(acc.type, [words_ty, words_ty])),
                  [pairs, ones])
    return b.add(acc, sums)
