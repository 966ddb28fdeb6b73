"""int8 kernels for ``irkit.QLinearMatMulInt8``, ``irkit.QLinearConvInt8`` and
``irkit.DynamicQuantMatMulInt8``.

A MatMul becomes two loops: a vectorized *quantize* loop that turns the float
activations into unsigned bytes (rows padded to a multiple of 4 bytes, so the GEMM reads
them as ``i32`` words of four reduction steps), and an int8 GEMM whose microkernel adds
``dot4_u8s8`` products (``vpdpbusd`` with VNNI) into ``mr x nr`` i32 accumulators held in
registers. Weights are packed at compile time as ``[panels][K/4][nr]`` words of four
int8 values. Dynamic quantization adds a min/max kernel that writes scale and zero point
(DynamicQuantizeLinear's formulas) for the other two to read. Convolutions: see
``quantized_conv``. The epilogue removes the activation zero point with precomputed weight
column sums, rescales by ``x_scale * w_scale[col]``, adds the bias and residual, applies
the activation and hands the float to the driver's fused chain.

Signed activations (symmetric int8) are shifted by 128 into u8 and the zero point with
them, so one u8 x s8 kernel serves both. The accumulator is exact (int32); results
differ from the reference decomposition only by float rounding of the final rescale
(and by one quantization step where ``x / scale`` lands within an ulp of .5).
"""

from __future__ import annotations

import math
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
    simplify_expr,
)
from irkit.lower.context import LoweringContext
from irkit.lower.gemm import tile_rows
from irkit.lower.heavy import Epilogue, HeavyPlan
from irkit.lower.tensor import Index, LoweringError, TensorRef, product, static, unravel

Int8Store = Callable[[Expr, Expr, Expr], Stmt]  # (row, col, i32 accumulator) -> Stmt
F32 = "f32"


def _f(value: float) -> Const:
    return Const(float(np.float32(value)), F32)


@dataclass(frozen=True)
class ActQuant:
    """How float activations become the u8 bytes the kernel reads.

    ``q = clamp(round(x / scale) + zp, qmin, qmax) + shift`` and the zero point the
    kernel subtracts is ``zp + shift``. ``scale``/``zp`` are literals (static) or loads
    from a two-element workspace buffer written at run time (dynamic)."""

    scale: Expr
    zp: Expr  # f32
    qmin: int
    qmax: int
    shift: int

    def byte(self, x: Expr) -> Expr:
        """The u8 value (as f32, exact) of float ``x``."""
        q = Call("round", (x / self.scale,)) + self.zp
        q = Binary("min", Binary("max", q, _f(self.qmin)), _f(self.qmax))
        return q + _f(self.shift) if self.shift else q

    def zero_i32(self) -> Expr:
        return Cast("i32", self.zp + _f(self.shift)) if self.shift else Cast("i32", self.zp)


def static_quant(scale: np.ndarray, zp: np.ndarray) -> ActQuant:
    if np.asarray(scale).size != 1 or np.asarray(zp).size != 1:
        raise LoweringError("int8 kernels need a per-tensor activation scale")
    signed = np.asarray(zp).dtype == np.int8
    return ActQuant(_f(float(np.asarray(scale).reshape(-1)[0])),
                    _f(float(np.asarray(zp).reshape(-1)[0])),
                    -128 if signed else 0, 127 if signed else 255, 128 if signed else 0)


@dataclass(frozen=True)
class Int8Dot:
    """How the int8 microkernels multiply on the target; the kernel name is reported.

    ``dot4_u8s8`` where the target has VNNI (``vpdpbusd``) or nothing better (``widen``);
    ``dot4_u8s7`` where it has ``vpmaddubsw``, whose int16 pair sums are exact only for
    weights within [-64, 64]: 7-bit weights go in as they are, full-range ones as two
    halves ``floor(w / 2)`` and ``w - floor(w / 2)`` with two calls per word. ``paired``:
    6-bit weights (all within [-32, 32], what ``quantize`` stores where calibration shows
    it safe) take two words per ``dot8_u8s6`` call, whose int16 lanes hold four products:
    two ``vpmaddubsw``, a ``vpaddw`` and one ``vpmaddwd`` per two words, exact."""

    call: str
    split: bool
    kernel: str
    paired: bool = False


