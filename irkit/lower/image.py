"""Image and signal ops: GridSample, RoiAlign, DFT, MaxUnpool, Col2Im, Resize/Upsample,
plus the sliding-window ops of :mod:`irkit.lower.windows`.

Each lowers to one loop nest per output element with the sampling arithmetic inline;
coordinates that depend only on compile-time values (Resize with constant scales) are
precomputed into constant tables with numpy.
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
    If,
    Let,
    Load,
    Select,
    Stmt,
    Store,
    Var,
    block,
    simplify_expr,
)
from irkit.lower import windows
from irkit.lower.context import LoweringContext
from irkit.lower.runtime_sizes import declared
from irkit.lower.tensor import (
    LoweringError,
    TensorRef,
    buffer_ref,
    flat_index,
    is_static,
    product,
    static,
)
from irkit.lower.windows import all_of, fconst, in_range, nest

F32, F64 = "f32", "f64"


def _text(node: Node, name: str, default: str) -> str:
    value = node.attr(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _let(ctx: LoweringContext, lets: list[Stmt], hint: str, value: Expr) -> Var:
    """Bind ``value`` to a fresh variable (appending the Let to ``lets``)."""
    var = Var(ctx.fresh(hint), value.dtype)
    lets.append(Let(var, value))
    return var


def _clamp(i: Expr, lo: Expr | int, hi: Expr | int) -> Expr:
    lo_e = lo if isinstance(lo, Expr) else Const(lo, i.dtype)
    hi_e = hi if isinstance(hi, Expr) else Const(hi, i.dtype)
    return Binary("min", Binary("max", i, lo_e), hi_e)


def _to_int(x: Expr) -> Expr:
    """Truncation toward zero, like C's cast."""
    return Cast("i64", x)


def _to_float(i: Expr) -> Expr:
    return Cast(F32, i)


def _const_ints(ref: TensorRef | None, what: str) -> list[int] | None:
    if ref is None:
        return None
    if ref.const is None:
        raise LoweringError(f"{what} must be a compile-time constant")
    return [int(v) for v in np.asarray(ref.const).reshape(-1)]


def _cubic_weights(t: Expr, a: float, dtype: str = F32) -> list[Expr]:
    """Keys' cubic convolution weights of the taps at -1, 0, 1, 2 for fraction ``t``."""
    def c(v: float) -> Const:
        return fconst(v, dtype)

    def near(s: Expr) -> Expr:  # |s| <= 1
        return ((c(a + 2) * s - c(a + 3)) * s) * s + c(1.0)

    def far(s: Expr) -> Expr:  # 1 < |s| < 2
        return ((c(a) * s - c(5 * a)) * s + c(8 * a)) * s - c(4 * a)

    one = c(1.0)
    return [far(t + one), near(t), near(one - t), far(c(2.0) - t)]


# -- GridSample --------------------------------------------------------------------------
def _reflect(x: Expr, lo: float, hi: float) -> Expr:
    """Reflect ``x`` at the borders ``lo`` and ``hi`` until it lies between them."""
    span = fconst(hi - lo)
    lo_c, hi_c = fconst(lo), fconst(hi)

    def fold(dx: Expr, near: Expr, far: Expr, sign: int) -> Expr:
        flips = Call("floor", (dx / span,))
        rest = dx - flips * span
        even = Binary("eq", Binary("mod", flips, fconst(2.0)), fconst(0.0))
        return Select(even, near + rest * sign, far - rest * sign)

    below = fold(lo_c - x, lo_c, hi_c, 1)
    above = fold(x - hi_c, hi_c, lo_c, -1)
    return Select(Binary("lt", x, lo_c), below, Select(Binary("gt", x, hi_c), above, x))


