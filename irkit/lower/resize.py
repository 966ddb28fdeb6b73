"""Resize and Upsample: nearest (every nearest_mode), linear and cubic over any axes,
every coordinate transformation, antialias, and ``keep_aspect_ratio_policy``.

Constant scales or sizes precompute each resized axis's source indices and weights into
constant tables; run-time scales, roi or aspect-ratio sizes compute the source
coordinate of each output element from the values loaded at run time (guarded by
:mod:`irkit.runtime.guards`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from irkit.ir import Node
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
    simplify_expr,
)
from irkit.lower.context import LoweringContext
from irkit.lower.image import (
    F32,
    F64,
    _clamp,
    _cubic_weights,
    _let,
    _runtime,
    _to_int,
    _weighted_sum,
)
from irkit.lower.runtime_sizes import declared
from irkit.lower.shape_ops import const_ints
from irkit.lower.tensor import (
    LoweringError,
    TensorRef,
    buffer_ref,
    fconst,
    flat_index,
    is_static,
    product,
    static,
    str_attr,
)
from irkit.lower.windows import in_range, nest


# -- Resize ----------------------------------------------------------------------------
def lower_resize(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                 ) -> list[TensorRef]:
    """Resize with compile-time scales or sizes: per resized axis, numpy precomputes which
    input elements each output element reads and with what weights (ONNX's separable
    interpolation), and the kernel sums the weighted taps. Scales, sizes or a roi that are
    graph inputs are read by the kernel (:func:`_resize_runtime`)."""
    x = ins[0]
    assert x is not None
    if x.dtype != F32:
        raise LoweringError("Resize supports f32 only")
    rank = x.rank
    if node.op == "Upsample":
        scales_ref = ins[1] if len(ins) > 1 else None
        scales = node.attr("scales", None)
        mode = str_attr(node, "mode", "nearest")
        upsample = ResizeOptions(mode=mode, transform="asymmetric", nearest="floor")
        if scales is None and _runtime(scales_ref):
            return [_resize_runtime(ctx, node, x, scales_ref, None, None, list(range(rank)),
                                    upsample)]
        scale_list = [float(v) for v in scales] if scales is not None else \
            _const_floats(scales_ref, "Upsample scales")
        if not scale_list:
            raise LoweringError("Upsample needs scales")
        return [_resize(ctx, x, scale_list, None, None, list(range(rank)), upsample)]
    if len(ins) == 2:  # opset 10: (X, scales)
        roi_ref, scales_ref, sizes_ref = None, ins[1], None
    else:
        roi_ref = ins[1] if len(ins) > 1 else None
        scales_ref = ins[2] if len(ins) > 2 else None
        sizes_ref = ins[3] if len(ins) > 3 else None
    axes = [int(a) % rank for a in node.attr("axes", None) or range(rank)]
    opts = ResizeOptions(
        mode=str_attr(node, "mode", "nearest"),
        transform=str_attr(node, "coordinate_transformation_mode", "half_pixel"),
        nearest=str_attr(node, "nearest_mode", "round_prefer_floor"),
        cubic_a=float(node.attr("cubic_coeff_a", -0.75)),
        exclude_outside=bool(node.attr("exclude_outside", 0)),
        extrapolation=float(node.attr("extrapolation_value", 0.0)),
        antialias=bool(node.attr("antialias", 0)),
        aspect=str_attr(node, "keep_aspect_ratio_policy", "stretch"))
    crop = opts.transform == "tf_crop_and_resize"
    if _runtime(sizes_ref) or _runtime(scales_ref) or (crop and _runtime(roi_ref)):
        if _runtime(sizes_ref) and opts.aspect == "stretch" and not (crop and _runtime(roi_ref)):
            # The guarded declared shape gives the sizes, hence the scales: as constants.
            out = declared(node, 0, "Resize sizes")
            _resize_guard(ctx, node, x, {"sizes": sizes_ref}, out, axes, opts)
            roi = _const_floats(roi_ref, "Resize roi") if crop else None
            return [_resize(ctx, x, None, [out[a] for a in axes], roi or None, axes, opts)]
        return [_resize_runtime(ctx, node, x, scales_ref, sizes_ref, roi_ref, axes, opts)]
    sizes = const_ints(sizes_ref, "Resize sizes")
    scale_list = _const_floats(scales_ref, "Resize scales")
    if sizes:
        scale_list = None
    elif not scale_list:
        raise LoweringError("Resize needs scales or sizes")
    roi = _const_floats(roi_ref, "Resize roi") if opts.transform == "tf_crop_and_resize" \
        else None
    return [_resize(ctx, x, scale_list, sizes or None, roi or None, axes, opts)]


def _resize_guard(ctx: LoweringContext, node: Node, x: TensorRef,
                  inputs: dict[str, TensorRef | None], out: Sequence[int], axes: list[int],
                  opts: ResizeOptions) -> None:
    if len(out) != x.rank:
        raise LoweringError(f"Resize's declared output rank {len(out)} differs from its "
                            f"input's {x.rank}")
    ctx.shape_guard(node, "resize", inputs, x.shape, [[Const(d) for d in out]],
                    {"axes": axes, "policy": opts.aspect})


def _resize_runtime(ctx: LoweringContext, node: Node, x: TensorRef,
                    scales_ref: TensorRef | None, sizes_ref: TensorRef | None,
                    roi_ref: TensorRef | None, axes: list[int], opts: ResizeOptions
                    ) -> TensorRef:
    """Resize whose scales (or sizes kept to the aspect ratio, or tf_crop_and_resize roi)
    are graph inputs: the output shape is the declared one (guarded), and the kernel maps
    each output index to its source coordinate with the scale and roi it loads, like
    ONNX's reference (in f64)."""
    if opts.antialias:
        raise LoweringError("Resize antialias needs compile-time scales or sizes")
    rank = x.rank
    in_sizes = [static(d, "Resize dim (run-time scales, sizes or roi)") for d in x.shape]
    use_sizes = _runtime(sizes_ref) or bool(const_ints(sizes_ref, "Resize sizes"))
    count = len(axes)

    def element(ref: TensorRef, i: int) -> Expr:
        if ref.rank != 1 or static(ref.shape[0], "Resize input length") < i + 1:
            raise LoweringError(f"Resize input of shape {ref.shape} is too short for "
                                f"{count} axes")
        return simplify_expr(Cast(F64, ref.read((Const(i),))))

    scale: dict[int, Expr] = {}
    if use_sizes:
        assert sizes_ref is not None
        if _runtime(sizes_ref):
            out = list(declared(node, 0, "Resize sizes"))
            _resize_guard(ctx, node, x, {"sizes": sizes_ref}, out, axes, opts)
        else:
            out = _resize_out_sizes(in_sizes, axes, None, const_ints(sizes_ref, ""), opts)
        ratios = [element(sizes_ref, i) / fconst(in_sizes[a], F64) for i, a in enumerate(axes)]
        for i, a in enumerate(axes):
            scale[a] = ratios[i]
        if opts.aspect != "stretch":
            common = ratios[0]
            for r in ratios[1:]:
                common = Binary("min" if opts.aspect == "not_larger" else "max", common, r)
            scale = {a: common for a in axes}
    else:
        if scales_ref is None:
            raise LoweringError("Resize needs scales or sizes")
        if _runtime(scales_ref):
            out = list(declared(node, 0, "Resize scales"))
            _resize_guard(ctx, node, x, {"scales": scales_ref}, out, axes, opts)
            scale = {a: element(scales_ref, i) for i, a in enumerate(axes)}
        else:
            values = _const_floats(scales_ref, "Resize scales") or []
            out = _resize_out_sizes(in_sizes, axes, values, None, opts)
            scale = {a: fconst(v, F64) for a, v in zip(axes, values)}
    rois: dict[int, tuple[Expr, Expr]] = {}
    if opts.transform == "tf_crop_and_resize":
        if roi_ref is None:
            raise LoweringError("Resize tf_crop_and_resize needs a roi")
        rois = {a: (element(roi_ref, i), element(roi_ref, i + count))
                for i, a in enumerate(axes)}
    out_shape = tuple(Const(d) for d in out)
    out_idx = [ctx.var(f"o{a}") for a in range(rank)]
    lets: list[Stmt] = []
    taps: list[list[tuple[Expr, Expr]]] = []
    resized: list[int] = []
    outside: Expr | None = None
    for a in axes:
        n_in, n_out, factor = in_sizes[a], out[a], scale[a]
        if n_in == n_out == 1 or (isinstance(factor, Const) and factor.value == 1.0
                                  and n_in == n_out and not rois):
            continue  # the identity along this axis
        axis_taps, off = _runtime_taps(ctx, lets, opts, out_idx[a], n_in, n_out, scale[a],
                                       rois.get(a))
        resized.append(a)
        taps.append(axis_taps)
        if off is not None:
            outside = off if outside is None else Binary("or", outside, off)

    def pixel(idx: Sequence[Expr]) -> Expr:
        src: list[Expr] = list(out_idx)
        for a, i in zip(resized, idx):
            src[a] = i
        return x.read(tuple(src))

    if opts.mode == "nearest" or not taps:
        result = pixel([t[0][0] for t in taps])
    else:
        result = Cast(F32, _weighted_sum(taps, lambda idx: Cast(F64, pixel(idx))))
    if outside is not None:
        result = Select(outside, fconst(opts.extrapolation), result)
    out_buf = ctx.new_buffer("resize", F32, product(out_shape))
    stmt: Stmt = block(*lets, Store(out_buf, flat_index(tuple(out_idx), out_shape), result))
    for a in reversed(range(rank)):
        stmt = For(out_idx[a], out_shape[a], stmt, "parallel" if a == 0 else "serial")
    ctx.add_kernel("resize", stmt)
    return buffer_ref(out_buf, out_shape)


