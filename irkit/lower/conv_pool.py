"""``irkit.ConvBiasActPool`` on the llvm backend: the convolution's GEMM pools its
finished output tile in the epilogue.

The conv GEMM (irkit.lower.heavy.plan_conv) computes an ``mr x nr`` tile of output
channels x pixels; when a panel of ``nr`` pixels is a whole number of output rows
(``nr % ow == 0``) holding whole pooling windows (``(nr / ow) % stride_h == 0`` and
windows no taller than the stride), each pooled value is read straight from the tile:
the full-resolution activation is never written and there is no pooling pass over it.
For max pooling with a monotone activation, bias and activation run once per pooled
value (``act(max(a) + b) == max(act(a + b))`` exactly), after a max over the window's
rows (contiguous, in place in the tile) and then over its columns (a constant stride,
which LLVM vectorizes with shuffles rather than gathers). Other geometries keep one
kernel pair: the conv writes the activation, a loop pools it (what the decomposition
gives).
"""

from __future__ import annotations

from functools import reduce

import numpy as np

from irkit.ir import Node
from irkit.kir import Binary, Buffer, Const, Expr, For, If, Load, Stmt, Store, block
from irkit.lower.context import LoweringContext
from irkit.lower.heavy import Epilogue, HeavyPlan, conv_geometry, conv_tiles, plan_conv
from irkit.lower.tensor import LoweringError, TensorRef, flat_index, product

MONOTONE = ("none", "relu", "sigmoid", "tanh")


def conv_pool_supported(node: Node) -> bool:
    """Whether the lowering takes this ``irkit.ConvBiasActPool`` as it is: 2-D f32 input
    with static spatial dims, constant weights and bias, a pool without padding."""
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if x is None or w is None or w.const is None or w.const.ndim != 4 or len(node.inputs) > 3:
        return False
    if bias is not None and bias.const is None:
        return False
    if x.shape is None or len(x.shape) != 4 or not all(isinstance(d, int) for d in x.shape[1:]):
        return False
    if x.dtype is None or x.dtype.numpy != np.float32:
        return False
    kernel = node.attr("pool_kernel_shape", None)
    strides = node.attr("pool_strides", None) or kernel
    return (node.attr("pool", "max") in ("max", "average") and kernel is not None
            and len(kernel) == 2 and len(strides) == 2
            and all(int(k) >= 1 for k in (*kernel, *strides)))


def _activation(act: str) -> object:
    from irkit.lower.elementwise import UNARY
    from irkit.lower.fused import _gelu

    if act == "none":
        return lambda v: v
    if act in ("gelu", "gelu_tanh"):
        return lambda v: _gelu(v, act == "gelu_tanh")
    op = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}.get(act)
    if op is None:
        raise LoweringError(f"ConvBiasActPool act={act!r} is not supported")
    fn = UNARY[op]
    return lambda v: fn(v, None)  # type: ignore[arg-type]