def lower_grid_sample(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                      ) -> list[TensorRef]:
    x, grid = ins[0], ins[1]
    assert x is not None and grid is not None
    if x.dtype != F32 or grid.dtype != F32:
        raise LoweringError("GridSample supports f32 only")
    spatial = x.rank - 2
    if spatial < 1 or grid.rank != x.rank or static(grid.shape[-1]) != spatial:
        raise LoweringError(f"GridSample grid shape {grid.shape} does not match input "
                            f"rank {x.rank}")
    mode = _text(node, "mode", "linear")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    padding = _text(node, "padding_mode", "zeros")
    align = bool(node.attr("align_corners", 0))
    if mode not in ("nearest", "linear", "cubic") or padding not in ("zeros", "border",
                                                                     "reflection"):
        raise LoweringError(f"GridSample mode {mode!r} / padding {padding!r} is not supported")
    sizes = [static(d, "GridSample spatial dim") for d in x.shape[2:]]
    out_shape = (x.shape[0], x.shape[1], *grid.shape[1:-1])
    out = ctx.new_buffer("gridsample", F32, product(out_shape))
    outs = [ctx.var(f"o{d}") for d in range(spatial)]
    borders = [(0.0, s - 1.0) if align else (-0.5, s - 0.5) for s in sizes]

    def body(n: Expr, c: Expr) -> Stmt:
        lets: list[Stmt] = []
        coords: list[Expr] = []
        for d, size in enumerate(sizes):
            # The grid's last dim lists coordinates innermost dim first (x, y, z).
            g = grid.read((n, *outs, Const(spatial - 1 - d)))
            one = fconst(1.0)
            pos = (g + one) * fconst((size - 1) / 2.0) if align else \
                ((g + one) * fconst(size) - one) * fconst(0.5)
            if mode == "nearest":
                pos = Call("round", (pos,))  # half to even, like PyTorch
            # Padding applies to each tap's index, as in PyTorch and ONNX Runtime (the
            # ONNX reference first moves out-of-range coordinates inside, which gives the
            # same result except for cubic taps).
            coords.append(_let(ctx, lets, f"g{d}", pos))

        def pixel(idx: Sequence[Expr]) -> Expr:
            """The input at integer ``idx`` (i64), padded per ``padding_mode``."""
            fixed: list[Expr] = []
            for d, i in enumerate(idx):
                if padding == "reflection":
                    i = _to_int(_reflect(_to_float(i), *borders[d]))
                fixed.append(_clamp(i, 0, sizes[d] - 1))
            value = x.read((n, c, *fixed))
            if padding != "zeros":
                return value
            inside = all_of([in_range(i, 0, s) for i, s in zip(idx, sizes)])
            return Select(inside, value, fconst(0.0))

        if mode == "nearest":
            result = pixel([_to_int(p) for p in coords])
        else:
            taps: list[list[tuple[Expr, Expr]]] = []  # per dim: (index, weight)
            for d, p in enumerate(coords):
                base = _let(ctx, lets, f"b{d}", Call("floor", (p,)))
                t = _let(ctx, lets, f"t{d}", p - base)
                i0 = _let(ctx, lets, f"i{d}", _to_int(base))
                if mode == "linear":
                    taps.append([(i0, fconst(1.0) - t), (i0 + 1, t)])
                else:
                    ws = _cubic_weights(t, -0.75)
                    taps.append([(i0 + (k - 1), _let(ctx, lets, f"w{d}", ws[k]))
                                 for k in range(4)])
            result = _weighted_sum(taps, pixel)
        store = Store(out, flat_index((n, c, *outs), out_shape), result)
        return nest(outs, grid.shape[1:-1], block(*lets, store))

    ctx.add_kernel("gridsample", windows._nc_loop(ctx, x.shape[0], x.shape[1], body))
    return [buffer_ref(out, out_shape)]


def _weighted_sum(taps: Sequence[Sequence[tuple[Expr, Expr]]],
                  pixel: Callable[[Sequence[Expr]], Expr]) -> Expr:
    """``sum over tap combinations of prod(weights) * pixel(indices)`` (separable)."""
    combos: list[tuple[list[Expr], Expr | None]] = [([], None)]
    for dim_taps in taps:
        combos = [([*idx, i], w if acc is None else acc * w)
                  for idx, acc in combos for i, w in dim_taps]
    total: Expr | None = None
    for idx, weight in combos:
        assert weight is not None
        term = weight * pixel(idx)
        total = term if total is None else total + term
    assert total is not None
    return total


