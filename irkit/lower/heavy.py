"""MatMul, Gemm and Conv lowered onto the GEMM template.

Each returns a :class:`HeavyPlan`: the output shape and an ``emit`` that takes the
epilogue (``store(index, acc) -> Stmt``) the driver built from the fused chain of
elementwise consumers, so bias, activation and residual adds run in the GEMM's tile loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from irkit.ir import Node
from irkit.kir import (
    Binary,
    Buffer,
    Const,
    Expr,
    For,
    If,
    Load,
    Select,
    Stmt,
    Store,
    block,
    simplify_expr,
)
from irkit.lower.context import LoweringContext, Tiles
from irkit.lower.depthwise import depthwise_emitter, is_depthwise
from irkit.lower.gemm import GemmSpec, emit_gemm, pack_weights
from irkit.lower.tensor import (
    Index,
    LoweringError,
    TensorRef,
    broadcast_shape,
    dims_equal,
    flat_index,
    product,
    static,
    unravel,
)

Epilogue = Callable[[Index, Expr], Stmt]


@dataclass
class HeavyPlan:
    shape: tuple[Expr, ...]
    emit: Callable[[Epilogue], None]
    # Plans that can write their output as an int8 conv's input words instead
    # (irkit.lower.quantized_conv.input_sink): emit_words(sink, value_of), where
    # value_of(idx, acc) is the fused epilogue's float value.
    emit_words: Callable[[Any, Callable[[Index, Expr], Expr]], None] | None = None
    # Plans that can sum their output per (n, channel) into a [N, C] buffer instead of
    # storing it (a global average pool after the op): emit_pooled(buffer, value_of).
    emit_pooled: Callable[[Buffer, Callable[[Index, Expr], Expr]], None] | None = None
    # Plans that can max/average pool their output in the epilogue (non-overlapping
    # windows, no padding): emit_window(kind, kernel, strides, buffer, value_of) returns
    # the pooled (height, width), or None when the geometry does not allow it.
    emit_window: Callable[..., tuple[int, int] | None] | None = None


def _static_or_symbolic(dim: Expr) -> int | Expr:
    dim = simplify_expr(dim)
    return int(dim.value) if isinstance(dim, Const) else dim


def _transpose_last2(ctx: LoweringContext, ref: TensorRef) -> TensorRef:
    shape = (*ref.shape[:-2], ref.shape[-1], ref.shape[-2])
    return TensorRef(shape, ref.dtype, lambda idx: ref.read((*idx[:-2], idx[-1], idx[-2])),
                     cost=ref.cost)


def plan_matmul(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]) -> HeavyPlan:
    a, b = ins[0], ins[1]
    assert a is not None and b is not None
    if node.op == "MatMul" and (a.rank == 1 or b.rank == 1):
        return _matmul_vector_operand(ctx, node, a, b)
    alpha, beta, c_ref = 1.0, 1.0, None
    if node.op == "Gemm":
        if node.attr("transA", 0):
            a = _transpose_last2(ctx, a)
        if node.attr("transB", 0):
            if b.const is not None:
                b = ctx.const_ref(np.ascontiguousarray(np.asarray(b.const).T), b.dtype)
            else:
                b = _transpose_last2(ctx, b)
        alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
        c_ref = ins[2] if len(ins) > 2 else None
    if a.rank < 2 or b.rank < 2:
        raise LoweringError(f"{node.op} with a 1-D operand is not supported")
    if a.dtype != "f32" or b.dtype != "f32":
        raise LoweringError(f"{node.op} on {a.dtype} x {b.dtype} is not supported (f32 only)")
    # Depth and columns are static, except in attention: Q x K^T has ``S`` columns and
    # probabilities x V a depth of ``S`` (then B's rows are used in place).
    k: int | Expr = _static_or_symbolic(a.shape[-1])
    cols: int | Expr = _static_or_symbolic(b.shape[-1])
    direct = not isinstance(k, int)
    if direct and not isinstance(cols, int):
        raise LoweringError(f"{node.op} with a symbolic depth needs static columns, got "
                            f"{b.shape[-1]}")
    rows = a.shape[-2]
    batch_shape = broadcast_shape([a.shape[:-2], b.shape[:-2]])
    out_shape = (*batch_shape, rows, Const(cols) if isinstance(cols, int) else cols)
    a_mat = ctx.materialize(a, "mm_a")
    assert a_mat.buffer is not None
    b_batched = b.rank > 2 and any(not (isinstance(d, Const) and d.value == 1)
                                   for d in b.shape[:-2])
    a_batched = a.rank > 2 and not all(isinstance(d, Const) and d.value == 1
                                       for d in a.shape[:-2])
    fold_batch = not b_batched  # B shared: A's batch dims fold into rows
    if fold_batch:
        rows_all = product(a.shape[:-1])
        batch: Expr = Const(1)
    else:
        rows_all = rows
        batch = product(batch_shape)
    mk = simplify_expr(rows * k)
    same_batch = a_batched and len(a.shape) - 2 == len(batch_shape) and all(
        dims_equal(x, y) for x, y in zip(a.shape[:-2], batch_shape))
    a_batch = a.shape[:-2]

    def a_offset(bi: Expr) -> Expr:
        if fold_batch or not a_batched:
            return Const(0)
        if same_batch:
            return bi * mk
        # A broadcasts over some batch dims: index its own (possibly size-1) dims.
        full = unravel(bi, batch_shape)
        off = len(batch_shape) - len(a_batch)
        own = tuple(Const(0) if (isinstance(d, Const) and d.value == 1) else full[q + off]
                    for q, d in enumerate(a_batch))
        return simplify_expr(flat_index(own, a_batch) * mk)

    spec_b: dict[str, object] = {}
    if direct:
        assert isinstance(cols, int)  # checked above
        # B's rows serve as panels in place: pad them to whole panels (a small head
        # dimension: probabilities x V with 8 value columns).
        ld = -(-cols // ctx.tiles.nr) * ctx.tiles.nr
        b_mat = ctx.materialize(b if ld == cols else _pad_columns(b, ld), "mm_b")
        assert b_mat.buffer is not None
        spec_b["b_direct"] = b_mat.buffer
        spec_b["b_direct_ld"] = ld
        b_batch = b.shape[:-2]
        kc = simplify_expr(Const(ld) * k)

        def b_offset(bi: Expr) -> Expr:
            if fold_batch:
                return Const(0)
            full = unravel(bi, batch_shape)
            off = len(batch_shape) - len(b_batch)
            own = tuple(Const(0) if (isinstance(d, Const) and d.value == 1) else full[q + off]
                        for q, d in enumerate(b_batch))
            return simplify_expr(flat_index(own, b_batch) * kc)

        spec_b["b_direct_offset"] = b_offset
    elif b.const is not None and fold_batch:
        assert isinstance(k, int) and isinstance(cols, int)
        weights = np.asarray(b.const, np.float32).reshape(k, cols)
        spec_b["b_packed"] = ctx.weight_buffer(pack_weights(weights, ctx.tiles.nr), "f32", "wpack")
    else:
        b_shape_batch = b.shape[:-2]
        off = len(batch_shape) - len(b_shape_batch)

        def source(bi: Expr, kk: Expr, j: Expr) -> Expr:
            bidx = unravel(bi, batch_shape) if batch_shape else ()
            bb = tuple(
                Const(0) if (isinstance(d, Const) and d.value == 1) else bidx[q + off]
                for q, d in enumerate(b_shape_batch)
            )
            return b.read((*bb, kk, j))

        spec_b["b_source"] = source

    def emit(epilogue: Epilogue) -> None:
        def store(bi: Expr, i: Expr, j: Expr, acc: Expr) -> Stmt:
            if fold_batch:
                lead = unravel(i, a.shape[:-1])
                idx = (*lead[:-1], lead[-1], j) if a.rank > 2 else (i, j)
                # Broadcast batch dims of B (all 1) are not in A's index: pad with zeros.
                idx = (*([Const(0)] * (len(out_shape) - len(idx))), *idx)
            else:
                idx = (*unravel(bi, batch_shape), i, j)
            value = acc if alpha == 1.0 else acc * Const(alpha, "f32")
            if c_ref is not None:
                off = len(out_shape) - c_ref.rank
                cidx = tuple(Const(0) if (isinstance(d, Const) and d.value == 1) else idx[q + off]
                             for q, d in enumerate(c_ref.shape))
                cval = c_ref.read(cidx)
                value = value + (cval if beta == 1.0 else cval * Const(beta, "f32"))
            return epilogue(idx, value)

        assert a_mat.buffer is not None
        spec = GemmSpec(batch=batch, rows=rows_all, depth=k, cols=cols, a_buf=a_mat.buffer,
                        a_offset=a_offset, lda=k, store=store, **spec_b)  # type: ignore[arg-type]
        emit_gemm(ctx, spec, node.op.lower())

    return HeavyPlan(out_shape, emit)


def _pad_columns(ref: TensorRef, width: int) -> TensorRef:
    """``ref`` with its last dim zero-padded to ``width`` (static) columns."""
    cols = static(ref.shape[-1], "padded columns")

    def read(idx: Index) -> Expr:
        j = idx[-1]
        inside = ref.read((*idx[:-1], Binary("min", j, Const(cols - 1))))
        return Select(Binary("lt", j, Const(cols)), inside, Const(0.0, ref.dtype))

    return TensorRef((*ref.shape[:-1], Const(width)), ref.dtype, read, cost=ref.cost + 2)


def _matmul_vector_operand(ctx: LoweringContext, node: Node, a: TensorRef, b: TensorRef
                           ) -> HeavyPlan:
    """numpy matmul semantics for 1-D operands: promote to a matrix, drop the dim after."""
    from irkit.lower.shape_ops import reshape_ref

    drop: list[int] = []
    if a.rank == 1:
        a = reshape_ref(a, (Const(1), a.shape[0]))
        drop.append(-2)
    if b.rank == 1:
        b = reshape_ref(b, (b.shape[0], Const(1)))
        drop.append(-1)
    inner = plan_matmul(ctx, node, [a, b])
    rank = len(inner.shape)
    dropped = {rank + d for d in drop}
    shape = tuple(d for k, d in enumerate(inner.shape) if k not in dropped)

    def emit(epilogue: Epilogue) -> None:
        inner.emit(lambda idx, acc: epilogue(
            tuple(i for k, i in enumerate(idx) if k not in dropped), acc))

    return HeavyPlan(shape, emit)


def conv_geometry(node: Node, x: TensorRef, w: np.ndarray, any_rank: bool = False
                  ) -> dict[str, list[int]]:
    spatial = x.rank - 2
    if spatial != 2 and not any_rank:
        raise LoweringError(f"Conv over {spatial} spatial dims is not supported (2-D only)")
    in_hw = [static(d, "Conv spatial dim") for d in x.shape[2:]]
    kernel = list(node.attr("kernel_shape", None) or w.shape[2:])
    strides = list(node.attr("strides", None) or [1] * spatial)
    dil = list(node.attr("dilations", None) or [1] * spatial)
    pads = list(node.attr("pads", None) or [0] * (2 * spatial))
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * spatial)
        for d in range(spatial):
            out = -(-in_hw[d] // strides[d])
            total = max(0, (out - 1) * strides[d] + (kernel[d] - 1) * dil[d] + 1 - in_hw[d])
            small, big = total // 2, total - total // 2
            pads[d], pads[d + spatial] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0] * (2 * spatial)
    out_hw = [
        (in_hw[d] + pads[d] + pads[d + spatial] - dil[d] * (kernel[d] - 1) - 1) // strides[d] + 1
        for d in range(spatial)
    ]
    return {"in": in_hw, "k": kernel, "s": strides, "d": dil, "p": pads, "out": out_hw}


def conv_tiles(ctx: LoweringContext, g: dict[str, Any]) -> Tiles:
    """The register tile of a conv of geometry ``g`` (see Tiles.for_conv): a pointwise
    conv packs whole channel rows, so the output rows a panel touches do not count."""
    oh, ow = g["out"]
    pointwise = tuple(g["k"]) == (1, 1) and list(g["s"]) == [1, 1] and not any(g["p"])
    return ctx.tiles.for_conv(None if pointwise else ow, oh * ow)


def plan_conv(ctx: LoweringContext, node: Node, ins: list[TensorRef | None],
              tile_store: Callable[[Expr, Expr, int, Expr, Buffer], Stmt] | None = None
              ) -> HeavyPlan:
    """Conv as ``out[n, co, p] = W[co, ck] @ im2col(x)[ck, p]``; the im2col is B's packing.
    ``tile_store`` replaces the epilogue's per-element stores (see GemmSpec.tile_store)."""
    x, w_ref = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    assert x is not None and w_ref is not None
    symbolic = not all(isinstance(simplify_expr(d), Const) for d in x.shape[2:])
    if symbolic and tile_store is not None:
        raise LoweringError("a fused Conv+pool needs static spatial dims")
    if w_ref.const is None or x.rank != 4 or symbolic or (
            ctx.tiles.conv == "direct" and tile_store is None):
        from irkit.lower.windows import plan_direct_conv

        return HeavyPlan(*plan_direct_conv(ctx, node, ins))  # weights known at run time, 1-D, 3-D
    if x.dtype != "f32":
        raise LoweringError("Conv supports f32 only")
    w = np.asarray(w_ref.const, np.float32)
    g = conv_geometry(node, x, w)
    groups = int(node.attr("group", 1))
    cout, cin_g = w.shape[0], w.shape[1]
    cout_g = cout // groups
    kh, kw = g["k"]
    depth = cin_g * kh * kw
    oh, ow = g["out"]
    ih, iw = g["in"]
    cin = static(x.shape[1], "Conv channels")
    out_shape = (x.shape[0], Const(cout), Const(oh), Const(ow))
    if is_depthwise(groups, w) and tile_store is None:
        return HeavyPlan(out_shape, depthwise_emitter(ctx, x, w, bias, g, out_shape))
    x_mat = ctx.materialize(x, "conv_in")
    assert x_mat.buffer is not None
    xbuf = x_mat.buffer
    spatial = oh * ow
    if (groups == 1 and (kh, kw) == (1, 1) and g["s"] == [1, 1] and not any(g["p"])
            and tile_store is None and _rows_fit_better(ctx, spatial, cout)):
        return _pointwise_by_pixels(ctx, xbuf, w.reshape(cout, cin), bias, out_shape)
    w_buf = ctx.weight_buffer(w.reshape(cout, depth), "f32", "convw")
    batch = simplify_expr(x.shape[0] * groups)

    pads = g["p"]
    tiles = conv_tiles(ctx, g)
    nr = tiles.nr
    # Panels are packed straight from the unpadded input, a segment per output row they
    # touch, with the padding's zeros written by the copy loops themselves; a 1x1 stride-1
    # unpadded conv copies whole channel rows.
    pointwise = (kh, kw) == (1, 1) and g["s"] == [1, 1] and not any(pads)

    def pack_rows(bi: Expr, p: Expr, bpanel: Buffer) -> Stmt:
        n, grp = bi // groups, bi % groups
        base = (n * cin + grp * cin_g) * (ih * iw)
        ci, ky, kx = ctx.var("ci"), ctx.var("ky"), ctx.var("kx")
        sy, sx = g["s"]
        dy, dx = g["d"]
        zero = Const(0.0, "f32")

        def segment(dst: Expr, oy: Expr, ox0: Expr, count: int | Expr, ky_: int, kx_: int
                    ) -> Stmt:
            """Output pixels (oy, ox0 .. ox0+count-1) of tap (ci, ky_, kx_) into the panel."""
            n_out = Const(count) if isinstance(count, int) else count
            iy = oy * sy - pads[0] + ky_ * dy
            # ox range whose input column lies inside the image (ceil/floor division).
            lo = -(-(pads[1] - kx_ * dx) // sx)
            hi = (iw - 1 + pads[1] - kx_ * dx) // sx + 1
            c_lo = simplify_expr(Binary("min", Binary("max", Const(lo) - ox0, Const(0)),
                                        n_out))
            c_hi = simplify_expr(Binary("max", Binary("min", Const(hi) - ox0, n_out), c_lo))
            c = ctx.var("c")
            src = base + ci * (ih * iw) + iy * iw + (ox0 + c) * sx - pads[1] + kx_ * dx
            copy = block(
                For(c, c_lo, Store(bpanel, dst + c, zero)),
                For(c, simplify_expr(c_hi - c_lo), Store(bpanel, dst + c, Load(xbuf, src)),
                    "vector", c_lo),
                For(c, simplify_expr(n_out - c_hi), Store(bpanel, dst + c, zero),
                    "serial", c_hi),
            )
            inside = Binary("and", Binary("ge", iy, Const(0)), Binary("lt", iy, Const(ih)))
            return If(inside, copy, For(c, n_out, Store(bpanel, dst + c, zero), "vector"))

        def spanning(dst: Expr, ky_: int, kx_: int) -> list[Stmt]:
            """A panel whose pixels start mid-row and run over row ends: one segment per
            output row it touches (at most ``(ow + nr - 2) // ow + 1``)."""
            oy0, c0 = (p * nr) // ow, (p * nr) % ow
            parts: list[Stmt] = []
            for k in range((ow + nr - 2) // ow + 1):
                first = c0 if k == 0 else Const(0)
                done = Const(0) if k == 0 else simplify_expr(Const(ow) - c0 + (k - 1) * ow)
                count = simplify_expr(Binary("max", Const(0), Binary(
                    "min", Const(ow) - first, Const(nr) - done)))
                # Rows past the last output row are never stored; clamp them.
                oy = Binary("min", oy0 + k, Const(oh - 1))
                parts.append(segment(dst + done, oy, first, count, ky_, kx_))
            return parts

        taps: list[Stmt] = []
        for ky_ in range(kh):
            for kx_ in range(kw):
                dst = ((ci * kh + ky_) * kw + kx_) * nr
                if ow % nr == 0:
                    q = ow // nr
                    taps.append(segment(dst, p // q, (p % q) * nr, nr, ky_, kx_))
                elif nr % ow:
                    taps += spanning(dst, ky_, kx_)
                else:
                    per = nr // ow
                    for rr in range(per):
                        # Rows past the last output row are never stored; clamp them.
                        oy = Binary("min", p * per + rr, Const(oh - 1))
                        taps.append(segment(dst + rr * ow, oy, Const(0), ow, ky_, kx_))
        del ky, kx
        return For(ci, Const(cin_g), block(*taps))

    def pack_pointwise(bi: Expr, p: Expr, bpanel: Buffer) -> Stmt:
        """Each channel plane is one row of B: whole panels are contiguous copies; the
        last, partial one repeats the last column (never stored)."""
        n, grp = bi // groups, bi % groups
        ci, c = ctx.var("ci"), ctx.var("c")
        row = (n * cin + grp * cin_g + ci) * (ih * iw)
        j = p * nr + c
        return For(ci, Const(cin_g), If(
            Binary("lt", p, Const(spatial // nr)),
            For(c, Const(nr), Store(bpanel, ci * nr + c, Load(xbuf, row + j)), "vector"),
            For(c, Const(nr), Store(bpanel, ci * nr + c, Load(
                xbuf, row + Binary("min", j, Const(spatial - 1)))))))

    def emit(epilogue: Epilogue) -> None:
        def store(bi: Expr, i: Expr, j: Expr, acc: Expr) -> Stmt:
            n, grp = bi // groups, bi % groups
            co = grp * cout_g + i
            value = acc
            if bias is not None:
                value = value + bias.read((simplify_expr(co),))
            idx = (simplify_expr(n), simplify_expr(co), simplify_expr(j // ow),
                   simplify_expr(j % ow))
            return epilogue(idx, value)

        spec = GemmSpec(batch=batch, rows=Const(cout_g), depth=depth, cols=spatial,
                        a_buf=w_buf, a_offset=lambda bi: (bi % groups) * (cout_g * depth),
                        lda=depth, store=store,
                        pack_panel=pack_pointwise if pointwise else pack_rows,
                        tile_store=tile_store)
        emit_gemm(ctx, spec, "conv", tiles)

    return HeavyPlan(out_shape, emit)


def _rows_fit_better(ctx: LoweringContext, spatial: int, cout: int) -> bool:
    """Whether a 1x1 conv wastes less of its tiles with pixels as GEMM rows and output
    channels as columns than with channels as rows and pixels as columns (a 7x7 map
    fills 49 of a 64-wide panel; 128 channels fill whole panels)."""
    conv, plain = ctx.tiles.for_conv(pixels=spatial), ctx.tiles

    def used(n: int, tile: int) -> float:
        return n / (-(-n // tile) * tile)

    by_channels = used(cout, conv.mr) * used(spatial, conv.nr)
    by_pixels = used(spatial, plain.mr) * used(cout, plain.nr)
    return by_pixels > by_channels


def _pointwise_by_pixels(ctx: LoweringContext, xbuf: Buffer, w: np.ndarray,
                         bias: TensorRef | None, out_shape: tuple[Expr, ...]) -> HeavyPlan:
    """A 1x1 stride-1 Conv as ``out[n]^T = x[n]^T @ W^T`` per image: A is the input read
    in place (pixel rows, channel columns a plane apart), B the packed weights."""
    cout, cin = w.shape
    oh, ow = int(out_shape[2].value), int(out_shape[3].value)  # type: ignore[attr-defined]
    spatial = oh * ow
    packed = ctx.weight_buffer(pack_weights(np.ascontiguousarray(w.T), ctx.tiles.nr), "f32",
                               "wpack")

    def emit(epilogue: Epilogue) -> None:
        def store(n: Expr, i: Expr, co: Expr, acc: Expr) -> Stmt:
            value = acc if bias is None else acc + bias.read((co,))
            return epilogue((n, co, simplify_expr(i // ow), simplify_expr(i % ow)), value)

        spec = GemmSpec(batch=out_shape[0], rows=Const(spatial), depth=cin, cols=cout,
                        a_buf=xbuf, a_offset=lambda n: n * (cin * spatial), lda=1,
                        a_kstride=spatial, store=store, b_packed=packed)
        emit_gemm(ctx, spec, "conv")

    return HeavyPlan(out_shape, emit)


HEAVY = {"MatMul": plan_matmul, "Gemm": plan_matmul, "Conv": plan_conv}
