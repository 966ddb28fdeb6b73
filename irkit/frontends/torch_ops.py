"""ATen -> ONNX lowerings: the table the PyTorch frontend maps core ATen ops with.

Each entry takes the LoweringContext (its FX node is ``ctx.node``) and the node's
positional and keyword arguments, and returns the Value (or tuple of Values, None for an
output ONNX has no equivalent of) that stands for the node's result. Keys are the ATen
overload names as ``str(target)`` prints them, e.g. ``"aten.addmm.default"``.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
from torch import fx

from irkit.frontends.torch_lowering import LoweringContext, LoweringUnsupported
from irkit.frontends.torch_ops_base import (
    LOWERINGS,
    Lowering,
    _as_list,
    _axis,
    _used_outputs,
    lowers,
)
from irkit.ir import DType, Value


# -- elementwise -------------------------------------------------------------------------
def _binary(onnx_op: str, compare: bool = False) -> Lowering:
    def lower(ctx: LoweringContext, a: Any, b: Any, **kw: Any) -> Value:
        dtype = _promoted(ctx, a, b) if compare else ctx.out_dtype
        return ctx.emit(onnx_op, [ctx.tensor(a, dtype), ctx.tensor(b, dtype)])

    return lower


def _promoted(ctx: LoweringContext, a: Any, b: Any) -> DType:
    """The common input type of a comparison (its output is bool)."""
    import torch

    def example(x: Any) -> Any:
        val = ctx.meta(x)
        return val if isinstance(val, torch.Tensor) else x

    ta, tb = example(a), example(b)
    if isinstance(ta, torch.SymInt) or isinstance(tb, torch.SymInt):
        return DType.INT64
    from irkit.frontends.torch_lowering import torch_dtype

    return torch_dtype(torch.result_type(ta, tb))


for _name, _op in {
    "mul.Tensor": "Mul",
    "mul.Scalar": "Mul",
    "div.Tensor": "Div",
    "div.Scalar": "Div",
    "maximum.default": "Max",
    "minimum.default": "Min",
    "pow.Tensor_Tensor": "Pow",
    "pow.Tensor_Scalar": "Pow",
    "pow.Scalar": "Pow",
    "fmod.Tensor": "Mod",
    "fmod.Scalar": "Mod",
    "bitwise_and.Tensor": "And",
    "bitwise_or.Tensor": "Or",
    "bitwise_xor.Tensor": "Xor",
    "logical_and.default": "And",
    "logical_or.default": "Or",
    "logical_xor.default": "Xor",
}.items():
    LOWERINGS[f"aten.{_name}"] = _binary(_op)

for _name, _op in {
    "eq": "Equal",
    "lt": "Less",
    "le": "LessOrEqual",
    "gt": "Greater",
    "ge": "GreaterOrEqual",
}.items():
    LOWERINGS[f"aten.{_name}.Tensor"] = _binary(_op, compare=True)
    LOWERINGS[f"aten.{_name}.Scalar"] = _binary(_op, compare=True)


@lowers("aten.ne.Tensor", "aten.ne.Scalar")
def lower_ne(ctx: LoweringContext, a: Any, b: Any) -> Value:
    dtype = _promoted(ctx, a, b)
    eq = ctx.emit("Equal", [ctx.tensor(a, dtype), ctx.tensor(b, dtype)], typed=False)
    return ctx.emit("Not", [eq])


@lowers("aten.add.Tensor", "aten.add.Scalar", "aten.sub.Tensor", "aten.sub.Scalar")
def lower_add_sub(ctx: LoweringContext, a: Any, b: Any, alpha: Any = 1) -> Value:
    op = "Add" if "add" in ctx.target else "Sub"
    dtype = ctx.out_dtype
    rhs = ctx.tensor(b, dtype)
    if alpha != 1:
        rhs = ctx.emit("Mul", [rhs, ctx.tensor(alpha, dtype)], typed=False)
    return ctx.emit(op, [ctx.tensor(a, dtype), rhs])


@lowers("aten.rsub.Scalar", "aten.rsub.Tensor")
def lower_rsub(ctx: LoweringContext, a: Any, b: Any, alpha: Any = 1) -> Value:
    dtype = ctx.out_dtype
    lhs = ctx.tensor(a, dtype)
    if alpha != 1:
        lhs = ctx.emit("Mul", [lhs, ctx.tensor(alpha, dtype)], typed=False)
    return ctx.emit("Sub", [ctx.tensor(b, dtype), lhs])


@lowers("aten.div.Tensor_mode", "aten.div.Scalar_mode")
def lower_div_mode(ctx: LoweringContext, a: Any, b: Any, rounding_mode: str | None = None) -> Value:
    dtype = ctx.out_dtype
    if rounding_mode is None or (dtype.is_integer and rounding_mode == "trunc"):
        return ctx.emit("Div", [ctx.tensor(a, dtype), ctx.tensor(b, dtype)])
    if dtype.is_integer:
        raise LoweringUnsupported(f"integer division with rounding_mode={rounding_mode!r}")
    quotient = ctx.emit("Div", [ctx.tensor(a, dtype), ctx.tensor(b, dtype)], typed=False)
    if rounding_mode == "floor":
        return ctx.emit("Floor", [quotient])
    # trunc: sign(q) * floor(|q|)
    floor_abs = ctx.emit("Floor", [ctx.emit("Abs", [quotient], typed=False)], typed=False)
    return ctx.emit("Mul", [ctx.emit("Sign", [quotient], typed=False), floor_abs])


@lowers("aten.remainder.Tensor", "aten.remainder.Scalar")
def lower_remainder(ctx: LoweringContext, a: Any, b: Any) -> Value:
    dtype = ctx.out_dtype
    fmod = 0 if dtype.is_integer else 1  # integer Mod with fmod=0 follows the divisor's sign
    if fmod:
        x, y = ctx.tensor(a, dtype), ctx.tensor(b, dtype)
        quotient = ctx.emit("Floor", [ctx.emit("Div", [x, y], typed=False)], typed=False)
        return ctx.emit("Sub", [x, ctx.emit("Mul", [quotient, y], typed=False)])
    return ctx.emit("Mod", [ctx.tensor(a, dtype), ctx.tensor(b, dtype)], {"fmod": 0})


_UNARY = {
    "relu": "Relu",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "exp": "Exp",
    "log": "Log",
    "sqrt": "Sqrt",
    "neg": "Neg",
    "abs": "Abs",
    "reciprocal": "Reciprocal",
    "sin": "Sin",
    "cos": "Cos",
    "tan": "Tan",
    "asin": "Asin",
    "acos": "Acos",
    "atan": "Atan",
    "sinh": "Sinh",
    "cosh": "Cosh",
    "asinh": "Asinh",
    "acosh": "Acosh",
    "atanh": "Atanh",
    "erf": "Erf",
    "floor": "Floor",
    "ceil": "Ceil",
    "round": "Round",
    "sign": "Sign",
    "logical_not": "Not",
    "bitwise_not": "Not",
    "isnan": "IsNaN",
    "isinf": "IsInf",
}


def _unary(onnx_op: str) -> Lowering:
    def lower(ctx: LoweringContext, x: Any) -> Value:
        return ctx.emit(onnx_op, [ctx.get(x)])

    return lower


for _name, _op in _UNARY.items():
    LOWERINGS[f"aten.{_name}.default"] = _unary(_op)


@lowers("aten.rsqrt.default")
def lower_rsqrt(ctx: LoweringContext, x: Any) -> Value:
    return ctx.emit("Reciprocal", [ctx.emit("Sqrt", [ctx.get(x)], typed=False)])


@lowers("aten.log1p.default", "aten.expm1.default")
def lower_log1p_expm1(ctx: LoweringContext, x: Any) -> Value:
    one = ctx.tensor(1.0, ctx.out_dtype)
    if "log1p" in ctx.target:
        return ctx.emit("Log", [ctx.emit("Add", [ctx.get(x), one], typed=False)])
    return ctx.emit("Sub", [ctx.emit("Exp", [ctx.get(x)], typed=False), one])


@lowers("aten.gelu.default")
def lower_gelu(ctx: LoweringContext, x: Any, approximate: str = "none") -> Value:
    if ctx.opset >= 20:
        return ctx.emit("Gelu", [ctx.get(x)], {"approximate": approximate})
    dtype, v = ctx.out_dtype, ctx.get(x)
    half = ctx.emit("Mul", [v, ctx.tensor(0.5, dtype)], typed=False)
    if approximate == "tanh":
        cube = ctx.emit("Pow", [v, ctx.tensor(3.0, dtype)], typed=False)
        inner = ctx.emit("Mul", [cube, ctx.tensor(0.044715, dtype)], typed=False)
        inner = ctx.emit("Add", [v, inner], typed=False)
        inner = ctx.emit("Mul", [inner, ctx.tensor(math.sqrt(2 / math.pi), dtype)], typed=False)
        gate = ctx.emit("Tanh", [inner], typed=False)
    else:
        scaled = ctx.emit("Div", [v, ctx.tensor(math.sqrt(2.0), dtype)], typed=False)
        gate = ctx.emit("Erf", [scaled], typed=False)
    gate = ctx.emit("Add", [gate, ctx.tensor(1.0, dtype)], typed=False)
    return ctx.emit("Mul", [half, gate])


@lowers("aten.leaky_relu.default")
def lower_leaky_relu(ctx: LoweringContext, x: Any, negative_slope: float = 0.01) -> Value:
    return ctx.emit("LeakyRelu", [ctx.get(x)], {"alpha": float(negative_slope)})


@lowers("aten.elu.default")
def lower_elu(
    ctx: LoweringContext, x: Any, alpha: float = 1.0, scale: float = 1.0, input_scale: float = 1.0
) -> Value:
    if scale != 1.0 or input_scale != 1.0:
        raise LoweringUnsupported("elu with scale or input_scale other than 1")
    return ctx.emit("Elu", [ctx.get(x)], {"alpha": float(alpha)})


@lowers(
    "aten.hardtanh.default",
    "aten.clamp.default",
    "aten.clamp.Tensor",
    "aten.clamp_min.default",
    "aten.clamp_max.default",
)
def lower_clamp(ctx: LoweringContext, x: Any, *bounds: Any) -> Value:
    target = ctx.target
    if "clamp_min" in target:
        bounds = (bounds[0], None)
    elif "clamp_max" in target:
        bounds = (None, bounds[0])
    elif "hardtanh" in target:
        bounds = bounds or (-1.0, 1.0)
    lo, hi = ([*bounds, None, None])[:2]
    dtype = ctx.out_dtype
    inputs: list[Value | None] = [ctx.tensor(x, dtype)]
    inputs += [None if b is None else ctx.tensor(b, dtype) for b in (lo, hi)]
    while inputs[-1] is None:
        inputs.pop()
    return ctx.emit("Clip", inputs)


@lowers("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar")
def lower_where(ctx: LoweringContext, cond: Any, a: Any, b: Any) -> Value:
    dtype = ctx.out_dtype
    return ctx.emit(
        "Where", [ctx.tensor(cond, DType.BOOL), ctx.tensor(a, dtype), ctx.tensor(b, dtype)]
    )


@lowers(
    "aten._to_copy.default",
    "aten.clone.default",
    "aten.alias.default",
    "aten.detach.default",
    "aten.lift_fresh_copy.default",
    "aten.contiguous.default",
)
def lower_copy(ctx: LoweringContext, x: Any, **kw: Any) -> Value:
    """Copies are values in SSA; only a dtype change is a node (Cast)."""
    value = ctx.get(x)
    dtype = ctx.out_dtype
    return value if ctx.dtype_of(x) is dtype else ctx.cast_typed(value, dtype)


# -- linear algebra ------------------------------------------------------------------------
def _args(node: fx.Node) -> Any:
    """An FX node's positional arguments, untyped (torch types them as a wide union)."""
    return node.args


