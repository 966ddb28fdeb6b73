"""Target-specific expansions of kernel-IR calls that are not plain math functions.

``dot4_u8s8(acc, a, b)`` (i32 lanes): ``acc[l] + sum_t u8(a[l].byte[t]) * s8(b[l].byte[t])``
for t in 0..3, wrapping on overflow. On a target with AVX-512 VNNI (``vpdpbusd``) or
AVX-VNNI at the accumulator's width it is one instruction; elsewhere it is expanded into
zero/sign extends to i32, a multiply and an add of the four byte groups (exact, no i16
saturation), and LLVM picks the widening instructions the target has. The choice reads
the :class:`~irkit.target.Target`, never the build host
(:meth:`~irkit.target.Target.int8_dot`).
"""

from __future__ import annotations

from collections.abc import Sequence

from llvmlite import ir

from irkit.target import Target

I8 = ir.IntType(8)
I32 = ir.IntType(32)

EXTENSION_CALLS = ("dot4_u8s8",)


def emit_extension_call(b: ir.IRBuilder, module: ir.Module, target: Target, fn: str,
                        args: Sequence[ir.Value]) -> ir.Value:
    """The LLVM value of extension call ``fn`` on ``args`` (already splatted to lanes)."""
    if fn == "dot4_u8s8":
        return _dot4_u8s8(b, module, target, args[0], args[1], args[2])
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
