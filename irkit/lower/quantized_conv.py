"""int8 convolution (``irkit.QLinearConvInt8``) on the llvm backend.

The input is quantized once per call into a zero-padded byte image laid out
``[n][c/4][y][x][4]`` (channels padded to a multiple of 4, spatial padding holding the
zero point), so one i32 word is four channels of one pixel and a row of pixels is a row
of consecutive words. The GEMM has output channels as rows and output pixels as columns
— ``out[n, co, pix] = sum_w W[co, w] . X[n, pixel(pix) + tap_offset[w]]`` over words
``w = (ky, kx, c/4)`` — so the epilogue writes NCHW rows contiguously: each panel of
``nr`` pixels is copied, output row by output row, into a ``[words][nr]`` stack panel
(an im2col of words, in L1), and the microkernel broadcasts one weight word against it
with the target's int8 dot product (``quantized.choose_int8_dot``).

Layers with one to three input channels (RGB or grey first layers) use another word
layout: a word is four consecutive bytes of one kernel row in a zero-point padded byte
image, planar or with the channels interleaved, whichever takes fewer words
(``_tap_layout``); bytes past the kernel row have zero weights. With dilation the
reference decomposition runs in fp32 instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from irkit.ir import Node
from irkit.kir import (
    Binary,
    Broadcast,
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
)
from irkit.lower.context import LoweringContext
from irkit.lower.gemm import tile_rows
from irkit.lower.heavy import Epilogue, HeavyPlan, conv_geometry, plan_conv
from irkit.lower.quantized import (
    F32,
    ActQuant,
    _const,
    _f,
    _optional,
    _requant,
    apply_activation,
    choose_int8_dot,
    dot_group,
    int8_tiles,
    static_quant,
    weight_halves,
    word_loop,
    word_view,
)
from irkit.lower.tensor import Index, LoweringError, TensorRef, static

MIN_INT8_CHANNELS = 4  # fewer input channels: four kernel columns per word (_tap_layout)


def plan_int8_conv(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]) -> HeavyPlan:
    x = ins[0]
    assert x is not None
    quant = static_quant(_const(ins[1], "x_scale"), _const(ins[2], "x_zero_point"))
    w4 = _const(ins[3], "weight")
    if int(node.attr("group", 1)) != 1:
        raise LoweringError("int8 Conv supports group=1 only")
    cin = static(x.shape[1], "Conv channels")
    g = conv_geometry(node, x, w4.astype(np.float32))
    if cin < MIN_INT8_CHANNELS and g["d"][1] != 1:
        return _fake_quant_conv(ctx, node, x, quant, w4, ins)
    layout = ctx.int8_inputs.pop(node, None)  # words its producer writes
    if layout is None:
        x_mat = ctx.materialize(x, "qconv_in")
        xbuf = x_mat.buffer
        assert xbuf is not None
        layout = (_tap_layout if cin < MIN_INT8_CHANNELS else _channel_layout)(
            ctx, x, xbuf, cin, g, np.asarray(w4, np.int8), quant)
    return _int8_conv_plan(ctx, node, ins, x, g, layout, quant)


def input_sink(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
               ) -> WordSink | None:
    """Let the producer of int8 conv ``node``'s input write the bytes the conv reads.

    When ``node`` reads four channels per word (``_channel_layout``), the heavy op that
    computes its input can store each activation's byte straight into that word image
    from its epilogue: no float tensor between the two, and no quantize kernel reading it
    back. This emits the zero-point fill of the image's padding (before the producer's
    kernel), keeps the layout for ``plan_int8_conv`` and returns where the words go; None
    where the conv reads its input another way."""
    x = ins[0]
    if x is None or len(x.shape) != 4 or int(node.attr("group", 1)) != 1:
        return None
    try:
        quant = static_quant(_const(ins[1], "x_scale"), _const(ins[2], "x_zero_point"))
        w4 = np.asarray(_const(ins[3], "weight"), np.int8)
        cin = static(x.shape[1], "Conv channels")
    except LoweringError:
        return None
    if cin < MIN_INT8_CHANNELS:
        return None
    g = conv_geometry(node, x, w4.astype(np.float32))
    layout = _channel_layout(ctx, x, None, cin, g, w4, quant)
    assert layout.sink is not None
    layout.fill()
    layout.quantize = lambda: None
    ctx.int8_inputs[node] = layout
    return layout.sink


@dataclass
class _Layout:
    """How the quantized input is laid out and read as reduction words: ``w`` is the
    ``[words * 4, cout]`` int8 weight matrix in word order, ``quantize`` emits the kernel
    writing the bytes, ``source(n, word, oy, ox)`` reads one i32 word of output pixel
    (oy, ox) for reduction word ``word`` (a loop var)."""

    w: np.ndarray
    words: int
    quantize: Callable[[], None]
    source: Callable[[Expr, Expr, Expr, Expr], Expr]
    # For a producer writing the words itself (``input_sink``): the kernel filling the
    # padding with the zero point, and where the words go.
    fill: Callable[[], None] = lambda: None
    sink: WordSink | None = None


@dataclass
class WordSink:
    """Where a producer writes an int8 conv's input words: ``word_at(n, c4, y, x)`` is the
    index in ``buffer`` (an i32 view) of channels ``4*c4 .. 4*c4+3`` of pixel (y, x), and
    ``byte`` the u8 value (as f32) of one float activation."""

    buffer: Buffer
    word_at: Callable[[Expr, Expr, Expr, Expr], Expr]
    byte: Callable[[Expr], Expr]


def _channel_layout(ctx: LoweringContext, x: TensorRef, xbuf: Buffer | None, cin: int,
                    g: dict[str, list[int]], w4: np.ndarray, quant: ActQuant) -> _Layout:
    """Four channels of one pixel per word: ``[n][c/4][y][x]`` words (``xbuf`` None: the
    producer writes them through ``store``)."""
    cout = int(w4.shape[0])
    kh, kw_ = g["k"]
    cw4 = -(-cin // 4)
    cp = 4 * cw4
    # Reduction ordered (ky, kx, c) with c padded: matches the NHWC words.
    taps_w = np.zeros((kh, kw_, cp, cout), np.int8)
    taps_w[:, :, :cin, :] = w4.transpose(2, 3, 1, 0)
    ih, iw = g["in"]
    pt, pl, pb, pr = g["p"]
    hp, wp = ih + pt + pb, iw + pl + pr
    sy, sx = g["s"]
    dy, dx = g["d"]
    taps = np.array([(c * hp + ky * dy) * wp + kx * dx
                     for ky in range(kh) for kx in range(kw_) for c in range(cw4)], np.int64)
    tap_buf = ctx.weight_buffer(taps, "i64", "taps")
    image = hp * wp * cp
    xq = ctx.new_buffer("xq_nhwc", "u8", x.shape[0] * image)
    pad_byte = Cast("u8", quant.zp + _f(quant.shift))
    padded = bool(pt or pb or pl or pr)

    def fill_kernel() -> None:
        if padded:
            n, e = ctx.var("n"), ctx.var("e")
            ctx.add_kernel("quant_pad", For(n, x.shape[0], For(
                e, Const(image), Store(xq, n * image + e, pad_byte), "vector"), "parallel"))

    def word_at(n: Expr, c4: Expr, yy: Expr, xx: Expr) -> Expr:
        return ((n * cw4 + c4) * hp + yy + pt) * wp + xx + pl

    def quantize_kernel() -> None:
        assert xbuf is not None
        n, c, yy, xx = (ctx.var(h) for h in ("n", "c", "y", "x"))
        # Four channels of one pixel -> one little-endian word; channels past cin are 0
        # (their weights are 0).
        word: Expr = Const(0, "i32")
        for t in range(4):
            chan = Binary("min", c * 4 + t, Const(cin - 1))
            byte: Expr = Cast("i32", quant.byte(Load(xbuf, ((n * cin + chan) * ih + yy) * iw + xx)))
            if cin % 4:
                byte = Select(Binary("lt", c * 4 + t, Const(cin)), byte, Const(0, "i32"))
            word = byte if t == 0 else word + byte * Const(1 << (8 * t), "i32")
        dst = ((n * cw4 + c) * hp + yy + pt) * wp + xx + pl
        # The padding's bytes in a kernel of their own: one kernel typing the buffer both
        # as bytes and as words was read by the numba and cuda backends (one array per
        # buffer and kernel) as words at byte indices, writing 4x past the image.
        fill_kernel()
        quantize = For(c, Const(cw4), For(yy, Const(ih), For(xx, Const(iw), Store(
            word_view(xq), dst, word), "vector")))
        ctx.add_kernel("quant_nhwc", For(n, x.shape[0], quantize, "parallel"))

    words_view = word_view(xq)

    def source(n: Expr, kq: Expr, oy: Expr, ox: Expr) -> Expr:
        return Load(words_view, (n * (cw4 * hp) + oy * sy) * wp + ox * sx + Load(tap_buf, kq))

    return _Layout(taps_w.reshape(kh * kw_ * cp, cout), kh * kw_ * cw4, quantize_kernel,
                   source, fill_kernel, WordSink(word_view(xq), word_at, quant.byte))


def _tap_layout(ctx: LoweringContext, x: TensorRef, xbuf: Buffer, cin: int,
                g: dict[str, list[int]], w4: np.ndarray, quant: ActQuant) -> _Layout:
    """Few input channels (an RGB or grey first layer): a word is four consecutive bytes of
    one kernel row, read from a zero-point padded byte image four bytes at a time (any
    stride; dilation 1). Two byte images, whichever needs fewer words (each word is one
    int8 dot per output, so fewer words is less work):

    - planar ``[n][c][y][x]``: a kernel row of one channel is ``kw`` bytes, in
      ``ceil(kw/4)`` words — a 3x3 conv uses 3 of every 4 bytes;
    - interleaved ``[n][y][x][c]``: a kernel row of all channels is ``kw * cin``
      consecutive bytes, in ``ceil(kw*cin/4)`` words — an RGB 5x5 stem takes 20 words per
      output instead of 30.

    Bytes of a word past the kernel row have zero weights (they read the next pixels or
    the row's 3 spare bytes)."""
    cout = int(w4.shape[0])
    kh, kw_ = g["k"]
    ih, iw = g["in"]
    pt, pl, pb, pr = g["p"]
    hp = ih + pt + pb
    sy, sx = g["s"]
    dy = g["d"][0]
    planes, span = (cin, kw_) if cin * -(-kw_ // 4) <= -(-kw_ * cin // 4) else (1, kw_ * cin)
    pixel = cin // planes  # bytes per pixel in a row: 1 planar, cin interleaved
    groups = -(-span // 4)
    # Per (plane, kernel row): byte b of the row's words is kernel column b // pixel of
    # channel b % pixel (planar: the plane's channel).
    taps_w = np.zeros((planes, kh, groups * 4, cout), np.int8)
    for b in range(span):
        kx, lane = divmod(b, pixel)
        for plane in range(planes):
            taps_w[plane, :, b, :] = w4[:, plane + lane, :, kx].T
    row = (iw + pl + pr) * pixel + 3  # 3 spare bytes: the last word may read past the row
    image = planes * hp * row
    xq = ctx.new_buffer("xq_taps", "u8", x.shape[0] * image)
    taps = np.array([(c * hp + ky * dy) * row + 4 * gx
                     for c in range(planes) for ky in range(kh) for gx in range(groups)],
                    np.int64)
    tap_buf = ctx.weight_buffer(taps, "i64", "taps")

    def quantize_kernel() -> None:
        n, e, c, yy, xx = (ctx.var(h) for h in ("n", "e", "c", "y", "x"))
        pad_byte = Cast("u8", quant.zp + _f(quant.shift))
        fill = For(e, Const(image), Store(xq, n * image + e, pad_byte), "vector")
        src = ((n * cin + c) * ih + yy) * iw + xx
        if planes == cin:
            dst = n * image + (c * hp + yy + pt) * row + xx + pl
        else:
            dst = n * image + (yy + pt) * row + (xx + pl) * pixel + c
        quantize = For(c, Const(cin), For(yy, Const(ih), For(xx, Const(iw), Store(
            xq, dst, Cast("u8", quant.byte(Load(xbuf, src)))), "vector")))
        ctx.add_kernel("quant_taps", For(n, x.shape[0], block(fill, quantize), "parallel"))

    def source(n: Expr, kq: Expr, oy: Expr, ox: Expr) -> Expr:
        at = n * image + oy * (sy * row) + ox * (sx * pixel) + Load(tap_buf, kq)
        word: Expr = Cast("i32", Load(xq, at))
        for t in range(1, 4):  # little-endian: LLVM combines the four loads into one
            word = Binary("or", word, Call("shl", (Cast("i32", Load(xq, at + t)),
                                                   Const(8 * t, "i32"))))
        return word

    return _Layout(taps_w.reshape(planes * kh * groups * 4, cout), planes * kh * groups,
                   quantize_kernel, source)


def _int8_conv_plan(ctx: LoweringContext, node: Node, ins: list[TensorRef | None],
                    x: TensorRef, g: dict[str, list[int]], layout: _Layout,
                    quant: ActQuant) -> HeavyPlan:
    """The int8 GEMM over ``layout``'s words: output channels as rows, output pixels as
    columns, a ``[words][nr]`` stack panel of words per ``nr`` pixels."""
    w, words = layout.w, layout.words
    cout = int(w.shape[1])
    requant = _requant(ctx, node, w, _const(ins[4], "w_scale"), _const(ins[5], "w_zp"),
                       _optional(ins, 6), _optional(ins, 7), quant)
    mr, nr, lanes = int8_tiles(ctx)
    oh, ow = g["out"]
    spatial = oh * ow
    if lanes == 8 and nr == 2 * lanes and 0 < spatial % nr <= lanes:
        # A small map whose last panel would be half empty (6x6 = 36 pixels: 48 columns
        # at 16, 40 at 8): one vector of pixels and twice the rows (the same 8
        # accumulators, no more registers).
        mr, nr = 2 * mr, lanes
    dot = choose_int8_dot(ctx, w, lanes, node)
    halves = weight_halves(w) if dot.split else (w, None)
    w_rows = np.ascontiguousarray(halves[0].T).view(np.int32).reshape(cout, words)
    a_buf = ctx.weight_buffer(w_rows, "i32", "c8rows")
    a_hi = None if halves[1] is None else ctx.weight_buffer(
        np.ascontiguousarray(halves[1].T).view(np.int32).reshape(cout, words), "i32", "c8hi")
    out_shape = (x.shape[0], Const(cout), Const(oh), Const(ow))

    def emit(epilogue: Epilogue | None, word_sink: WordSink | None = None,
             value_of: Callable[[Index, Expr], Expr] | None = None,
             pool: Buffer | None = None, window: _Window | None = None) -> None:
        layout.quantize()
        vecs = nr // lanes
        n, p = ctx.var("n"), ctx.var("p")
        panel = Buffer(ctx.fresh("cpanel"), "i32", Const(words * nr), "local")
        acc = Buffer(ctx.fresh("cacc"), "i32", Const(mr * nr), "local")
        tile = Buffer(ctx.fresh("ctile"), "i32", Const(mr * nr), "local")
        sums = Buffer(ctx.fresh("csums"), F32, Const(cout * nr), "local")  # pool: per column
        kq, col, seg = ctx.var("kw"), ctx.var("c"), ctx.var("s")

        def source(oy: Expr, ox: Expr) -> Expr:
            return layout.source(n, kq, oy, ox)

        # A pool in the epilogue with column stride ``split`` reads every split-th column
        # of a row; the panel then holds each row's columns grouped by ``x % split``
        # (column x at ``(x % split) * half + x // split``), so that the epilogue reads
        # contiguous, aligned runs of the tile instead of strided ones: a strided read
        # spans two of the vector stores that just wrote the tile and waits for them to
        # reach the cache (no store-to-load forwarding), once per block of channels.
        split = window.strides[1] if window is not None else 1
        run = ow if nr % ow == 0 else nr  # pixels of one output row in a panel
        if split > 1 and run % split == 0:
            half = run // split

            def unpermute(j: Expr) -> Expr:
                return (j % half) * split + j // half
        else:
            split = 1

            def unpermute(j: Expr) -> Expr:
                return j
        if nr % ow == 0:  # whole output rows per panel; rows past the end repeat the last
            per = nr // ow
            oy = Binary("min", p * per + seg, Const(oh - 1))
            copy: Stmt = For(seg, Const(per), For(col, Const(ow), Store(
                panel, kq * nr + seg * ow + col, source(oy, unpermute(col))), "vector"))
        elif ow % nr == 0:  # part of one output row per panel
            q = ow // nr
            copy = For(col, Const(nr), Store(panel, kq * nr + col, source(
                p // q, (p % q) * nr + unpermute(col))), "vector")
        else:  # pixels past the last one repeat it; their results are never stored
            pix = Binary("min", p * nr + col, Const(spatial - 1))
            copy = For(col, Const(nr), Store(panel, kq * nr + col,
                                             source(pix // ow, pix % ow)), "vector")
        pack = For(kq, Const(words), copy)

        def micro(co0: Expr, rows: int) -> Stmt:
            zero = Broadcast(Const(0, "i32"), lanes)
            stmts: list[Stmt] = [Store(acc, Const(r * nr + v * lanes), zero)
                                 for r in range(rows) for v in range(vecs)]

            def step(ks: list[Expr]) -> list[Stmt]:
                xs = [[Var(ctx.fresh(f"xw{v}"), "i32") for v in range(vecs)] for _ in ks]
                body: list[Stmt] = [Let(xs[j][v], Load(panel, k * nr + v * lanes, lanes))
                                    for j, k in enumerate(ks) for v in range(vecs)]
                for r in range(rows):
                    wb = [Broadcast(Load(a_buf, (co0 + r) * words + k), lanes)
                          for k in ks]
                    wh = [None if a_hi is None else Broadcast(
                        Load(a_hi, (co0 + r) * words + k), lanes) for k in ks]
                    for v in range(vecs):
                        slot = Const(r * nr + v * lanes)
                        body.append(Store(acc, slot, dot_group(
                            dot, Load(acc, slot, lanes),
                            [(xs[j][v], wb[j], wh[j]) for j in range(len(ks))])))
                return body

            stmts.append(word_loop(ctx, dot, words, step))
            stmts += [Store(tile, Const(r * nr + v * lanes),
                            Load(acc, Const(r * nr + v * lanes), lanes))
                      for r in range(rows) for v in range(vecs)]
            if word_sink is not None and value_of is not None:
                stmts.append(word_stores(co0, rows, word_sink, value_of))
                return block(*stmts)
            if pool is not None and value_of is not None:
                stmts.append(pooled(co0, rows, pool, value_of))
                return block(*stmts)
            if window is not None and value_of is not None:
                stmts.append(windowed(co0, rows, window, value_of))
                return block(*stmts)
            assert epilogue is not None
            r_var, c_var = ctx.var("r"), ctx.var("c")
            co = co0 + r_var
            px = p * nr + c_var
            idx = (n, co, px // ow, px % ow)
            store = epilogue(idx, requant.value(Load(tile, r_var * nr + c_var), co, idx))
            full_panels, tail = divmod(spatial, nr)
            full = For(r_var, Const(rows), For(c_var, Const(nr), store, "vector"))
            if tail == 0:
                stmts.append(full)
            else:
                part = For(r_var, Const(rows), For(c_var, Const(tail), store, "vector"))
                stmts.append(If(Binary("lt", p, Const(full_panels)), full, part)
                             if full_panels else part)
            return block(*stmts)

        def word_stores(co0: Expr, rows: int, sink: WordSink,
                        value_of: Callable[[Index, Expr], Expr]) -> Stmt:
            """The tile's rows as the next conv's words: four output channels of a pixel
            in one i32, stored along output rows (consecutive words)."""
            c_var = ctx.var("c")

            def words_at(col: Expr, oy: Expr, ox: Expr) -> Stmt:
                stores = []
                for r4 in range(0, rows, 4):
                    word: Expr | None = None
                    for r in range(r4, min(r4 + 4, rows)):
                        idx = (n, co0 + r, oy, ox)
                        value = value_of(idx, requant.value(Load(tile, Const(r * nr) + col),
                                                            co0 + r, idx))
                        byte: Expr = Cast("i32", sink.byte(value))
                        if r > r4:
                            byte = Call("shl", (byte, Const(8 * (r - r4), "i32")))
                        word = byte if word is None else Binary("or", word, byte)
                    assert word is not None
                    stores.append(Store(sink.buffer, sink.word_at(
                        n, co0 // 4 + r4 // 4, oy, ox), word))
                return block(*stores)

            if nr % ow == 0:  # whole output rows; rows past the end are not stored
                per, seg = nr // ow, ctx.var("s")
                oy = p * per + seg
                return For(seg, Const(per), If(Binary("lt", oy, Const(oh)), For(
                    c_var, Const(ow), words_at(seg * ow + c_var, oy, c_var), "vector")))
            if ow % nr == 0:
                q = ow // nr
                return For(c_var, Const(nr), words_at(c_var, p // q, (p % q) * nr + c_var),
                           "vector")
            pix = p * nr + c_var
            full_panels, tail = divmod(spatial, nr)
            full = For(c_var, Const(nr), words_at(c_var, pix // ow, pix % ow), "vector")
            if tail == 0:
                return full
            part = For(c_var, Const(tail), words_at(c_var, pix // ow, pix % ow), "vector")
            return If(Binary("lt", p, Const(full_panels)), full, part) if full_panels else part

        def pooled(co0: Expr, rows: int, pool: Buffer,
                   value_of: Callable[[Index, Expr], Expr]) -> Stmt:
            """The tile's values added to per-channel, per-column sums (the output of a
            global average pool after the conv, which itself is never stored)."""
            r_var, c_var = ctx.var("r"), ctx.var("c")
            co = co0 + r_var
            px = p * nr + c_var
            idx = (n, co, px // ow, px % ow)
            value = value_of(idx, requant.value(Load(tile, r_var * nr + c_var), co, idx))

            def rows_of(count: int) -> Stmt:
                at = co * nr + c_var
                return For(r_var, Const(rows), For(c_var, Const(count), Store(
                    sums, at, Load(sums, at) + value), "vector"))

            full_panels, tail = divmod(spatial, nr)
            if tail == 0:
                return rows_of(nr)
            return If(Binary("lt", p, Const(full_panels)), rows_of(nr), rows_of(tail)) \
                if full_panels else rows_of(tail)

        def windowed(co0: Expr, rows: int, window: _Window,
                     value_of: Callable[[Index, Expr], Expr]) -> Stmt:
            """The tile's output rows pooled into ``window.buffer``; the full-resolution
            output is never written. A panel is whole output rows or part of one row, so
            each row of a window is reduced over its columns here, and a window's rows
            (in this panel or the panels before it: panels run in order) are combined in
            the pooled buffer: the first row stores, the later ones combine with it."""
            (kh, kw_), (sh, sw) = window.kernel, window.strides
            ph, pw = window.out
            r_var, k = ctx.var("r"), ctx.var("k")
            co = co0 + r_var
            seg = ctx.var("s")
            px: Expr
            if nr % ow == 0:
                per = nr // ow
                oy, px, count = p * per + seg, k, pw

                def column(dx: int) -> Expr:
                    return seg * ow + (dx * (ow // sw) + k if split > 1 else k * sw + dx)
            else:
                per, q = 1, ow // nr
                oy, px, count = p // q, (p % q) * (nr // sw) + k, nr // sw

                def column(dx: int) -> Expr:
                    return dx * (nr // sw) + k if split > 1 else k * sw + dx
            dy, py = oy % sh, oy // sh
            parts = []
            for dx in range(kw_):
                idx = (n, co, oy, px * sw + dx)
                parts.append(value_of(idx, requant.value(
                    Load(tile, r_var * nr + column(dx)), co, idx)))
            op = "max" if window.kind == "max" else "add"

            def combine(a: Expr, b: Expr) -> Expr:
                return Binary("max", a, b) if op == "max" else a + b

            partial = parts[0]
            for part in parts[1:]:
                partial = combine(partial, part)
            at = ((n * cout + co) * ph + py) * pw + px
            scale = _f(1.0 / (kh * kw_))

            def store(value: Expr) -> Stmt:
                return For(k, Const(count), Store(window.buffer, at, value), "vector")

            so_far = combine(Load(window.buffer, at), partial)
            if op == "max":
                rows_of: Stmt = If(Binary("eq", dy, Const(0)), store(partial), store(so_far))
            elif kh == 1:
                rows_of = store(partial * scale)
            else:
                rows_of = If(Binary("eq", dy, Const(0)), store(partial), If(
                    Binary("eq", dy, Const(kh - 1)), store(so_far * scale), store(so_far)))
            inside = Binary("and", Binary("lt", oy, Const(oh)), Binary(
                "and", Binary("lt", dy, Const(kh)), Binary("lt", py, Const(ph))))
            return For(r_var, Const(rows), For(seg, Const(per), If(inside, rows_of)))

        # Channel blocks in a loop (one copy of the microkernel and its epilogue, not one
        # per block: the code stays small enough for the micro-op cache), then the rest.
        row_blocks = tile_rows(ctx, Const(cout), mr, micro)
        panels = -(-spatial // nr)
        body: Stmt = For(p, Const(panels), block(pack, *row_blocks))
        scratch = [panel, acc, tile]
        if pool is not None:
            co, c_var, e = ctx.var("co"), ctx.var("c"), ctx.var("e")
            at = n * cout + co
            body = block(
                For(e, Const(cout * nr), Store(sums, e, _f(0.0)), "vector"), body,
                For(co, Const(cout), block(
                    Store(pool, at, _f(0.0)),
                    For(c_var, Const(nr), Store(pool, at, Load(pool, at)
                                                + Load(sums, co * nr + c_var))),
                    Store(pool, at, Load(pool, at) * _f(1.0 / spatial)))))
            scratch.append(sums)
        ctx.add_kernel("qconv_pool" if pool is not None else "qconv",
                       For(n, x.shape[0], body, "parallel"), scratch)

    def emit_window(kind: str, kernel: tuple[int, int], strides: tuple[int, int],
                    make_buffer: Callable[[], Buffer], value_of: Callable[[Index, Expr], Expr]
                    ) -> tuple[int, int] | None:
        """Pool the output in the epilogue, into ``make_buffer()``, when a panel is whole
        output rows or part of one row holding whole windows, and windows are no larger
        than the strides; the pooled (height, width), or None (nothing emitted)."""
        (kh, kw_), (sh, sw) = kernel, strides
        whole_rows = nr % ow == 0
        if not (whole_rows or (ow % nr == 0 and nr % sw == 0)):
            return None
        if kh > sh or kw_ > sw or kh > oh or kw_ > ow:
            return None
        out = ((oh - kh) // sh + 1, (ow - kw_) // sw + 1)
        emit(None, None, value_of, None, _Window(kind, kernel, strides, out, make_buffer()))
        return out

    return HeavyPlan(out_shape, emit, lambda sink, value_of: emit(None, sink, value_of),
                     lambda pool, value_of: emit(None, None, value_of, pool), emit_window)


@dataclass
class _Window:
    """A max or average pool (no padding) done in the int8 conv's epilogue."""

    kind: str
    kernel: tuple[int, int]
    strides: tuple[int, int]
    out: tuple[int, int]
    buffer: Buffer


def _fake_quant_conv(ctx: LoweringContext, node: Node, x: TensorRef, quant: ActQuant,
                     w4: np.ndarray, ins: list[TensorRef | None]) -> HeavyPlan:
    """``Conv(DQ(Q(x)), DQ(w)) + bias``, then residual and activation, in fp32."""
    wscale = np.asarray(_const(ins[4], "w_scale"), np.float32)
    wzp = np.asarray(_const(ins[5], "w_zp"), np.float32)
    shape = (-1,) + (1,) * (w4.ndim - 1) if wscale.size > 1 else ()
    w_f = (np.asarray(w4).astype(np.float32) - wzp.reshape(shape)) * wscale.reshape(shape)
    zero = quant.zp + _f(quant.shift) if quant.shift else quant.zp
    fake = TensorRef(x.shape, F32, lambda idx: (quant.byte(x.read(idx)) - zero) * quant.scale,
                     cost=x.cost + 8)
    inner = plan_conv(ctx, node, [fake, ctx.const_ref(w_f.astype(np.float32), F32),
                                  _optional(ins, 6)])
    residual, act = _optional(ins, 7), str(node.attr("act", "none"))

    def emit(epilogue: Epilogue) -> None:
        def finish(idx: Index, acc: Expr) -> Stmt:
            value = acc if residual is None else acc + residual.read(idx)
            return epilogue(idx, apply_activation(value, act))

        inner.emit(finish)

    return HeavyPlan(inner.shape, emit)


__all__ = ["MIN_INT8_CHANNELS", "WordSink", "input_sink", "plan_int8_conv"]