def plan_conv_bias_act_pool(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                            ) -> HeavyPlan:
    x, w_ref = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    if x is None or w_ref is None or w_ref.const is None or x.rank != 4 or x.dtype != "f32":
        raise LoweringError("ConvBiasActPool needs a 4-D f32 input and constant weights")
    w = np.asarray(w_ref.const, np.float32)
    g = conv_geometry(node, x, w)
    oh, ow = g["out"]
    kh, kw = (int(k) for k in node.attr("pool_kernel_shape"))
    sh, sw = (int(s) for s in (node.attr("pool_strides", None) or (kh, kw)))
    poh, pw = (oh - kh) // sh + 1, (ow - kw) // sw + 1
    if poh <= 0 or pw <= 0:
        raise LoweringError(f"ConvBiasActPool output would be empty: {[poh, pw]}")
    cout = w.shape[0]
    groups = int(node.attr("group", 1))
    cout_g = cout // groups
    out_shape = (x.shape[0], Const(cout), Const(poh), Const(pw))
    act_name = str(node.attr("act", "none"))
    act = _activation(act_name)
    pool = str(node.attr("pool", "max"))
    count = kh * kw
    nr = conv_tiles(ctx, g).nr  # the tile plan_conv picks
    rows_per_panel = nr // ow if nr % ow == 0 else 0
    aligned = rows_per_panel > 0 and rows_per_panel % sh == 0 and kh <= sh
    max_first = pool == "max" and act_name in MONOTONE

    def combine(values: list[Expr], co: Expr | None) -> Expr:
        """The pooled value of a window's raw values (bias added here when ``co``)."""
        def finish(v: Expr) -> Expr:
            if co is not None and bias is not None:
                v = v + bias.read((co,))
            return act(v)  # type: ignore[operator,no-any-return]

        if max_first:
            return finish(reduce(lambda a, b: Binary("max", a, b), values))
        done = [finish(v) for v in values]
        if pool == "max":
            return reduce(lambda a, b: Binary("max", a, b), done)
        return reduce(lambda a, b: a + b, done) / Const(float(count), "f32")

    def emit(epilogue: Epilogue) -> None:
        if aligned:
            emit_tile_pooled(epilogue)
        else:
            emit_two_pass(epilogue)

    def emit_tile_pooled(epilogue: Epilogue) -> None:
        prows = rows_per_panel // sh  # pooled rows per panel
        panels = -(-(oh * ow) // nr)

        def tile_store(bi: Expr, i0: Expr, rows: int, p: Expr, tile: Buffer) -> Stmt:
            n, grp = bi // groups, bi % groups
            r, pr, px, c, q = (ctx.var(h) for h in ("r", "pr", "px", "c", "q"))
            co = grp * cout_g + i0 + r
            base = r * nr
            # Pooled rows of this panel that lie inside the output (the last panel's
            # rows past the output are not stored).
            partial = panels * prows > poh
            if not max_first:  # each value gets bias and activation before pooling
                values: list[Expr] = [
                    Load(tile, base + (pr * sh + dy) * ow + px * sw + dx)
                    for dy in range(kh) for dx in range(kw)]
                py = p * prows + pr
                body: Stmt = For(px, Const(pw), epilogue((n, co, py, px),
                                                         combine(values, co)))
                if partial:
                    body = If(Binary("lt", py, Const(poh)), body)
                return For(r, Const(rows), For(pr, Const(prows), body))
            stmts: list[Stmt] = []
            if kh > 1:
                # Max over each window's rows, written in place to the tile's first
                # ``prows`` rows (row pr reads rows >= pr): contiguous, so it vectorizes.
                rows_in: list[Expr] = [Load(tile, base + (pr * sh + dy) * ow + c)
                                       for dy in range(kh)]
                top = reduce(lambda a, b: Binary("max", a, b), rows_in)
                stmts.append(For(pr, Const(prows), For(c, Const(ow), Store(
                    tile, base + pr * ow + c, top))))
            row_stride = ow if kh > 1 else sh * ow  # between the pooled rows' values
            if row_stride == pw * sw:
                # The panel's pooled values of this channel are contiguous in the output:
                # one loop over them with a constant stride into the tile (no gathers).
                count: Expr = Const(prows * pw)
                if partial:
                    count = Binary("min", count, (Const(poh) - p * prows) * pw)
                values = [Load(tile, base + q * sw + dx) for dx in range(kw)]
                py, px_ = p * prows + q // pw, q % pw
                stmts.append(For(q, count, epilogue((n, co, py, px_), combine(values, co)),
                                 "vector"))
            else:
                values = [Load(tile, base + pr * row_stride + px * sw + dx) for dx in range(kw)]
                py = p * prows + pr
                body = For(px, Const(pw), epilogue((n, co, py, px), combine(values, co)))
                if partial:
                    body = If(Binary("lt", py, Const(poh)), body)
                stmts.append(For(pr, Const(prows), body))
            return For(r, Const(rows), block(*stmts))

        plan_conv(ctx, node, ins, tile_store=tile_store).emit(
            lambda idx, acc: block())  # unused: tile_store writes the results

    def emit_two_pass(epilogue: Epilogue) -> None:
        conv_shape = (x.shape[0], Const(cout), Const(oh), Const(ow))
        full = ctx.new_buffer("conv_full", "f32", product(conv_shape))
        plan_conv(ctx, node, ins).emit(  # plan_conv's epilogue adds the bias
            lambda idx, acc: Store(full, flat_index(idx, conv_shape), acc))
        nc, py, px = ctx.var("nc"), ctx.var("py"), ctx.var("px")
        values: list[Expr] = [
            Load(full, (nc * oh + py * sh + dy) * ow + px * sw + dx)
            for dy in range(kh) for dx in range(kw)]
        n, c = nc // cout, nc % cout
        body = For(py, Const(poh), For(px, Const(pw), epilogue((n, c, py, px),
                                                                 combine(values, None))))
        ctx.add_kernel("conv_pool", For(nc, product(conv_shape[:2]), body, "parallel"))

    return HeavyPlan(out_shape, emit)


__all__ = ["conv_pool_supported", "plan_conv_bias_act_pool"]
