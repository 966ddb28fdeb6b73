"""GPU templates for reductions along the last axes: one thread block per row.

Softmax/LogSoftmax and LayerNormalization over the last axis, ReduceSum/Mean/Max/Min over
trailing axes and GlobalAverage/MaxPool (f32): the row's threads stride over it
(neighbouring threads, neighbouring elements), combine their partial values with warp
shuffles (``shfl_xor``, five butterfly steps) and, with more than one warp, through one
shared value per warp. Everything else these ops take (other axes, 16-bit and integer
types, the optional LayerNormalization outputs) keeps the CPU lowering, which the
GPU runs one thread per row.
"""

from __future__ import annotations

from collections.abc import Callable

from irkit.ir import Node
from irkit.kir import Binary, Buffer, Call, Const, Expr, If, Let, Load, Stmt, Store, Var, block
from irkit.lower import nn
from irkit.lower.context import LoweringContext
from irkit.lower.gpu.spmd import (
    block_reduce,
    scalar,
    scratch_for,
    spmd_kernel,
    strided,
    threads_for,
)
from irkit.lower.tensor import TensorRef, buffer_ref, fconst, product, unravel

NEG_INF, POS_INF = float("-inf"), float("inf")


class _Rows:
    """``x`` seen as rows of its trailing ``axes`` dims, one thread block per row."""

    def __init__(self, ctx: LoweringContext, x: TensorRef, first_axis: int) -> None:
        self.ctx, self.x = ctx, x
        self.lead, self.tail = x.shape[:first_axis], x.shape[first_axis:]
        self.rows, self.length = product(self.lead), product(self.tail)
        self.row, self.thread = ctx.var("row"), ctx.var("t")
        self.threads = threads_for(self.length)
        self.scratch = scratch_for(ctx, self.threads)
        self.locals: list[Buffer] = [b for b in (self.scratch,) if b is not None]

    def read(self, i: Expr) -> Expr:
        return self.x.read((*unravel(self.row, self.lead), *unravel(i, self.tail)))

    def flat(self, i: Expr) -> Expr:
        return self.row * self.length + i

    def each(self, body: Callable[[Expr], Stmt]) -> Stmt:
        return strided(self.ctx, self.thread, self.threads, self.length, body)

    def scalar(self, hint: str) -> Buffer:
        buf = scalar(self.ctx, hint)
        self.locals.append(buf)
        return buf

    def reduce(self, acc: Buffer, op: str) -> list[Stmt]:
        return block_reduce(self.ctx, acc, op, self.thread, self.threads, self.scratch)

    def value(self, hint: str) -> Var:
        return Var(self.ctx.fresh(hint), "f32")

    def emit(self, hint: str, body: Stmt) -> None:
        spmd_kernel(self.ctx, hint, [(self.row, self.rows)], self.thread, self.threads,
                    body, self.locals)


def gpu_softmax(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                ) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    axis = int(node.attr("axis", -1)) % max(x.rank, 1)
    if x.dtype != "f32" or x.rank == 0 or axis != x.rank - 1:
        return nn.lower_softmax(ctx, node, ins)
    rows = _Rows(ctx, x, axis)
    out = ctx.new_buffer("softmax", "f32", product(x.shape))
    m, s = rows.scalar("m"), rows.scalar("s")
    z = Const(0)
    top, inv = rows.value("max"), rows.value("inv")

    def exps(i: Expr) -> Stmt:
        e = rows.value("e")
        return block(Let(e, Call("exp", (rows.read(i) - top,))),
                     Store(out, rows.flat(i), e), Store(s, z, Load(s, z) + e))

    if node.op == "LogSoftmax":
        finish = rows.each(lambda i: Store(out, rows.flat(i), Call(
            "log", (Load(out, rows.flat(i)) / Load(s, z),))))
    else:
        finish = block(Let(inv, fconst(1.0) / Load(s, z)),
                       rows.each(lambda i: Store(out, rows.flat(i),
                                                 Load(out, rows.flat(i)) * inv)))
    body = block(
        Store(m, z, fconst(NEG_INF)),
        rows.each(lambda i: Store(m, z, Binary("max", Load(m, z), rows.read(i)))),
        *rows.reduce(m, "max"),
        Let(top, Load(m, z)),
        Store(s, z, fconst(0.0)),
        rows.each(exps),
        *rows.reduce(s, "add"),
        finish,
    )
    rows.emit(node.op.lower(), body)
    return [buffer_ref(out, x.shape)]


