"""MatMul by int4/uint4 weights with block-wise scales, dequantized on the fly.

Matches ``MatMul(A, DequantizeLinear(W, scale[, zero_point], axis=0, block_size=bs))`` with
W, scale and zero point constants (the layout of int4-quantized LLM weights, as
``MatMulNBits`` stores them). The weights stay 4-bit in memory, eight to a u32 word, and
the kernel computes

    out[j] = sum_b scale[b, j] * (sum_{k in block b} A[k] * W[k, j] - zero[b, j] * xsum[b])

(int4 is stored offset by 8, folded into the zero-point term; ``xsum[b]`` is the sum of
the block's inputs). Outputs come in column tiles of 8 vectors (64 columns with AVX2):
per row of W one vector load of words feeds all 8, each nibble is masked in place, converted
to float and multiplied into its vector accumulator with one FMA; the block's scale and zero
point are applied once per block (:func:`_tiles_kernel`). At batch 1 this reads an eighth
of the fp32 weights' bytes and spends 3 vector instructions per 8 weights. Backends without
vector lanes (GPU) take a scalar row-by-row form (:func:`_rows_kernel`).

The DequantizeLinear itself then produces no kernel (its only readers are such MatMuls).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from irkit.ir import DType, Node, Value
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
    Stmt,
    Store,
    Var,
    block,
)
from irkit.lower.context import LoweringContext
from irkit.lower.gemm import tile_rows
from irkit.lower.tensor import LoweringError, TensorRef, buffer_ref, product

CHUNK = 16  # rows of W summed in one expression
TILE = 128  # packed bytes (2 * TILE columns) per pass over a chunk of rows


def _const(value: Value | None) -> np.ndarray | None:
    return None if value is None else value.const


def matches(node: Node) -> bool:
    """Whether ``node`` is a MatMul this kernel takes (see the module docstring)."""
    if node.op != "MatMul" or len(node.inputs) != 2 or node.inputs[1] is None:
        return False
    a, b = node.inputs
    deq = b.producer if b is not None else None
    if a is None or deq is None or deq.op != "DequantizeLinear" or a.dtype != DType.FLOAT32:
        return False
    w = deq.inputs[0]
    scale = deq.inputs[1] if len(deq.inputs) > 1 else None
    zero = deq.inputs[2] if len(deq.inputs) > 2 else None
    if w is None or w.dtype not in (DType.INT4, DType.UINT4) or _const(w) is None:
        return False
    if scale is None or scale.dtype != DType.FLOAT32 or _const(scale) is None:
        return False
    if zero is not None and _const(zero) is None:
        return False
    if deq.attr("output_dtype", 0) not in (0, int(DType.FLOAT32.value)):
        return False
    w_arr = np.asarray(_const(w))
    bs = int(deq.attr("block_size", 0))
    if w_arr.ndim != 2 or int(deq.attr("axis", 1)) % 2 != 0 or bs <= 0:
        return False
    k, n = w_arr.shape
    if k % bs or n % 2:
        return False
    if np.asarray(_const(scale)).shape != (k // bs, n):
        return False
    if zero is not None and np.asarray(_const(zero)).shape != (k // bs, n):
        return False
    return a.shape is not None and len(a.shape) >= 1


def only_for_packed(node: Node) -> bool:
    """Whether every reader of DequantizeLinear ``node``'s output is a packed MatMul."""
    uses = node.outputs[0].uses
    if not uses or node.outputs[0].is_graph_output:
        return False
    return all(u.node.op == "MatMul" and u.index == 1 and matches(u.node) for u in uses)