# -- RoiAlign ----------------------------------------------------------------------------
def lower_roi_align(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                    ) -> list[TensorRef]:
    x, rois, batch_idx = ins[0], ins[1], ins[2]
    assert x is not None and rois is not None and batch_idx is not None
    if x.dtype != F32 or rois.dtype != F32 or x.rank != 4:
        raise LoweringError("RoiAlign supports f32 NCHW input only")
    height, width = (static(d, "RoiAlign spatial dim") for d in x.shape[2:])
    oh, ow = int(node.attr("output_height", 1)), int(node.attr("output_width", 1))
    ratio = int(node.attr("sampling_ratio", 0))
    scale = float(node.attr("spatial_scale", 1.0))
    is_max = _text(node, "mode", "avg") == "max"
    half_pixel = _text(node, "coordinate_transformation_mode", "half_pixel") == "half_pixel"
    out_shape = (rois.shape[0], x.shape[1], Const(oh), Const(ow))
    out = ctx.new_buffer("roialign", F32, product(out_shape))
    acc = Buffer(ctx.fresh("acc"), F32, Const(1), "local")
    z = Const(0)
    r, c, ph, pw = ctx.var("r"), ctx.var("c"), ctx.var("ph"), ctx.var("pw")
    iy, ix = ctx.var("iy"), ctx.var("ix")
    lets: list[Stmt] = []
    offset = 0.5 if half_pixel else 0.0
    start_w, start_h, end_w, end_h = (
        _let(ctx, lets, name, rois.read((r, Const(k))) * fconst(scale) - fconst(offset))
        for k, name in enumerate(("x0", "y0", "x1", "y1")))
    roi_w: Expr = end_w - start_w
    roi_h: Expr = end_h - start_h
    if not half_pixel:  # malformed ROIs are forced to 1x1
        roi_w, roi_h = Binary("max", roi_w, fconst(1.0)), Binary("max", roi_h, fconst(1.0))
    bin_h = _let(ctx, lets, "bh", roi_h / fconst(oh))
    bin_w = _let(ctx, lets, "bw", roi_w / fconst(ow))
    if ratio > 0:
        grid_h: Expr = Const(ratio)
        grid_w: Expr = Const(ratio)
    else:  # adaptive: as many samples as the bin is pixels tall/wide
        grid_h = _let(ctx, lets, "gh", _to_int(Call("ceil", (roi_h / fconst(oh),))))
        grid_w = _let(ctx, lets, "gw", _to_int(Call("ceil", (roi_w / fconst(ow),))))
    count = _let(ctx, lets, "cnt", _to_float(Binary("max", grid_h * grid_w, Const(1))))
    image = _let(ctx, lets, "img", batch_idx.read((r,)))
    image = _let(ctx, lets, "imgc", _clamp(Cast("i64", image), 0, x.shape[0] - Const(1)))

    sample: list[Stmt] = []
    y = _let(ctx, sample, "y", start_h + _to_float(ph) * bin_h
             + (_to_float(iy) + fconst(0.5)) * bin_h / _to_float(grid_h))
    xx = _let(ctx, sample, "x", start_w + _to_float(pw) * bin_w
              + (_to_float(ix) + fconst(0.5)) * bin_w / _to_float(grid_w))
    outside = Binary("or", Binary("or", Binary("lt", y, fconst(-1.0)),
                                  Binary("gt", y, fconst(height))),
                     Binary("or", Binary("lt", xx, fconst(-1.0)), Binary("gt", xx, fconst(width))))
    taps: list[list[tuple[Expr, Expr]]] = []
    for coord, size, name in ((y, height, "y"), (xx, width, "x")):
        pos = Binary("max", coord, fconst(0.0))
        low = _let(ctx, sample, f"{name}lo", Binary("min", _to_int(pos), Const(size - 1)))
        high = Binary("min", low + 1, Const(size - 1))
        frac = _let(ctx, sample, f"{name}f", Select(
            Binary("ge", _to_int(pos), Const(size - 1)), fconst(0.0), pos - _to_float(low)))
        taps.append([(low, fconst(1.0) - frac), (high, frac)])

    def pixel(idx: Sequence[Expr]) -> Expr:
        return x.read((image, c, idx[0], idx[1]))

    if is_max:
        terms = [wy * wx * pixel((yi, xi)) for yi, wy in taps[0] for xi, wx in taps[1]]
        best = terms[0]
        for t in terms[1:]:
            best = Binary("max", best, t)
        value: Expr = Select(outside, fconst(0.0), best)
        first = Binary("and", Binary("eq", iy, z), Binary("eq", ix, z))
        update = Store(acc, z, Select(first, value, Binary("max", Load(acc, z), value)))
        result: Expr = Load(acc, z)
    else:
        value = Select(outside, fconst(0.0), _weighted_sum(taps, pixel))
        update = Store(acc, z, Load(acc, z) + value)
        result = Load(acc, z) / count
    per_bin = block(Store(acc, z, fconst(0.0)),
                    For(iy, grid_h, For(ix, grid_w, block(*sample, update))),
                    Store(out, flat_index((r, c, ph, pw), out_shape), result))
    body = For(r, rois.shape[0], block(*lets, For(c, x.shape[1], For(ph, Const(oh), For(
        pw, Const(ow), per_bin)))), "parallel")
    ctx.add_kernel("roialign", body, [acc])
    return [buffer_ref(out, out_shape)]


