"""Reductions and windows: Softmax, LayerNormalization, Reduce*, pooling.

Each emits one kernel: a parallel loop over the kept dims and inner loops over the
reduced ones, with running values in one-element local buffers (promoted to registers
by LLVM). Inputs are read through their refs, so a producing elementwise chain fuses in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from irkit.ir import Node
from irkit.kir import (
    Binary,
    Buffer,
    Call,
    Const,
    Expr,
    For,
    Let,
    Load,
    Select,
    Stmt,
    Store,
    Var,
    block,
)
from irkit.lower.context import LoweringContext
from irkit.lower.tensor import (
    Index,
    LoweringError,
    TensorRef,
    buffer_ref,
    flat_index,
    product,
)

NEG_INF = float("-inf")


def _f(value: float, dtype: str = "f32") -> Const:
    return Const(float(np.float32(value)) if dtype == "f32" else float(value), dtype)


def _axes(node: Node, rank: int, ins: Sequence[TensorRef | None], default_all: bool
          ) -> list[int]:
    axes = node.attr("axes", None)
    if axes is None and len(ins) > 1 and ins[1] is not None:
        if ins[1].const is None:
            raise LoweringError(f"{node.op} needs constant axes")
        axes = [int(a) for a in np.asarray(ins[1].const).reshape(-1)]
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return []
        return list(range(rank)) if default_all else []
    return sorted(int(a) % rank for a in axes)


class _Reducer:
    """Loops over kept dims (outer, parallel) and reduced dims (inner, serial)."""

    def __init__(self, ctx: LoweringContext, shape: Sequence[Expr], axes: Sequence[int]) -> None:
        self.ctx = ctx
        self.shape = tuple(shape)
        self.axes = list(axes)
        self.kept = [d for d in range(len(shape)) if d not in self.axes]
        self.outer = [ctx.var("o") for _ in self.kept]
        self.locals: list[Buffer] = []

    def scalar(self, dtype: str = "f32") -> Buffer:
        buf = Buffer(self.ctx.fresh("s"), dtype, Const(1), "local")
        self.locals.append(buf)
        return buf

    def inner(self, body_fn: object) -> Stmt:
        """Loops over the reduced dims around ``body_fn(full_index)``."""
        vars_ = [self.ctx.var("r") for _ in self.axes]

        def full() -> Index:
            idx: list[Expr] = []
            for d in range(len(self.shape)):
                idx.append(vars_[self.axes.index(d)] if d in self.axes
                           else self.outer[self.kept.index(d)])
            return tuple(idx)

        stmt: Stmt = body_fn(full())  # type: ignore[operator]
        for v, d in reversed(list(zip(vars_, self.axes))):
            stmt = For(v, self.shape[d], stmt)
        return stmt

    def emit(self, hint: str, body: Stmt) -> None:
        stmt = body
        for k in reversed(range(len(self.kept))):
            stmt = For(self.outer[k], self.shape[self.kept[k]], stmt,
                       "parallel" if k == 0 else "serial")
        self.ctx.add_kernel(hint, stmt, self.locals)

    def count(self) -> Expr:
        return product([self.shape[d] for d in self.axes])


def lower_softmax(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                  ) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    axis = int(node.attr("axis", -1)) % x.rank
    red = _Reducer(ctx, x.shape, [axis])
    out = ctx.new_buffer("softmax", x.dtype, product(x.shape))
    m, s = red.scalar(), red.scalar()
    z = Const(0)
    body = block(
        Store(m, z, _f(NEG_INF)),
        red.inner(lambda idx: Store(m, z, Binary("max", Load(m, z), x.read(idx)))),
        Store(s, z, _f(0.0)),
        red.inner(lambda idx: block(
            Store(out, flat_index(idx, x.shape), Call("exp", (x.read(idx) - Load(m, z),))),
            Store(s, z, Load(s, z) + Load(out, flat_index(idx, x.shape))))),
        _inv_scale(out, s, red, x, node.op == "LogSoftmax"),
    )
    red.emit("softmax", body)
    return [buffer_ref(out, x.shape)]


def _inv_scale(out: Buffer, s: Buffer, red: _Reducer, x: TensorRef, log: bool) -> Stmt:
    z = Const(0)
    inv = Var(red.ctx.fresh("inv"), "f32")
    if log:
        # log softmax = (x - m) - log(sum)
        return red.inner(lambda idx: Store(out, flat_index(idx, x.shape), Call(
            "log", (Load(out, flat_index(idx, x.shape)) / Load(s, z),))))
    return block(Let(inv, _f(1.0) / Load(s, z)), red.inner(lambda idx: Store(
        out, flat_index(idx, x.shape), Load(out, flat_index(idx, x.shape)) * inv)))


def lower_layernorm(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                    ) -> list[TensorRef]:
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    assert x is not None and scale is not None
    axis = int(node.attr("axis", -1)) % x.rank
    axes = list(range(axis, x.rank))
    eps = float(node.attr("epsilon", 1e-5))
    red = _Reducer(ctx, x.shape, axes)
    out = ctx.new_buffer("layernorm", x.dtype, product(x.shape))
    mean, var = red.scalar(), red.scalar()
    z = Const(0)
    inv_n = Var(ctx.fresh("invn"), "f32")
    mu, rstd = Var(ctx.fresh("mu"), "f32"), Var(ctx.fresh("rstd"), "f32")
    count = product([x.shape[d] for d in axes])
    nred = len(axes)

    def param(ref: TensorRef, idx: Index) -> Expr:
        tail = idx[len(idx) - ref.rank :]
        return ref.read(tuple(Const(0) if (isinstance(d, Const) and d.value == 1) else i
                              for d, i in zip(ref.shape, tail)))

    def write(idx: Index) -> Stmt:
        y = (Load(out, flat_index(idx, x.shape)) - mu) * rstd * param(scale, idx)
        if bias is not None:
            y = y + param(bias, idx)
        return Store(out, flat_index(idx, x.shape), y)

    del nred
    body = block(
        Let(inv_n, _f(1.0) / Binary("max", _cast_f32(count), _f(1.0))),
        Store(mean, z, _f(0.0)),
        red.inner(lambda idx: block(Store(out, flat_index(idx, x.shape), x.read(idx)),
                                    Store(mean, z, Load(mean, z) + x.read(idx)))),
        Let(mu, Load(mean, z) * inv_n),
        Store(var, z, _f(0.0)),
        red.inner(lambda idx: Store(var, z, Load(var, z) + (
            Load(out, flat_index(idx, x.shape)) - mu) * (Load(out, flat_index(idx, x.shape)) - mu))),
        Let(rstd, _f(1.0) / Call("sqrt", (Load(var, z) * inv_n + _f(eps),))),
        red.inner(write),
    )
    red.emit("layernorm", body)
    return [buffer_ref(out, x.shape)]


def _cast_f32(e: Expr) -> Expr:
    from irkit.kir import Cast

    return Cast("f32", e)


REDUCE_INIT = {"ReduceSum": 0.0, "ReduceMean": 0.0, "ReduceMax": NEG_INF,
               "ReduceMin": float("inf"), "ReduceProd": 1.0, "ReduceSumSquare": 0.0,
               "ReduceL2": 0.0, "ReduceL1": 0.0}


def lower_reduce(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                 ) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    if x.dtype != "f32":
        raise LoweringError(f"{node.op} supports f32 only")
    axes = _axes(node, x.rank, ins, default_all=True)
    keep = bool(node.attr("keepdims", 1))
    out_shape = tuple(
        (Const(1) if d in axes else x.shape[d]) for d in range(x.rank)
        if keep or d not in axes
    )
    red = _Reducer(ctx, x.shape, axes)
    out = ctx.new_buffer(node.op.lower(), "f32", product(out_shape))
    acc = red.scalar()
    z = Const(0)
    op = node.op

    def combine(v: Expr) -> Expr:
        cur = Load(acc, z)
        if op in ("ReduceMax", "ReduceMin"):
            return Binary("max" if op == "ReduceMax" else "min", cur, v)
        if op == "ReduceProd":
            return cur * v
        if op in ("ReduceSumSquare", "ReduceL2"):
            return cur + v * v
        if op == "ReduceL1":
            return cur + Call("abs", (v,))
        return cur + v

    result: Expr = Load(acc, z)
    if op == "ReduceMean":
        result = result / Binary("max", _cast_f32(red.count()), _f(1.0))
    elif op == "ReduceL2":
        result = Call("sqrt", (result,))
    out_idx = tuple(red.outer) if not keep else tuple(
        Const(0) if d in axes else red.outer[red.kept.index(d)] for d in range(x.rank))
    body = block(
        Store(acc, z, _f(REDUCE_INIT[op])),
        red.inner(lambda idx: Store(acc, z, combine(x.read(idx)))),
        Store(out, flat_index(out_idx, out_shape), result),
    )
    red.emit(op.lower(), body)
    return [buffer_ref(out, out_shape)]


def lower_pool(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
               ) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    if x.dtype not in ("f32", "f64"):
        raise LoweringError(f"{node.op} on {x.dtype} is not supported (float only)")
    if node.op in ("GlobalAveragePool", "GlobalMaxPool"):
        fake = Node("ReduceMean" if node.op == "GlobalAveragePool" else "ReduceMax", [],
                    {"axes": list(range(2, x.rank)), "keepdims": 1})
        return lower_reduce(ctx, fake, [x])
    if x.rank != 4:
        raise LoweringError(f"{node.op} supports 2-D pooling only")
    from irkit.lower.heavy import conv_geometry

    kernel = list(node.attr("kernel_shape"))
    fake_w = np.zeros((1, 1, *kernel), np.float32)
    g = conv_geometry(node, x, fake_w)
    if node.attr("ceil_mode", 0):
        for d in range(2):
            span = g["in"][d] + g["p"][d] + g["p"][d + 2] - g["d"][d] * (kernel[d] - 1) - 1
            g["out"][d] = -(-span // g["s"][d]) + 1
            if (g["out"][d] - 1) * g["s"][d] >= g["in"][d] + g["p"][d]:
                g["out"][d] -= 1
    oh, ow = g["out"]
    ih, iw = g["in"]
    out_shape = (x.shape[0], x.shape[1], Const(oh), Const(ow))
    out = ctx.new_buffer(node.op.lower(), x.dtype, product(out_shape))
    is_max = node.op == "MaxPool"
    include_pad = bool(node.attr("count_include_pad", 0))
    n_, c_, y_, x_ = (ctx.var(s) for s in "ncyx")
    ky, kx = ctx.var("ky"), ctx.var("kx")
    acc = Buffer(ctx.fresh("acc"), x.dtype, Const(1), "local")
    cnt = Buffer(ctx.fresh("cnt"), x.dtype, Const(1), "local")
    z = Const(0)
    iy = y_ * g["s"][0] - g["p"][0] + ky * g["d"][0]
    ix = x_ * g["s"][1] - g["p"][1] + kx * g["d"][1]
    inside = Binary("and", Binary("and", Binary("ge", iy, z), Binary("lt", iy, Const(ih))),
                    Binary("and", Binary("ge", ix, z), Binary("lt", ix, Const(iw))))
    safe_y, safe_x = Select(inside, iy, z), Select(inside, ix, z)
    v = x.read((n_, c_, safe_y, safe_x))
    if is_max:
        update: Stmt = Store(acc, z, Select(inside, Binary("max", Load(acc, z), v), Load(acc, z)))
        init = _f(NEG_INF, x.dtype)
        result: Expr = Load(acc, z)
    else:
        update = block(
            Store(acc, z, Load(acc, z) + Select(inside, v, _f(0.0, x.dtype))),
            Store(cnt, z, Load(cnt, z) + Select(inside, _f(1.0, x.dtype), _f(0.0, x.dtype))),
        )
        init = _f(0.0, x.dtype)
        denom = _f(float(kernel[0] * kernel[1]), x.dtype) if include_pad else Load(cnt, z)
        result = Load(acc, z) / denom
    body = block(
        Store(acc, z, init), Store(cnt, z, _f(0.0, x.dtype)),
        For(ky, Const(kernel[0]), For(kx, Const(kernel[1]), update)),
        Store(out, flat_index((n_, c_, y_, x_), out_shape), result),
    )
    stmt = For(n_, out_shape[0], For(c_, out_shape[1], For(y_, Const(oh), For(
        x_, Const(ow), body))), "parallel")
    ctx.add_kernel(node.op.lower(), stmt, [acc, cnt])
    return [buffer_ref(out, out_shape)]