def _runtime_taps(ctx: LoweringContext, lets: list[Stmt], opts: ResizeOptions, y: Expr,
                  n_in: int, n_out: int, scale: Expr, roi: tuple[Expr, Expr] | None
                  ) -> tuple[list[tuple[Expr, Expr]], Expr | None]:
    """The input indices and f64 weights output index ``y`` reads along one axis (one tap
    of weight 1 for nearest), and (tf_crop_and_resize) whether it lies outside the crop."""
    def c(v: float) -> Const:
        return fconst(v, F64)

    def div(a: Expr, b: Expr) -> Expr:
        return Call("fdiv", (a, b))

    yf = Cast(F64, y)
    width = _let(ctx, lets, "width", scale * c(n_in))
    single = Binary("eq", width, c(1.0))
    half = div(yf + c(0.5), scale) - c(0.5)
    outside: Expr | None = None
    mode = opts.transform
    src: Expr
    if mode == "align_corners":
        src = Select(single, c(0.0), div(yf * c(n_in - 1), width - c(1.0)))
    elif mode == "asymmetric":
        src = div(yf, scale)
    elif mode == "tf_crop_and_resize":
        assert roi is not None
        lo, hi = roi
        src = Select(single, div((hi - lo) * c(n_in - 1), c(2.0)),
                     div(yf * (hi - lo) * c(n_in - 1), width - c(1.0))) + lo * c(n_in - 1)
    elif mode == "pytorch_half_pixel":
        src = Select(single, c(-0.5), half)
    elif mode == "half_pixel":
        src = half
    else:  # half_pixel_symmetric
        offset = c(n_in / 2) * (c(1.0) - div(c(n_out), width))
        src = offset + half
    xv = _let(ctx, lets, "src", src)
    if mode == "tf_crop_and_resize":
        outside = Binary("or", Binary("lt", xv, c(0.0)), Binary("gt", xv, c(n_in - 1)))
    floor = _let(ctx, lets, "fl", Call("floor", (xv,)))
    frac = xv - floor
    if opts.mode == "nearest":
        up = {"round_prefer_floor": Binary("gt", frac, c(0.5)),
              "round_prefer_ceil": Binary("ge", frac, c(0.5)),
              "floor": Const(False, "bool"), "ceil": Binary("gt", frac, c(0.0))}[opts.nearest]
        i = _to_int(floor) + Select(up, Const(1), Const(0))
        return [(_let(ctx, lets, "ix", _clamp(i, 0, n_in - 1)), c(1.0))], outside
    # An exact source position reads the taps left of it with ratio 1 (ONNX's choice).
    exact = _let(ctx, lets, "exact", Binary("eq", frac, c(0.0)))
    ratio = _let(ctx, lets, "ratio", Select(exact, c(1.0), frac))
    base = _to_int(floor) - Select(exact, Const(1), Const(0))
    if opts.mode == "linear":
        weights = [c(1.0) - ratio, ratio]
        first = base
    else:
        weights = _cubic_weights(ratio, opts.cubic_a, F64)
        first = base - 1
    idx = [simplify_expr(first + k) for k in range(len(weights))]
    if opts.exclude_outside:
        weights = [Select(in_range(i, 0, n_in), w, c(0.0)) for i, w in zip(idx, weights)]
        total: Expr = weights[0]
        for w in weights[1:]:
            total = total + w
        norm = _let(ctx, lets, "norm", Select(Binary("eq", total, c(0.0)), c(1.0), total))
        weights = [div(w, norm) for w in weights]
    return [(_let(ctx, lets, "ix", _clamp(i, 0, n_in - 1)), _let(ctx, lets, "w", w))
            for i, w in zip(idx, weights)], outside


