"""Nodes whose output sizes come from graph-input values, built for their declared shapes.

ReduceSum's ``axes``, Reshape's ``shape``, Unsqueeze's ``axes``, Split's ``split`` or Slice's
bounds may be graph inputs, known only at call time. When the node's output shape is
declared static (the model's value types, or ONNX shape inference), the lowering reads
what the kernel needs from that shape — which axes shrank to 1 or vanished, where the dims
of a reshape go, how long each split piece is (a slice's offsets are read at run time) —
and registers a guard (``LoweringContext.shape_guard``): the
runtime recomputes the output shape from the input's values before each call and refuses
values that would give another shape (``irkit.runtime.guards``).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from irkit.ir import Node
from irkit.kir import Binary, Cast, Const, Expr, Select, simplify_expr
from irkit.lower.context import LoweringContext
from irkit.lower.symbolic import is_poly
from irkit.lower.tensor import LoweringError, TensorRef, is_static, static

# Ops whose output has their first input's shape: a declared shape after them is the
# shape before them (function bodies leave the inner values untyped).
SAME_SHAPE = frozenset([
    "Abs", "Ceil", "Cast", "CastLike", "Exp", "Floor", "Identity", "Log", "Neg",
    "Reciprocal", "Relu", "Sigmoid", "Sqrt", "Tanh",
])


def declared(node: Node, k: int = 0, why: str = "") -> tuple[int, ...]:
    """Output ``k``'s declared shape (or that of a same-shape op it feeds alone); it must
    be fully static."""
    value = node.outputs[k]
    shape = value.shape
    while (shape is None or not all(isinstance(d, int) for d in shape)) and \
            len(value.uses) == 1 and value.uses[0].node.op in SAME_SHAPE and \
            value.uses[0].node.inputs[0] is value:
        value = value.uses[0].node.outputs[0]
        shape = value.shape
    if shape is None or not all(isinstance(d, int) for d in shape):
        raise LoweringError(f"{why or node.op} is a run-time value and the output shape is "
                            f"not declared static ({shape})")
    return tuple(int(d) for d in shape)


def _static_shape(x: TensorRef, what: str) -> tuple[int, ...]:
    return tuple(static(d, what) for d in x.shape)


def reduce_axes(ctx: LoweringContext, node: Node, x: TensorRef, axes: TensorRef
                ) -> list[tuple[list[int], Expr | None]]:
    """The reduced axes of a reduction whose ``axes`` input is a run-time value, read from
    the declared output shape (guarded): one ``(axes, None)``, or, when that shape fits
    several choices (``keepdims=0`` over [3, 2, 2] giving [3, 2]), each choice with the
    run-time condition under which the ``axes`` values pick it."""
    shape = _static_shape(x, f"{node.op} input dim")
    out = declared(node, 0, f"{node.op} axes")
    keep = bool(node.attr("keepdims", 1))
    if keep:
        if len(out) != len(shape):
            raise LoweringError(f"{node.op}: declared output rank {len(out)} != input rank")
        found = [d for d, (n, o) in enumerate(zip(shape, out)) if o != n]
        if any(out[d] != 1 for d in found):
            raise LoweringError(f"{node.op}: declared output {list(out)} is not a reduction "
                                f"of {list(shape)}")
        choices: list[tuple[list[int], Expr | None]] = [(found, None)]
    else:
        matches = [removed for removed in combinations(range(len(shape)), len(shape) - len(out))
                   if tuple(n for d, n in enumerate(shape) if d not in removed) == out]
        if not matches:
            raise LoweringError(f"{node.op}: declared output {list(out)} is not a reduction "
                                f"of {list(shape)}")
        # Choices that differ only in size-1 dims give the same values: keep one of each.
        distinct = {tuple(d for d in m if shape[d] != 1): list(m) for m in matches}
        choices = [(axes_, None) for axes_ in distinct.values()]
        if len(choices) > 1:
            choices = [(axes_, _picks(axes, [d for d in axes_ if shape[d] != 1], len(shape)))
                       for axes_ in distinct.values()]
    ctx.shape_guard(node, "reduce", {"axes": axes}, x.shape, [[Const(d) for d in out]],
                    {"keepdims": int(keep),
                     "noop_with_empty_axes": int(node.attr("noop_with_empty_axes", 0))})
    return [(sorted(a), cond) for a, cond in choices]


def _picks(axes: TensorRef, wanted: list[int], rank: int) -> Expr:
    """Whether the run-time ``axes`` values (negative ones count from the end) name every
    dim in ``wanted``; the guard has already checked they give the declared shape."""
    count = static(axes.shape[0], "reduction axes count") if axes.rank else 1
    values = []
    for j in range(count):
        a = axes.read((Const(j),) if axes.rank else ())
        a = a if a.dtype == "i64" else Cast("i64", a)
        values.append(Select(Binary("lt", a, Const(0)), a + Const(rank), a))
    cond: Expr | None = None
    for d in wanted:
        named: Expr | None = None
        for v in values:
            hit = Binary("eq", v, Const(d))
            named = hit if named is None else Binary("or", named, hit)
        assert named is not None
        cond = named if cond is None else Binary("and", cond, named)
    assert cond is not None
    return cond


def guarded_shape(ctx: LoweringContext, node: Node, kind: str, x: TensorRef,
                  inputs: dict[str, TensorRef | None], attrs: dict[str, int] | None = None,
                  outputs: int = 1) -> list[tuple[Expr, ...]]:
    """The declared output shapes of a node whose sizes are run-time input values
    (Reshape, Expand, Unsqueeze, Squeeze, Split, ConstantOfShape), guarded."""
    shapes = [declared(node, k, f"{node.op} {'/'.join(inputs)}") for k in range(outputs)]
    exprs: list[tuple[Expr, ...]] = [tuple(Const(d) for d in s) for s in shapes]
    ctx.shape_guard(node, kind, inputs, x.shape, exprs, attrs)
    return exprs


def _folds(ref: TensorRef | None) -> bool:
    """Whether ``ref`` is absent, constant, or a short 1-D tensor whose elements fold to
    polynomials in the symbolic dims (exporter shape arithmetic)."""
    if ref is None or ref.const is not None:
        return True
    if ref.rank == 0:
        return is_poly(simplify_expr(ref.read(())))
    if ref.rank != 1 or not is_static(ref.shape[0]):
        return False
    return all(is_poly(simplify_expr(ref.read((Const(j),))))
               for j in range(static(ref.shape[0])))


def runtime_slice(ctx: LoweringContext, node: Node, x: TensorRef,
                  ins: Sequence[TensorRef | None]) -> TensorRef | None:
    """Slice whose starts, ends, axes or steps are graph inputs (None when all fold at
    compile time): the declared output shape, guarded, and per axis an offset and step
    the view reads at run time, with ONNX's clamping of the start (negative: + dim, then
    into [0, dim], or [0, dim - 1] for negative steps)."""
    if len(ins) < 3:
        return None
    starts, ends = ins[1], ins[2]
    axes_ref = ins[3] if len(ins) > 3 else None
    steps_ref = ins[4] if len(ins) > 4 else None
    if all(_folds(r) for r in (starts, ends, axes_ref, steps_ref)):
        return None
    assert starts is not None and ends is not None
    rank = x.rank
    dims = _static_shape(x, "Slice input dim (run-time bounds)")
    out = declared(node, 0, "Slice starts/ends/axes/steps")
    if len(out) != rank:
        raise LoweringError(f"Slice's declared output rank {len(out)} differs from {rank}")
    ctx.shape_guard(node, "slice", {"starts": starts, "ends": ends, "axes": axes_ref,
                                    "steps": steps_ref}, x.shape, [[Const(d) for d in out]])
    if starts.rank != 1:
        raise LoweringError("Slice starts must be a 1-D tensor")
    count = static(starts.shape[0], "Slice starts length")

    def element(ref: TensorRef, j: int) -> Expr:
        value = simplify_expr(ref.read((Const(j),)))
        return value if value.dtype == "i64" else Cast("i64", value)

    begin: list[Expr] = [Const(0)] * rank
    step: list[Expr] = [Const(1)] * rank
    for j in range(count):
        st = element(steps_ref, j) if steps_ref is not None else Const(1)
        raw = element(starts, j)
        if axes_ref is None:
            targets: list[tuple[int, Expr | None]] = [(j, None)]
        else:
            a = element(axes_ref, j)
            named = simplify_expr(Select(Binary("lt", a, Const(0)), a + rank, a))
            targets = [(d, None if isinstance(named, Const) else Binary("eq", named, Const(d)))
                       for d in range(rank)
                       if not isinstance(named, Const) or named.value == d]
        for d, hit in targets:
            fixed = Select(Binary("lt", raw, Const(0)), raw + dims[d], raw)
            top = Select(Binary("lt", st, Const(0)), Const(dims[d] - 1), Const(dims[d]))
            start = Binary("min", Binary("max", fixed, Const(0)), top)
            if hit is None:
                begin[d], step[d] = start, st
            else:
                begin[d], step[d] = Select(hit, start, begin[d]), Select(hit, st, step[d])
    begin = [simplify_expr(b) for b in begin]
    step = [simplify_expr(s) for s in step]
    shape = tuple(Const(d) for d in out)
    return TensorRef(shape, x.dtype, lambda idx: x.read(tuple(
        simplify_expr(begin[d] + idx[d] * step[d]) for d in range(rank))),
        cost=x.cost + 2 * rank)


def runtime_range(ctx: LoweringContext, node: Node, ins: Sequence[TensorRef | None]
                  ) -> TensorRef | None:
    """Range whose start, limit or delta are graph inputs (None when all fold at compile
    time): the declared length, guarded, and ``start + i * delta`` read at run time."""
    refs = [ins[k] if len(ins) > k else None for k in range(3)]
    if any(r is None for r in refs):
        raise LoweringError("Range needs start, limit and delta")
    start, limit, delta = (r for r in refs if r is not None)
    if all(_folds(r) for r in (start, limit, delta)):
        return None
    for role, ref in (("start", start), ("limit", limit), ("delta", delta)):
        if ref.const is not None and not float(np.asarray(ref.const).reshape(-1)[0]
                                               ).is_integer():
            raise LoweringError(f"Range {role} {ref.const} is a fractional constant while "
                                "other bounds are run-time values")
    (length,) = declared(node, 0, "Range start/limit/delta")
    shape = (Const(length),)
    ctx.shape_guard(node, "range", {"start": start, "limit": limit, "delta": delta}, (),
                    [shape])
    dtype = start.dtype

    def scalar(ref: TensorRef) -> Expr:
        value = ref.read(tuple(Const(0) for _ in ref.shape))
        return simplify_expr(value if value.dtype == dtype else Cast(dtype, value))

    first, step = scalar(start), scalar(delta)
    return TensorRef(shape, dtype, lambda idx: first + Cast(dtype, idx[0]) * step, cost=4)