# -- DFT -------------------------------------------------------------------------------
def lower_dft(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
              ) -> list[TensorRef]:
    """A direct O(n^2) DFT along one axis with a constant twiddle table."""
    x = ins[0]
    assert x is not None
    if x.dtype != F32:
        raise LoweringError("DFT supports f32 only")
    rank = x.rank
    channels = static(x.shape[-1], "DFT last dim")
    if channels not in (1, 2) or rank < 3:
        raise LoweringError(f"DFT input must end in a dim of 1 or 2, got shape {x.shape}")
    inverse = bool(node.attr("inverse", 0))
    onesided = bool(node.attr("onesided", 0))
    opset = node.graph.opset_imports.get("", 17) if node.graph is not None else 17
    length_ref = ins[1] if len(ins) > 1 else None
    lengths = _const_ints(length_ref, "DFT dft_length")
    axis_ref = ins[2] if len(ins) > 2 else None
    if opset >= 20:
        if axis_ref is not None and axis_ref.const is None:
            return _dft_runtime_axis(ctx, node, x, axis_ref, lengths, inverse, onesided)
        axes = _const_ints(axis_ref, "DFT axis") or [-2]
    else:
        axes = [int(node.attr("axis", 1))]
    axis = axes[0] % rank
    if axis == rank - 1:
        raise LoweringError(f"DFT axis {axes[0]} is not a signal axis of rank {rank}")
    return [_dft_along(ctx, x, axis, lengths[0] if lengths else None, inverse, onesided)]


def _dft_geometry(x: TensorRef, axis: int, length: int | None, inverse: bool,
                  onesided: bool) -> tuple[int, int, tuple[Expr, ...]]:
    """The transform length, the output length along ``axis`` and the output shape."""
    size = static(x.shape[axis], "DFT signal length")
    if length is None:
        length = 2 * (size - 1) if inverse and onesided else size
    if length <= 0:
        raise LoweringError(f"DFT length {length} must be positive")
    out_len = length // 2 + 1 if onesided and not inverse else length
    last = 1 if inverse and onesided else 2
    shape = (*x.shape[:axis], Const(out_len), *x.shape[axis + 1:-1], Const(last))
    return length, out_len, shape