def _resize_out_sizes(in_sizes: Sequence[int], axes: list[int], scales: list[float] | None,
                      sizes: list[int] | None, opts: ResizeOptions) -> list[int]:
    """The output shape for compile-time scales or sizes (ONNX's rule)."""
    out = list(in_sizes)
    if sizes:
        if len(sizes) != len(axes):
            raise LoweringError(f"Resize sizes {sizes} do not match axes {axes}")
        ratios = [s / in_sizes[a] for a, s in zip(axes, sizes)]
        if opts.aspect == "stretch":
            for a, s in zip(axes, sizes):
                out[a] = s
            return out
        common = min(ratios) if opts.aspect == "not_larger" else max(ratios)
        for a in axes:
            out[a] = int(common * in_sizes[a] + 0.5)
        return out
    if scales is None or len(scales) != len(axes) or any(v <= 0 for v in scales):
        raise LoweringError(f"Resize scales {scales} do not match axes {axes}")
    for a, v in zip(axes, scales):
        out[a] = int(v * in_sizes[a])
    return out


def _const_floats(ref: TensorRef | None, what: str) -> list[float] | None:
    if ref is None:
        return None
    if ref.const is None:
        raise LoweringError(f"{what} must be a compile-time constant")
    return [float(v) for v in np.asarray(ref.const).reshape(-1)]


