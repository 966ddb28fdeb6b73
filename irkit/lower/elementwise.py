"""Elementwise ops as inline refs: each builds the expression of one output element.

Chains of these fuse into whichever kernel consumes them (a materializing loop, a GEMM or
convolution epilogue, a reduction).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from irkit.ir import Node
from irkit.kir import Binary, Call, Cast, Const, Expr, Select, Unary, simplify_expr
from irkit.kir.nodes import FLOATS, ITEMSIZE, UNSIGNED
from irkit.lower.context import LoweringContext, expr_cost
from irkit.lower.tensor import (
    KIR_DTYPES,
    NUMPY_DTYPES,
    Index,
    LoweringError,
    TensorRef,
    broadcast_read,
    broadcast_shape,
)

UnaryFn = Callable[[Expr, Node], Expr]


def _c(value: float, like: Expr) -> Const:
    if like.dtype in FLOATS:
        return Const(float(np.asarray(value, NUMPY_DTYPES[like.dtype])), like.dtype)
    return Const(int(value), like.dtype)


def _sigmoid(x: Expr) -> Expr:
    one = _c(1.0, x)
    return one / (one + Call("exp", (-x,)))


def _isinf(x: Expr, node: Node) -> Expr:
    pos = Binary("eq", x, _c(float("inf"), x))
    neg = Binary("eq", x, _c(float("-inf"), x))
    want_pos, want_neg = node.attr("detect_positive", 1), node.attr("detect_negative", 1)
    if want_pos and want_neg:
        return Binary("or", pos, neg)
    if want_pos:
        return pos
    if want_neg:
        return neg
    return Binary("and", pos, neg)  # detects nothing: always false


def _python_mod(a: Expr, b: Expr) -> Expr:
    """ONNX Mod with fmod=0: the remainder takes the divisor's sign (like Python's %)."""
    r = Binary("mod", a, b)
    zero = _c(0, a)
    fix = Binary("and", Binary("ne", r, zero),
                 Binary("ne", Binary("lt", r, zero), Binary("lt", b, zero)))
    return Select(fix, r + b, r)


def _sign(x: Expr) -> Expr:
    """-1, 0 or 1 (NaN stays NaN: it is neither above nor below zero)."""
    zero = _c(0, x)
    pos = Select(Binary("gt", x, zero), _c(1, x), x)
    return pos if x.dtype in UNSIGNED else Select(Binary("lt", x, zero), _c(-1, x), pos)


def _gelu(x: Expr, node: Node) -> Expr:
    half = _c(0.5, x)
    if node.attr("approximate", "none") == "tanh":
        inner = _c(math.sqrt(2.0 / math.pi), x) * (x + _c(0.044715, x) * x * x * x)
        return half * x * (_c(1.0, x) + Call("tanh", (inner,)))
    return half * x * (_c(1.0, x) + Call("erf", (x * _c(1.0 / math.sqrt(2.0), x),)))


def _shrink(x: Expr, node: Node) -> Expr:
    """``x + bias`` below ``-lambd``, ``x - bias`` above ``lambd``, else 0."""
    lambd, bias = node.attr("lambd", 0.5), node.attr("bias", 0.0)
    above = Select(Binary("gt", x, _c(lambd, x)), x - _c(bias, x), _c(0, x))
    return Select(Binary("lt", x, _c(-lambd, x)), x + _c(bias, x), above)


UNARY: dict[str, UnaryFn] = {
    "Relu": lambda x, n: Binary("max", x, _c(0, x)),
    "Sigmoid": lambda x, n: _sigmoid(x),
    "Tanh": lambda x, n: Call("tanh", (x,)),
    "Exp": lambda x, n: Call("exp", (x,)),
    "Log": lambda x, n: Call("log", (x,)),
    "Erf": lambda x, n: Call("erf", (x,)),
    "Sqrt": lambda x, n: Call("sqrt", (x,)),
    "Abs": lambda x, n: Call("abs", (x,)) if x.dtype in FLOATS else Select(
        Binary("lt", x, _c(0, x)), -x, x),
    "Neg": lambda x, n: -x,
    "Floor": lambda x, n: Call("floor", (x,)),
    "Ceil": lambda x, n: Call("ceil", (x,)),
    "Round": lambda x, n: Call("round", (x,)),
    "Sin": lambda x, n: Call("sin", (x,)),
    "Cos": lambda x, n: Call("cos", (x,)),
    "Reciprocal": lambda x, n: _c(1.0, x) / x,
    "Not": lambda x, n: Unary("not", x),
    "Identity": lambda x, n: x,
    "Gelu": _gelu,
    "LeakyRelu": lambda x, n: Select(
        Binary("lt", x, _c(0, x)), x * _c(n.attr("alpha", 0.01), x), x),
    "Elu": lambda x, n: Select(
        Binary("lt", x, _c(0, x)),
        _c(n.attr("alpha", 1.0), x) * (Call("exp", (x,)) - _c(1.0, x)), x),
    "HardSigmoid": lambda x, n: Binary("max", _c(0, x), Binary(
        "min", _c(1, x), x * _c(n.attr("alpha", 0.2), x) + _c(n.attr("beta", 0.5), x))),
    "HardSwish": lambda x, n: x * Binary("max", _c(0, x), Binary(
        "min", _c(1, x), x * _c(1.0 / 6.0, x) + _c(0.5, x))),
    "Softplus": lambda x, n: Call("log", (_c(1.0, x) + Call("exp", (x,)),)),
    "Softsign": lambda x, n: x / (_c(1.0, x) + Call("abs", (x,))),
    "IsNaN": lambda x, n: Binary("ne", x, x),
    "IsInf": lambda x, n: _isinf(x, n),
    **{op: (lambda fn: lambda x, n: Call(fn, (x,)))(op.lower()) for op in (
        "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh")},
    "Sign": lambda x, n: _sign(x),
    "BitwiseNot": lambda x, n: Unary("not", x),
    "Shrink": lambda x, n: _shrink(x, n),
}
BOOL_RESULT = frozenset(["IsNaN", "IsInf"])

BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Max": "max", "Min": "min",
    "Equal": "eq", "Less": "lt", "Greater": "gt", "LessOrEqual": "le",
    "GreaterOrEqual": "ge", "And": "and", "Or": "or", "Mod": "mod",
    "BitwiseAnd": "and", "BitwiseOr": "or",
}  # fmt: skip
# Built from several kernel-IR operations: lower_bitwise.
BITWISE = ("Xor", "BitwiseXor", "BitShift")

ELEMENTWISE_OPS = frozenset(
    [*UNARY, *BINARY, *BITWISE, "Pow", "Where", "Cast", "Clip", "BatchNormalization", "PRelu",
     "Sum", "Mean"]
)


def inline(shape: Sequence[Expr], dtype: str, read: Callable[[Index], Expr],
           inputs: Sequence[TensorRef]) -> TensorRef:
    probe = read(tuple(Const(0) for _ in shape))
    cost = expr_cost(probe) + sum(r.cost for r in inputs)
    return TensorRef(tuple(shape), dtype, read, cost=cost)


def lower_unary(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    fn = UNARY[node.op]
    dtype = "bool" if node.op in BOOL_RESULT else x.dtype
    return [inline(x.shape, dtype, lambda idx: fn(x.read(idx), node), [x])]


def _pow(base: Expr, exponent: TensorRef, idx_e: Expr) -> Expr:
    if exponent.const is not None and exponent.const.size == 1:
        e = float(exponent.const.reshape(-1)[0])
        table = {1.0: lambda b: b, 2.0: lambda b: b * b, 3.0: lambda b: b * b * b,
                 0.5: lambda b: Call("sqrt", (b,)), -1.0: lambda b: _c(1.0, b) / b}
        if e in table and (base.dtype in FLOATS or e in (1.0, 2.0, 3.0)):
            return table[e](base)
    if base.dtype not in FLOATS:
        # Integer powers through f64 (exact for the magnitudes integer tensors hold).
        wide = Call("pow", (Cast("f64", base), Cast("f64", idx_e)))
        return Cast(base.dtype, Call("round", (wide,)) if idx_e.dtype not in FLOATS
                    else wide)
    if idx_e.dtype != base.dtype:
        idx_e = Cast(base.dtype, idx_e)
    return Call("pow", (base, idx_e))


def lower_binary(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                 ) -> list[TensorRef]:
    refs = [r for r in ins if r is not None]
    shape = broadcast_shape([r.shape for r in refs])
    reads = [broadcast_read(r, len(shape)) for r in refs]
    if node.op == "Pow":
        base, exp = refs
        return [inline(shape, base.dtype,
                       lambda idx: _pow(reads[0](idx), exp, reads[1](idx)), refs)]
    if node.op == "Mod" and not node.attr("fmod", 0):
        return [inline(shape, refs[0].dtype,
                       lambda idx: _python_mod(reads[0](idx), reads[1](idx)), refs)]
    if node.op in ("Sum", "Mean", "Max", "Min") or len(refs) > 2:
        op = {"Sum": "add", "Mean": "add"}.get(node.op, BINARY.get(node.op, "add"))

        def variadic(idx: Index) -> Expr:
            acc = reads[0](idx)
            for r in reads[1:]:
                acc = Binary(op, acc, r(idx))
            if node.op == "Mean":
                acc = acc * _c(1.0 / len(reads), acc)
            return acc

        return [inline(shape, refs[0].dtype, variadic, refs)]
    op = BINARY[node.op]
    dtype = "bool" if op in ("eq", "lt", "gt", "le", "ge") else refs[0].dtype
    return [inline(shape, dtype, lambda idx: Binary(op, reads[0](idx), reads[1](idx)), refs)]


def _xor(a: Expr, b: Expr) -> Expr:
    if a.dtype == "bool":
        return Binary("ne", a, b)
    return Binary("xor", a, b)


def _shift(x: Expr, y: Expr, left: bool) -> Expr:
    """ONNX BitShift: a shift by a negative amount or by the width or more gives what
    the sign fill alone gives (-1 for a right shift of a negative signed x, else 0)."""
    zero = _c(0, x)
    ok = Binary("lt", y, _c(8 * ITEMSIZE[x.dtype], y))
    if y.dtype not in UNSIGNED:
        ok = Binary("and", Binary("ge", y, _c(0, y)), ok)
    shifted = Call("shl" if left else "shr", (x, Select(ok, y, _c(0, y))))
    fill: Expr = zero
    if not left and x.dtype not in UNSIGNED:
        fill = Select(Binary("lt", x, zero), _c(-1, x), zero)
    return Select(ok, shifted, fill)


def lower_bitwise(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                  ) -> list[TensorRef]:
    """Xor (bool), BitwiseXor and BitShift (integers), with broadcasting."""
    a, b = ins[0], ins[1]
    assert a is not None and b is not None
    if a.dtype in FLOATS or (node.op == "BitShift" and a.dtype == "bool"):
        raise LoweringError(f"{node.op} on {a.dtype} is not supported")
    shape = broadcast_shape([a.shape, b.shape])
    ra, rb = broadcast_read(a, len(shape)), broadcast_read(b, len(shape))
    if node.op == "BitShift":
        direction = node.attr("direction", "")
        direction = direction.decode() if isinstance(direction, bytes) else str(direction)
        if direction not in ("LEFT", "RIGHT"):
            raise LoweringError(f"BitShift direction {direction!r} is not LEFT or RIGHT")
        left = direction == "LEFT"
        return [inline(shape, a.dtype, lambda idx: _shift(ra(idx), rb(idx), left), [a, b])]
    return [inline(shape, a.dtype, lambda idx: _xor(ra(idx), rb(idx)), [a, b])]


def lower_dropout(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                  ) -> list[TensorRef]:
    """Dropout at inference: the output is the input and the mask is all true. Training
    with a nonzero ratio draws a random mask, which is not supported."""
    x = ins[0]
    assert x is not None
    ratio = ins[1] if len(ins) > 1 else None
    training = ins[2] if len(ins) > 2 else None
    if training is not None:
        if training.const is None:
            raise LoweringError("Dropout with a run-time training_mode is not supported "
                                "(training draws a random mask)")
        zero_ratio = ratio is not None and ratio.const is not None and not np.any(ratio.const)
        if bool(np.asarray(training.const).reshape(-1)[0]) and not zero_ratio:
            raise LoweringError("Dropout in training mode with a nonzero ratio is not "
                                "supported (it draws a random mask)")
    if node.attr("is_test", 1) == 0:
        raise LoweringError("Dropout with is_test=0 (training) is not supported")
    outs = [x]
    if len(node.outputs) > 1:
        outs.append(TensorRef(x.shape, "bool", lambda idx: Const(True, "bool")))
    return outs


def lower_where(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                ) -> list[TensorRef]:
    refs = [r for r in ins if r is not None]
    shape = broadcast_shape([r.shape for r in refs])
    c, a, b = (broadcast_read(r, len(shape)) for r in refs)
    return [inline(shape, refs[1].dtype, lambda idx: Select(c(idx), a(idx), b(idx)), refs)]


def lower_cast(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    from irkit.ir import DType

    to = KIR_DTYPES.get(DType(node.attr("to")))
    if to is None:
        raise LoweringError(f"Cast to {DType(node.attr('to')).name} is not supported")
    if x.const is not None:
        return [ctx.const_ref(np.asarray(x.const).astype(NUMPY_DTYPES[to]), to)]
    return [inline(x.shape, to, lambda idx: Cast(to, x.read(idx)), [x])]


def lower_castlike(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                   ) -> list[TensorRef]:
    """CastLike: Cast to the element type of the second input (its values are unused)."""
    x, like = ins[0], ins[1]
    assert x is not None and like is not None
    if x.const is not None:
        return [ctx.const_ref(np.asarray(x.const).astype(NUMPY_DTYPES[like.dtype]), like.dtype)]
    to = like.dtype
    return [inline(x.shape, to, lambda idx: Cast(to, x.read(idx)), [x])]


def lower_clip(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    bounds: list[Expr | None] = [None, None]
    for k, attr in ((1, "min"), (2, "max")):
        ref = ins[k] if len(ins) > k else None
        if ref is not None:
            bounds[k - 1] = ref.read(())
        elif node.attr(attr) is not None:
            bounds[k - 1] = _c(node.attr(attr), Const(0.0, x.dtype))

    def read(idx: Index) -> Expr:
        v = x.read(idx)
        if bounds[0] is not None:
            v = Binary("max", v, bounds[0])
        if bounds[1] is not None:
            v = Binary("min", v, bounds[1])
        return v

    return [inline(x.shape, x.dtype, read, [x])]


def lower_prelu(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                ) -> list[TensorRef]:
    x, slope = ins
    assert x is not None and slope is not None
    shape = broadcast_shape([x.shape, slope.shape])
    sr = broadcast_read(slope, len(shape))
    return [inline(shape, x.dtype, lambda idx: Select(
        Binary("lt", x.read(idx), _c(0, x.read(idx))), x.read(idx) * sr(idx), x.read(idx)),
        [x, slope])]


def lower_batchnorm(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                    ) -> list[TensorRef]:
    """Inference BatchNormalization as ``x * a[c] + b[c]`` with a, b folded at compile time
    (constant parameters), else ``(x - mean[c]) / sqrt(var[c] + eps) * scale[c] + bias[c]``.
    Training mode (batch statistics) is :func:`irkit.lower.nn.lower_batchnorm_training`."""
    x, scale, bias, mean, var = ins[:5]
    assert x is not None and scale is not None and bias is not None
    assert mean is not None and var is not None
    if node.attr("training_mode", 0):
        from irkit.lower.nn import lower_batchnorm_training

        return lower_batchnorm_training(ctx, node, ins)
    consts = [r.const for r in (scale, bias, mean, var)]
    eps = float(node.attr("epsilon", 1e-5))
    if any(c is None for c in consts) or x.dtype not in ("f32", "f64"):
        def channel(ref: TensorRef, idx: Index) -> Expr:
            v = ref.read((idx[1] if x.rank > 1 else Const(0),))
            return v if v.dtype == x.dtype else Cast(x.dtype, v)

        def read(idx: Index) -> Expr:
            norm = (x.read(idx) - channel(mean, idx)) / Call(
                "sqrt", (channel(var, idx) + _c(eps, Const(0.0, x.dtype)),))
            return norm * channel(scale, idx) + channel(bias, idx)

        return [inline(x.shape, x.dtype, read, [x, scale, bias, mean, var])]
    s, b, m, v = (np.asarray(c, np.float64) for c in consts)  # type: ignore[arg-type]
    a = s / np.sqrt(v + eps)
    shift = b - m * a
    trailing = (1,) * (x.rank - 2)
    a_ref = ctx.const_ref(a.astype(np.float32).reshape(-1, *trailing), x.dtype)
    b_ref = ctx.const_ref(shift.astype(np.float32).reshape(-1, *trailing), x.dtype)
    ar, br = broadcast_read(a_ref, x.rank), broadcast_read(b_ref, x.rank)
    return [inline(x.shape, x.dtype, lambda idx: x.read(idx) * ar(idx) + br(idx), [x])]


def fold_constant(node: Node, ins: Sequence[TensorRef | None]) -> list[np.ndarray] | None:
    """Evaluate an elementwise node at compile time when every input is constant."""
    if not all(r is None or r.const is not None for r in ins) or node.op not in (
        *BINARY, "Neg", "Identity", "Cast", "Where", "Not", "Sqrt", "Pow", "Xor", "BitwiseXor",
        "BitwiseNot"
    ):
        return None
    arrays: list[Any] = [None if r is None else r.const for r in ins]
    a = arrays[0]
    ops: dict[str, Callable[..., np.ndarray]] = {
        "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Max": np.maximum,
        "Min": np.minimum, "Equal": np.equal, "Less": np.less, "Greater": np.greater,
        "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal,
        "And": np.logical_and, "Or": np.logical_or, "Pow": np.power, "Xor": np.logical_xor,
        "BitwiseAnd": np.bitwise_and, "BitwiseOr": np.bitwise_or, "BitwiseXor": np.bitwise_xor,
    }  # fmt: skip
    if node.op in ops and len(arrays) == 2:
        out = ops[node.op](a, arrays[1])
        if node.op in ("Add", "Sub", "Mul", "Max", "Min", "Pow"):
            out = out.astype(np.asarray(a).dtype)
        return [np.asarray(out)]
    if node.op == "Mod":
        mod = np.fmod if node.attr("fmod", 0) else np.mod
        return [np.asarray(mod(a, arrays[1])).astype(np.asarray(a).dtype)]
    if node.op == "Div":
        b = arrays[1]
        if np.asarray(a).dtype.kind in "iu":
            return [np.asarray(np.trunc(np.divide(a, b))).astype(np.asarray(a).dtype)]
        return [np.asarray(np.divide(a, b)).astype(np.asarray(a).dtype)]
    if node.op == "Where":
        return [np.where(*arrays)]
    if node.op == "Neg":
        return [np.negative(a)]
    if node.op == "Not":
        return [np.logical_not(a)]
    if node.op == "BitwiseNot":
        return [np.invert(a)]
    if node.op == "Sqrt":
        return [np.sqrt(a)]
    if node.op == "Identity":
        return [np.asarray(a)]
    return None


def simplified(expr: Expr) -> Expr:
    return simplify_expr(expr)


# Ops lowered here that the driver's table does not list one by one.
LOWERINGS = {"Xor": lower_bitwise, "BitwiseXor": lower_bitwise, "BitShift": lower_bitwise,
             "Dropout": lower_dropout}
