"""Ops whose output size depends on input values: NonZero, Compress (run-time
condition), Unique and NonMaxSuppression.

A graph with such nodes is compiled in segments (:func:`split_dynamic`): each
data-dependent node is a kernel program of its own whose outputs are sized by an upper
bound (a polynomial in the input dims: ``numel(x)`` for NonZero, ``B*C*S`` for
NonMaxSuppression) and which writes one more output, the ``count`` of valid rows along
the data-dependent axis. The runtime trims each output to that count
(:mod:`irkit.runtime.dynamic`); the segments after it are ordinary kernel programs
whose inputs carry a fresh symbolic dim for that size, bound at run time from the
trimmed tensor, so what follows works for every count without recompiling.

The kernels are plain kernel IR (serial loops, ``If``/``Select``): selections scan in
order; Unique and NonMaxSuppression order elements with a stable merge sort
(:mod:`irkit.lower.sorting`, ``O(n log n)``, ties keep input order), and NMS compares
each candidate only with the boxes kept so far and stops at
``max_output_boxes_per_class``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from irkit.ir import Graph, Node, TensorType, Value
from irkit.ir.dtypes import DType
from irkit.kir import (
    Binary,
    Buffer,
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
    simplify_expr,
)
from irkit.kir.nodes import FLOATS
from irkit.lower.context import LoweringContext, Tiles
from irkit.lower.driver import GraphLowering, LoweredModel
from irkit.lower.sorting import Heap, is_nan, less, merge_sort
from irkit.lower.tensor import (
    Index,
    LoweringError,
    TensorRef,
    buffer_ref,
    flat_index,
    product,
    unravel,
)
from irkit.target import Target, get_target

DYNAMIC_OPS = ("NonZero", "Compress", "Unique", "NonMaxSuppression")
COUNT_SUFFIX = "__count"


def is_dynamic(node: Node) -> bool:
    """Whether ``node``'s output size depends on input values (Compress only when its
    condition is computed at run time)."""
    if node.domain not in ("", "ai.onnx") or node.op not in DYNAMIC_OPS:
        return False
    if node.op == "Compress":
        cond = node.inputs[1] if len(node.inputs) > 1 else None
        return cond is not None and cond.const is None
    return True


def dynamic_axes(node: Node) -> dict[int, int]:
    """Output index -> its data-dependent axis (the one trimmed to the count)."""
    if node.op == "NonZero":
        return {0: 1}
    if node.op == "NonMaxSuppression":
        return {0: 0}
    axis = node.attr("axis", None)
    if node.op == "Compress":
        rank = len(node.inputs[0].shape or ()) if node.inputs[0] is not None else 0
        return {0: 0 if axis is None else int(axis) % max(rank, 1)}
    rank = len(node.inputs[0].shape or ()) if node.inputs[0] is not None else 0
    y_axis = 0 if axis is None else int(axis) % max(rank, 1)
    return {0: y_axis, 1: 0, 3: 0}  # Unique: Y, indices, counts (inverse keeps its size)


# -- splitting a graph ----------------------------------------------------------------
@dataclass
class DynamicPart:
    """A run of nodes: ``dynamic`` (one data-dependent node, with its count output
    ``count`` and the trim ``{output name: axis}``) or ordinary nodes."""

    dynamic: bool
    graph: Graph
    inputs: list[str]
    outputs: list[str]
    count: str = ""
    trim: dict[str, int] | None = None


def name_dynamic_dims(graph: Graph) -> None:
    """Give each data-dependent output dim a symbol name of its own (the signature shows
    it, and the segments after the node bind it from the trimmed tensor's shape)."""
    taken = {d for v in graph.values() if isinstance(v.type, TensorType) and v.type.shape
             for d in v.type.shape if isinstance(d, str)}
    counter = 0
    for node in graph.nodes:
        if not is_dynamic(node):
            continue
        name = ""
        for index, axis in dynamic_axes(node).items():
            if index >= len(node.outputs) or node.outputs[index].absent:
                continue
            value = node.outputs[index]
            vtype = value.type
            if not isinstance(vtype, TensorType) or vtype.shape is None:
                continue
            shape = list(vtype.shape)
            if axis >= len(shape):
                continue
            if not name:
                current = shape[axis]
                if isinstance(current, str) and current.isidentifier() and not any(
                        current in (v.type.shape or ()) for v in graph.inputs
                        if isinstance(v.type, TensorType)):
                    name = current
                else:
                    while True:
                        name = f"{node.op.lower()}_n{counter}"
                        counter += 1
                        if name not in taken:
                            break
                    taken.add(name)
            shape[axis] = name
            value.type = TensorType(vtype.dtype, tuple(shape))


def prepare_dynamic(graph: Graph, backend: str, supported: bool,
                    error: Callable[[str], Exception]) -> Graph:
    """``graph`` itself when it has no data-dependent node; else a copy whose
    data-dependent dims are named (:func:`name_dynamic_dims`), or ``error`` when the
    backend does not run such graphs."""
    nodes = [n for n in graph.nodes if is_dynamic(n)]
    if not supported:
        # Compress keeps its older form there: a declared static output shape, checked
        # against the condition before each call (irkit.lower.indexing.lower_compress).
        nodes = [n for n in nodes if n.op != "Compress" or not _declared_static(n)]
    if not nodes:
        return graph
    if not supported:
        ops = ", ".join(sorted({n.op for n in nodes}))
        raise error(f"graph {graph.name!r}: {ops} ({nodes[0].describe()}) has an output size "
                    f"that depends on input values; the {backend} backend does not compile "
                    "data-dependent shapes (the llvm and numba backends do)")
    out = graph.clone()
    name_dynamic_dims(out)
    return out


def _declared_static(node: Node) -> bool:
    shape = node.outputs[0].shape
    return shape is not None and all(isinstance(d, int) for d in shape)


def split_dynamic(graph: Graph) -> list[DynamicPart]:
    """The graph as runs of ordinary nodes and single data-dependent nodes."""
    from irkit.ir.clone import extract_subgraph

    runs: list[tuple[bool, list[Node]]] = []
    for node in graph.nodes:
        dyn = is_dynamic(node)
        if runs and not dyn and not runs[-1][0]:
            runs[-1][1].append(node)
        else:
            runs.append((dyn, [node]))
    parts: list[DynamicPart] = []
    base = graph.name or "model"
    for index, (dyn, nodes) in enumerate(runs):
        later: set[Value] = set(graph.outputs)
        for _, rest in runs[index + 1:]:
            later.update(v for n in rest for v in n.inputs if v is not None)
        if not dyn:
            sub = extract_subgraph(graph, nodes, f"{base}_seg{index}", later)
            parts.append(DynamicPart(False, sub, [v.name for v in sub.inputs],
                                     [v.name for v in sub.outputs]))
            continue
        parts.append(_dynamic_part(graph, nodes[0], f"{base}_seg{index}", later))
    return parts


def _dynamic_part(graph: Graph, node: Node, name: str, later: set[Value]) -> DynamicPart:
    """One data-dependent node as a graph with an extra output: its count."""
    sub = Graph(name, opset_imports=graph.opset_imports)
    mapping: dict[Value, Value] = {}
    for value in node.inputs:
        if value is None or value in mapping:
            continue
        if value.const is not None:
            mapping[value] = sub.add_constant(value.name, value.const, exact_name=True)
        else:
            mapping[value] = sub.add_input(value.name, value.type)
    count = f"{node.outputs[0].name}{COUNT_SUFFIX}"
    taken = {v.name for v in graph.values()}
    while count in taken:
        count += "_"
    new = sub.add_node(node.op, [None if v is None else mapping[v] for v in node.inputs],
                       dict(node.attrs), domain=node.domain,
                       outputs=[*(None if o.absent else o.name for o in node.outputs), count],
                       types=[*(o.type for o in node.outputs),
                              TensorType(DType.INT64, (1,))], name=node.name)
    kept = [new.outputs[i] for i, o in enumerate(node.outputs)
            if not o.absent and o in later]
    sub.set_outputs([*kept, new.outputs[-1]])
    axes = dynamic_axes(node)
    trim = {new.outputs[i].name: axis for i, axis in axes.items()
            if i < len(node.outputs) and new.outputs[i] in kept}
    return DynamicPart(True, sub, [v.name for v in sub.inputs], [v.name for v in kept],
                       count=new.outputs[-1].name, trim=trim)


# -- kernels ----------------------------------------------------------------------------
Sink = Callable[[int, str, Sequence[Expr]], Buffer]
"""``sink(output index, dtype, shape)``: the buffer output ``index`` is written to."""


def _c(value: int) -> Const:
    return Const(value)


def _local(ctx: LoweringContext, dtype: str, hint: str) -> Buffer:
    return Buffer(ctx.fresh(hint), dtype, Const(1), "local")


def _get(buf: Buffer) -> Expr:
    return Load(buf, _c(0))


def _set(buf: Buffer, value: Expr) -> Stmt:
    return Store(buf, _c(0), value)


def _b(op: str, a: Expr, b: Expr | int) -> Expr:
    return Binary(op, a, b if isinstance(b, Expr) else Const(b))


def _loop(ctx: LoweringContext, extent: Expr, body: Callable[[Expr], Stmt],
          hint: str = "i") -> Stmt:
    var = ctx.var(hint)
    return For(var, simplify_expr(extent), body(var), "serial")


def _nest(ctx: LoweringContext, shape: Sequence[Expr], body: Callable[[Index], Stmt]
          ) -> Stmt:
    """Serial loops over ``shape`` in row-major order (a scalar: the body once)."""
    vars_ = [ctx.var(f"j{k}") for k in range(len(shape))]
    stmt = body(tuple(vars_))
    for var, dim in reversed(list(zip(vars_, shape))):
        stmt = For(var, simplify_expr(dim), stmt, "serial")
    return stmt


def _nonzero(x: Expr, dtype: str) -> Expr:
    if dtype == "bool":
        return x
    zero: Expr = Const(0.0, dtype) if dtype in FLOATS else Const(0, dtype)
    return _b("ne", x, zero)


def _first(ref: TensorRef) -> Expr:
    return ref.read(tuple(_c(0) for _ in ref.shape))


def _input(ins: Sequence[TensorRef | None], k: int) -> TensorRef | None:
    return ins[k] if len(ins) > k else None


def _required(ins: Sequence[TensorRef | None], k: int, node: Node) -> TensorRef:
    ref = _input(ins, k)
    if ref is None:
        raise LoweringError(f"{node.op} is missing input {k}")
    return ref


def _count_out(ctx: LoweringContext, sink: Sink, index: int) -> Buffer:
    return sink(index, "i64", (_c(1),))


def lower_nonzero(ctx: LoweringContext, node: Node, ins: list[TensorRef | None],
                  sink: Sink) -> None:
    """Row ``d`` of the output lists the ``d``-th coordinate of every non-zero element,
    in row-major order; bound ``numel(x)`` columns."""
    x = _required(ins, 0, node)
    if x.rank == 0:
        raise LoweringError("NonZero of a scalar (rank 0) is not supported")
    total = product(x.shape)
    out = sink(0, "i64", (_c(x.rank), total))
    count = _count_out(ctx, sink, 1)
    n = _local(ctx, "i64", "n")

    def body(idx: Index) -> Stmt:
        writes = [Store(out, simplify_expr(_c(d) * total + _get(n)), idx[d])
                  for d in range(x.rank)]
        return If(_nonzero(x.read(idx), x.dtype), block(*writes, _set(n, _get(n) + 1)))

    ctx.add_kernel("nonzero", block(_set(n, _c(0)), _nest(ctx, x.shape, body),
                                    Store(count, _c(0), _get(n))), [n])


def lower_compress(ctx: LoweringContext, node: Node, ins: list[TensorRef | None],
                   sink: Sink) -> None:
    """The slices along ``axis`` (of the flattened input without one) whose condition
    is true, in order; the condition may be shorter than the axis (the rest is dropped)
    or longer (its tail is ignored)."""
    x, cond = _required(ins, 0, node), _required(ins, 1, node)
    axis_attr = node.attr("axis", None)
    if axis_attr is None:
        flat = product(x.shape)
        shape: tuple[Expr, ...] = (flat,)
        src = x

        def read(idx: Index) -> Expr:
            return src.read(unravel(idx[0], src.shape))

        x = TensorRef(shape, x.dtype, read)
        axis = 0
    else:
        if not -x.rank <= int(axis_attr) < max(x.rank, 1):
            raise LoweringError(f"Compress axis {axis_attr} is out of range for rank {x.rank}")
        axis = int(axis_attr) % max(x.rank, 1)
    if cond.rank != 1:
        raise LoweringError("Compress needs a 1-D condition")
    dim = x.shape[axis]
    out = sink(0, x.dtype, x.shape)
    count = _count_out(ctx, sink, 1)
    n = _local(ctx, "i64", "n")
    outer, inner = x.shape[:axis], x.shape[axis + 1:]
    length = simplify_expr(Binary("min", cond.shape[0], dim))

    def take(i: Expr) -> Stmt:
        def copy(o: Index) -> Stmt:
            pre, post = o[:axis], o[axis:]
            return Store(out, flat_index((*pre, _get(n), *post), x.shape),
                         x.read((*pre, i, *post)))

        kept = _nest(ctx, (*outer, *inner), copy)
        return If(_nonzero(cond.read((i,)), cond.dtype), block(kept, _set(n, _get(n) + 1)))

    ctx.add_kernel("compress", block(_set(n, _c(0)), _loop(ctx, length, take),
                                     Store(count, _c(0), _get(n))), [n])


def _slice_compare(ctx: LoweringContext, x: TensorRef, axis: int, a: Expr, b: Expr,
                   state: Buffer) -> Stmt:
    """``state`` = -1, 0 or 1 as slice ``a`` of ``x`` along ``axis`` is lexicographically
    less than, equal to or greater than slice ``b`` (row-major element order; elements
    ordered by :func:`irkit.lower.sorting.less`, NaN last)."""
    outer, inner = x.shape[:axis], x.shape[axis + 1:]

    def step(o: Index) -> Stmt:
        pre, post = o[:axis], o[axis:]
        va, vb = x.read((*pre, a, *post)), x.read((*pre, b, *post))
        return If(_b("eq", _get(state), 0), block(
            If(less(va, vb), _set(state, _c(-1))),
            If(less(vb, va), _set(state, _c(1)))))

    return block(_set(state, _c(0)), _nest(ctx, (*outer, *inner), step))


def lower_unique(ctx: LoweringContext, node: Node, ins: list[TensorRef | None],
                 sink: Sink) -> None:
    """The distinct slices along ``axis`` (elements of the flattened input without
    one): ``Y`` sorted ascending (``sorted=1``) or in order of first occurrence,
    ``indices`` (first occurrence), ``inverse_indices`` and ``counts``.

    A stable merge sort of the slice indices (:func:`irkit.lower.sorting.merge_sort`)
    puts equal slices next to each other, first occurrence first; one pass numbers the
    groups, one more writes the outputs: ``O(n log n)`` comparisons. NaN sorts after
    every number and all NaNs form one group."""
    x = _required(ins, 0, node)
    axis_attr = node.attr("axis", None)
    if axis_attr is None:
        flat = product(x.shape)
        src = x
        x = TensorRef((flat,), x.dtype, lambda idx: src.read(unravel(idx[0], src.shape)))
        axis = 0
    else:
        if not -x.rank <= int(axis_attr) < max(x.rank, 1):
            raise LoweringError(f"Unique axis {axis_attr} is out of range for rank {x.rank}")
        axis = int(axis_attr) % max(x.rank, 1)
    ordered = bool(node.attr("sorted", 1))
    n = x.shape[axis]
    y = sink(0, x.dtype, x.shape)
    first_at = sink(1, "i64", (n,))
    inverse = sink(2, "i64", (n,))
    counts = sink(3, "i64", (n,))
    count = _count_out(ctx, sink, 4)
    # order: the sorted permutation, then each group's rank; spare: merge scratch, then
    # each group's first index; group: each element's group (in sorted order).
    order = ctx.new_buffer("unique_order", "i64", n)
    spare = ctx.new_buffer("unique_spare", "i64", n)
    group = ctx.new_buffer("unique_group", "i64", n)
    state = _local(ctx, "i64", "cmp")
    total = _local(ctx, "i64", "u")
    outer, inner = x.shape[:axis], x.shape[axis + 1:]

    def before(p: Expr, q: Expr) -> tuple[Stmt | None, Expr]:  # slices p, q
        if x.rank == 1:
            return None, less(x.read((p,)), x.read((q,)))
        return _slice_compare(ctx, x, axis, p, q, state), _b("lt", _get(state), 0)

    values = order
    if x.rank == 1:  # sort the values themselves, their indices alongside
        values = ctx.new_buffer("unique_values", x.dtype, n)
        spare_values = ctx.new_buffer("unique_values", x.dtype, n)
        init = _loop(ctx, n, lambda i: block(Store(order, i, i),
                                             Store(values, i, x.read((i,)))))
        sort, scratch = merge_sort(ctx, values, spare_values, n,
                                   lambda p, q: (None, less(p, q)), (order, spare))
    else:
        init = _loop(ctx, n, lambda i: Store(order, i, i))
        sort, scratch = merge_sort(ctx, order, spare, n, before)

    def number(k: Expr) -> Stmt:  # group[order[k]]; spare[g]: the group's first index
        at = Load(order, k)
        prev = Binary("max", k - 1, _c(0))
        setup, fresh = (None, less(Load(values, prev), Load(values, k))) if x.rank == 1 \
            else before(Load(order, prev), at)
        return block(setup, If(_b("or", _b("eq", k, 0), fresh), block(
            Store(spare, _get(total), at), _set(total, _get(total) + 1))),
            Store(group, at, _get(total) - 1))

    def emit(i: Expr) -> Stmt:  # outputs; a group's first element comes before the rest
        g = Load(group, i)
        rank: Expr = g if ordered else Load(order, g)

        def copy(o: Index) -> Stmt:
            pre, post = o[:axis], o[axis:]
            return Store(y, flat_index((*pre, rank, *post), x.shape),
                         x.read((*pre, i, *post)))

        first = block(None if ordered else block(Store(order, g, _get(total)),
                                                 _set(total, _get(total) + 1)),
                      Store(first_at, rank, i), _nest(ctx, (*outer, *inner), copy),
                      Store(counts, rank, _c(0)))
        return block(If(_b("eq", Load(spare, g), i), first), Store(inverse, i, rank),
                     Store(counts, rank, Load(counts, rank) + 1))

    ctx.add_kernel("unique", block(
        init, sort, _set(total, _c(0)), _loop(ctx, n, number, "k"),
        Store(count, _c(0), _get(total)), _set(total, _c(0)), _loop(ctx, n, emit)),
        [state, total, *scratch])


def lower_nms(ctx: LoweringContext, node: Node, ins: list[TensorRef | None],
              sink: Sink) -> None:
    """ONNX NonMaxSuppression as ONNX Runtime computes it: per batch and class, the
    boxes scoring above ``score_threshold`` in descending score order (ties: lower box
    index first), each kept unless its IoU with an already kept box of that class
    exceeds ``iou_threshold``, at most ``max_output_boxes_per_class`` (0 or absent:
    none) per class. Output rows ``[batch, class, box]``; bound ``B*C*S`` rows.

    Per class: the candidates go into a binary heap (:class:`irkit.lower.sorting.Heap`,
    built in ``O(n)``) and come out best first, one ``O(log n)`` pop each, only until
    the limit is reached; each is compared only with the boxes kept so far (their
    extents and areas stored in rows, a branch-free loop that vectorizes). A NaN score
    ranks as -inf (and never passes a score threshold)."""
    boxes, scores = _required(ins, 0, node), _required(ins, 1, node)
    if boxes.rank != 3 or scores.rank != 3:
        raise LoweringError("NonMaxSuppression needs boxes [B, S, 4] and scores [B, C, S]")
    limit_ref, iou_ref, score_ref = _input(ins, 2), _input(ins, 3), _input(ins, 4)
    limit: Expr = _c(0)
    if limit_ref is not None:
        raw = _first(limit_ref)
        limit = raw if raw.dtype == "i64" else Cast("i64", raw)
    iou_thr = _f32(_first(iou_ref)) if iou_ref is not None else Const(0.0, "f32")
    centered = int(node.attr("center_point_box", 0)) == 1
    batches, classes, spots = scores.shape
    if not isinstance(simplify_expr(boxes.shape[2]), Const) or \
            simplify_expr(boxes.shape[2]).value != 4:  # type: ignore[attr-defined]
        raise LoweringError("NonMaxSuppression needs boxes of 4 coordinates [B, S, 4]")
    for ours, theirs, what in ((boxes.shape[0], batches, "batches"),
                               (boxes.shape[1], spots, "boxes")):
        why = f"NonMaxSuppression's boxes and scores must agree on the number of {what}"
        ctx.require_nonnegative(simplify_expr(ours - theirs), why)
        ctx.require_nonnegative(simplify_expr(theirs - ours), why)
    out = sink(0, "i64", (simplify_expr(batches * classes * spots), _c(3)))
    count = _count_out(ctx, sink, 1)
    order = ctx.new_buffer("nms_order", "i64", spots)
    keys = ctx.new_buffer("nms_keys", "f32", spots)
    kept = ctx.new_buffer("nms_kept", "f32", simplify_expr(spots * 5))  # 5 rows: extent, area
    total = _local(ctx, "i64", "k")
    found = _local(ctx, "i64", "m")
    picked = _local(ctx, "i64", "p")
    hit = _local(ctx, "i64", "s")
    threshold = None if score_ref is None else _f32(_first(score_ref))

    def per_class(b: Expr, c: Expr) -> Stmt:
        def score(i: Expr) -> Expr:
            return _f32(scores.read((b, c, i)))

        def collect(i: Expr) -> Stmt:  # the candidates, in box order
            key = Select(is_nan(score(i)), Const(float("-inf"), "f32"), score(i))
            take = block(Store(order, _get(found), i), Store(keys, _get(found), key),
                         _set(found, _get(found) + 1))
            return take if threshold is None else If(_b("gt", score(i), threshold), take)

        def better(sp: Expr, p: Expr, sq: Expr, q: Expr) -> Expr:
            # higher score, then lower index (keys hold no NaN: it ranks as -inf)
            return _b("or", _b("gt", sp, sq), _b("and", Unary("not", _b("gt", sq, sp)),
                                                 _b("lt", p, q)))

        heap = Heap(ctx, order, keys, better)
        locals_.extend(heap.locals)

        def visit(r: Expr) -> Stmt:
            i = Var(ctx.fresh("box"))
            ext = tuple(Var(ctx.fresh(h), "f32") for h in ("x0", "x1", "y0", "y1", "area"))
            bind: list[Stmt] = [heap.pop(), Let(i, heap.popped)]
            bind += [Let(v, e) for v, e in zip(ext, _extent(boxes, b, i, centered))]
            bind.append(Let(ext[4], (ext[1] - ext[0]) * (ext[3] - ext[2])))

            def check(q: Expr) -> Stmt:  # branch-free: the loop vectorizes
                other = tuple(Load(kept, spots * k + q) for k in range(5))
                return _set(hit, _b("or", _get(hit), Cast("i64", _overlaps(ext, other,
                                                                          iou_thr))))

            row = _get(total) * 3
            keep = block(*(Store(kept, spots * k + _get(picked), ext[k]) for k in range(5)),
                         _set(picked, _get(picked) + 1),
                         Store(out, row, b), Store(out, row + 1, c), Store(out, row + 2, i),
                         _set(total, _get(total) + 1))
            return If(_b("lt", _get(picked), limit), block(
                *bind, _set(hit, _c(0)), _loop(ctx, _get(picked), check, "q"),
                If(_b("eq", _get(hit), 0), keep)))

        return block(_set(found, _c(0)), _set(picked, _c(0)), _loop(ctx, spots, collect),
                     heap.build(_get(found)), _loop(ctx, _get(found), visit, "r"))

    locals_: list[Buffer] = [total, found, picked, hit]
    body = _loop(ctx, batches, lambda b: _loop(ctx, classes, lambda c: per_class(b, c), "c"),
                 "b")
    ctx.add_kernel("nms", block(_set(total, _c(0)), body, Store(count, _c(0), _get(total))),
                   locals_)


def _f32(e: Expr) -> Expr:
    return e if e.dtype == "f32" else Cast("f32", e)


def _extent(boxes: TensorRef, b: Expr, box: Expr, centered: bool
            ) -> tuple[Expr, Expr, Expr, Expr]:
    """Box ``box`` of batch ``b`` as ``x_min, x_max, y_min, y_max`` (corners in either
    order, or center and size)."""
    def coord(k: int) -> Expr:
        return _f32(boxes.read((b, box, _c(k))))

    if centered:
        half_w = coord(2) / Const(2.0, "f32")
        half_h = coord(3) / Const(2.0, "f32")
        return coord(0) - half_w, coord(0) + half_w, coord(1) - half_h, coord(1) + half_h
    y1, x1, y2, x2 = (coord(k) for k in range(4))
    return (Binary("min", x1, x2), Binary("max", x1, x2),
            Binary("min", y1, y2), Binary("max", y1, y2))


def _overlaps(a: Sequence[Expr], b: Sequence[Expr], threshold: Expr) -> Expr:
    """Whether kept box ``b`` suppresses box ``a`` (each ``x_min, x_max, y_min, y_max,
    area``): IoU > threshold, ONNX Runtime's rule (an empty intersection or area never
    suppresses)."""
    ax0, ax1, ay0, ay1, area_a = a
    bx0, bx1, by0, by1, area_b = b
    ix0, ix1 = Binary("max", ax0, bx0), Binary("min", ax1, bx1)
    iy0, iy1 = Binary("max", ay0, by0), Binary("min", ay1, by1)
    zero = Const(0.0, "f32")
    inter = (ix1 - ix0) * (iy1 - iy0)
    union = area_a + area_b - inter
    valid = _b("and", _b("and", _b("gt", ix1, ix0), _b("gt", iy1, iy0)),
               _b("and", _b("gt", inter, zero),
                  _b("and", _b("and", _b("gt", area_a, zero), _b("gt", area_b, zero)),
                     _b("gt", union, zero))))
    safe = Select(valid, union, Const(1.0, "f32"))
    return _b("and", valid, _b("gt", inter / safe, threshold))


KERNELS: dict[str, Callable[[LoweringContext, Node, list[TensorRef | None], Sink], None]] = {
    "NonZero": lower_nonzero, "Compress": lower_compress, "Unique": lower_unique,
    "NonMaxSuppression": lower_nms,
}


def lower_dynamic_graph(graph: Graph, target: Target | str,
                        tiles: Tiles | None = None) -> LoweredModel:
    """The kernel program of one data-dependent node graph (from :func:`split_dynamic`):
    outputs at their upper bound, the last output the count."""
    resolved = get_target(target)
    return _BoundedLowering(graph, tiles or Tiles.for_target(resolved), resolved).run()


class _BoundedLowering(GraphLowering):
    """The one node of a dynamic part, lowered by :data:`KERNELS` into its outputs'
    buffers (graph outputs write straight into the io buffers)."""

    def lowering(self, op: str) -> Callable[..., list[TensorRef]]:
        kernel = KERNELS[op]

        def lower(ctx: LoweringContext, node: Node, ins: list[TensorRef | None]
                  ) -> list[TensorRef]:
            refs: dict[int, TensorRef] = {}
            outputs = set(self.graph.outputs)

            def sink(index: int, dtype: str, shape: Sequence[Expr]) -> Buffer:
                shape = tuple(simplify_expr(d) for d in shape)
                value = node.outputs[index]
                if value in outputs:
                    buf = ctx.io_buffer(value.name, dtype, product(shape))
                else:
                    buf = ctx.new_buffer(f"{node.op.lower()}_{index}", dtype, product(shape))
                refs[index] = buffer_ref(buf, shape)
                return buf

            kernel(ctx, node, ins, sink)
            return [refs[i] for i in range(len(node.outputs))]

        return lower


__all__ = ["DYNAMIC_OPS", "DynamicPart", "is_dynamic", "lower_dynamic_graph",
           "name_dynamic_dims", "prepare_dynamic", "split_dynamic"]