def _transposed_weight(ctx: LoweringContext, arg: Any) -> Value | None:
    """The weight ``w`` when ``arg`` is ``permute(w, [1, 0])`` (an nn.Linear's ``w.T``)."""
    if (
        isinstance(arg, fx.Node)
        and str(arg.target) == "aten.permute.default"
        and list(_args(arg)[1]) in ([1, 0], [-1, -2])
    ):
        return ctx.get(_args(arg)[0])
    return None


@lowers("aten.addmm.default")
def lower_addmm(
    ctx: LoweringContext, bias: Any, a: Any, b: Any, beta: float = 1, alpha: float = 1
) -> Value:
    attrs: dict[str, Any] = {}
    weight = _transposed_weight(ctx, b)
    if weight is not None:
        attrs["transB"] = 1
    else:
        weight = ctx.get(b)
    if alpha != 1:
        attrs["alpha"] = float(alpha)
    if beta != 1:
        attrs["beta"] = float(beta)
    return ctx.emit("Gemm", [ctx.get(a), weight, ctx.tensor(bias, ctx.out_dtype)], attrs)


@lowers("aten.mm.default")
def lower_mm(ctx: LoweringContext, a: Any, b: Any) -> Value:
    weight = _transposed_weight(ctx, b)
    if weight is not None:
        return ctx.emit("Gemm", [ctx.get(a), weight], {"transB": 1})
    return ctx.emit("MatMul", [ctx.get(a), ctx.get(b)])


