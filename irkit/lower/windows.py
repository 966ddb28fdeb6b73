"""Sliding-window ops over N spatial dims: pooling (Max/Average/Lp, MaxPool's indices),
direct convolution and ConvTranspose.

The GEMM-based Conv in :mod:`irkit.lower.heavy` covers 2-D convolutions with constant
weights; :func:`plan_direct_conv` covers the rest (weights computed at run time, 1-D and
3-D) with a plain loop nest. Each kernel loops over the fused ``N*C`` dim (parallel),
the output positions, and the window taps, with the running value in a local scalar.
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
    Const,
    Expr,
    For,
    Load,
    Select,
    Stmt,
    Store,
    Var,
    block,
    simplify_expr,
)
from irkit.lower.context import LoweringContext
from irkit.lower.tensor import (
    Index,
    LoweringError,
    TensorRef,
    buffer_ref,
    fconst,
    flat_index,
    is_static,
    product,
    static,
)

INT_MIN = {"u8": 0, "i8": -(2**7), "i32": -(2**31), "i64": -(2**63)}
FLOATS = ("f32", "f64")


def all_of(conds: Sequence[Expr]) -> Expr:
    """The conjunction of ``conds`` (true when empty)."""
    result: Expr | None = None
    for c in conds:
        result = c if result is None else Binary("and", result, c)
    return result if result is not None else Const(True, "bool")


def in_range(i: Expr, lo: Expr | int, hi: Expr | int) -> Expr:
    """``lo <= i < hi``."""
    lo_e = lo if isinstance(lo, Expr) else Const(lo)
    hi_e = hi if isinstance(hi, Expr) else Const(hi)
    return Binary("and", Binary("ge", i, lo_e), Binary("lt", i, hi_e))


def nest(vars_: Sequence[Var], extents: Sequence[Expr | int], body: Stmt) -> Stmt:
    """Serial loops ``vars_[0]`` (outermost) … around ``body``."""
    for v, e in reversed(list(zip(vars_, extents))):
        body = For(v, e if isinstance(e, Expr) else Const(e), body)
    return body


def window_geometry(node: Node, x: TensorRef, kernel: Sequence[int],
                    ceil_mode: bool = False) -> dict[str, list[int]]:
    """Static spatial sizes, strides, dilations, begin/end pads (``p`` holds all begins,
    then all ends, like ONNX) and output sizes of a window op over ``x``'s dims 2…"""
    from irkit.lower.heavy import conv_geometry

    g = conv_geometry(node, x, np.zeros((1, 1, *kernel), np.float32), any_rank=True)
    spatial = len(kernel)
    if ceil_mode:
        for d in range(spatial):
            span = g["in"][d] + g["p"][d] + g["p"][d + spatial] - g["d"][d] * (kernel[d] - 1) - 1
            g["out"][d] = -(-span // g["s"][d]) + 1
            # The last window must start inside the input or its begin padding.
            if (g["out"][d] - 1) * g["s"][d] >= g["in"][d] + g["p"][d]:
                g["out"][d] -= 1
    if any(o <= 0 for o in g["out"]):
        raise LoweringError(f"{node.op} output would be empty: {g['out']}")
    return g


def _nc_loop(ctx: LoweringContext, n: Expr, c: Expr | int, body_fn: Callable[
        [Expr, Expr], Stmt]) -> Stmt:
    """A parallel loop over the fused batch and channel dims around ``body_fn(n, c)``."""
    nc = ctx.var("nc")
    c_e = c if isinstance(c, Expr) else Const(c)
    return For(nc, simplify_expr(n * c_e), body_fn(nc // c_e, nc % c_e), "parallel")


# -- pooling -------------------------------------------------------------------------
def lower_pool(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
               ) -> list[TensorRef]:
    """MaxPool (with its optional Indices output), AveragePool and LpPool over any
    number of spatial dims."""
    x = ins[0]
    assert x is not None
    op = node.op
    if x.rank < 3:
        raise LoweringError(f"{op} needs an input of rank >= 3, got rank {x.rank}")
    if x.dtype not in FLOATS and not (op == "MaxPool" and x.dtype in INT_MIN):
        raise LoweringError(f"{op} on {x.dtype} is not supported")
    kernel = [int(k) for k in node.attr("kernel_shape")]
    spatial = x.rank - 2
    if len(kernel) != spatial:
        raise LoweringError(f"{op} kernel_shape {kernel} does not match rank {x.rank}")
    g = window_geometry(node, x, kernel, bool(node.attr("ceil_mode", 0)))
    out_shape = (x.shape[0], x.shape[1], *(Const(o) for o in g["out"]))
    out = ctx.new_buffer(op.lower(), x.dtype, product(out_shape))
    with_indices = op == "MaxPool" and len(node.outputs) > 1 and node.outputs[1].is_used
    idx_buf = ctx.new_buffer("pool_idx", "i64", product(out_shape)) if with_indices else None
    include_pad = bool(node.attr("count_include_pad", 0))
    p_norm = float(node.attr("p", 2)) if op == "LpPool" else 0.0
    dt = x.dtype
    acc = Buffer(ctx.fresh("acc"), dt, Const(1), "local")
    cnt = Buffer(ctx.fresh("cnt"), dt, Const(1), "local")
    best = Buffer(ctx.fresh("best"), "i64", Const(1), "local")
    z = Const(0)
    outs = [ctx.var(f"o{d}") for d in range(spatial)]
    taps = [ctx.var(f"k{d}") for d in range(spatial)]
    pos = [outs[d] * g["s"][d] - g["p"][d] + taps[d] * g["d"][d] for d in range(spatial)]
    # Every tap of every window lies inside the input when there is no padding to reach:
    # then there are no bounds tests, and the loops stay plain enough to vectorize.
    reaches_pad = any(
        g["p"][d] > 0 or (g["out"][d] - 1) * g["s"][d] + (kernel[d] - 1) * g["d"][d]
        >= g["in"][d] for d in range(spatial))
    inside = all_of([in_range(pos[d], 0, g["in"][d]) for d in range(spatial)]) \
        if reaches_pad else Const(True, "bool")
    safe = [Select(inside, pos[d], z) for d in range(spatial)] if reaches_pad else pos

    def body(n: Expr, c: Expr) -> Stmt:
        v = x.read((n, c, *safe))
        zero = fconst(0.0, dt) if dt in FLOATS else Const(0, dt)
        if op == "MaxPool":
            init: Expr = fconst(float("-inf"), dt) if dt in FLOATS else Const(INT_MIN[dt], dt)
            better = Binary("and", inside, Binary("gt", v, Load(acc, z)))
            update: Stmt = Store(acc, z, Select(better, v, Load(acc, z)))
            if idx_buf is None and not reaches_pad:
                update = Store(acc, z, Binary("max", Load(acc, z), v))
            if idx_buf is not None:
                update = block(Store(best, z, Select(better, _source_index(
                    node, x, g["in"], n, c, safe), Load(best, z))), update)
            result: Expr = Load(acc, z)
        else:
            init = zero
            term = v if op == "AveragePool" else _abs_pow(v, p_norm)
            update = Store(acc, z, Load(acc, z) + Select(inside, term, zero))
            if op == "AveragePool":
                counted = inside if not include_pad else all_of(
                    [in_range(pos[d], -g["p"][d], g["in"][d] + g["p"][d + spatial])
                     for d in range(spatial)])
                update = block(update, Store(cnt, z, Load(cnt, z) + Select(
                    counted, fconst(1.0, dt), zero)))
                result = Load(acc, z) / Load(cnt, z)
            else:
                result = _root(Load(acc, z), p_norm)
        o_idx = (n, c, *outs)
        stores = [Store(out, flat_index(o_idx, out_shape), result)]
        if idx_buf is not None:
            stores.append(Store(idx_buf, flat_index(o_idx, out_shape), Load(best, z)))
        inner = block(Store(acc, z, init), Store(cnt, z, zero), Store(best, z, Const(0)),
                      nest(taps, kernel, update), *stores)
        return nest(outs, g["out"], inner)

    ctx.add_kernel(op.lower(), _nc_loop(ctx, x.shape[0], x.shape[1], body), [acc, cnt, best])
    results = [buffer_ref(out, out_shape)]
    if idx_buf is not None:
        results.append(buffer_ref(idx_buf, out_shape))
    return results


def _source_index(node: Node, x: TensorRef, in_sizes: Sequence[int], n: Expr, c: Expr,
                  pos: Sequence[Expr]) -> Expr:
    """MaxPool's Indices: the flat index into ``x`` of the chosen element, with the
    spatial dims in column-major order when ``storage_order`` is 1."""
    storage_order = int(node.attr("storage_order", 0))
    image = simplify_expr((n * x.shape[1] + c) * int(np.prod(in_sizes)))
    if storage_order == 0:
        spatial = flat_index(tuple(pos), [Const(s) for s in in_sizes])
    else:
        spatial = Const(0)
        stride = 1
        for p, size in zip(pos, in_sizes):
            spatial = spatial + p * stride
            stride *= size
    return simplify_expr(image + spatial)


def _abs_pow(v: Expr, p: float) -> Expr:
    if p == 1.0:
        return Call("abs", (v,))
    if p == 2.0:
        return v * v
    if p == 3.0:
        return Call("abs", (v * v * v,))
    if p == 4.0:
        return v * v * v * v
    return Call("pow", (Call("abs", (v,)), fconst(p, v.dtype)))


def _root(s: Expr, p: float) -> Expr:
    if p == 1.0:
        return s
    if p == 2.0:
        return Call("sqrt", (s,))
    return Call("pow", (s, fconst(1.0 / p, s.dtype)))


# -- convolution -----------------------------------------------------------------------
def plan_direct_conv(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                     ) -> tuple[tuple[Expr, ...], Callable[[Callable[[Index, Expr], Stmt]],
                                                               None]]:
    """Conv as a loop nest (any number of spatial dims, weights known at run time):
    the output shape and an ``emit(epilogue)`` like a :class:`~irkit.lower.heavy.HeavyPlan`'s."""
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    assert x is not None and w is not None
    if x.dtype != "f32" or w.dtype != "f32":
        raise LoweringError("Conv supports f32 only")
    if x.rank < 3 or w.rank != x.rank:
        raise LoweringError(f"Conv of a rank-{x.rank} input with rank-{w.rank} weights")
    spatial = x.rank - 2
    w_shape = [static(d, "Conv weight dim") for d in w.shape]
    kernel = w_shape[2:]
    g: dict[str, list[Any]] = (window_geometry(node, x, kernel)
                               if all(is_static(d) for d in x.shape[2:])
                               else _symbolic_geometry(node, x, kernel))
    groups = int(node.attr("group", 1))
    cout, cin_g = w_shape[0], w_shape[1]
    cin = static(x.shape[1], "Conv channels")
    if cin != cin_g * groups or cout % groups:
        raise LoweringError(f"Conv channels {cin} -> {cout} do not split into {groups} groups")
    cout_g = cout // groups
    out_shape = (x.shape[0], Const(cout), *(_dim(o) for o in g["out"]))
    x = ctx.materialize(x, "conv_x") if x.cost > 8 else x
    w = ctx.materialize(w, "conv_w") if w.cost > 8 else w

    def emit(epilogue: Callable[[Index, Expr], Stmt]) -> None:
        acc = Buffer(ctx.fresh("acc"), "f32", Const(1), "local")
        z = Const(0)
        outs = [ctx.var(f"o{d}") for d in range(spatial)]
        taps = [ctx.var(f"k{d}") for d in range(spatial)]
        ci = ctx.var("ci")
        pos = [outs[d] * g["s"][d] - g["p"][d] + taps[d] * g["d"][d] for d in range(spatial)]
        inside = all_of([in_range(pos[d], 0, g["in"][d]) for d in range(spatial)])
        safe = tuple(Select(inside, p, z) for p in pos)

        def body(n: Expr, co: Expr) -> Stmt:
            channel = (co // cout_g) * cin_g + ci
            term = Select(inside, x.read((n, channel, *safe)), fconst(0.0)) * w.read(
                (co, ci, *taps))
            value: Expr = Load(acc, z)
            if bias is not None:
                value = value + bias.read((co,))
            return nest(outs, g["out"], block(
                Store(acc, z, fconst(0.0)),
                For(ci, Const(cin_g), nest(taps, kernel, Store(acc, z, Load(acc, z) + term))),
                epilogue((n, co, *outs), value)))

        ctx.add_kernel("conv_direct", _nc_loop(ctx, x.shape[0], cout, body), [acc])

    return out_shape, emit


def _dim(size: int | Expr) -> Expr:
    return Const(size) if isinstance(size, int) else size


def _symbolic_geometry(node: Node, x: TensorRef, kernel: Sequence[int]) -> dict[str, list[Any]]:
    """``window_geometry`` for spatial dims that are symbolic (a dynamic sequence length
    or image size): explicit pads only; the output sizes are expressions in the dims."""
    spatial = len(kernel)
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise LoweringError(f"{node.op} auto_pad {node.attr('auto_pad')} needs static "
                            "spatial dims")
    strides = list(node.attr("strides", None) or [1] * spatial)
    dil = list(node.attr("dilations", None) or [1] * spatial)
    pads = list(node.attr("pads", None) or [0] * (2 * spatial))
    if node.attr("auto_pad", "NOTSET") == "VALID":
        pads = [0] * (2 * spatial)
    in_hw = [simplify_expr(d) for d in x.shape[2:]]
    out_hw: list[Expr] = []
    for d in range(spatial):
        span = simplify_expr(in_hw[d] + (pads[d] + pads[d + spatial] - dil[d] * (kernel[d] - 1)
                                         - 1))
        out_hw.append(simplify_expr(span + 1 if strides[d] == 1 else span // strides[d] + 1))
    return {"in": in_hw, "k": list(kernel), "s": strides, "d": dil, "p": pads, "out": out_hw}


def lower_conv_transpose(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                         ) -> list[TensorRef]:
    """ConvTranspose as a gather: each output element sums the input elements whose
    strided, dilated taps land on it."""
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    assert x is not None and w is not None
    if x.dtype != "f32" or w.dtype != "f32":
        raise LoweringError("ConvTranspose supports f32 only")
    if x.rank < 3 or w.rank != x.rank:
        raise LoweringError(f"ConvTranspose of a rank-{x.rank} input with rank-{w.rank} "
                            f"weights")
    spatial = x.rank - 2
    in_sizes = [static(d, "ConvTranspose spatial dim") for d in x.shape[2:]]
    w_shape = [static(d, "ConvTranspose weight dim") for d in w.shape]
    kernel = w_shape[2:]
    groups = int(node.attr("group", 1))
    cin = static(x.shape[1], "ConvTranspose channels")
    if w_shape[0] != cin or cin % groups:
        raise LoweringError(f"ConvTranspose weights {w_shape} do not match {cin} input "
                            f"channels in {groups} groups")
    cin_g, cout_g = cin // groups, w_shape[1]
    cout = cout_g * groups
    strides = [int(s) for s in node.attr("strides", None) or [1] * spatial]
    dil = [int(d) for d in node.attr("dilations", None) or [1] * spatial]
    begin, out_sizes = _conv_transpose_geometry(node, in_sizes, kernel, strides, dil)
    out_shape = (x.shape[0], Const(cout), *(Const(o) for o in out_sizes))
    out = ctx.new_buffer("convtranspose", "f32", product(out_shape))
    acc = Buffer(ctx.fresh("acc"), "f32", Const(1), "local")
    z = Const(0)
    outs = [ctx.var(f"o{d}") for d in range(spatial)]
    taps = [ctx.var(f"k{d}") for d in range(spatial)]
    ci = ctx.var("ci")
    # Output o receives input i through tap k when o + begin - k*dil == i*stride.
    shifted = [outs[d] + begin[d] - taps[d] * dil[d] for d in range(spatial)]
    src = [s // strides[d] for d, s in enumerate(shifted)]
    hits = all_of([Binary("and", Binary("ge", s, z), Binary("and", Binary(
        "eq", s % strides[d], z), Binary("lt", s, Const(in_sizes[d] * strides[d]))))
        for d, s in enumerate(shifted)])
    safe = tuple(Select(hits, i, z) for i in src)
    x = ctx.materialize(x, "convt_x") if x.cost > 8 else x
    w = ctx.materialize(w, "convt_w") if w.cost > 8 else w

    def body(n: Expr, co: Expr) -> Stmt:
        grp, col = co // cout_g, co % cout_g
        channel = grp * cin_g + ci
        term = Select(hits, x.read((n, channel, *safe)), fconst(0.0)) * w.read(
            (channel, col, *taps))
        value: Expr = Load(acc, z)
        if bias is not None:
            value = value + bias.read((co,))
        return nest(outs, out_sizes, block(
            Store(acc, z, fconst(0.0)),
            For(ci, Const(cin_g), nest(taps, kernel, Store(acc, z, Load(acc, z) + term))),
            Store(out, flat_index((n, co, *outs), out_shape), value)))

    ctx.add_kernel("convtranspose", _nc_loop(ctx, x.shape[0], cout, body), [acc])
    return [buffer_ref(out, out_shape)]


def _conv_transpose_geometry(node: Node, in_sizes: Sequence[int], kernel: Sequence[int],
                             strides: Sequence[int], dil: Sequence[int]
                             ) -> tuple[list[int], list[int]]:
    """Begin pads and output sizes of a ConvTranspose, as the ONNX spec defines them."""
    spatial = len(in_sizes)
    out_pad = [int(p) for p in node.attr("output_padding", None) or [0] * spatial]
    output_shape = node.attr("output_shape", None)
    pads = node.attr("pads", None)
    auto = node.attr("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    full = [strides[d] * (in_sizes[d] - 1) + out_pad[d] + (kernel[d] - 1) * dil[d] + 1
            for d in range(spatial)]
    if output_shape is not None:
        out_sizes = [int(s) for s in output_shape][-spatial:]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if output_shape is None:
            out_sizes = [in_sizes[d] * strides[d] for d in range(spatial)]
        total = [full[d] - out_sizes[d] for d in range(spatial)]
        begin = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
        return begin, out_sizes
    if auto == "VALID" or pads is None:
        pads = [0] * (2 * spatial)
    pads = [int(p) for p in pads]
    if output_shape is None:
        out_sizes = [full[d] - pads[d] - pads[d + spatial] for d in range(spatial)]
    return pads[:spatial], out_sizes


LOWERINGS = {"MaxPool": lower_pool, "AveragePool": lower_pool, "LpPool": lower_pool,
             "ConvTranspose": lower_conv_transpose}
