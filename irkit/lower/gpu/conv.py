"""The GPU convolution template: an implicit GEMM on the shared-memory GEMM template.

Per group, ``out[co, pixel] = W[co, (ci, ky, kx)] @ im2col(x)[(ci, ky, kx), pixel]`` with
the pixels of every image of the batch as the columns (``N * OH * OW``, consecutive
threads on consecutive pixels, so the input reads and the output stores coalesce) and
the im2col matrix never built: the tile loader computes each element's input position
(zero in the padding). The weights are read as they are (``[cout, cin/g * kh * kw]``).
Depthwise convolutions (one input channel per group) are one thread per output element
summing its ``kh * kw`` taps. Runtime weights and 1-D/3-D convolutions keep the loop nest
of :func:`irkit.lower.windows.plan_direct_conv`.
"""

from __future__ import annotations

import numpy as np

from irkit.ir import Node
from irkit.kir import Binary, Const, Expr, Load, Select, Stmt, simplify_expr
from irkit.lower.context import LoweringContext
from irkit.lower.depthwise import is_depthwise
from irkit.lower.gpu.gemm import GpuGemm, emit_gpu_gemm
from irkit.lower.heavy import Epilogue, HeavyPlan, conv_geometry, plan_conv
from irkit.lower.tensor import TensorRef, static


def _inside(value: Expr, size: int) -> Expr:
    return Binary("and", Binary("ge", value, Const(0)), Binary("lt", value, Const(size)))


def plan_conv_gpu(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                  ) -> HeavyPlan:
    x, w_ref = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    assert x is not None and w_ref is not None
    if w_ref.const is None or x.rank != 4 or x.dtype != "f32":
        return plan_conv(ctx, node, ins)  # the direct loop nest (or its error)
    w = np.asarray(w_ref.const, np.float32)
    g = conv_geometry(node, x, w)
    groups = int(node.attr("group", 1))
    cout, cin_g, kh, kw = (int(d) for d in w.shape)
    cout_g = cout // groups
    (ih, iw), (oh, ow) = g["in"], g["out"]
    (sy, sx), (dy, dx) = g["s"], g["d"]
    top, left = g["p"][0], g["p"][1]
    cin = static(x.shape[1], "Conv channels")
    pixels = oh * ow
    out_shape = (x.shape[0], Const(cout), Const(oh), Const(ow))
    x_buf = ctx.materialize(x, "conv_in").buffer
    assert x_buf is not None

    def tap(n: Expr, channel: Expr, oy: Expr, ox: Expr, ky: Expr | int, kx: Expr | int
            ) -> Expr:
        iy = simplify_expr(oy * sy - top + ky * dy)
        ix = simplify_expr(ox * sx - left + kx * dx)
        inside = Binary("and", _inside(iy, ih), _inside(ix, iw))
        index = simplify_expr(((n * cin + channel) * ih + iy) * iw + ix)
        return Select(inside, Load(x_buf, Select(inside, index, Const(0))), Const(0.0, "f32"))

    def with_bias(value: Expr, co: Expr) -> Expr:
        return value + bias.read((co,)) if bias is not None else value

    if is_depthwise(groups, w):
        w_buf = ctx.weight_buffer(w.reshape(cout, kh * kw), "f32", "convw")

        def emit_depthwise(epilogue: Epilogue) -> None:
            def body(idx: tuple[Expr, ...]) -> Stmt:
                n, co, oy, ox = idx
                channel = simplify_expr(co // cout_g)
                total: Expr = Const(0.0, "f32")
                for ky in range(kh):
                    for kx in range(kw):
                        weight = Load(w_buf, simplify_expr(co * (kh * kw) + ky * kw + kx))
                        total = total + tap(n, channel, oy, ox, ky, kx) * weight
                return epilogue(idx, with_bias(total, co))

            ctx.add_kernel("conv_dw", ctx.loop_nest(out_shape, body))

        return HeavyPlan(out_shape, emit_depthwise)

    depth = cin_g * kh * kw
    w_buf = ctx.weight_buffer(w.reshape(cout, depth), "f32", "convw")

    def emit(epilogue: Epilogue) -> None:
        def a(grp: Expr, i: Expr, k: Expr) -> Expr:
            return Load(w_buf, simplify_expr((grp * cout_g + i) * depth + k))

        def b(grp: Expr, k: Expr, j: Expr) -> Expr:
            n, p = simplify_expr(j // pixels), simplify_expr(j % pixels)
            ci, r = simplify_expr(k // (kh * kw)), simplify_expr(k % (kh * kw))
            return tap(n, simplify_expr(grp * cin_g + ci), simplify_expr(p // ow),
                       simplify_expr(p % ow), simplify_expr(r // kw), simplify_expr(r % kw))

        def store(grp: Expr, i: Expr, j: Expr, acc: Expr) -> Stmt:
            n, p = simplify_expr(j // pixels), simplify_expr(j % pixels)
            co = simplify_expr(grp * cout_g + i)
            return epilogue((n, co, simplify_expr(p // ow), simplify_expr(p % ow)),
                            with_bias(acc, co))

        emit_gpu_gemm(ctx, GpuGemm(Const(groups), Const(cout_g), Const(depth),
                                   simplify_expr(x.shape[0] * pixels), a, b, store), "conv")

    return HeavyPlan(out_shape, emit)


__all__ = ["plan_conv_gpu"]