def gpu_layernorm(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                  ) -> list[TensorRef]:
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    assert x is not None and scale is not None
    axis = int(node.attr("axis", -1)) % max(x.rank, 1)
    extra_outputs = any(v is not None and v.name and v.is_used for v in node.outputs[1:])
    if (x.dtype != "f32" or axis != x.rank - 1 or extra_outputs
            or int(node.attr("stash_type", 1)) != 1):
        return nn.lower_layernorm(ctx, node, ins)
    rows = _Rows(ctx, x, axis)
    out = ctx.new_buffer("layernorm", "f32", product(x.shape))
    total, squares = rows.scalar("sum"), rows.scalar("sq")
    z = Const(0)
    eps = float(node.attr("epsilon", 1e-5))
    mu, rstd, inv_n = rows.value("mu"), rows.value("rstd"), rows.value("invn")

    def param(ref: TensorRef, i: Expr) -> Expr:
        return nn._param(ref, (*unravel(rows.row, rows.lead), *unravel(i, rows.tail)))

    def normalized(i: Expr) -> Stmt:
        y = (rows.read(i) - mu) * rstd * param(scale, i)
        if bias is not None:
            y = y + param(bias, i)
        return Store(out, rows.flat(i), y)

    body = block(
        Let(inv_n, fconst(1.0) / Binary("max", nn._as(rows.length, "f32"), fconst(1.0))),
        Store(total, z, fconst(0.0)),
        rows.each(lambda i: Store(total, z, Load(total, z) + rows.read(i))),
        *rows.reduce(total, "add"),
        Let(mu, Load(total, z) * inv_n),
        Store(squares, z, fconst(0.0)),
        rows.each(lambda i: Store(squares, z, Load(squares, z) + (rows.read(i) - mu) * (
            rows.read(i) - mu))),
        *rows.reduce(squares, "add"),
        Let(rstd, fconst(1.0) / Call("sqrt", (Load(squares, z) * inv_n + fconst(eps),))),
        rows.each(normalized),
    )
    rows.emit("layernorm", body)
    return [buffer_ref(out, x.shape)]


REDUCE_OPS = {"ReduceSum": "add", "ReduceMean": "add", "ReduceMax": "max", "ReduceMin": "min"}


def gpu_reduce(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
               ) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    op = REDUCE_OPS.get(node.op)
    has_runtime_axes = (node.attr("axes", None) is None and len(ins) > 1 and ins[1] is not None
                        and ins[1].const is None)
    if op is None or x.dtype != "f32" or x.rank == 0 or has_runtime_axes:
        return nn.lower_reduce(ctx, node, ins)
    axes = nn._axes(node, x.rank, ins, default_all=True, ctx=ctx)
    if not axes or axes != list(range(axes[0], x.rank)):
        return nn.lower_reduce(ctx, node, ins)  # not the trailing axes
    keep = bool(node.attr("keepdims", 1))
    out_shape = tuple((Const(1) if d in axes else x.shape[d]) for d in range(x.rank)
                      if keep or d not in axes)
    rows = _Rows(ctx, x, axes[0])
    out = ctx.new_buffer(node.op.lower(), "f32", product(out_shape))
    acc = rows.scalar("acc")
    z = Const(0)
    init = {"add": 0.0, "max": NEG_INF, "min": POS_INF}[op]
    combine = {"add": lambda a, b: a + b, "max": lambda a, b: Binary("max", a, b),
               "min": lambda a, b: Binary("min", a, b)}[op]
    result: Expr = Load(acc, z)
    if node.op == "ReduceMean":
        result = result / Binary("max", nn._as(rows.length, "f32"), fconst(1.0))
    body = block(
        Store(acc, z, fconst(init)),
        rows.each(lambda i: Store(acc, z, combine(Load(acc, z), rows.read(i)))),
        *rows.reduce(acc, op),
        If(Binary("eq", rows.thread, Const(0)), Store(out, rows.row, result)),
    )
    rows.emit(node.op.lower(), body)
    return [buffer_ref(out, out_shape)]


def gpu_global_pool(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                    ) -> list[TensorRef]:
    x = ins[0]
    assert x is not None
    if x.dtype != "f32" or x.rank < 3:
        return nn.lower_pool(ctx, node, ins)
    fake = Node("ReduceMean" if node.op == "GlobalAveragePool" else "ReduceMax", [],
                {"axes": list(range(2, x.rank)), "keepdims": 1})
    return gpu_reduce(ctx, fake, [x])


__all__ = ["gpu_global_pool", "gpu_layernorm", "gpu_reduce", "gpu_softmax"]