@lowers("aten.bmm.default", "aten.matmul.default")
def lower_matmul(ctx: LoweringContext, a: Any, b: Any) -> Value:
    return ctx.emit("MatMul", [ctx.get(a), ctx.get(b)])


@lowers("aten.convolution.default")
def lower_convolution(
    ctx: LoweringContext,
    x: Any,
    weight: Any,
    bias: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    transposed: bool,
    output_padding: Any,
    groups: int,
) -> Value:
    spatial = ctx.rank_of(x) - 2
    pads = list(padding) * (spatial if len(padding) == 1 else 1)
    attrs: dict[str, Any] = {
        "strides": _repeat(stride, spatial),
        "pads": pads + pads,
        "dilations": _repeat(dilation, spatial),
        "group": int(groups),
        "kernel_shape": list(ctx.shape_of(weight)[2:]),
    }
    inputs = [ctx.get(x), ctx.get(weight)]
    if bias is not None:
        inputs.append(ctx.get(bias))
    if transposed:
        if any(output_padding):
            attrs["output_padding"] = _repeat(output_padding, spatial)
        return ctx.emit("ConvTranspose", inputs, attrs)
    return ctx.emit("Conv", inputs, attrs)


def _repeat(values: Any, n: int) -> list[int]:
    values = [int(v) for v in values]
    return values * n if len(values) == 1 else values


