"""Reductions and windows: Softmax, Reduce*, pooling, the normalizations (Layer-,
Instance-, Lp-, training-mode Batch-, LRN) and Hardmax.

Each emits one kernel: a parallel loop over the kept dims and inner loops over the
reduced ones, with running values in one-element local buffers (promoted to registers
by LLVM). Inputs are read through their refs, so a producing elementwise chain fuses in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from irkit.ir import Node, Value
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
    Unary,
    Var,
    block,
)
from irkit.kir.nodes import FLOATS, UNSIGNED
from irkit.lower.context import LoweringContext
from irkit.lower.tensor import (
    KIR_DTYPES,
    NUMPY_DTYPES,
    Index,
    LoweringError,
    TensorRef,
    buffer_ref,
    fconst,
    flat_index,
    product,
)

NEG_INF = float("-inf")


def _axes(node: Node, rank: int, ins: Sequence[TensorRef | None], default_all: bool,
          ctx: LoweringContext | None = None) -> list[int]:
    axes = node.attr("axes", None)
    if axes is None and len(ins) > 1 and ins[1] is not None:
        if ins[1].const is None:
            if ctx is None or ins[0] is None:
                raise LoweringError(f"{node.op} needs constant axes")
            from irkit.lower.runtime_sizes import reduce_axes

            choices = reduce_axes(ctx, node, ins[0], ins[1])  # from the declared shape
            if len(choices) > 1:
                raise LoweringError(f"{node.op}: the declared output shape fits several "
                                    "run-time axes")
            return choices[0][0]
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

    def nest(self, body: Stmt) -> Stmt:
        """``body`` inside the loops over the kept dims (the outermost parallel; all of
        them independent: each kept index reduces on its own)."""
        stmt = body
        for k in reversed(range(len(self.kept))):
            stmt = For(self.outer[k], self.shape[self.kept[k]], stmt,
                       "parallel" if k == 0 else "serial", independent=True)
        return stmt

    def emit(self, hint: str, body: Stmt) -> None:
        self.ctx.add_kernel(hint, self.nest(body), self.locals)

    def count(self) -> Expr:
        return product([self.shape[d] for d in self.axes])


def lower_softmax(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                  ) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    _float_input(node, x)
    axis = int(node.attr("axis", -1)) % x.rank
    red = _Reducer(ctx, x.shape, [axis])
    out = ctx.new_buffer("softmax", x.dtype, product(x.shape))
    acc = "f64" if x.dtype == "f64" else "f32"  # 16-bit floats accumulate in f32
    m, s = red.scalar(acc), red.scalar(acc)
    z = Const(0)
    body = block(
        Store(m, z, fconst(NEG_INF, acc)),
        red.inner(lambda idx: Store(m, z, Binary("max", Load(m, z), _as(x.read(idx), acc)))),
        Store(s, z, fconst(0.0, acc)),
        red.inner(lambda idx: block(
            Store(out, flat_index(idx, x.shape),
                  _as(Call("exp", (_as(x.read(idx), acc) - Load(m, z),)), x.dtype)),
            Store(s, z, Load(s, z) + _as(Load(out, flat_index(idx, x.shape)), acc)))),
        _inv_scale(out, s, red, x, node.op == "LogSoftmax"),
    )
    red.emit("softmax", body)
    return [buffer_ref(out, x.shape)]


def _inv_scale(out: Buffer, s: Buffer, red: _Reducer, x: TensorRef, log: bool) -> Stmt:
    z = Const(0)
    acc = s.dtype
    inv = Var(red.ctx.fresh("inv"), acc)

    def at(idx: Index) -> Expr:
        return flat_index(idx, x.shape)

    if log:
        # log softmax = (x - m) - log(sum)
        return red.inner(lambda idx: Store(out, at(idx), _as(Call(
            "log", (_as(Load(out, at(idx)), acc) / Load(s, z),)), x.dtype)))
    if x.dtype != acc:  # 16-bit: divide by the rounded sum, like numpy's 16-bit softmax
        return red.inner(lambda idx: Store(out, at(idx), Load(out, at(idx)) / Cast(
            x.dtype, Load(s, z))))
    return block(Let(inv, fconst(1.0, acc) / Load(s, z)), red.inner(lambda idx: Store(
        out, at(idx), Load(out, at(idx)) * inv)))


def _param(ref: TensorRef, idx: Index) -> Expr:
    """``ref`` read at ``idx`` with numpy broadcasting (ref aligned to the trailing dims)."""
    tail = idx[len(idx) - ref.rank :]
    return ref.read(tuple(Const(0) if (isinstance(d, Const) and d.value == 1) else i
                          for d, i in zip(ref.shape, tail)))


def _as(e: Expr, dtype: str) -> Expr:
    return e if e.dtype == dtype else Cast(dtype, e)


def _stat_dtype(value: Value, default: str) -> str:
    return KIR_DTYPES.get(value.dtype, default) if value.dtype is not None else default


StatsFn = Callable[[_Reducer, Expr, Expr, Expr], Stmt | None]


def _standardize(ctx: LoweringContext, x: TensorRef, axes: Sequence[int], eps: float,
                 acc: str, hint: str, affine: Callable[[Index, Expr], Expr],
                 stats: StatsFn | None = None) -> TensorRef:
    """``affine(idx, (x - mean) * rstd)`` with the mean and (population) variance of x
    over ``axes`` computed in ``acc``; ``stats(reducer, mean, var, rstd)`` may add
    statements run once per kept index (storing the statistics)."""
    red = _Reducer(ctx, x.shape, axes)
    out = ctx.new_buffer(hint, x.dtype, product(x.shape))
    total, squares = red.scalar(acc), red.scalar(acc)
    z = Const(0)
    inv_n, mu, var, rstd = (Var(ctx.fresh(h), acc) for h in ("invn", "mu", "var", "rstd"))

    def at(idx: Index) -> Expr:
        return flat_index(idx, x.shape)

    def xv(idx: Index) -> Expr:
        return _as(Load(out, at(idx)), acc)

    body = block(
        Let(inv_n, fconst(1.0, acc) / Binary("max", Cast(acc, red.count()), fconst(1.0, acc))),
        Store(total, z, fconst(0.0, acc)),
        red.inner(lambda idx: block(Store(out, at(idx), x.read(idx)),
                                    Store(total, z, Load(total, z) + xv(idx)))),
        Let(mu, Load(total, z) * inv_n),
        Store(squares, z, fconst(0.0, acc)),
        red.inner(lambda idx: Store(squares, z, Load(squares, z) + (xv(idx) - mu) * (
            xv(idx) - mu))),
        Let(var, Load(squares, z) * inv_n),
        Let(rstd, fconst(1.0, acc) / Call("sqrt", (var + fconst(eps, acc),))),
        stats(red, mu, var, rstd) if stats is not None else None,
        red.inner(lambda idx: Store(out, at(idx), _as(affine(idx, (xv(idx) - mu) * rstd),
                                                      x.dtype))),
    )
    red.emit(hint, body)
    return buffer_ref(out, x.shape)


def _float_input(node: Node, x: TensorRef) -> None:
    if x.dtype not in FLOATS:
        raise LoweringError(f"{node.op} on {x.dtype} is not supported (float only)")


def lower_layernorm(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                    ) -> list[TensorRef]:
    """Y, and the optional Mean and InvStdDev outputs (shape x.shape[:axis] + ones). The
    statistics are computed in f32 (``stash_type`` 1, also for 16-bit inputs) or f64 (f64
    inputs or ``stash_type`` 11)."""
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    assert x is not None and scale is not None
    _float_input(node, x)
    axis = int(node.attr("axis", -1)) % x.rank
    acc = "f64" if x.dtype == "f64" or int(node.attr("stash_type", 1)) == 11 else "f32"
    stat_shape = (*x.shape[:axis], *(Const(1) for _ in range(axis, x.rank)))
    stat_bufs = [ctx.new_buffer(hint, _stat_dtype(value, acc), product(stat_shape))
                 for hint, value in zip(("mean", "invstddev"), node.outputs[1:3])]

    def affine(idx: Index, normed: Expr) -> Expr:
        y = normed * _as(_param(scale, idx), acc)
        return y + _as(_param(bias, idx), acc) if bias is not None else y

    def stats(red: _Reducer, mu: Expr, var: Expr, rstd: Expr) -> Stmt | None:
        at = flat_index(tuple(red.outer), x.shape[:axis])
        return block(*(Store(buf, at, _as(v, buf.dtype)) for buf, v in zip(stat_bufs,
                                                                           (mu, rstd))))

    y = _standardize(ctx, x, range(axis, x.rank), float(node.attr("epsilon", 1e-5)), acc,
                     "layernorm", affine, stats)
    return [y, *(buffer_ref(buf, stat_shape) for buf in stat_bufs)]


def _channel(ref: TensorRef, idx: Index, dtype: str) -> Expr:
    return _as(ref.read((idx[1],)), dtype)


def lower_instancenorm(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                       ) -> list[TensorRef]:
    x, scale, bias = ins[0], ins[1], ins[2]
    assert x is not None and scale is not None and bias is not None
    _float_input(node, x)
    acc = "f64" if x.dtype == "f64" else "f32"
    return [_standardize(ctx, x, range(2, x.rank), float(node.attr("epsilon", 1e-5)), acc,
                         "instancenorm", lambda idx, v: v * _channel(scale, idx, acc) +
                         _channel(bias, idx, acc))]


def lower_batchnorm_training(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                             ) -> list[TensorRef]:
    """BatchNormalization with ``training_mode=1``: normalized with the batch statistics
    (population variance); also the running mean and variance
    ``input * momentum + batch * (1 - momentum)``."""
    x, scale, bias, mean, var = ins[:5]
    assert x is not None and scale is not None and bias is not None
    assert mean is not None and var is not None
    _float_input(node, x)
    acc = "f64" if x.dtype == "f64" else "f32"
    momentum = float(node.attr("momentum", 0.9))
    channels = (x.shape[1],)
    running = [ctx.new_buffer(hint, _stat_dtype(value, x.dtype), x.shape[1])
               for hint, value in zip(("running_mean", "running_var"), node.outputs[1:3])]

    def stats(red: _Reducer, mu: Expr, batch_var: Expr, rstd: Expr) -> Stmt | None:
        c = red.outer[0]
        return block(*(Store(buf, c, _as(
            _as(old.read((c,)), acc) * fconst(momentum, acc) + new * fconst(1.0 - momentum, acc),
            buf.dtype)) for buf, old, new in zip(running, (mean, var), (mu, batch_var))))

    y = _standardize(ctx, x, [0, *range(2, x.rank)], float(node.attr("epsilon", 1e-5)), acc,
                     "batchnorm", lambda idx, v: v * _channel(scale, idx, acc) +
                     _channel(bias, idx, acc), stats)
    return [y, *(buffer_ref(buf, channels) for buf in running)]


def lower_hardmax(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                  ) -> list[TensorRef]:
    """1 at the first maximum along ``axis``, 0 elsewhere (opset 13 semantics: graphs
    are imported at opset 13 or later)."""
    x = ins[0]
    assert x is not None
    _float_input(node, x)
    red = _Reducer(ctx, x.shape, [int(node.attr("axis", -1)) % x.rank])
    out = ctx.new_buffer("hardmax", x.dtype, product(x.shape))
    best, done = red.scalar(x.dtype), red.scalar("bool")
    z = Const(0)

    def mark(idx: Index) -> Stmt:
        hit = Binary("and", Binary("eq", x.read(idx), Load(best, z)), Unary("not", Load(done, z)))
        return block(Store(out, flat_index(idx, x.shape),
                           Select(hit, fconst(1.0, x.dtype), fconst(0.0, x.dtype))),
                     Store(done, z, Binary("or", Load(done, z), hit)))

    body = block(
        Store(best, z, fconst(NEG_INF, x.dtype)),
        red.inner(lambda idx: Store(best, z, Binary("max", Load(best, z), x.read(idx)))),
        Store(done, z, Const(False, "bool")),
        red.inner(mark),
    )
    red.emit("hardmax", body)
    return [buffer_ref(out, x.shape)]


def lower_lpnorm(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                 ) -> list[TensorRef]:
    """x / ||x||_p along ``axis`` (p = 1 or 2); 0 where the norm is 0."""
    x = ins[0]
    assert x is not None
    _float_input(node, x)
    p = int(node.attr("p", 2))
    if p not in (1, 2):
        raise LoweringError(f"LpNormalization with p={p} is not supported (1 or 2)")
    acc = "f64" if x.dtype == "f64" else "f32"
    red = _Reducer(ctx, x.shape, [int(node.attr("axis", -1)) % x.rank])
    out = ctx.new_buffer("lpnorm", x.dtype, product(x.shape))
    total = red.scalar(acc)
    norm = Var(ctx.fresh("norm"), acc)
    z = Const(0)

    def term(idx: Index) -> Expr:
        v = _as(x.read(idx), acc)
        return v * v if p == 2 else Call("abs", (v,))

    def write(idx: Index) -> Stmt:
        zero = fconst(0.0, acc)
        y = Select(Binary("eq", norm, zero), zero, _as(x.read(idx), acc) / norm)
        return Store(out, flat_index(idx, x.shape), _as(y, x.dtype))

    body = block(
        Store(total, z, fconst(0.0, acc)),
        red.inner(lambda idx: Store(total, z, Load(total, z) + term(idx))),
        Let(norm, Call("sqrt", (Load(total, z),)) if p == 2 else Load(total, z)),
        red.inner(write),
    )
    red.emit("lpnorm", body)
    return [buffer_ref(out, x.shape)]


def lower_lrn(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
              ) -> list[TensorRef]:
    """Local response normalization across channels:
    ``x / (bias + alpha / size * sum of x^2 over the channel window) ** beta``."""
    x = ins[0]
    assert x is not None
    _float_input(node, x)
    if x.rank < 3:
        raise LoweringError("LRN needs an input of rank 3 or more")
    size = int(node.attr("size"))
    alpha, beta = float(node.attr("alpha", 1e-4)), float(node.attr("beta", 0.75))
    bias = float(node.attr("bias", 1.0))
    acc = "f64" if x.dtype == "f64" else "f32"
    out = ctx.new_buffer("lrn", x.dtype, product(x.shape))
    total = Buffer(ctx.fresh("sq"), acc, Const(1), "local")
    j = ctx.var("j")
    z = Const(0)

    def body(idx: Index) -> Stmt:
        c = idx[1] - (size - 1) // 2 + j
        inside = Binary("and", Binary("ge", c, z), Binary("lt", c, x.shape[1]))
        v = _as(x.read((idx[0], Select(inside, c, z), *idx[2:])), acc)
        base = fconst(bias, acc) + fconst(alpha / size, acc) * Load(total, z)
        y = _as(x.read(idx), acc) / Call("pow", (base, fconst(beta, acc)))
        return block(
            Store(total, z, fconst(0.0, acc)),
            For(j, Const(size), Store(total, z, Load(total, z) + Select(
                inside, v * v, fconst(0.0, acc)))),
            Store(out, flat_index(idx, x.shape), _as(y, x.dtype)),
        )

    ctx.add_kernel("lrn", ctx.loop_nest(x.shape, body), [total])
    return [buffer_ref(out, x.shape)]


# Ops lowered here that the driver's table does not list one by one.
LOWERINGS = {"InstanceNormalization": lower_instancenorm, "Hardmax": lower_hardmax,
             "LpNormalization": lower_lpnorm, "LRN": lower_lrn}


REDUCE_INIT = {"ReduceSum": 0.0, "ReduceMean": 0.0, "ReduceMax": NEG_INF,
               "ReduceMin": float("inf"), "ReduceProd": 1.0, "ReduceSumSquare": 0.0,
               "ReduceL2": 0.0, "ReduceL1": 0.0}


def _reduce_acc(op: str, dtype: str) -> str:
    if dtype in FLOATS:
        return "f64" if dtype == "f64" else "f32"
    if op in ("ReduceMax", "ReduceMin"):
        return dtype
    return "u64" if dtype in UNSIGNED else "i64"


def _init(value: float, dtype: str) -> Const:
    """``value`` (0, 1 or ±inf) as the first running value in ``dtype``: the type's
    lowest or highest value for infinities of integer types, False/True for bool."""
    if dtype in FLOATS:
        return fconst(value, dtype)
    if dtype == "bool":
        return Const(value > 0, "bool")
    if np.isinf(value):
        info = np.iinfo(NUMPY_DTYPES[dtype])
        return Const(int(info.min if value < 0 else info.max), dtype)
    return Const(int(value), dtype)


def lower_reduce(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                 ) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    op = node.op
    integer = x.dtype not in FLOATS
    allowed = {"bool": ("ReduceMax", "ReduceMin")}.get(x.dtype, (
        "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL1"))
    if integer and op not in allowed:
        raise LoweringError(f"{op} on {x.dtype} is not supported")
    choices: list[tuple[list[int], Expr | None]]
    if (node.attr("axes", None) is None and len(ins) > 1 and ins[1] is not None
            and ins[1].const is None):
        from irkit.lower.runtime_sizes import reduce_axes

        # Run-time axes: from the declared shape; with keepdims=0 it may fit several
        # choices, each a kernel that runs only when the axes values pick it.
        choices = reduce_axes(ctx, node, x, ins[1])
    else:
        choices = [(_axes(node, x.rank, ins, default_all=True, ctx=ctx), None)]
    keep = bool(node.attr("keepdims", 1))
    axes0 = choices[0][0]
    out_shape = tuple(
        (Const(1) if d in axes0 else x.shape[d]) for d in range(x.rank)
        if keep or d not in axes0
    )
    out = ctx.new_buffer(node.op.lower(), x.dtype, product(out_shape))
    for axes, picked in choices:
        _emit_reduce(ctx, node, x, axes, keep, out, out_shape, picked)
    return [buffer_ref(out, out_shape)]


def _emit_reduce(ctx: LoweringContext, node: Node, x: TensorRef, axes: list[int],
                 keep: bool, out: Buffer, out_shape: tuple[Expr, ...],
                 picked: Expr | None) -> None:
    """The kernel reducing ``x`` over ``axes`` into ``out`` (only when ``picked`` holds)."""
    op = node.op
    integer = x.dtype not in FLOATS
    red = _Reducer(ctx, x.shape, axes)
    # Floats accumulate in f32 (f64 for f64), integer sums and products in 64 bits (then
    # wrap to the input type like numpy's); max and min stay in the input type.
    acc = red.scalar(_reduce_acc(op, x.dtype))
    z = Const(0)

    def combine(v: Expr) -> Expr:
        cur = Load(acc, z)
        v = _as(v, acc.dtype)
        if x.dtype == "bool":
            return Binary("or" if op == "ReduceMax" else "and", cur, v)
        if op in ("ReduceMax", "ReduceMin"):
            return Binary("max" if op == "ReduceMax" else "min", cur, v)
        if op == "ReduceProd":
            return cur * v
        if op in ("ReduceSumSquare", "ReduceL2"):
            return cur + v * v
        if op == "ReduceL1":
            return cur + (Call("abs", (v,)) if not integer else Select(
                Binary("lt", v, _init(0, acc.dtype)), -v, v))
        return cur + v

    result: Expr = Load(acc, z)
    if op == "ReduceMean":
        result = result / Binary("max", Cast(acc.dtype, red.count()), fconst(1.0, acc.dtype))
    elif op == "ReduceL2":
        result = Call("sqrt", (result,))
    out_idx = tuple(red.outer) if not keep else tuple(
        Const(0) if d in axes else red.outer[red.kept.index(d)] for d in range(x.rank))
    body = block(
        Store(acc, z, _init(REDUCE_INIT[op], acc.dtype)),
        red.inner(lambda idx: Store(acc, z, combine(x.read(idx)))),
        Store(out, flat_index(out_idx, out_shape), _as(result, x.dtype)),
    )
    if picked is None:
        red.emit(op.lower(), body)
    else:
        stmt = red.nest(body)
        ctx.add_kernel(op.lower(), If(picked, stmt, None), red.locals)


def lower_pool(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
               ) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    if node.op in ("GlobalAveragePool", "GlobalMaxPool"):
        if x.dtype not in FLOATS:
            raise LoweringError(f"{node.op} on {x.dtype} is not supported (float only)")
        fake = Node("ReduceMean" if node.op == "GlobalAveragePool" else "ReduceMax", [],
                    {"axes": list(range(2, x.rank)), "keepdims": 1})
        return lower_reduce(ctx, fake, [x])
    from irkit.lower.windows import lower_pool as lower_window_pool

    return lower_window_pool(ctx, node, ins)  # any number of spatial dims
