"""The random ops: RandomNormal, RandomUniform, their ``Like`` forms, Bernoulli, Multinomial.

Every random value is a pure function of ``(key, element index)``, a counter-based
generator written in kernel IR: the SplitMix64 finalizer of ``key + (i + 1) * gamma``
(``u64`` wrapping arithmetic, ``xor`` and logical shifts). So a parallel, vectorized or
fused loop computes the same bits in any order, every backend computes the interpreter's
bits, and :func:`draws` (numpy) says what they are.

``key`` comes from the ``seed`` attribute (a float; its f64 bit pattern, mixed once), so
a node with a seed gives the same tensor on every run, backend and build. A node without
a seed draws fresh values on every call (as ONNX Runtime does: "if seed is not
specified, one will be auto-generated"): its key is :func:`unseeded_key`, the SplitMix64
finalizer of ``node_key ^ call_key``, where ``node_key`` comes from the node's first
output name (SHA-256, so two unseeded nodes of one call differ; it is in the compile
report's kernel notes) and ``call_key`` is a per-call value the runtime supplies through
the symbol :data:`CALL_KEY` (one more ``i64`` dim the code reads, which no input binds;
see ``irkit.runtime.call_keys``: the load option ``random_seed`` makes it reproducible
per call number). Values never match ONNX Runtime's (its generator is another), only
their distribution.

From the 64 bits of a draw: a uniform ``u`` in [0, 1) is the top 24 bits times 2^-24
(f32 work type: f32, f16, bf16 outputs) or the top 53 bits times 2^-53 (f64), exact;
RandomUniform to f16 / bf16 takes 11 / 8 bits, so its [0, 1) values are exact there too.
RandomUniform is ``low + (high - low) * u``; RandomNormal is Box-Muller on draws ``2i``
(``u1`` in (0, 1]) and ``2i + 1``: ``mean + scale * sqrt(-2 log u1) * cos(2 pi u2)``.
Bernoulli is ``u < p`` (1 with probability ``p``, as its ONNX description and ONNX
Runtime say; the op's ONNX function body compares the other way round). Multinomial
draws ``sample_size`` classes per row from ``softmax(logits)``: the first class whose
running sum of ``exp(x - max)`` exceeds ``u * total`` (``u`` of draw ``b * samples + s``).
"""

from __future__ import annotations

import hashlib
import math
import struct

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
    Stmt,
    Store,
    Var,
    block,
    simplify_expr,
)
from irkit.kir.nodes import FLOATS
from irkit.lower.context import LoweringContext
from irkit.lower.tensor import (
    KIR_DTYPES,
    Index,
    LoweringError,
    TensorRef,
    buffer_ref,
    fconst,
    flat_index,
)

CALL_KEY = "N64"
"""The symbol the runtime sets to a fresh 63-bit key before each call of a program that
has unseeded random nodes (``irkit.runtime.call_keys.CALL_KEY_SYMBOL``, the same name)."""
GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
_MASK = (1 << 64) - 1
ONNX_FLOAT_DTYPES = {1: "f32", 10: "f16", 11: "f64", 16: "bf16"}
ONNX_INT_DTYPES = {6: "i32", 7: "i64"}


def _mix_int(z: int) -> int:
    z = ((z ^ (z >> 30)) * MIX1) & _MASK
    z = ((z ^ (z >> 27)) * MIX2) & _MASK
    return z ^ (z >> 31)


def seed_key(node: Node) -> tuple[int, str]:
    """The generator key of ``node`` and where it came from (for the compile report)."""
    seed = node.attr("seed", None)
    if seed is not None:
        bits = struct.unpack("<Q", struct.pack("<d", float(seed)))[0]
        return _mix_int((bits + GAMMA) & _MASK), f"seed {float(seed)!r}"
    name = node.outputs[0].name if node.outputs else node.name
    digest = hashlib.sha256(f"irkit.random:{name}".encode()).digest()
    key = int.from_bytes(digest[:8], "little")
    return key, (f"no seed attribute: key {key:#018x} (from the output name {name!r}) "
                 "xor a fresh key per call")


def node_key(ctx: LoweringContext, node: Node) -> Expr:
    """The ``u64`` generator key of ``node`` in kernel IR: a constant with a ``seed``
    attribute, otherwise the name-derived key xor the per-call key (:data:`CALL_KEY`);
    notes it for the compile report."""
    key, source = seed_key(node)
    ctx.kernel_notes[node.name or node.outputs[0].name] = (
        f"{node.op}: counter-based SplitMix64 generator, {source}")
    if node.attr("seed", None) is not None:
        return _u64(key)
    ctx.call_key = True  # mixed in the code: consecutive call keys give unrelated streams
    return mix64(Binary("xor", _u64(key), Cast("u64", Var(CALL_KEY))))