class ResizeOptions:
    def __init__(self, mode: str, transform: str, nearest: str = "round_prefer_floor",
                 cubic_a: float = -0.75, exclude_outside: bool = False,
                 extrapolation: float = 0.0, antialias: bool = False,
                 aspect: str = "stretch") -> None:
        if mode not in ("nearest", "linear", "cubic"):
            raise LoweringError(f"Resize mode {mode!r} is not supported")
        if antialias and mode == "nearest":
            raise LoweringError("Resize antialias needs linear or cubic mode")
        if transform not in ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel",
                             "align_corners", "asymmetric", "tf_crop_and_resize"):
            raise LoweringError(f"Resize coordinate_transformation_mode {transform!r} is "
                                f"not supported")
        if nearest not in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
            raise LoweringError(f"Resize nearest_mode {nearest!r} is not supported")
        if aspect not in ("stretch", "not_larger", "not_smaller"):
            raise LoweringError(f"Resize keep_aspect_ratio_policy {aspect!r} is not supported")
        self.mode, self.transform, self.nearest = mode, transform, nearest
        self.cubic_a, self.exclude_outside = cubic_a, exclude_outside
        self.extrapolation, self.antialias, self.aspect = extrapolation, antialias, aspect

    def coeffs(self, ratio: float, scale: float) -> np.ndarray:
        """Weights of the taps around a source position ``ratio`` past its floor."""
        if self.mode == "nearest":
            if float(ratio).is_integer():
                return np.array([0.0, 1.0])
            up = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
                  "floor": False, "ceil": True}[self.nearest]
            return np.array([0.0, 1.0]) if up else np.array([1.0, 0.0])
        if self.mode == "linear":
            if not self.antialias:
                return np.array([1.0 - ratio, ratio])
            s = min(scale, 1.0)
            start = int(np.floor(-1 / s) + 1)
            args = (np.arange(start, 2 - start) - ratio) * s
            w = np.clip(1 - np.abs(args), 0, 1)
            return w / w.sum()
        a = self.cubic_a
        if not self.antialias:
            r = ratio
            return np.array([((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
                             ((a + 2) * r - (a + 3)) * r * r + 1,
                             ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
                             ((a * (2 - r) - 5 * a) * (2 - r) + 8 * a) * (2 - r) - 4 * a])
        s = min(scale, 1.0)
        start = int(np.floor(-2 / s) + 1)
        t = np.abs(s * (np.arange(start, 2 - start) - ratio))
        w = np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                     np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))
        return w / w.sum()

    def table(self, size: int, out_size: int, scale: float, roi: tuple[float, float] | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each output index along one axis: the (clamped) input indices it reads,
        their weights, and whether it lies outside the crop (tf_crop_and_resize)."""
        y = np.arange(out_size, dtype=np.float64)
        width = scale * size
        outside = np.zeros(out_size, bool)
        mode = self.transform
        if mode == "align_corners":
            x = np.zeros(out_size) if width == 1 else y * (size - 1) / (width - 1)
        elif mode == "asymmetric":
            x = y / scale
        elif mode == "tf_crop_and_resize":
            assert roi is not None
            lo, hi = roi
            x = np.full(out_size, (hi - lo) * (size - 1) / 2) if width == 1 else \
                y * (hi - lo) * (size - 1) / (width - 1)
            x = x + lo * (size - 1)
            outside = (x < 0) | (x > size - 1)
        elif mode == "pytorch_half_pixel":
            x = np.full(out_size, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
        elif mode == "half_pixel":
            x = (y + 0.5) / scale - 0.5
        else:  # half_pixel_symmetric
            offset = size / 2 * (1 - out_size / width)
            x = offset + (y + 0.5) / scale - 0.5
        base = np.floor(x)
        ratios = np.where(x == base, 1.0, x - base)
        coeffs = np.stack([self.coeffs(float(r), scale) for r in ratios])
        n = coeffs.shape[1]
        pad = int(np.ceil(n / 2))
        shifted = x + pad
        frac = shifted - np.floor(shifted)
        if n % 2 == 0:
            first = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
        else:
            first = np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
        idx = (np.floor(shifted).astype(np.int64) + first)[:, None] + np.arange(n) - pad
        if self.exclude_outside:
            coeffs = np.where((idx < 0) | (idx >= size), 0.0, coeffs)
            total = coeffs.sum(axis=1, keepdims=True)
            coeffs = coeffs / np.where(total == 0, 1.0, total)
        return np.clip(idx, 0, size - 1), coeffs, outside


def _resize(ctx: LoweringContext, x: TensorRef, scales: list[float] | None,
            sizes: list[int] | None, roi: list[float] | None, axes: list[int],
            opts: ResizeOptions) -> TensorRef:
    rank = x.rank
    if scales is not None and len(scales) == len(axes):
        # A symbolic dim (the batch) may pass through with scale 1 (and the full roi).
        keep = [s != 1.0 or is_static(x.shape[a]) or (
            roi is not None and (roi[i], roi[i + len(axes)]) != (0.0, 1.0))
            for i, (a, s) in enumerate(zip(axes, scales))]
        if roi is not None and len(roi) == 2 * len(axes):
            roi = [r for r, k in zip(roi, keep + keep) if k]
        axes = [a for a, k in zip(axes, keep) if k]
        scales = [s for s, k in zip(scales, keep) if k]
    in_sizes = {a: static(x.shape[a], "Resize dim") for a in axes}
    factor = [1.0] * rank
    out_sizes = {a: in_sizes[a] for a in axes}
    if sizes is not None:
        if len(sizes) != len(axes):
            raise LoweringError(f"Resize sizes {sizes} do not match axes {axes}")
        for a, s in zip(axes, sizes):
            factor[a] = s / in_sizes[a]
            out_sizes[a] = s
        if opts.aspect != "stretch":
            chosen = [factor[a] for a in axes]
            common = min(chosen) if opts.aspect == "not_larger" else max(chosen)
            for a in axes:
                factor[a] = common
                out_sizes[a] = int(common * in_sizes[a] + 0.5)
    else:
        assert scales is not None
        if len(scales) != len(axes):
            raise LoweringError(f"Resize scales {scales} do not match axes {axes}")
        for a, scale in zip(axes, scales):
            if scale <= 0:
                raise LoweringError(f"Resize scale {scale} must be positive")
            factor[a] = scale
            out_sizes[a] = int(scale * in_sizes[a])
    rois: dict[int, tuple[float, float]] = {}
    if roi is not None:
        if len(roi) != 2 * len(axes):
            raise LoweringError(f"Resize roi {roi} does not match axes {axes}")
        rois = {a: (roi[i], roi[i + len(axes)]) for i, a in enumerate(axes)}
    resized = [a for a in axes if not (
        np.isclose(factor[a], 1.0) and out_sizes[a] == in_sizes[a]
        and np.allclose(rois.get(a, (0.0, 1.0)), (0.0, 1.0)))]
    out_shape = tuple(Const(out_sizes[a]) if a in out_sizes else x.shape[a]
                      for a in range(rank))
    tables = {a: opts.table(in_sizes[a], out_sizes[a], factor[a], rois.get(a))
              for a in resized}
    out_idx = [ctx.var(f"o{a}") for a in range(rank)]
    taps = {a: ctx.var(f"t{a}") for a in resized}
    acc = Buffer(ctx.fresh("acc"), F32, Const(1), "local")
    z = Const(0)
    src: list[Expr] = list(out_idx)
    weight: Expr | None = None
    outside: Expr | None = None
    for a in resized:
        idx, coeffs, extrap = tables[a]
        n = idx.shape[1]
        flat = out_idx[a] * n + taps[a]
        src[a] = ctx.const_ref(idx.reshape(-1), "i64").read((flat,))
        w = ctx.const_ref(coeffs.reshape(-1).astype(np.float32), F32).read((flat,))
        weight = w if weight is None else weight * w
        if extrap.any():
            hit = Binary("ne", ctx.const_ref(extrap.astype(np.uint8), "u8").read(
                (out_idx[a],)), Const(0, "u8"))
            outside = hit if outside is None else Binary("or", outside, hit)
    out = ctx.new_buffer("resize", F32, product(out_shape))
    value = x.read(tuple(src))
    term = value if weight is None else weight * value
    result: Expr = Load(acc, z)
    if outside is not None:
        result = Select(outside, fconst(opts.extrapolation), result)
    body = block(Store(acc, z, fconst(0.0)),
                 nest([taps[a] for a in resized], [tables[a][0].shape[1] for a in resized],
                      Store(acc, z, Load(acc, z) + term)),
                 Store(out, flat_index(tuple(out_idx), out_shape), result))
    stmt: Stmt = body
    for a in reversed(range(rank)):
        stmt = For(out_idx[a], out_shape[a], stmt, "parallel" if a == 0 else "serial")
    ctx.add_kernel("resize", stmt, [acc])
    return buffer_ref(out, out_shape)


LOWERINGS: dict[str, Callable[..., Any]] = {"Resize": lower_resize, "Upsample": lower_resize}
