"""Image and signal ops: GridSample, RoiAlign, DFT, MaxUnpool, Col2Im, plus the
sliding-window ops of :mod:`irkit.lower.windows` and Resize/Upsample
(:mod:`irkit.lower.resize`).

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
from irkit.lower.windows import all_of, in_range, nest

F32, F64 = "f32", "f64"


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


def _runtime(ref: TensorRef | None) -> bool:
    """Whether ``ref`` holds values known only at run time (not absent, not empty)."""
    return ref is not None and ref.const is None and not (
        ref.rank == 1 and is_static(ref.shape[0]) and static(ref.shape[0]) == 0)


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
    mode = str_attr(node, "mode", "linear")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    padding = str_attr(node, "padding_mode", "zeros")
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
    is_max = str_attr(node, "mode", "avg") == "max"
    half_pixel = str_attr(node, "coordinate_transformation_mode", "half_pixel") == "half_pixel"
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
    lengths = const_ints(length_ref, "DFT dft_length")
    axis_ref = ins[2] if len(ins) > 2 else None
    if opset >= 20:
        if axis_ref is not None and axis_ref.const is None:
            return _dft_runtime_axis(ctx, node, x, axis_ref, lengths, inverse, onesided)
        axes = const_ints(axis_ref, "DFT axis") or [-2]
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
    requested = const_ints(ins[2] if len(ins) > 2 else None, "MaxUnpool output_shape")
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
             else const_ints(image_ref, "Col2Im image_shape"))
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
        block_shape = [Const(b) for b in const_ints(block_ref, "Col2Im block_shape") or []]
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


LOWERINGS: dict[str, Callable[..., Any]] = {
    **windows.LOWERINGS,
    "GridSample": lower_grid_sample, "RoiAlign": lower_roi_align, "DFT": lower_dft,
    "MaxUnpool": lower_max_unpool, "Col2Im": lower_col2im,
}  # fmt: skip