def unseeded_key(node_key: int, call_key: int) -> int:
    """The generator key of an unseeded node (``seed_key``'s key) at call key
    ``call_key``, as the code computes it."""
    return _mix_int((node_key ^ call_key) & _MASK)


def draws(key: int, index: np.ndarray) -> np.ndarray:
    """The generator in numpy: the 64 bits of draw ``index`` (u64) under ``key``."""
    with np.errstate(over="ignore"):
        z = np.uint64(key) + (np.asarray(index, np.uint64) + np.uint64(1)) * np.uint64(GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        return np.asarray(z ^ (z >> np.uint64(31)), np.uint64)


def _u64(value: int) -> Const:
    return Const(value & _MASK, "u64")


def mix64(z: Expr) -> Expr:
    """The SplitMix64 finalizer on a ``u64`` expression."""
    for shift, mul in ((30, MIX1), (27, MIX2)):
        z = Binary("mul", Binary("xor", z, Call("shr", (z, _u64(shift)))), _u64(mul))
    return Binary("xor", z, Call("shr", (z, _u64(31))))


def draw(key: int | Expr, index: Expr) -> Expr:
    """The 64 bits of draw ``index`` (an ``i64`` expression) under ``key`` (an int or a
    ``u64`` expression), as ``u64``."""
    counter = Binary("add", Cast("u64", index), _u64(1))
    base = _u64(key) if isinstance(key, int) else key
    return mix64(Binary("add", base, Binary("mul", counter, _u64(GAMMA))))


def work_type(dtype: str) -> str:
    """The float type the transforms compute in: f64 for f64, f32 otherwise."""
    return "f64" if dtype == "f64" else "f32"


UNIFORM_BITS = {"f64": 53, "f32": 24, "f16": 11, "bf16": 8}
"""Random bits per uniform value: the type's significand, so ``u`` is exact in it and a
16-bit [0, 1) value never rounds up to 1."""


def uniform(bits: Expr, work: str, open_low: bool = False, width: int = 0) -> Expr:
    """A uniform value of ``work`` in [0, 1) (``open_low``: (0, 1]) from the top
    ``width`` (default: all of ``work``'s significand) of 64 bits."""
    width = width or UNIFORM_BITS[work]
    top: Expr = Call("shr", (bits, _u64(64 - width)))
    if open_low:
        top = Binary("add", top, _u64(1))
    return Binary("mul", Cast(work, top), fconst(2.0 ** -width, work))


def _out(value: Expr, work: str, dtype: str) -> Expr:
    return value if work == dtype else Cast(dtype, value)


def _float_attr(node: Node, name: str, default: float) -> float:
    return float(node.attr(name, default))


def _out_float_dtype(node: Node, like: TensorRef | None) -> str:
    code = node.attr("dtype", None)
    if code is None:
        if like is None:
            return "f32"
        if like.dtype not in FLOATS:
            raise LoweringError(f"{node.op} of a {like.dtype} input needs a float dtype "
                                f"attribute")
        return like.dtype
    dtype = ONNX_FLOAT_DTYPES.get(int(code))
    if dtype is None:
        raise LoweringError(f"{node.op}: dtype {code} is not a float type")
    return dtype


def _shape(ctx: LoweringContext, node: Node, like: TensorRef | None) -> tuple[Expr, ...]:
    if like is not None:
        return like.shape
    dims = node.attr("shape", None)
    if dims is None:
        raise LoweringError(f"{node.op} needs a shape attribute")
    if any(int(d) < 0 for d in dims):
        raise LoweringError(f"{node.op}: negative dimension in shape {list(dims)}")
    return tuple(Const(int(d)) for d in dims)


def lower_random(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                 ) -> list[TensorRef]:
    """RandomNormal, RandomUniform and their ``Like`` forms: an inline ref (fuses)."""
    like = None
    if node.op.endswith("Like"):
        like = ins[0] if ins else None
        if like is None:
            raise LoweringError(f"{node.op} is missing its input")
    dtype = _out_float_dtype(node, like)
    shape = _shape(ctx, node, like)
    key = node_key(ctx, node)
    work = work_type(dtype)
    if node.op.startswith("RandomUniform"):
        low, high = _float_attr(node, "low", 0.0), _float_attr(node, "high", 1.0)

        def read(idx: Index) -> Expr:
            u = uniform(draw(key, flat_index(idx, shape)), work, width=UNIFORM_BITS[dtype])
            value = Binary("add", fconst(low, work), Binary("mul", fconst(high - low, work), u))
            return _out(value, work, dtype)
    else:
        mean, scale = _float_attr(node, "mean", 0.0), _float_attr(node, "scale", 1.0)

        def read(idx: Index) -> Expr:
            i2 = Binary("mul", flat_index(idx, shape), Const(2))
            u1 = uniform(draw(key, i2), work, open_low=True)
            u2 = uniform(draw(key, Binary("add", i2, Const(1))), work)
            radius = Call("sqrt", (Binary("mul", fconst(-2.0, work), Call("log", (u1,))),))
            angle = Call("cos", (Binary("mul", fconst(2 * math.pi, work), u2),))
            z = Binary("mul", radius, angle)
            return _out(Binary("add", fconst(mean, work), Binary("mul", fconst(scale, work), z)),
                        work, dtype)

    return [TensorRef(tuple(shape), dtype, read, cost=60)]


def lower_bernoulli(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                    ) -> list[TensorRef]:
    """``out = u < p`` in the output dtype (the input's unless ``dtype`` says)."""
    p = ins[0] if ins else None
    if p is None:
        raise LoweringError("Bernoulli is missing its input")
    if p.dtype not in FLOATS:
        raise LoweringError(f"Bernoulli of {p.dtype} probabilities (a float type is needed)")
    out_type = node.outputs[0].dtype
    dtype = KIR_DTYPES.get(out_type) if isinstance(out_type, DType) else p.dtype
    if dtype is None:
        raise LoweringError(f"Bernoulli to {out_type} is not supported")
    key = node_key(ctx, node)
    work = work_type(p.dtype)
    shape = p.shape

    def read(idx: Index) -> Expr:
        u = uniform(draw(key, flat_index(idx, shape)), work)
        prob = p.read(idx)
        hit = Binary("lt", u, prob if prob.dtype == work else Cast(work, prob))
        return hit if dtype == "bool" else Cast(dtype, hit)

    return [TensorRef(tuple(shape), dtype, read, cost=p.cost + 30)]


def lower_multinomial(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                      ) -> list[TensorRef]:
    """``sample_size`` class indices per row of ``(batch, classes)`` logits: a kernel
    (parallel over rows) with a running max, sum and search per row."""
    x = ins[0] if ins else None
    if x is None:
        raise LoweringError("Multinomial is missing its input")
    if x.rank != 2 or x.dtype not in FLOATS:
        raise LoweringError(f"Multinomial needs 2-D float logits, got rank {x.rank} "
                            f"{x.dtype}")
    code = int(node.attr("dtype", 6))
    dtype = ONNX_INT_DTYPES.get(code)
    if dtype is None:
        raise LoweringError(f"Multinomial: dtype {code} is not int32 (6) or int64 (7)")
    samples = int(node.attr("sample_size", 1))
    if samples < 1:
        raise LoweringError(f"Multinomial: sample_size {samples} must be at least 1")
    key = node_key(ctx, node)
    work = work_type(x.dtype)
    batch, classes = x.shape
    if isinstance(classes, Const) and classes.value < 1:
        raise LoweringError("Multinomial over zero classes")
    out_shape = (batch, Const(samples))
    out = ctx.new_buffer("multinomial", dtype, simplify_expr(batch * samples))
    top, total, acc, count = (Buffer(ctx.fresh(h), t, Const(1), "local") for h, t in
                              (("top", work), ("total", work), ("acc", work),
                               ("count", "i64")))
    z = Const(0)
    b, s, c, c2, c3 = (ctx.var(h) for h in ("b", "s", "c", "c", "c"))

    def logit(row: Expr, col: Expr) -> Expr:
        value = x.read((row, col))
        return value if value.dtype == work else Cast(work, value)

    def weight(col: Expr) -> Expr:
        return Call("exp", (Binary("sub", logit(b, col), Load(top, z)),))

    last = simplify_expr(classes - 1)
    u = uniform(draw(key, Binary("add", Binary("mul", b, Const(samples)), s)), work)
    sample = block(
        Store(acc, z, fconst(0.0, work)), Store(count, z, z),
        For(c3, classes, block(
            Store(acc, z, Binary("add", Load(acc, z), weight(c3))),
            Store(count, z, Binary("add", Load(count, z), Cast(
                "i64", Binary("le", Load(acc, z), Binary("mul", u, Load(total, z)))))),
        )),
        Store(out, flat_index((b, s), out_shape),
              Cast(dtype, Binary("min", Load(count, z), last))),
    )
    body: Stmt = block(
        Store(top, z, logit(b, z)),
        For(c, classes, Store(top, z, Binary("max", Load(top, z), logit(b, c)))),
        Store(total, z, fconst(0.0, work)),
        For(c2, classes, Store(total, z, Binary("add", Load(total, z), weight(c2)))),
        For(s, Const(samples), sample),
    )
    ctx.add_kernel("multinomial", For(b, batch, body, "parallel", independent=True),
                   [top, total, acc, count])
    return [buffer_ref(out, out_shape)]


LOWERINGS = {
    "RandomNormal": lower_random, "RandomUniform": lower_random,
    "RandomNormalLike": lower_random, "RandomUniformLike": lower_random,
    "Bernoulli": lower_bernoulli, "Multinomial": lower_multinomial,
}  # fmt: skip