def _dft_along(ctx: LoweringContext, x: TensorRef, axis: int, length: int | None,
               inverse: bool, onesided: bool, out: Buffer | None = None,
               guard: Expr | None = None) -> TensorRef:
    n_fft, out_len, out_shape = _dft_geometry(x, axis, length, inverse, onesided)
    size = static(x.shape[axis], "DFT signal length")
    out = out or ctx.new_buffer("dft", F32, product(out_shape))
    # Sums run in f64 (f32 inputs, f64 twiddles) so near-zero bins match numpy's FFT.
    angles = 2.0 * np.pi * np.arange(n_fft) / n_fft
    cos_tab = ctx.const_ref(np.cos(angles), F64)
    sin_tab = ctx.const_ref(np.sin(angles), F64)
    complex_in = static(x.shape[-1]) == 2
    z = Const(0)
    re_acc = Buffer(ctx.fresh("re"), F64, Const(1), "local")
    im_acc = Buffer(ctx.fresh("im"), F64, Const(1), "local")
    k, j = ctx.var("k"), ctx.var("j")
    outer = [ctx.var(f"a{d}") for d in range(x.rank - 1)]  # all but the last dim

    def src(jj: Expr, part: int) -> Expr:
        idx = (*outer[:axis], jj, *outer[axis + 1:])
        if part == 1 and not complex_in:
            return fconst(0.0, F64)
        return Cast(F64, x.read((*idx, Const(part))))

    phase = (j * k) % n_fft
    cos_v, sin_v = cos_tab.read((phase,)), sin_tab.read((phase,))
    xr, xi = src(j, 0), src(j, 1)
    if inverse and onesided:
        # irfft: bins 0..n/2 stand for the Hermitian spectrum; the others count twice.
        terms = min(size, n_fft // 2 + 1)
        twice = Binary("and", Binary("gt", j, z), Binary("lt", j * 2, Const(n_fft)))
        weight = Select(twice, fconst(2.0, F64), fconst(1.0, F64))
        update: Stmt = Store(re_acc, z, Load(re_acc, z) + weight * (xr * cos_v - xi * sin_v))
        sums: list[Expr] = [Load(re_acc, z)]
    else:
        terms = min(size, n_fft)
        sign = fconst(1.0 if inverse else -1.0, F64)  # e^{sign * i * theta}
        update = block(
            Store(re_acc, z, Load(re_acc, z) + xr * cos_v - xi * sin_v * sign),
            Store(im_acc, z, Load(im_acc, z) + xr * sin_v * sign + xi * cos_v))
        sums = [Load(re_acc, z), Load(im_acc, z)]
    norm = fconst(1.0 / n_fft if inverse else 1.0, F64)
    results = [Cast(F32, v * norm) for v in sums]
    out_idx = (*outer[:axis], k, *outer[axis + 1:])
    per_bin = block(
        Store(re_acc, z, fconst(0.0, F64)), Store(im_acc, z, fconst(0.0, F64)),
        For(j, Const(terms), update),
        *(Store(out, flat_index((*out_idx, Const(p)), out_shape), v)
          for p, v in enumerate(results)))
    extents = [*x.shape[:axis], Const(out_len), *x.shape[axis + 1:-1]]
    loops: Stmt = per_bin
    for var, ext in reversed(list(zip([*outer[:axis], k, *outer[axis + 1:]], extents))):
        loops = For(var, ext, loops)
    assert isinstance(loops, For)
    if guard is not None:
        loops = For(loops.var, loops.extent, If(guard, loops.body), "parallel")
    else:
        loops = For(loops.var, loops.extent, loops.body, "parallel")
    ctx.add_kernel("dft", loops, [re_acc, im_acc])
    return buffer_ref(out, out_shape)


def _dft_runtime_axis(ctx: LoweringContext, node: Node, x: TensorRef, axis_ref: TensorRef,
                      lengths: list[int] | None, inverse: bool, onesided: bool
                      ) -> list[TensorRef]:
    """DFT along an axis known only at run time: when every candidate axis gives the
    same output shape, one guarded kernel per candidate."""
    rank = x.rank
    shapes = {}
    for axis in range(rank - 1):
        try:
            shapes[axis] = _dft_geometry(x, axis, lengths[0] if lengths else None, inverse,
                                         onesided)[2]
        except LoweringError:
            continue
    if not shapes or len({tuple(simplify_expr(d) for d in s) for s in shapes.values()}) != 1:
        raise LoweringError("DFT axis must be a compile-time constant when the output "
                            "shape depends on it")
    out_shape = next(iter(shapes.values()))
    out = ctx.new_buffer("dft", F32, product(out_shape))
    raw = Cast("i64", axis_ref.read((Const(0),) * axis_ref.rank))
    actual = Select(Binary("lt", raw, Const(0)), raw + rank, raw)
    for axis in shapes:
        _dft_along(ctx, x, axis, lengths[0] if lengths else None, inverse, onesided, out,
                   Binary("eq", actual, Const(axis)))
    return [buffer_ref(out, out_shape)]


# -- MaxUnpool -------------------------------------------------------------------------
def lower_max_unpool(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                     ) -> list[TensorRef]:
    x, indices = ins[0], ins[1]
    assert x is not None and indices is not None
    spatial = x.rank - 2
    kernel = [int(k) for k in node.attr("kernel_shape")]
    strides = [int(s) for s in node.attr("strides", None) or [1] * spatial]
    pads = [int(p) for p in node.attr("pads", None) or [0] * (2 * spatial)]
    in_sizes = [static(d, "MaxUnpool spatial dim") for d in x.shape[2:]]
    sizes = [(in_sizes[d] - 1) * strides[d] - pads[d] - pads[d + spatial] + kernel[d]
             for d in range(spatial)]
    requested = _const_ints(ins[2] if len(ins) > 2 else None, "MaxUnpool output_shape")
    if requested is not None and requested[2:] != sizes:
        # The ONNX reference reads the indices in the inferred shape, ONNX Runtime and
        # PyTorch in the requested one.
        raise LoweringError(f"MaxUnpool output_shape {requested} differs from the "
                            f"inferred spatial size {sizes} (ambiguous)")
    out_shape = (x.shape[0], x.shape[1], *(Const(s) for s in sizes))
    total = product(out_shape)
    out = ctx.new_buffer("maxunpool", x.dtype, total)
    zero: Expr = fconst(0.0, x.dtype) if x.dtype in ("f32", "f64") else Const(0, x.dtype)
    ctx.materialize(TensorRef(out_shape, x.dtype, lambda idx: zero), "unpool_zero", out)
    count = product(x.shape)
    e = ctx.var("e")
    shape = x.shape
    from irkit.lower.tensor import unravel

    src = unravel(e, shape)
    dst = Cast("i64", indices.read(src))
    # Serial, so that duplicate indices keep the last value like the reference.
    scatter = For(e, count, If(in_range(dst, 0, total), Store(out, dst, x.read(src))))
    ctx.add_kernel("maxunpool", scatter)
    return [buffer_ref(out, out_shape)]


# -- Col2Im ----------------------------------------------------------------------------
def lower_col2im(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                 ) -> list[TensorRef]:
    """Col2Im as a gather: each image element sums the block columns that cover it. An
    image_shape or block_shape that is a graph input gives the declared output shape
    (guarded); a run-time block shape is read by the kernel."""
    cols, image_ref, block_ref = ins[0], ins[1], ins[2]
    assert cols is not None and image_ref is not None and block_ref is not None
    if cols.dtype != F32 or cols.rank != 3:
        raise LoweringError("Col2Im supports f32 (N, C*prod(block), L) input only")
    runtime = _runtime(image_ref) or _runtime(block_ref)
    declared_shape = declared(node, 0, "Col2Im image_shape/block_shape") if runtime else None
    image = (list(declared_shape[2:]) if declared_shape is not None and _runtime(image_ref)
             else _const_ints(image_ref, "Col2Im image_shape"))
    assert image is not None
    spatial = len(image)
    dil = [int(d) for d in node.attr("dilations", None) or [1] * spatial]
    pads = [int(p) for p in node.attr("pads", None) or [0] * (2 * spatial)]
    strides = [int(s) for s in node.attr("strides", None) or [1] * spatial]
    rows = static(cols.shape[1], "Col2Im channels")
    if _runtime(block_ref):
        if block_ref.rank != 1 or static(block_ref.shape[0], "Col2Im block_shape") != spatial:
            raise LoweringError(f"Col2Im block_shape {block_ref.shape} does not match "
                                f"image_shape {image}")
        block_shape: list[Expr] = [simplify_expr(Cast("i64", block_ref.read((Const(d),))))
                                   for d in range(spatial)]
    else:
        block_shape = [Const(b) for b in _const_ints(block_ref, "Col2Im block_shape") or []]
    if declared_shape is not None:
        if len(declared_shape) != spatial + 2 or rows % max(declared_shape[1], 1):
            raise LoweringError(f"Col2Im declared output {list(declared_shape)} does not "
                                f"fit input {cols.shape}")
        channels = declared_shape[1]
        ctx.shape_guard(node, "col2im", {"image_shape": image_ref, "block_shape": block_ref},
                        cols.shape, [[cols.shape[0], Const(channels), *map(Const, image)]],
                        {"dilations": dil, "pads": pads, "strides": strides})
    blocks = [simplify_expr((b * (-dil[d]) + (image[d] + pads[d] + pads[d + spatial] +
                                              dil[d] - 1)) // strides[d] + 1)
              for d, b in enumerate(block_shape)]
    if declared_shape is None:
        consts = [static(b) for b in block_shape]
        per_block = int(np.prod(consts))
        counts = [static(b) for b in blocks]
        if rows % per_block or static(cols.shape[2], "Col2Im blocks") != int(np.prod(counts)):
            raise LoweringError(f"Col2Im input {cols.shape} does not match blocks {counts} "
                                f"of {consts}")
        channels = rows // per_block
    per_block_e = product(block_shape)
    out_shape = (cols.shape[0], Const(channels), *(Const(s) for s in image))
    out = ctx.new_buffer("col2im", F32, product(out_shape))
    acc = Buffer(ctx.fresh("acc"), F32, Const(1), "local")
    z = Const(0)
    pix = [ctx.var(f"p{d}") for d in range(spatial)]
    taps = [ctx.var(f"k{d}") for d in range(spatial)]
    shifted = [pix[d] + pads[d] - taps[d] * dil[d] for d in range(spatial)]
    hits = all_of([Binary("and", Binary("ge", s, z), Binary("and", Binary(
        "eq", s % strides[d], z), Binary("lt", s, blocks[d] * strides[d])))
        for d, s in enumerate(shifted)])
    where = flat_index(tuple(Select(hits, s // strides[d], z) for d, s in enumerate(shifted)),
                       blocks)
    tap = flat_index(tuple(taps), block_shape)

    def body(n: Expr, c: Expr) -> Stmt:
        term = Select(hits, cols.read((n, c * per_block_e + tap, where)), fconst(0.0))
        return nest(pix, image, block(
            Store(acc, z, fconst(0.0)),
            nest(taps, block_shape, Store(acc, z, Load(acc, z) + term)),
            Store(out, flat_index((n, c, *pix), out_shape), Load(acc, z))))

    ctx.add_kernel("col2im", windows._nc_loop(ctx, cols.shape[0], channels, body), [acc])
    return [buffer_ref(out, out_shape)]


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
        mode = _text(node, "mode", "nearest")
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
        mode=_text(node, "mode", "nearest"),
        transform=_text(node, "coordinate_transformation_mode", "half_pixel"),
        nearest=_text(node, "nearest_mode", "round_prefer_floor"),
        cubic_a=float(node.attr("cubic_coeff_a", -0.75)),
        exclude_outside=bool(node.attr("exclude_outside", 0)),
        extrapolation=float(node.attr("extrapolation_value", 0.0)),
        antialias=bool(node.attr("antialias", 0)),
        aspect=_text(node, "keep_aspect_ratio_policy", "stretch"))
    crop = opts.transform == "tf_crop_and_resize"
    if _runtime(sizes_ref) or _runtime(scales_ref) or (crop and _runtime(roi_ref)):
        if _runtime(sizes_ref) and opts.aspect == "stretch" and not (crop and _runtime(roi_ref)):
            # The guarded declared shape gives the sizes, hence the scales: as constants.
            out = declared(node, 0, "Resize sizes")
            _resize_guard(ctx, node, x, {"sizes": sizes_ref}, out, axes, opts)
            roi = _const_floats(roi_ref, "Resize roi") if crop else None
            return [_resize(ctx, x, None, [out[a] for a in axes], roi or None, axes, opts)]
        return [_resize_runtime(ctx, node, x, scales_ref, sizes_ref, roi_ref, axes, opts)]
    sizes = _const_ints(sizes_ref, "Resize sizes")
    scale_list = _const_floats(scales_ref, "Resize scales")
    if sizes:
        scale_list = None
    elif not scale_list:
        raise LoweringError("Resize needs scales or sizes")
    roi = _const_floats(roi_ref, "Resize roi") if opts.transform == "tf_crop_and_resize" \
        else None
    return [_resize(ctx, x, scale_list, sizes or None, roi or None, axes, opts)]


def _runtime(ref: TensorRef | None) -> bool:
    """Whether ``ref`` holds values known only at run time (not absent, not empty)."""
    return ref is not None and ref.const is None and not (
        ref.rank == 1 and is_static(ref.shape[0]) and static(ref.shape[0]) == 0)


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
    use_sizes = _runtime(sizes_ref) or bool(_const_ints(sizes_ref, "Resize sizes"))
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
            out = _resize_out_sizes(in_sizes, axes, None, _const_ints(sizes_ref, ""), opts)
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


LOWERINGS: dict[str, Callable[..., Any]] = {
    **windows.LOWERINGS,
    "GridSample": lower_grid_sample, "RoiAlign": lower_roi_align, "DFT": lower_dft,
    "MaxUnpool": lower_max_unpool, "Col2Im": lower_col2im,
    "Resize": lower_resize, "Upsample": lower_resize,
}  # fmt: skip
