"""ATen -> ONNX lowerings, part three: normalization (batch, layer, group), softmax and
variance. Registered into ``torch_ops.LOWERINGS`` like part two."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from irkit.frontends.torch_lowering import LoweringContext, LoweringUnsupported
from irkit.frontends.torch_ops_base import _axis, _used_outputs, lowers
from irkit.ir import Value


@lowers("aten._native_batch_norm_legit_no_training.default")
def lower_batch_norm(
    ctx: LoweringContext,
    x: Any,
    weight: Any,
    bias: Any,
    mean: Any,
    var: Any,
    momentum: float,
    eps: float,
) -> tuple[Value, None, None]:
    channels = ctx.shape_of(x)[1]
    dtype = ctx.out_dtype
    scale = ctx.get(weight) if weight is not None else ctx.const(np.ones(channels, dtype.numpy))
    shift = ctx.get(bias) if bias is not None else ctx.const(np.zeros(channels, dtype.numpy))
    inputs = [ctx.get(x), scale, shift, ctx.get(mean), ctx.get(var)]
    out = ctx.emit("BatchNormalization", inputs, {"epsilon": float(eps)})
    return out, None, None  # saved mean / rstd: training-only outputs


@lowers("aten.native_layer_norm.default")
def lower_layer_norm(
    ctx: LoweringContext, x: Any, normalized_shape: Any, weight: Any, bias: Any, eps: float
) -> tuple[Value | None, ...]:
    axis = -len(normalized_shape)
    dtype = ctx.out_dtype
    size = [int(d) for d in normalized_shape]
    scale = ctx.get(weight) if weight is not None else ctx.const(np.ones(size, dtype.numpy))
    inputs = [ctx.get(x), scale] + ([ctx.get(bias)] if bias is not None else [])
    used = _used_outputs(ctx.node, 3)
    outputs = ctx.emit(
        "LayerNormalization",
        inputs,
        {"axis": axis, "epsilon": float(eps)},
        outputs=3 if used[1] or used[2] else 1,
    )
    return tuple(outputs) if isinstance(outputs, tuple) else (outputs, None, None)


@lowers("aten._softmax.default", "aten._log_softmax.default")
def lower_softmax(ctx: LoweringContext, x: Any, dim: int, half_to_float: bool = False) -> Value:
    op = "LogSoftmax" if "log" in ctx.target else "Softmax"
    return ctx.emit(op, [ctx.get(x)], {"axis": int(dim)})


def _moments(
    ctx: LoweringContext,
    value: Value,
    axes: list[int],
    keepdim: bool,
    divisor: float,
    typed: bool,
) -> tuple[Value, Value]:
    """(mean with keepdims, variance = sum((x - mean)^2) / divisor)."""
    mean = _reduce_value(ctx, "ReduceMean", value, axes, True)
    centered = ctx.emit("Sub", [value, mean], typed=False)
    squares = ctx.emit("Mul", [centered, centered], typed=False)
    total = _reduce_value(ctx, "ReduceSum", squares, axes, keepdim)
    var = ctx.emit("Div", [total, ctx.tensor(divisor, ctx.out_dtype)], typed=typed)
    return mean, var


def _reduce_value(
    ctx: LoweringContext, op: str, value: Value, axes: list[int], keepdim: bool
) -> Value:
    attrs: dict[str, Any] = {"keepdims": int(bool(keepdim))}
    since = 13 if op == "ReduceSum" else 18
    if ctx.opset >= since:
        return ctx.emit(op, [value, ctx.ints(axes)], attrs, typed=False)
    return ctx.emit(op, [value], {**attrs, "axes": axes}, typed=False)


def _reduced_count(ctx: LoweringContext, x: Any, axes: list[int]) -> int:
    shape = ctx.shape_of(x)
    if not all(isinstance(shape[a], int) for a in axes):
        raise LoweringUnsupported("variance over a dynamic dim")
    return math.prod(int(shape[a]) for a in axes)


@lowers("aten.var.correction", "aten.var_mean.correction")
def lower_var(
    ctx: LoweringContext,
    x: Any,
    dim: Any = None,
    *,
    correction: Any = None,
    keepdim: bool = False,
) -> Any:
    rank = ctx.rank_of(x)
    axes = list(range(rank)) if dim in (None, []) else sorted(_axis(d, rank) for d in dim)
    count = _reduced_count(ctx, x, axes)
    divisor = max(count - (1 if correction is None else float(correction)), 0)
    with_mean = "var_mean" in ctx.target
    mean, var = _moments(ctx, ctx.get(x), axes, keepdim, divisor, typed=not with_mean)
    if not with_mean:
        return var
    if not keepdim:
        mean = ctx.emit("Squeeze", [mean, ctx.ints(axes)], typed=False)
    return var, mean


@lowers("aten.native_group_norm.default")
def lower_group_norm(
    ctx: LoweringContext,
    x: Any,
    weight: Any,
    bias: Any,
    n: Any,
    channels: int,
    hw: Any,
    groups: int,
    eps: float,
) -> tuple[Value, None, None]:
    """Normalize [N, G, C/G * spatial] rows, then the per-channel affine."""
    rank = ctx.rank_of(x)
    value = ctx.get(x)
    rows = ctx.emit("Reshape", [value, ctx.ints([0, int(groups), -1])], typed=False)
    shape = ctx.shape_of(x)
    per_group = math.prod([int(channels) // int(groups), *[int(d) for d in shape[2:]]])
    mean, var = _moments(ctx, rows, [2], True, float(per_group), typed=False)
    centered = ctx.emit("Sub", [rows, mean], typed=False)
    std = ctx.emit(
        "Sqrt", [ctx.emit("Add", [var, ctx.tensor(eps, ctx.out_dtype)], typed=False)], typed=False
    )
    normed = ctx.emit("Div", [centered, std], typed=False)
    out = ctx.emit(
        "Reshape",
        [normed, ctx.emit("Shape", [value], typed=False)],
        typed=weight is None and bias is None,
    )
    spatial_axes = ctx.ints(list(range(1, rank - 1)))
    if weight is not None:
        scale = ctx.emit("Unsqueeze", [ctx.get(weight), spatial_axes], typed=False)
        out = ctx.emit("Mul", [out, scale], typed=bias is None)
    if bias is not None:
        shift = ctx.emit("Unsqueeze", [ctx.get(bias), spatial_axes], typed=False)
        out = ctx.emit("Add", [out, shift])
    return out, None, None


@lowers("aten.var.dim")
def lower_var_dim(
    ctx: LoweringContext, x: Any, dim: Any = None, unbiased: bool = True, keepdim: bool = False
) -> Any:
    return lower_var(ctx, x, dim, correction=1 if unbiased else 0, keepdim=keepdim)
