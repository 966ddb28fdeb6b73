"""Helper functions the generated source calls, written out into each module that needs
them (an artifact carries everything its code runs; nothing is imported from irkit).

Each helper is Python that Numba compiles for the CPU and for CUDA alike, decorated
``@_device`` (the module's preamble binds that to ``njit(...)`` or to
``cuda.jit(device=True)``). Bit casts between f32 and its 32-bit pattern are Numba
intrinsics (one LLVM ``bitcast``); where the code runs as plain Python (the CUDA
simulator, ``NUMBA_DISABLE_JIT``) they go through a numpy view instead.
"""

from __future__ import annotations

MATH = '''
if IRKIT_PURE_PYTHON:
    # As plain Python, math.exp(1e3) raises OverflowError and math.log(-1.0) ValueError,
    # where compiled code gives inf and nan: numpy's functions do the same as compiled.
    import types as _types

    _math = _types.SimpleNamespace(
        exp=np.exp, log=np.log, tanh=np.tanh, erf=math.erf, sqrt=np.sqrt, sin=np.sin,
        cos=np.cos, tan=np.tan, asin=np.arcsin, acos=np.arccos, atan=np.arctan,
        sinh=np.sinh, cosh=np.cosh, asinh=np.arcsinh, acosh=np.arccosh, atanh=np.arctanh,
        pow=np.power)
else:
    _math = math
'''
"""The math module the kernels call (``_math.exp``), safe to run uncompiled."""

BITCASTS = '''
if IRKIT_PURE_PYTHON:
    def _f32_bits(x):
        return int(np.array([x], np.float32).view(np.uint32)[0])

    def _bits_f32(b):
        return np.array([b], np.uint32).view(np.float32)[0]
else:
    from llvmlite import ir as _llvm_ir
    from numba import types as _nb_types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def _f32_bits(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _llvm_ir.IntType(32))
        return _nb_types.uint32(_nb_types.float32), codegen

    @_intrinsic
    def _bits_f32(typingctx, b):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _llvm_ir.FloatType())
        return _nb_types.float32(_nb_types.uint32), codegen
'''

FMA = '''
if IRKIT_PURE_PYTHON:
    from fractions import Fraction as _Fraction

    def _fma(a, b, c):
        """a * b + c rounded once. f32: the product is exact in f64, the sum rounded to
        odd in f64 (two-sum error term), then to nearest f32; f64: exact arithmetic."""
        if isinstance(a, np.float32):
            p = float(a) * float(b)
            s = p + float(c)
            if not math.isfinite(s):
                return np.float32(s)
            t = s - p
            err = (p - (s - t)) + (float(c) - t)
            bits = int(np.array([s]).view(np.int64)[0])
            if err != 0 and bits % 2 == 0:
                bits += 1 if (err > 0) == (s > 0) else -1
                s = float(np.array([bits], np.int64).view(np.float64)[0])
            return np.float32(s)
        x, y, z = float(a), float(b), float(c)
        if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
            return np.float64(x * y + z)
        exact = _Fraction(x) * _Fraction(y) + _Fraction(z)
        if exact == 0:
            return np.float64(x * y + z)
        try:
            return np.float64(float(exact))
        except OverflowError:
            return np.float64(math.copysign(math.inf, exact))
else:
    from numba.extending import intrinsic as _fma_intrinsic

    @_fma_intrinsic
    def _fma(typingctx, a, b, c):
        """llvm.fma: a * b + c rounded once (an FMA instruction on CPUs and GPUs)."""
        sig = a(a, a, a)

        def codegen(context, builder, signature, args):
            values = [context.cast(builder, v, t, a)
                      for v, t in zip(args, signature.args)]
            fn = builder.module.declare_intrinsic("llvm.fma", [values[0].type] * 3)
            return builder.call(fn, values)
        return sig, codegen
'''