def choose_int8_dot(ctx: LoweringContext, weights: np.ndarray, lanes: int, node: Node
                    ) -> Int8Dot:
    kind = ctx.target.int8_dot(lanes)
    if kind != "vpmaddubsw":
        dot = Int8Dot("dot4_u8s8", False, kind)
    elif int(np.abs(np.asarray(weights, np.int16)).max(initial=0)) <= 32:
        dot = Int8Dot("dot4_u8s7", False, "vpmaddubsw pairs (6-bit weights)", True)
    elif int(np.abs(np.asarray(weights, np.int16)).max(initial=0)) <= 64:
        dot = Int8Dot("dot4_u8s7", False, "vpmaddubsw (7-bit weights)")
    else:
        dot = Int8Dot("dot4_u8s7", True, "vpmaddubsw x2 (8-bit weights in two halves)")
    ctx.kernel_notes[node.name or node.outputs[0].name] = f"int8 {dot.kernel} on {ctx.target}"
    return dot


def weight_halves(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w = lo + hi`` with both within [-64, 64] (int8 weights in [-128, 127])."""
    wide = np.asarray(w, np.int16)
    lo = np.floor_divide(wide, 2)
    return lo.astype(np.int8), (wide - lo).astype(np.int8)


def dot_steps(dot: Int8Dot, acc: Expr, a: Expr, b: Expr, b_hi: Expr | None) -> Expr:
    """``acc`` plus the dot products of ``a`` with ``b`` (and its high half)."""
    value = Call(dot.call, (acc, a, b))
    return Call(dot.call, (value, a, b_hi)) if b_hi is not None else value


def dot_group(dot: Int8Dot, acc: Expr, steps: list[tuple[Expr, Expr, Expr | None]]) -> Expr:
    """``acc`` plus the dot products of each ``(a, b, b_hi)`` word step: two steps in one
    ``dot8_u8s6`` call when ``dot.paired``."""
    if dot.paired and len(steps) == 2:
        (a0, b0, _), (a1, b1, _) = steps
        return Call("dot8_u8s6", (acc, a0, b0, a1, b1))
    for a, b, b_hi in steps:
        acc = dot_steps(dot, acc, a, b, b_hi)
    return acc


def word_loop(ctx: LoweringContext, dot: Int8Dot, words: int,
              step: Callable[[list[Expr]], list[Stmt]]) -> Stmt:
    """The reduction loop over ``words``: ``step(ks)`` is the body for the word indices
    ``ks`` (two per iteration when ``dot.paired``, and a last single word when ``words``
    is odd)."""
    k = ctx.var("kw")
    if not dot.paired or words < 2:
        return For(k, Const(words), block(*step([k])))
    loop = For(k, Const(words // 2), block(*step([k * 2, k * 2 + 1])))
    return block(loop, *step([Const(words - 1)])) if words % 2 else loop


def word_view(buf: Buffer) -> Buffer:
    """The same memory as u8 ``buf`` read as little-endian i32 words (four bytes each):
    buffers are placed by name, so the view shares the u8 buffer's placement."""
    return Buffer(buf.name, "i32", simplify_expr(buf.size // 4), buf.scope)


def pack_int8_weights(w: np.ndarray, nr: int) -> tuple[np.ndarray, int]:
    """``[K, cols]`` int8 → (``[panels, ceil(K/4), nr]`` i32 words, number of words)."""
    k, cols = w.shape
    kw = -(-k // 4)
    panels = -(-cols // nr)
    padded = np.zeros((kw * 4, panels * nr), np.int8)
    padded[:k, :cols] = w
    # [kw, 4, panels, nr] -> [panels, kw, nr, 4]: four consecutive k per word.
    grouped = padded.reshape(kw, 4, panels, nr).transpose(2, 0, 3, 1)
    return np.ascontiguousarray(grouped).view(np.int32).reshape(panels, kw, nr), kw


@dataclass
class Int8Gemm:
    """``C[i, j] = sum_k A[i, k] * B[k, j]``: ``a_words`` is an i32 view of u8 activation
    bytes and ``a_index(row, word)`` says where word ``word`` (bytes 4w..4w+3 of the
    reduction) of row ``row`` is — a row-major matrix, or an implicit im2col."""

    rows: Expr
    words: int
    cols: int
    a_words: Buffer
    a_index: Callable[[Expr, Expr], Expr]
    b_packed: Buffer
    store: Int8Store
    dot: Int8Dot
    b_packed_hi: Buffer | None = None  # the high halves when ``dot.split``
    # Epilogue loop order: rows innermost when consecutive rows are contiguous in the
    # output (a convolution's pixels in NCHW), else columns innermost.
    rows_inner: bool = False


def emit_int8_gemm(ctx: LoweringContext, spec: Int8Gemm, hint: str, mr: int, nr: int,
                   lanes: int) -> None:
    """The GEMM kernel: panels of ``nr`` columns (parallel), ``mr``-row blocks inside."""
    vecs = nr // lanes
    acc = Buffer(ctx.fresh("iacc"), "i32", Const(mr * nr), "local")
    # The epilogue reads a copy, so the accumulators themselves stay in registers.
    tile_buf = Buffer(ctx.fresh("itile"), "i32", Const(mr * nr), "local")
    p = ctx.var("p")
    panel_base = p * (spec.words * nr)

    def micro(i0: Expr, rows: int) -> Stmt:
        zero = Broadcast(Const(0, "i32"), lanes)
        stmts: list[Stmt] = [Store(acc, Const(r * nr + v * lanes), zero)
                             for r in range(rows) for v in range(vecs)]

        def step(ks: list[Expr]) -> list[Stmt]:
            body: list[Stmt] = []
            bvars: list[list[Var]] = []
            hvars: list[list[Var | None]] = []
            for kq in ks:
                bs = [Var(ctx.fresh(f"wb{v}"), "i32") for v in range(vecs)]
                body += [Let(bs[v], Load(spec.b_packed, panel_base + kq * nr + v * lanes,
                                         lanes)) for v in range(vecs)]
                hs: list[Var | None] = [None] * vecs
                if spec.b_packed_hi is not None:
                    hs = [Var(ctx.fresh(f"wh{v}"), "i32") for v in range(vecs)]
                    body += [Let(h, Load(spec.b_packed_hi, panel_base + kq * nr + v * lanes,
                                         lanes)) for v, h in enumerate(hs) if h is not None]
                bvars.append(bs)
                hvars.append(hs)
            for r in range(rows):
                a = [Broadcast(Load(spec.a_words, spec.a_index(i0 + r, kq)), lanes)
                     for kq in ks]
                for v in range(vecs):
                    slot = Const(r * nr + v * lanes)
                    body.append(Store(acc, slot, dot_group(
                        spec.dot, Load(acc, slot, lanes),
                        [(a[j], bvars[j][v], hvars[j][v]) for j in range(len(ks))])))
            return body

        stmts.append(word_loop(ctx, spec.dot, spec.words, step))
        stmts += [Store(tile_buf, Const(r * nr + v * lanes), Load(acc, Const(r * nr + v * lanes),
                                                                  lanes))
                  for r in range(rows) for v in range(vecs)]
        r_var, c_var = ctx.var("r"), ctx.var("c")
        epilogue = spec.store(i0 + r_var, p * nr + c_var, Load(tile_buf, r_var * nr + c_var))
        full_panels, tail = divmod(spec.cols, nr)

        def tile(ncols: int) -> Stmt:
            if spec.rows_inner:
                return For(c_var, Const(ncols), For(r_var, Const(rows), epilogue, "vector"))
            return For(r_var, Const(rows), For(c_var, Const(ncols), epilogue, "vector"))

        full = tile(nr)
        if tail == 0:
            stmts.append(full)
        else:
            partial = tile(tail)
            stmts.append(If(Binary("lt", p, Const(full_panels)), full, partial)
                         if full_panels else partial)
        return block(*stmts)

    blocks = tile_rows(ctx, spec.rows, mr, micro)
    panels = -(-spec.cols // nr)
    ctx.add_kernel(hint, For(p, Const(panels), block(*blocks), "parallel"), [acc, tile_buf])


def int8_tiles(ctx: LoweringContext, cols: int = 0) -> tuple[int, int, int]:
    """(mr, nr, lanes): i32 lanes follow the f32 vector width the backend chose; one
    vector of columns when there are no more (a classifier head)."""
    lanes = ctx.tiles.vec if ctx.tiles.vec in (4, 8, 16) else 8
    return (8 if lanes == 16 else 4), (lanes if 0 < cols <= lanes else 2 * lanes), lanes


def _static_int8_consumer(node: Node, cols: int) -> tuple[Node, ActQuant] | None:
    """The static QLinearMatMulInt8 that is the only reader of ``node``'s output, whose
    input bytes ``node``'s epilogue can write (quantize once, in the producer)."""
    value = node.outputs[0]
    if value.is_graph_output or len(value.uses) != 1:
        return None
    user = value.uses[0].node
    if user.domain != "irkit" or user.op != "QLinearMatMulInt8" or user.inputs[0] is not value:
        return None
    consts = [v.const if v is not None else None for v in user.inputs[1:4]]
    if any(c is None for c in consts) or np.asarray(consts[2]).shape[0] != cols:
        return None
    try:
        return user, static_quant(np.asarray(consts[0]), np.asarray(consts[1]))
    except LoweringError:
        return None


# -- epilogue ---------------------------------------------------------------------------
def apply_activation(value: Expr, act: str) -> Expr:
    half, one = _f(0.5), _f(1.0)
    if act == "none":
        return value
    if act == "relu":
        return Binary("max", value, _f(0.0))
    if act == "sigmoid":
        return one / (one + Call("exp", (-value,)))
    if act == "tanh":
        return Call("tanh", (value,))
    if act == "gelu":
        return half * value * (one + Call("erf", (value * _f(1 / math.sqrt(2.0)),)))
    if act == "gelu_tanh":
        inner = (value + _f(0.044715) * value * value * value) * _f(math.sqrt(2 / math.pi))
        return half * value * (one + Call("tanh", (inner,)))
    raise LoweringError(f"unknown activation {act!r}")


@dataclass
class Requant:
    """acc (i32, u8 x s8) → float: ``(acc - zx * colsum[j]) * x_scale * w_scale[j] + b``."""

    colsum: Buffer
    wscale: Buffer
    bias: TensorRef | None
    residual: TensorRef | None
    act: str
    quant: ActQuant

    def value(self, acc: Expr, col: Expr, out_idx: Index) -> Expr:
        corrected = acc - self.quant.zero_i32() * Load(self.colsum, col)
        y = Cast(F32, corrected) * (self.quant.scale * Load(self.wscale, col))
        if self.bias is not None:
            y = y + self.bias.read((col,))
        if self.residual is not None:
            off = len(out_idx) - self.residual.rank
            ridx = tuple(Const(0) if (isinstance(d, Const) and d.value == 1) else out_idx[q + off]
                         for q, d in enumerate(self.residual.shape))
            y = y + self.residual.read(ridx)
        return apply_activation(y, self.act)


def _requant(ctx: LoweringContext, node: Node, w: np.ndarray, wscale: np.ndarray,
             wzp: np.ndarray, bias: TensorRef | None, residual: TensorRef | None,
             quant: ActQuant) -> Requant:
    """``w`` is ``[K, cols]`` int8; its per-column sums fold the activation zero point."""
    if np.any(np.asarray(wzp) != 0):
        raise LoweringError("int8 kernels need symmetric weights (zero point 0)")
    cols = w.shape[1]
    scales = np.broadcast_to(np.asarray(wscale, np.float32).reshape(-1), (cols,))
    colsum = w.astype(np.int32).sum(axis=0).astype(np.int32)
    return Requant(ctx.weight_buffer(colsum, "i32", "wsum"),
                   ctx.weight_buffer(np.ascontiguousarray(scales), F32, "wscale"),
                   bias, residual, str(node.attr("act", "none")), quant)


def _const(ref: TensorRef | None, what: str) -> np.ndarray:
    if ref is None or ref.const is None:
        raise LoweringError(f"int8 kernels need a constant {what}")
    return np.asarray(ref.const)


def _optional(ins: list[TensorRef | None], index: int) -> TensorRef | None:
    return ins[index] if index < len(ins) else None


# -- matmul -----------------------------------------------------------------------------
def _plan_int8_matmul(ctx: LoweringContext, node: Node, x: TensorRef, w: np.ndarray,
                      requant: Requant, prologue: Callable[[], None] | None) -> HeavyPlan:
    if w.ndim != 2 or x.rank < 2:
        raise LoweringError("int8 MatMul needs x of rank >= 2 and 2-D weights")
    k, cols = w.shape
    if static(x.shape[-1], "int8 MatMul depth") != k:
        raise LoweringError(f"int8 MatMul depth {x.shape[-1]} != weight rows {k}")
    lead = x.shape[:-1]
    rows = simplify_expr(product(lead))
    out_shape = (*lead, Const(cols))
    mr, nr, lanes = int8_tiles(ctx, cols)
    dot = choose_int8_dot(ctx, w, lanes, node)
    halves = weight_halves(w) if dot.split else (w.astype(np.int8), None)
    packed, words = pack_int8_weights(halves[0], nr)
    b_buf = ctx.weight_buffer(packed, "i32", "w8pack")
    b_hi = None if halves[1] is None else ctx.weight_buffer(
        pack_int8_weights(halves[1], nr)[0], "i32", "w8packhi")
    quant = requant.quant
    pre = ctx.int8_inputs.pop(node, None)
    a_bytes = pre or ctx.new_buffer("xq", "u8", rows * (4 * words))
    consumer = _static_int8_consumer(node, cols)
    next_bytes = None
    if consumer is not None:
        # Padding bytes past ``cols`` stay unwritten: they meet zero weights.
        next_stride = 4 * -(-cols // 4)
        next_bytes = ctx.new_buffer("xq", "u8", rows * next_stride)
        ctx.int8_inputs[consumer[0]] = next_bytes

    def emit(epilogue: Epilogue) -> None:
        if prologue is not None:
            prologue()
        stride = 4 * words
        if pre is None:
            i, kk = ctx.var("i"), ctx.var("k")
            pack: list[Stmt] = [For(kk, Const(k), Store(a_bytes, i * stride + kk, Cast(
                "u8", quant.byte(x.read((*unravel(i, lead), kk))))), "vector")]
            pack += [Store(a_bytes, i * stride + t, Const(0, "u8")) for t in range(k, stride)]
            ctx.add_kernel("quant", For(i, rows, block(*pack), "parallel"))

        def store(row: Expr, col: Expr, acc: Expr) -> Stmt:
            idx = (*unravel(row, lead), col)
            value = requant.value(acc, col, idx)
            if consumer is None or next_bytes is None:
                return epilogue(idx, value)
            # The consumer is this value's only reader and reads the bytes: the float
            # tensor is never stored (its buffer goes unused and unplaced).
            return Store(next_bytes, row * next_stride + col, Cast("u8", consumer[1].byte(value)))

        spec = Int8Gemm(rows, words, cols, word_view(a_bytes),
                        lambda row, word: row * words + word, b_buf, store, dot, b_hi)
        emit_int8_gemm(ctx, spec, "qgemm", mr, nr, lanes)

    return HeavyPlan(out_shape, emit)


def plan_qlinear_matmul(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                        ) -> HeavyPlan:
    x = ins[0]
    assert x is not None
    quant = static_quant(_const(ins[1], "x_scale"), _const(ins[2], "x_zero_point"))
    w = _const(ins[3], "weight")
    requant = _requant(ctx, node, w, _const(ins[4], "w_scale"), _const(ins[5], "w_zp"),
                       _optional(ins, 6), _optional(ins, 7), quant)
    return _plan_int8_matmul(ctx, node, x, w, requant, None)


def plan_dynamic_matmul(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                        ) -> HeavyPlan:
    """DynamicQuantizeLinear semantics: range over the whole tensor, including 0."""
    x = ins[0]
    assert x is not None
    w = _const(ins[1], "weight")
    qp = ctx.new_buffer("qparams", F32, Const(2))
    quant = ActQuant(Load(qp, Const(0)), Load(qp, Const(1)), 0, 255, 0)
    requant = _requant(ctx, node, w, _const(ins[2], "w_scale"), _const(ins[3], "w_zp"),
                       _optional(ins, 4), _optional(ins, 5), quant)
    x_mat = ctx.materialize(x, "dq_in")
    assert x_mat.buffer is not None

    def prologue() -> None:
        body, scratch = _range_kernel(ctx, x_mat.buffer, product(x.shape), qp)
        ctx.add_kernel("dq_range", body, scratch)

    return _plan_int8_matmul(ctx, node, x_mat, w, requant, prologue)


def _range_kernel(ctx: LoweringContext, xbuf: Buffer | None, size: Expr, qp: Buffer
                  ) -> tuple[Stmt, list[Buffer]]:
    """min/max of ``xbuf`` (vector lanes, then a scalar tail), then scale and zero point:
    ``scale = (max(hi, 0) - min(lo, 0)) / 255``, ``zp = clamp(round(-lo / scale))``."""
    assert xbuf is not None
    lanes = 16
    lo = Buffer(ctx.fresh("lo"), F32, Const(lanes), "local")
    hi = Buffer(ctx.fresh("hi"), F32, Const(lanes), "local")
    size = simplify_expr(size)
    i, lane = ctx.var("i"), ctx.var("l")
    zero_v = Broadcast(_f(0.0), lanes)
    # Starting from 0 is exact: DynamicQuantizeLinear widens the range to include 0.
    body = block(
        Store(lo, Const(0), zero_v), Store(hi, Const(0), zero_v),
        For(i, size // lanes, block(
            Store(lo, Const(0), Binary("min", Load(lo, Const(0), lanes),
                                       Load(xbuf, i * lanes, lanes))),
            Store(hi, Const(0), Binary("max", Load(hi, Const(0), lanes),
                                       Load(xbuf, i * lanes, lanes))))),
        For(i, size % lanes, block(
            Store(lo, Const(0), Binary("min", Load(lo, Const(0)), Load(xbuf, i))),
            Store(hi, Const(0), Binary("max", Load(hi, Const(0)), Load(xbuf, i)))),
            "serial", simplify_expr(size - size % lanes)),
        For(lane, Const(lanes - 1), block(
            Store(lo, Const(0), Binary("min", Load(lo, Const(0)), Load(lo, lane))),
            Store(hi, Const(0), Binary("max", Load(hi, Const(0)), Load(hi, lane)))),
            "serial", Const(1)),
    )
    scale = (Load(hi, Const(0)) - Load(lo, Const(0))) / _f(255.0)
    sv = Var(ctx.fresh("scale"), F32)
    rounded = Call("round", (_f(0.0) - Load(lo, Const(0)) / sv,))
    zp = Binary("min", Binary("max", rounded, _f(0.0)), _f(255.0))
    # An all-zero input has scale 0; use 1 so the kernel computes zeros, not NaN.
    safe = Select(Binary("eq", sv, _f(0.0)), _f(1.0), sv)
    return block(body, Let(sv, scale), Store(qp, Const(0), safe),
                 Store(qp, Const(1), Select(Binary("eq", sv, _f(0.0)), _f(0.0), zp))), [lo, hi]


# -- convolution (irkit/lower/quantized_conv.py) -------------------------------------------
def plan_qlinear_conv(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                      ) -> HeavyPlan:
    from irkit.lower.quantized_conv import plan_int8_conv

    return plan_int8_conv(ctx, node, ins)


INT8_HEAVY = {
    "QLinearMatMulInt8": plan_qlinear_matmul,
    "QLinearConvInt8": plan_qlinear_conv,
    "DynamicQuantMatMulInt8": plan_dynamic_matmul,
}

__all__ = ["INT8_HEAVY", "emit_int8_gemm", "pack_int8_weights"]