# -- normalization ---------------------------------------------------------------------------
# -- pooling and reductions ----------------------------------------------------------------
@lowers(
    "aten.max_pool2d_with_indices.default",
    "aten.max_pool1d_with_indices.default",
    "aten.max_pool3d_with_indices.default",
)
def lower_max_pool(
    ctx: LoweringContext,
    x: Any,
    kernel_size: Any,
    stride: Any = (),
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
) -> tuple[Value, None]:
    if _used_outputs(ctx.node, 2)[1]:
        raise LoweringUnsupported("max pooling indices (ONNX MaxPool's differ from torch's)")
    spatial = ctx.rank_of(x) - 2
    kernel = _repeat(_as_list(kernel_size), spatial)
    pads = _repeat(_as_list(padding), spatial)
    attrs = {
        "kernel_shape": kernel,
        "strides": _repeat(_as_list(stride), spatial) if stride else kernel,
        "pads": pads + pads,
        "dilations": _repeat(_as_list(dilation), spatial),
        "ceil_mode": int(ceil_mode),
    }
    return ctx.emit("MaxPool", [ctx.get(x)], attrs), None


@lowers("aten.avg_pool2d.default", "aten.avg_pool1d.default", "aten.avg_pool3d.default")
def lower_avg_pool(
    ctx: LoweringContext,
    x: Any,
    kernel_size: Any,
    stride: Any = (),
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Any = None,
) -> Value:
    if divisor_override is not None:
        raise LoweringUnsupported("avg_pool with divisor_override")
    spatial = ctx.rank_of(x) - 2
    kernel = _repeat(_as_list(kernel_size), spatial)
    pads = _repeat(_as_list(padding), spatial)
    attrs = {
        "kernel_shape": kernel,
        "strides": _repeat(_as_list(stride), spatial) if stride else kernel,
        "pads": pads + pads,
        "ceil_mode": int(ceil_mode),
        "count_include_pad": int(count_include_pad),
    }
    return ctx.emit("AveragePool", [ctx.get(x)], attrs)


