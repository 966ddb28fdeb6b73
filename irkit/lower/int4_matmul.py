"""MatMul by int4/uint4 weights with block-wise scales, dequantized on the fly.

Matches ``MatMul(A, DequantizeLinear(W, scale[, zero_point], axis=0, block_size=bs))`` with
W, scale and zero point constants (the layout of int4-quantized LLM weights, as
``MatMulNBits`` stores them). The weights stay 4-bit in memory: packed two per byte, row
``k`` of W (``n`` outputs) as ``n/2`` bytes whose low nibbles are columns ``[0, n/2)`` and
high nibbles columns ``[n/2, n)``, so one byte load feeds two contiguous output vectors.
The kernel, per row of A and per block of ``bs`` rows of W:

    out[j] += scale[b, j] * (sum_k A[k] * W[k, j] - zero[b, j] * sum_k A[k])

the inner sums unrolled over chunks of up to 16 rows of W, the nibbles widened in
registers (mask, or divide by 16; int4 is stored offset by 8, folded into the zero-point
term), the loop over ``j`` a vector
loop. At batch 1 this reads an eighth of the fp32 weights' bytes.

The DequantizeLinear itself then produces no kernel (its only readers are such MatMuls).
"""

from __future__ import annotations

import numpy as np

from irkit.ir import DType, Node, Value
from irkit.kir import Binary, Cast, Const, Expr, For, Let, Load, Store, Var, block
from irkit.lower.context import LoweringContext
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
    if k % bs or n % 2 or (bs > CHUNK and bs % CHUNK):
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
    k_blocks = codes.shape[0] // int(deq.attr("block_size"))
    zero = np.zeros((k_blocks, codes.shape[1]), np.float32)
    if zero_value is not None and zero_value.const is not None:
        zero = np.asarray(zero_value.const).astype(np.float32)
    if signed:  # stored as code + 8 in [0, 16): (v - z) = (u - (z + 8))
        codes = ((codes.astype(np.int16) + 8) & 15).astype(np.uint8)
        zero = zero + 8
    k_dim, n_dim = codes.shape
    half = n_dim // 2
    bs = int(deq.attr("block_size"))
    chunk = min(bs, CHUNK)
    if a.shape[-1] != Const(k_dim):
        raise LoweringError(f"MatMul: A's last dim {a.shape[-1]} != W's {k_dim} rows")
    rows = product(a.shape[:-1]) if a.rank > 1 else Const(1)
    tile = next((t for t in (TILE, 64, 32) if half % t == 0), half)
    tiles = half // tile
    packed = ctx.weight_buffer(pack(codes, chunk, tile), "u8", "w4")
    scales = ctx.weight_buffer(scale, "f32", "s4")
    zeros = ctx.weight_buffer(zero, "f32", "z4") if zero.any() else None
    a_buf = ctx.materialize(a, "a4").buffer
    assert a_buf is not None
    out = ctx.new_buffer("matmul4", "f32", rows * n_dim)

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
    nest = For(m, rows, block(init, For(b, Const(k_dim // bs), chunks)), "parallel")
    ctx.add_kernel("matmul_int4", nest)
    shape = (*a.shape[:-1], Const(n_dim)) if a.rank > 1 else (Const(n_dim),)
    return [buffer_ref(out, shape)]


def unused(deq: Node) -> TensorRef:
    """The ref of a DequantizeLinear whose readers all take the packed weights: never read,
    so it costs no kernel."""
    w_value = deq.inputs[0]
    assert w_value is not None
    shape = tuple(Const(int(d)) for d in np.asarray(w_value.const).shape)

    def read(idx: tuple[Expr, ...]) -> Expr:
        raise LoweringError("the dequantized int4 weights are only read packed")

    return TensorRef(shape, "f32", read, cost=0)


__all__ = ["lower", "matches", "only_for_packed", "pack", "unused"]
