"""Inline, vectorizable f32 math for the LLVM backend: exp, tanh, erf.

The libm calls LLVM would otherwise emit (``expf``…) block loop vectorization; these are
plain arithmetic, so ``-O3`` vectorizes loops that use them. Accuracy (max abs error
over the f32 range, checked in tests/plugins/test_llvm_math.py): exp ~2 ulp (Cephes
polynomial), tanh < 2e-7, erf < 2e-7 (Abramowitz & Stegun 7.1.26).
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from irkit.target import Target

F32 = ir.FloatType()
I32 = ir.IntType(32)

Emit = Callable[[str, ir.Value, ir.Value], ir.Value]


def _const(ty: ir.Type, value: float | int) -> ir.Value:
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [ir.Constant(ty.element, value)] * ty.count)
    return ir.Constant(ty, value)


def _int_type_like(ty: ir.Type) -> ir.Type:
    return ir.VectorType(I32, ty.count) if isinstance(ty, ir.VectorType) else I32


class MathEmitter:
    """Emits f32 math on scalars or vectors with one builder and a set of fp flags."""

    def __init__(self, builder: ir.IRBuilder, module: ir.Module, flags: tuple[str, ...],
                 target: Target | None = None) -> None:
        self.b = builder
        self.module = module
        self.flags = flags
        # WebAssembly's f32.min/max propagate NaN where llvm.minnum/maxnum ignore it, so
        # LLVM lowers those intrinsics to fminf/fmaxf calls there (one per lane); a compare
        # and select clamps the same (callers handle NaN inputs themselves).
        self.select_minmax = target is not None and target.family == "wasm"

    def _fl(self, inst: ir.Instruction) -> ir.Value:
        inst.flags.extend(self.flags)
        return inst

    def add(self, x: ir.Value, y: ir.Value) -> ir.Value:
        return self._fl(self.b.fadd(x, y))

    def sub(self, x: ir.Value, y: ir.Value) -> ir.Value:
        return self._fl(self.b.fsub(x, y))

    def mul(self, x: ir.Value, y: ir.Value) -> ir.Value:
        return self._fl(self.b.fmul(x, y))

    def div(self, x: ir.Value, y: ir.Value) -> ir.Value:
        return self._fl(self.b.fdiv(x, y))

    def c(self, like: ir.Value, value: float) -> ir.Value:
        return _const(like.type, value)

    def intrinsic(self, name: str, *args: ir.Value) -> ir.Value:
        ty = args[0].type
        elem = ty.element if isinstance(ty, ir.VectorType) else ty
        base = "f32" if isinstance(elem, ir.FloatType) else "f64"
        suffix = f"v{ty.count}{base}" if isinstance(ty, ir.VectorType) else base
        full = f"{name}.{suffix}"
        fn = self.module.globals.get(full)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ty, [ty] * len(args)), full)
        return self.b.call(fn, list(args))

    def clamp(self, x: ir.Value, lo: float, hi: float) -> ir.Value:
        if self.select_minmax:
            x = self.b.select(self.b.fcmp_ordered("<", x, self.c(x, lo)), self.c(x, lo), x)
            return self.b.select(self.b.fcmp_ordered(">", x, self.c(x, hi)), self.c(x, hi), x)
        x = self.intrinsic("llvm.maxnum", x, self.c(x, lo))
        return self.intrinsic("llvm.minnum", x, self.c(x, hi))

    def poly(self, x: ir.Value, coeffs: list[float]) -> ir.Value:
        """Horner: coeffs[0] * x^(n-1) + … + coeffs[-1]."""
        acc = self.c(x, coeffs[0])
        for coef in coeffs[1:]:
            acc = self.add(self.mul(acc, x), self.c(x, coef))
        return acc

    def exp(self, x: ir.Value) -> ir.Value:
        raw = x
        x = self.clamp(x, -87.33654, 88.72283)
        fx = self.intrinsic("llvm.floor", self.add(self.mul(x, self.c(x, 1.44269504088896341)),
                                                   self.c(x, 0.5)))
        r = self.sub(x, self.mul(fx, self.c(x, 0.693359375)))
        r = self.sub(r, self.mul(fx, self.c(x, -2.12194440e-4)))
        p = self.poly(r, [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                          4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1])
        y = self.add(self.add(self.mul(p, self.mul(r, r)), r), self.c(x, 1.0))
        ity = _int_type_like(x.type)
        n = self.b.fptosi(fx, ity)
        bits = self.b.shl(self.b.add(n, _const(ity, 127)), _const(ity, 23))
        result = self.mul(y, self.b.bitcast(bits, x.type))
        # Outside the clamp: overflow to inf, underflow to 0, and NaN stays NaN.
        result = self.b.select(self.b.fcmp_ordered(">", raw, self.c(raw, 88.72283)),
                               self.c(raw, float("inf")), result)
        result = self.b.select(self.b.fcmp_ordered("<", raw, self.c(raw, -87.33654)),
                               self.c(raw, 0.0), result)
        return self.b.select(self.b.fcmp_unordered("uno", raw, raw), raw, result)

    def tanh(self, x: ir.Value) -> ir.Value:
        ax = self.intrinsic("llvm.fabs", x)
        t = self.exp(self.mul(ax, self.c(x, -2.0)))
        r = self.div(self.sub(self.c(x, 1.0), t), self.add(self.c(x, 1.0), t))
        # Near zero 1 - t cancels; the odd Taylor series is exact enough there.
        x2 = self.mul(x, x)
        small = self.mul(x, self.poly(x2, [2.0 / 15.0, -1.0 / 3.0, 1.0]))
        big = self.intrinsic("llvm.copysign", r, x)
        is_small = self.b.fcmp_ordered("<", ax, self.c(x, 0.0625))
        return self.b.select(is_small, small, big)

    def erf(self, x: ir.Value) -> ir.Value:
        ax = self.intrinsic("llvm.fabs", x)
        t = self.div(self.c(x, 1.0), self.add(self.c(x, 1.0), self.mul(ax, self.c(x, 0.3275911))))
        p = self.mul(t, self.poly(t, [1.061405429, -1.453152027, 1.421413741,
                                      -0.284496736, 0.254829592]))
        e = self.exp(self.mul(self.mul(ax, ax), self.c(x, -1.0)))
        r = self.sub(self.c(x, 1.0), self.mul(p, e))
        # Near zero the series 2/sqrt(pi) * (x - x^3/3 + x^5/10) is more accurate.
        x2 = self.mul(x, x)
        small = self.mul(x, self.poly(x2, [1.1283791670955126 / 10.0, -1.1283791670955126 / 3.0,
                                           1.1283791670955126]))
        big = self.intrinsic("llvm.copysign", r, x)
        is_small = self.b.fcmp_ordered("<", ax, self.c(x, 0.05))
        return self.b.select(is_small, small, big)