@lowers(
    "aten._adaptive_avg_pool2d.default",
    "aten._adaptive_avg_pool1d.default",
    "aten._adaptive_avg_pool3d.default",
    "aten.adaptive_avg_pool1d.default",
)
def lower_adaptive_avg_pool(ctx: LoweringContext, x: Any, output_size: Any) -> Value:
    spatial = ctx.shape_of(x)[2:]
    out = _as_list(output_size)
    if all(o == 1 for o in out):
        return ctx.emit("GlobalAveragePool", [ctx.get(x)])
    if all(isinstance(s, int) and s % o == 0 for s, o in zip(spatial, out)):
        kernel = [int(s) // o for s, o in zip(spatial, out)]
        return ctx.emit("AveragePool", [ctx.get(x)], {"kernel_shape": kernel, "strides": kernel})
    raise LoweringUnsupported(f"adaptive avg pool from {spatial} to {out} (not a divisor)")


def _reduce(onnx_op: str, axes_input_since: int) -> Lowering:
    def lower(
        ctx: LoweringContext, x: Any, dim: Any = None, keepdim: bool = False, **kw: Any
    ) -> Value:
        rank = ctx.rank_of(x)
        dims = list(range(rank)) if dim in (None, []) else _as_list(dim)
        axes = sorted(_axis(d, rank) for d in dims)
        value = ctx.get(x)
        if kw.get("dtype") is not None or ctx.dtype_of(x) is not ctx.out_dtype:
            value = ctx.cast(value, ctx.out_dtype)
        if onnx_op == "ReduceMean" and keepdim and rank >= 3 and axes == list(range(2, rank)):
            return ctx.emit("GlobalAveragePool", [value])  # adaptive_avg_pool(1) after export
        attrs: dict[str, Any] = {"keepdims": int(bool(keepdim))}
        if ctx.opset >= axes_input_since:
            return ctx.emit(onnx_op, [value, ctx.ints(axes)], attrs)
        return ctx.emit(onnx_op, [value], {**attrs, "axes": axes})

    return lower


LOWERINGS["aten.mean.dim"] = _reduce("ReduceMean", 18)
LOWERINGS["aten.mean.default"] = _reduce("ReduceMean", 18)
LOWERINGS["aten.sum.dim_IntList"] = _reduce("ReduceSum", 13)
LOWERINGS["aten.sum.default"] = _reduce("ReduceSum", 13)
LOWERINGS["aten.amax.default"] = _reduce("ReduceMax", 18)
LOWERINGS["aten.amin.default"] = _reduce("ReduceMin", 18)
LOWERINGS["aten.prod.dim_int"] = _reduce("ReduceProd", 18)


@lowers(
    "aten.any.dim",
    "aten.any.dims",
    "aten.any.default",
    "aten.all.dim",
    "aten.all.dims",
    "aten.all.default",
)
def lower_any_all(ctx: LoweringContext, x: Any, dim: Any = None, keepdim: bool = False) -> Value:
    rank = ctx.rank_of(x)
    dims = list(range(rank)) if dim in (None, []) else _as_list(dim)
    axes = sorted(_axis(d, rank) for d in dims)
    op = "ReduceMax" if ".any." in ctx.target else "ReduceMin"
    as_int = ctx.cast(ctx.tensor(x, DType.BOOL), DType.INT32)
    attrs: dict[str, Any] = {"keepdims": int(bool(keepdim))}
    if ctx.opset >= 18:
        reduced = ctx.emit(op, [as_int, ctx.ints(axes)], attrs, typed=False)
    else:
        reduced = ctx.emit(op, [as_int], {**attrs, "axes": axes}, typed=False)
    return ctx.cast_typed(reduced, DType.BOOL)


@lowers("aten.argmax.default", "aten.argmin.default")
def lower_argmax(ctx: LoweringContext, x: Any, dim: Any = None, keepdim: bool = False) -> Value:
    op = "ArgMax" if "argmax" in ctx.target else "ArgMin"
    value = ctx.get(x)
    if dim is None:
        value = ctx.emit("Reshape", [value, ctx.ints([-1])], typed=False)
        dim = 0
    return ctx.emit(op, [value], {"axis": int(dim), "keepdims": int(bool(keepdim))})


@lowers("aten.cumsum.default")
def lower_cumsum(ctx: LoweringContext, x: Any, dim: int, dtype: Any = None) -> Value:
    value = ctx.tensor(x, ctx.out_dtype)
    return ctx.emit("CumSum", [value, ctx.const(np.asarray(int(dim), np.int64))])


# -- SymInt arithmetic (python operators on sizes) --------------------------------------------
def lower_sym_size(ctx: LoweringContext, x: Any, dim: int) -> Value:
    axis = _axis(int(dim), ctx.rank_of(x))
    return ctx.emit("Shape", [ctx.get(x)], {"start": axis, "end": axis + 1}, typed=False)


SYM_BINARY: dict[Any, str] = {
    operator.mul: "Mul",
    operator.add: "Add",
    operator.sub: "Sub",
    operator.floordiv: "Div",
}


def lower_sym_binary(ctx: LoweringContext, a: Any, b: Any) -> Value:
    op = SYM_BINARY[ctx.node.target]
    return ctx.emit(op, [ctx.size_value(a), ctx.size_value(b)], typed=False)


LOWERINGS["aten.sym_size.int"] = lower_sym_size
SKIPPED = frozenset(
    {
        "aten._assert_tensor_metadata.default",
        "aten._assert_scalar.default",
        "aten.sym_constrain_range_for_size.default",
        "aten.sym_constrain_range.default",
        "aten._assert_async.msg",
    }
)
"""Ops with no data effect (run-time checks of what export already proved)."""


@lowers("aten.max.dim", "aten.min.dim")
def lower_max_dim(ctx: LoweringContext, x: Any, dim: int, keepdim: bool = False) -> tuple:
    is_max = ".max." in ctx.target
    axis = _axis(int(dim), ctx.rank_of(x))
    value = ctx.get(x)
    attrs = {"keepdims": int(bool(keepdim))}
    if ctx.opset >= 18:
        values = ctx.emit("ReduceMax" if is_max else "ReduceMin", [value, ctx.ints([axis])], attrs)
    else:
        values = ctx.emit(
            "ReduceMax" if is_max else "ReduceMin", [value], {**attrs, "axes": [axis]}
        )
    # select_last_index=0: the first extreme element, as torch documents for CPU
    indices = ctx.emit(
        "ArgMax" if is_max else "ArgMin", [value], {**attrs, "axis": axis}, typed=False
    )
    return values, indices


@lowers("aten.topk.default")
def lower_topk(
    ctx: LoweringContext,
    x: Any,
    k: Any,
    dim: int = -1,
    largest: bool = True,
    sorted: bool = True,
) -> tuple[Value, Value]:
    axis = _axis(int(dim), ctx.rank_of(x))
    attrs = {"axis": axis, "largest": int(bool(largest)), "sorted": 1}
    return ctx.emit("TopK", [ctx.get(x), ctx.size_value(k)], attrs, outputs=2)


@lowers("aten.sort.default")
def lower_sort(
    ctx: LoweringContext, x: Any, dim: int = -1, descending: bool = False
) -> tuple[Value, Value]:
    """A TopK over the whole dim (ties may order differently from torch's unstable sort)."""
    axis = _axis(int(dim), ctx.rank_of(x))
    size = ctx.shape_of(x)[axis]
    k = (
        ctx.ints([size])
        if isinstance(size, int)
        else ctx.emit("Shape", [ctx.get(x)], {"start": axis, "end": axis + 1}, typed=False)
    )
    attrs = {"axis": axis, "largest": int(bool(descending)), "sorted": 1}
    return ctx.emit("TopK", [ctx.get(x), k], attrs, outputs=2)


for _name, _op in {
    "bitwise_and.Scalar": "And",
    "bitwise_or.Scalar": "Or",
    "bitwise_xor.Scalar": "Xor",
    "logical_not.default": "Not",
}.items():
    LOWERINGS[f"aten.{_name}"] = _binary(_op) if _op != "Not" else _unary(_op)


@lowers("aten.log2.default", "aten.log10.default")
def lower_log_base(ctx: LoweringContext, x: Any) -> Value:
    base = 2.0 if "log2" in ctx.target else 10.0
    log = ctx.emit("Log", [ctx.get(x)], typed=False)
    return ctx.emit("Div", [log, ctx.tensor(math.log(base), ctx.out_dtype)])


@lowers("aten.trunc.default")
def lower_trunc(ctx: LoweringContext, x: Any) -> Value:
    value = ctx.get(x)
    floor_abs = ctx.emit("Floor", [ctx.emit("Abs", [value], typed=False)], typed=False)
    return ctx.emit("Mul", [ctx.emit("Sign", [value], typed=False), floor_abs])


LOWERINGS["aten.prod.default"] = _reduce("ReduceProd", 18)


# The shape, indexing and creation lowerings register themselves into LOWERINGS too.
from irkit.frontends import torch_ops_norm as _torch_ops_norm  # noqa: E402
from irkit.frontends import torch_ops_shape as _torch_ops_shape  # noqa: E402
from irkit.frontends import torch_rnn as _torch_rnn  # noqa: E402

LOWERED_MODULES = (_torch_ops_norm, _torch_ops_shape, _torch_rnn)