# name -> (source, helpers it calls)
HELPERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "_idiv": ('''
@_device
def _idiv(a, b):
    """C division: the quotient truncated toward zero."""
    q = a // b
    if a % b != 0 and (a < 0) != (b < 0):
        q += 1
    return q
''', ()),
    "_irem": ('''
@_device
def _irem(a, b):
    """C remainder: the sign of the dividend."""
    r = a % b
    if r != 0 and (r < 0) != (a < 0):
        r -= b
    return r
''', ()),
    "_fmax": ('''
@_device
def _fmax(a, b):
    """max keeping a when either is NaN (llvm: select(fcmp uno >, a, b))."""
    return b if a <= b else a
''', ()),
    "_fmin": ('''
@_device
def _fmin(a, b):
    """min keeping a when either is NaN (llvm: select(fcmp uno <, a, b))."""
    return b if a >= b else a
''', ()),
    "_fmod": ('''
@_device
def _fmod(a, b):
    """C fmod: the remainder with the sign of a (exact in f64)."""
    return np.fmod(np.float64(a), np.float64(b))
''', ()),
    "_fmod_math": ('''
@_device
def _fmod_math(a, b):
    """C fmod (numba-cuda has math.fmod, not np.fmod)."""
    return math.fmod(np.float64(a), np.float64(b))
''', ()),
    "_f16_to_f32": ('''
@_device
def _f16_to_f32(h):
    """An IEEE half bit pattern as its f32 value."""
    v = np.int64(h)
    sign = (v & 0x8000) << 16
    e = (v >> 10) & 0x1F
    m = v & 0x3FF
    if e == 0:
        mag = np.float32(m) * np.float32(5.960464477539063e-08)
        return -mag if sign else mag
    if e == 31:
        bits = sign | 0x7F800000 | (m << 13)
    else:
        bits = sign | ((e + 112) << 23) | (m << 13)
    return _bits_f32(np.uint32(bits))
''', ("_bits_f32",)),
    "_f32_to_f16": ('''
@_device
def _f32_to_f16(x):
    """The half bit pattern nearest x (ties to even; NaN stays NaN)."""
    b = np.int64(_f32_bits(x))
    sign = (b >> 16) & 0x8000
    e = (b >> 23) & 0xFF
    m = b & 0x7FFFFF
    if e == 0xFF:
        nan = 0x200 | (m >> 13) if m else 0
        return np.uint16(sign | 0x7C00 | nan)
    exp = e - 112
    if exp >= 31:
        return np.uint16(sign | 0x7C00)
    if exp <= 0:
        if exp < -10:
            return np.uint16(sign)
        m = m | 0x800000
        shift = 14 - exp
        half = m >> shift
        rest = m & ((1 << shift) - 1)
        tie = 1 << (shift - 1)
        if rest > tie or (rest == tie and (half & 1)):
            half += 1
        return np.uint16(sign | half)
    half = (exp << 10) | (m >> 13)
    rest = m & 0x1FFF
    if rest > 0x1000 or (rest == 0x1000 and (half & 1)):
        half += 1
    return np.uint16(sign | half)
''', ("_f32_bits",)),
    "_rf16": ('''
@_device
def _rf16(x):
    """x rounded to the nearest f16 value (ties to even), as an f32."""
    return _f16_to_f32(_f32_to_f16(np.float32(x)))
''', ("_f16_to_f32", "_f32_to_f16")),
    "_bf16_to_f32": ('''
@_device
def _bf16_to_f32(h):
    return _bits_f32(np.uint32(np.int64(h) << 16))
''', ("_bits_f32",)),
    "_f32_to_bf16": ('''
@_device
def _f32_to_bf16(x):
    """The top 16 bits of x (exact: x is a bf16 value)."""
    return np.uint16(np.int64(_f32_bits(x)) >> 16)
''', ("_f32_bits",)),
    "_rbf16": ('''
@_device
def _rbf16(x):
    """x rounded to the nearest bf16 value (ties to even; NaN quieted), as an f32."""
    x = np.float32(x)
    b = np.int64(_f32_bits(x))
    if x != x:
        b = b | 0x400000
    else:
        b = b + 0x7FFF + ((b >> 16) & 1)
    return _bits_f32(np.uint32(b & 0xFFFF0000))
''', ("_f32_bits", "_bits_f32")),
    "_f32_odd": ('''
@_device
def _f32_odd(x):
    """f64 -> f32 rounding to odd, so a second rounding (to f16/bf16) equals one."""
    t = np.float32(x)
    back = np.float64(t)
    b = np.int64(_f32_bits(t))
    if back != x and (b & 1) == 0:
        b = b - 1 if abs(back) > abs(x) else b + 1
    return _bits_f32(np.uint32(b))
''', ("_f32_bits", "_bits_f32")),
    "_dot4_u8s8": ('''
@_device
def _dot4_u8s8(acc, a, b):
    """acc + sum over the 4 bytes of u8(a byte) * s8(b byte), wrapping like i32."""
    a = np.int64(a)
    b = np.int64(b)
    total = np.int64(acc)
    for t in range(4):
        ua = (a >> (8 * t)) & 0xFF
        sb = (b >> (8 * t)) & 0xFF
        if sb >= 128:
            sb -= 256
        total += ua * sb
    return np.int32(total)
''', ()),
    "_floor": ('''
@_device
def _floor(x):
    """floor as a float (math.floor gives an integer in Numba)."""
    if not (abs(x) < 4503599627370496.0):
        return x
    r = math.floor(x)
    return math.copysign(np.float64(r), x) if r == 0 else np.float64(r)
''', ()),
    "_ceil": ('''
@_device
def _ceil(x):
    if not (abs(x) < 4503599627370496.0):
        return x
    r = math.ceil(x)
    return math.copysign(np.float64(r), x) if r == 0 else np.float64(r)
''', ()),
    "_rint": ('''
@_device
def _rint(x):
    """x rounded to the nearest integer, ties to even (llvm.roundeven)."""
    if not (abs(x) < 4503599627370496.0):
        return x
    f = math.floor(x)
    d = x - f
    r = f + 1 if (d > 0.5 or (d == 0.5 and f % 2 != 0)) else f
    return math.copysign(np.float64(r), x) if r == 0 else np.float64(r)
''', ()),
}
NEEDS_BITCASTS = ("_f32_bits", "_bits_f32")


def helper_source(names: set[str]) -> str:
    """The source of ``names`` and the helpers they call, in dependency order."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered or name in NEEDS_BITCASTS:
            return
        if name not in HELPERS:
            raise KeyError(f"unknown helper {name}")
        for dep in HELPERS[name][1]:
            visit(dep)
        ordered.append(name)

    for name in sorted(names - {"_fma"}):
        visit(name)
    needs_bits = any(dep in NEEDS_BITCASTS for name in ordered for dep in HELPERS[name][1])
    parts = [MATH]
    if needs_bits:
        parts.append(BITCASTS)
    if "_fma" in names:
        parts.append(FMA)
    parts += [HELPERS[name][0] for name in ordered]
    return "".join(parts)


__all__ = ["HELPERS", "helper_source"]