def pack(codes: np.ndarray, chunk: int, tile: int) -> np.ndarray:
    """``[k, n]`` nibble values as bytes, column j in the low and j + n/2 in the high
    nibble, laid out ``[k / chunk][n/2 / tile][chunk][tile]``: the ``chunk`` rows one pass
    of the kernel reads for one tile of columns are one contiguous run (rows n/2 bytes
    apart would be ``chunk`` concurrent streams a few KiB apart, which alias in L1)."""
    nib = np.asarray(codes, np.uint8) & 15
    k, n = nib.shape
    half = n // 2
    both = (nib[:, :half] | (nib[:, half:] << 4)).astype(np.uint8)
    tiled = both.reshape(k // chunk, chunk, half // tile, tile).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(tiled).reshape(k, half)


def _nibble(byte: Expr, high: bool) -> Expr:
    """Nibble of a u32 holding a byte, as f32 (0..15: int4 weights are stored offset by
    8, and the offset folds into the zero-point term)."""
    value = byte / 16 if high else Binary("and", byte, Const(15, "u32"))
    return Cast("f32", Cast("i32", value))


def _tree_sum(terms: list[Expr]) -> Expr:
    """Pairwise sum (independent additions, not one dependent chain)."""
    while len(terms) > 1:
        pairs = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        terms = pairs + ([terms[-1]] if len(terms) % 2 else [])
    return terms[0]


def lower(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]) -> list[TensorRef]:
    a = ins[0]
    assert a is not None
    b_value = node.inputs[1]
    assert b_value is not None
    deq = b_value.producer
    assert deq is not None
    w_value, s_value = deq.inputs[0], deq.inputs[1]
    assert w_value is not None and s_value is not None
    signed = w_value.dtype == DType.INT4
    codes = np.ascontiguousarray(w_value.const).astype(np.int8 if signed else np.uint8)
    scale = np.asarray(s_value.const, np.float32)
    zero_value = deq.inputs[2] if len(deq.inputs) > 2 else None
    bs = int(deq.attr("block_size"))
    zero = np.zeros((codes.shape[0] // bs, codes.shape[1]), np.float32)
    if zero_value is not None and zero_value.const is not None:
        zero = np.asarray(zero_value.const).astype(np.float32)
    if signed:  # stored as code + 8 in [0, 16): (v - z) = (u - (z + 8))
        codes = ((codes.astype(np.int16) + 8) & 15).astype(np.uint8)
        zero = zero + 8
    k_dim = codes.shape[0]
    if a.shape[-1] != Const(k_dim):
        raise LoweringError(f"MatMul: A's last dim {a.shape[-1]} != W's {k_dim} rows")
    rows = product(a.shape[:-1]) if a.rank > 1 else Const(1)
    a_buf = ctx.materialize(a, "a4").buffer
    assert a_buf is not None
    out = ctx.new_buffer("matmul4", "f32", rows * codes.shape[1])
    problem = _Problem(codes, scale, zero, bs, rows, a_buf, out)
    if ctx.target.family == "gpu":  # GPU backends take scalar code (no vector lanes)
        _rows_kernel(ctx, problem)
    else:
        _tiles_kernel(ctx, problem)
    n_dim = codes.shape[1]
    shape = (*a.shape[:-1], Const(n_dim)) if a.rank > 1 else (Const(n_dim),)
    return [buffer_ref(out, shape)]


@dataclass
class _Problem:
    codes: np.ndarray  # [k, n] nibbles in [0, 16)
    scale: np.ndarray  # [k / bs, n]
    zero: np.ndarray  # [k / bs, n] (int4's offset of 8 included)
    bs: int
    rows: Expr
    a_buf: Buffer
    out: Buffer


def _rows_kernel(ctx: LoweringContext, pr: _Problem) -> None:
    """Row by row, block by block, ``out`` updated per chunk of rows of W (scalar code
    LLVM vectorizes; kept for backends without vector lanes)."""
    codes, scale, zero, bs, a_buf, out = pr.codes, pr.scale, pr.zero, pr.bs, pr.a_buf, pr.out
    k_dim, n_dim = codes.shape
    half = n_dim // 2
    chunk = max(c for c in range(1, CHUNK + 1) if bs % c == 0)
    tile = next((t for t in (TILE, 64, 32) if half % t == 0), half)
    tiles = half // tile
    packed = ctx.weight_buffer(pack(codes, chunk, tile), "u8", "w4")
    scales = ctx.weight_buffer(scale, "f32", "s4")
    zeros = ctx.weight_buffer(zero, "f32", "z4") if zero.any() else None

    m, t, jj, b, c = (ctx.var(h) for h in ("m", "t", "jj", "blk", "c"))
    j = t * tile + jj
    k0 = b * bs + c * chunk
    xs = [Var(ctx.fresh("x"), "f32") for _ in range(chunk)]
    lets: list = [Let(xs[u], Load(a_buf, m * k_dim + k0 + u)) for u in range(chunk)]
    xsum = Var(ctx.fresh("xsum"), "f32")
    if zeros is not None:
        lets.append(Let(xsum, _tree_sum(list(xs))))
    # Byte loads stay inline (the vectorizer widens loads, not vector-valued lets); the two
    # nibbles' loads of one byte are one load after LLVM's CSE.
    run = ((b * (bs // chunk) + c) * tiles + t) * chunk
    bytes_ = [Cast("u32", Load(packed, (run + u) * tile + jj)) for u in range(chunk)]
    # Both sums are bound before either store: a store to ``out`` may alias the weights
    # as far as LLVM knows, and would make it load the 16 bytes again for the high half.
    sums = [Var(ctx.fresh("lo"), "f32"), Var(ctx.fresh("hi"), "f32")]
    body: list = []
    stores: list = []
    for high, total in zip((False, True), sums):
        col = j + half if high else j
        acc = _tree_sum([xs[u] * _nibble(bytes_[u], high) for u in range(chunk)])
        if zeros is not None:
            acc = acc - Load(zeros, b * n_dim + col) * xsum
        body.append(Let(total, acc))
        at = m * n_dim + col
        stores.append(Store(out, at, Load(out, at) + Load(scales, b * n_dim + col) * total))
    body.extend(stores)
    inner = For(t, Const(tiles), For(jj, Const(tile), block(*body), "vector"))
    chunks = For(c, Const(bs // chunk), block(*lets, inner))
    init = For(jj, Const(n_dim), Store(out, m * n_dim + jj, Const(0.0, "f32")), "vector")
    nest = For(m, pr.rows, block(init, For(b, Const(k_dim // bs), chunks)), "parallel")
    ctx.add_kernel("matmul_int4", nest)


POSITIONS = 8  # nibbles per u32 word: one word vector feeds 8 vectors of columns
ROW_BLOCK = 4  # rows of A that share each unpacked word (batch > 1)
UNROLL = 4  # rows of W per iteration of the loop over a block's rows
# Nibble i of a word is masked in place, not shifted down: the float is the nibble times
# 16**i, and 16**-i is folded into the block's scale (16**i into its zero point). Powers
# of two scale exactly, so the sums are the unscaled ones times 16**i bit for bit, while
# no partial sum exceeds f32's range: |A| < 2**100 (1e30) and scales >= TINY_SCALE keep
# every scaled value a normal float. Nibble 7 is the word shifted right by 28. Matrices
# with smaller scales take shifts and masks for every nibble (one more instruction each).
TINY_SCALE = 2.0**-100


def _plan(i: int, masked: bool) -> tuple[int, int, int]:
    """(shift, mask, e) of nibble ``i``: ``(word >> shift) & mask`` is it times 16**e (no
    mask: 0)."""
    if i == POSITIONS - 1:
        return 28, 0, 0
    if not masked:
        return 4 * i, 15, 0
    return 0, 15 << (4 * i), i


def pack_words(codes: np.ndarray, lanes: int) -> np.ndarray:
    """``[k, n]`` nibbles as u32 words ``[tiles][k][lanes]``: nibble i of lane l of tile
    p's word for row k is ``W[k, p * 8 * lanes + i * lanes + l]`` (columns past n are 0).
    One vector load of a row's ``lanes`` words feeds 8 column vectors, and a tile's rows
    are one contiguous run."""
    k, n = codes.shape
    width = POSITIONS * lanes
    tiles = -(-n // width)
    padded = np.zeros((k, tiles * width), np.uint32)
    padded[:, :n] = np.asarray(codes, np.uint8) & 15
    nib = padded.reshape(k, tiles, POSITIONS, lanes)
    words = np.zeros((k, tiles, lanes), np.uint32)
    for i in range(POSITIONS):
        words |= nib[:, :, i, :] << np.uint32(4 * i)
    return np.ascontiguousarray(words.transpose(1, 0, 2))


def _per_position(table: np.ndarray, lanes: int, factors: np.ndarray) -> np.ndarray:
    """``[blocks, n]`` per-column values as ``[tiles][blocks][8][lanes]`` (the words'
    column order), position i multiplied by ``factors[i]``; padding columns are 0."""
    blocks, n = table.shape
    width = POSITIONS * lanes
    tiles = -(-n // width)
    padded = np.zeros((blocks, tiles * width), np.float32)
    padded[:, :n] = table
    out = padded.reshape(blocks, tiles, POSITIONS, lanes) * factors[:, None]
    return np.ascontiguousarray(out.transpose(1, 0, 2, 3).astype(np.float32))


def _xsum_kernel(ctx: LoweringContext, pr: _Problem, blocks: int) -> Buffer:
    """Per row of A, the sum of each block's ``bs`` inputs (for the zero-point term)."""
    k_dim = pr.codes.shape[0]
    xsum = ctx.new_buffer("xsum4", "f32", pr.rows * blocks)
    m, b, u = ctx.var("m"), ctx.var("blk"), ctx.var("u")
    at = m * blocks + b
    add = Store(xsum, at, Load(xsum, at) + Load(pr.a_buf, m * k_dim + b * pr.bs + u))
    body = block(Store(xsum, at, Const(0.0, "f32")), For(u, Const(pr.bs), add))
    ctx.add_kernel("int4_xsum", For(m, pr.rows, For(b, Const(blocks), body), "parallel"))
    return xsum


def _tiles_kernel(ctx: LoweringContext, pr: _Problem) -> None:
    """Column tiles of ``8 * lanes`` outputs (parallel), rows of A in blocks of up to
    ``ROW_BLOCK``; per block of W: vector accumulators summing ``x[k] * nibble`` over the
    block's rows, then one scale (and zero-point) multiply per block into the totals.

        out[j] = sum_b scale[b, j] * (sum_{k in b} x[k] * W[k, j] - zero[b, j] * xsum[b])

    Per row of W and tile: one vector load of words, per column vector one and/shift,
    one int->float convert and one FMA per row of A."""
    codes, bs, a_buf, out = pr.codes, pr.bs, pr.a_buf, pr.out
    lanes = ctx.tiles.vec
    k_dim, n_dim = codes.shape
    blocks, width = k_dim // bs, POSITIONS * lanes
    tiles, full_tiles = -(-n_dim // width), n_dim // width
    nonzero = np.abs(pr.scale[pr.scale != 0])
    masked = bool(np.all(np.isfinite(pr.scale))) and bool(np.all(nonzero >= TINY_SCALE))
    plans = [_plan(i, masked) for i in range(POSITIONS)]
    exps = np.array([16.0 ** e for _, _, e in plans], np.float32)
    words = ctx.weight_buffer(pack_words(codes, lanes), "u32", "w4")
    scales = ctx.weight_buffer(_per_position(pr.scale, lanes, 1 / exps), "f32", "s4")
    zeros = None
    xsum: Buffer | None = None
    uniform = float(pr.zero.flat[0]) if np.all(pr.zero == pr.zero.flat[0]) else None
    if pr.zero.any():
        xsum = _xsum_kernel(ctx, pr, blocks)
        if uniform is None:
            zeros = ctx.weight_buffer(_per_position(pr.zero, lanes, exps), "f32", "z4")

    def zero_point(i: int, at: Expr) -> Expr:
        """Position i's zero point times 16**e at ``at``: a literal when every block and
        column has the same one (symmetric int4: 8), read from the weights otherwise."""
        if zeros is None:
            return Broadcast(Const(float(uniform or 0) * float(exps[i]), "f32"), lanes)
        return Load(zeros, at, lanes)
    acc = Buffer(ctx.fresh("acc"), "f32", Const(POSITIONS * lanes), "local")
    tot = Buffer(ctx.fresh("tot"), "f32", Const(POSITIONS * lanes), "local")
    p = ctx.var("p")
    zero_vec = Broadcast(Const(0.0, "f32"), lanes)
    unroll = next(v for v in (UNROLL, 2, 1) if bs % v == 0)

    def nibble(i: int, kk: Expr) -> Expr:
        shift, mask, _ = plans[i]
        word: Expr = Load(words, (p * k_dim + kk) * lanes, lanes)
        if shift:
            word = Call("shr", (word, Broadcast(Const(shift, "u32"), lanes)))
        if mask:
            word = Binary("and", word, Broadcast(Const(mask, "u32"), lanes))
        return Cast("f32", Cast("i32", word))  # < 2**31: a signed convert is exact

    def micro(i0: Expr, nrows: int) -> Stmt:
        per = POSITIONS if nrows == 1 else 4 if nrows == 2 else 2
        stmts: list[Stmt] = []
        for first in range(0, POSITIONS, per):
            pos = range(first, first + per)

            def slot(r: int, i: int) -> Const:
                return Const((r * per + i - first) * lanes)  # noqa: B023

            pairs = [(r, i) for r in range(nrows) for i in pos]
            b, u = ctx.var("blk"), ctx.var("u")
            step: list[Stmt] = []
            for v in range(unroll):  # rows of W per iteration (fewer loop branches)
                kk = b * bs + u * unroll + v
                fs = {i: Var(ctx.fresh(f"f{i}"), "f32") for i in pos}
                step += [Let(fs[i], nibble(i, kk)) for i in pos]
                for r in range(nrows):
                    x = Broadcast(Load(a_buf, (i0 + r) * k_dim + kk), lanes)
                    step += [Store(acc, slot(r, i), Call("fma", (x, fs[i], Load(
                        acc, slot(r, i), lanes)))) for i in pos]
            finish: list[Stmt] = []
            for r, i in pairs:
                at = ((p * blocks + b) * POSITIONS + i) * lanes
                s: Expr = Load(acc, slot(r, i), lanes)
                if xsum is not None:
                    xs = Broadcast(Load(xsum, (i0 + r) * blocks + b), lanes)
                    s = s - zero_point(i, at) * xs
                finish.append(Store(tot, slot(r, i), Call("fma", (
                    s, Load(scales, at, lanes), Load(tot, slot(r, i), lanes)))))
            per_block = block(*[Store(acc, slot(r, i), zero_vec) for r, i in pairs],
                              For(u, Const(bs // unroll), block(*step)), *finish)
            stmts += [Store(tot, slot(r, i), zero_vec) for r, i in pairs]
            stmts.append(For(b, Const(blocks), per_block))
            stmts.append(_store_tile(ctx, out, tot, p, i0, pairs, slot, lanes, n_dim,
                                     full_tiles, tiles))
        return block(*stmts)

    body = tile_rows(ctx, pr.rows, ROW_BLOCK, micro)
    ctx.add_kernel("matmul_int4", For(p, Const(tiles), block(*body), "parallel"), [acc, tot])


def _store_tile(ctx: LoweringContext, out: Buffer, tot: Buffer, p: Var, i0: Expr,
                pairs: list[tuple[int, int]], slot: Callable[[int, int], Const],
                lanes: int, n_dim: int, full_tiles: int, tiles: int) -> Stmt:
    """The finished totals into ``out``: vector stores, and in a last partial tile only
    the columns that exist."""
    width = POSITIONS * lanes

    def at(r: int, i: int) -> Expr:
        return (i0 + r) * n_dim + p * width + i * lanes

    full = block(*[Store(out, at(r, i), Load(tot, slot(r, i), lanes)) for r, i in pairs])
    if full_tiles == tiles:
        return full
    rest = n_dim - full_tiles * width
    parts: list[Stmt] = []
    for r, i in pairs:
        valid = min(max(rest - i * lanes, 0), lanes)
        if valid == lanes:
            parts.append(Store(out, at(r, i), Load(tot, slot(r, i), lanes)))
        elif valid:
            c = ctx.var("c")
            parts.append(For(c, Const(valid), Store(out, at(r, i) + c,
                                                    Load(tot, slot(r, i) + c))))
    partial = block(*parts)
    if full_tiles == 0:
        return partial
    return If(Binary("lt", p, Const(full_tiles)), full, partial)


def unused(deq: Node) -> TensorRef:
    """The ref of a DequantizeLinear whose readers all take the packed weights: never read,
    so it costs no kernel."""
    w_value = deq.inputs[0]
    assert w_value is not None
    shape = tuple(Const(int(d)) for d in np.asarray(w_value.const).shape)

    def read(idx: tuple[Expr, ...]) -> Expr:
        raise LoweringError("the dequantized int4 weights are only read packed")

    return TensorRef(shape, "f32", read, cost=0)


__all__ = ["lower", "matches", "only_for_packed", "pack", "pack_words", "unused"]
