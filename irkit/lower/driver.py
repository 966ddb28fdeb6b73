"""Graph → kernel-IR Program: walks nodes in order, fuses, plans memory, packs weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from irkit.ir import Graph, Node, TensorType, Value
from irkit.kir import Buffer, Cast, Const, Expr, Placement, Program, Stmt, Store, Var
from irkit.kir.visit import substitute
from irkit.lower import elementwise as ew
from irkit.lower import image, indexing, linalg, lowbit, nn, quant_ops, resize, shape_ops
from irkit.lower.attention import LOWERINGS as ATTENTION_LOWERINGS
from irkit.lower.context import MAX_INLINE_COST, LoweringContext, Tiles
from irkit.lower.fused import FUSED_HEAVY
from irkit.lower.heavy import HEAVY, HeavyPlan
from irkit.lower.planner import MemoryPlan, plan_workspace
from irkit.lower.quantized import INT8_HEAVY
from irkit.lower.quantized_conv import WordSink, input_sink
from irkit.lower.random_ops import CALL_KEY
from irkit.lower.random_ops import LOWERINGS as RANDOM_LOWERINGS
from irkit.lower.recurrent import LOWERINGS as RECURRENT_LOWERINGS
from irkit.lower.sparse import SPARSE_AWARE
from irkit.lower.templates import family_template
from irkit.lower.tensor import (
    KIR_DTYPES,
    Index,
    LoweringError,
    TensorRef,
    buffer_ref,
    dims_equal,
    flat_index,
    parse_dim,
    product,
)
from irkit.target import Target, get_target

LowerFn = Callable[[LoweringContext, Node, list[TensorRef | None]], list[TensorRef]]

LOWERINGS: dict[str, LowerFn] = {
    **{op: ew.lower_unary for op in ew.UNARY},
    **{op: ew.lower_binary for op in ew.BINARY},
    "Pow": ew.lower_binary, "Sum": ew.lower_binary, "Mean": ew.lower_binary,
    "Where": ew.lower_where, "Cast": ew.lower_cast, "CastLike": ew.lower_castlike,
    "Clip": ew.lower_clip,
    "PRelu": ew.lower_prelu, "BatchNormalization": ew.lower_batchnorm,
    "Softmax": nn.lower_softmax, "LogSoftmax": nn.lower_softmax,
    "LayerNormalization": nn.lower_layernorm,
    **{op: nn.lower_reduce for op in nn.REDUCE_INIT},
    "MaxPool": nn.lower_pool, "AveragePool": nn.lower_pool,
    "GlobalAveragePool": nn.lower_pool, "GlobalMaxPool": nn.lower_pool,
    "Reshape": shape_ops.lower_reshape, "Flatten": shape_ops.lower_reshape,
    "Squeeze": shape_ops.lower_reshape, "Unsqueeze": shape_ops.lower_reshape,
    "Transpose": shape_ops.lower_transpose, "Slice": shape_ops.lower_slice,
    "Split": shape_ops.lower_split, "Concat": shape_ops.lower_concat,
    "Gather": shape_ops.lower_gather, "GatherND": shape_ops.lower_gather_nd,
    "Expand": shape_ops.lower_expand,
    "Shape": shape_ops.lower_shape, "Size": shape_ops.lower_size,
    "Constant": shape_ops.lower_constant,
    "ConstantOfShape": shape_ops.lower_constant_of_shape, "Range": shape_ops.lower_range,
    **indexing.LOWERINGS, **image.LOWERINGS, **resize.LOWERINGS,
    **ew.LOWERINGS, **nn.LOWERINGS, **quant_ops.LOWERINGS,
    **ATTENTION_LOWERINGS,  # irkit.ScaledDotProductAttention
    **RECURRENT_LOWERINGS,  # LSTM with a run-time sequence length
    **RANDOM_LOWERINGS,  # counter-based generator (irkit.lower.random_ops)
}  # fmt: skip
HEAVY = {**HEAVY, **SPARSE_AWARE, **INT8_HEAVY}  # sparse-aware MatMul/Gemm, irkit int8 ops
HEAVY.update(FUSED_HEAVY)  # irkit.MatMulBiasAct with a GELU epilogue
SUPPORTED_OPS = frozenset([*LOWERINGS, *HEAVY])
FUSABLE = ew.ELEMENTWISE_OPS
# Ops whose kernels exist for f32 but not for 16-bit floats: they run on inputs widened
# to f32 and round their float results back once (like the heavy ops).
WIDEN_HALF = frozenset({"MaxPool", "AveragePool", "LpPool", "CumSum", "CumProd",
                        "ScatterElements", "ScatterND", "Scatter"})
HALF = ("f16", "bf16")
ACC = Var("__acc", "f32")


@dataclass
class LoweredModel:
    program: Program
    plan: MemoryPlan
    inputs: list[Value]
    outputs: list[Value]
    fused: list[str] = field(default_factory=list)
    # Each dim a polynomial in the manifest form ``{"N": 1, "": 2}`` (irkit.lower.symbolic).
    output_shapes: dict[str, list[dict[str, int]]] = field(default_factory=dict)
    input_shapes: dict[str, list[dict[str, int]]] = field(default_factory=dict)
    # ``{"size": polynomial, "why": text}``: must be >= 0 for the bound symbols.
    constraints: list[dict[str, object]] = field(default_factory=list)
    guards: list[dict[str, object]] = field(default_factory=list)  # irkit.runtime.guards
    kernel_notes: dict[str, str] = field(default_factory=dict)  # node -> kernel chosen


def lowers(op: str, domain: str) -> bool:
    """Whether the lowering has a kernel for ``domain.op``."""
    if domain == "irkit":
        return op in INT8_HEAVY or op in FUSED_HEAVY or op in ATTENTION_LOWERINGS
    return domain in ("", "ai.onnx") and op in SUPPORTED_OPS


@dataclass(frozen=True)
class Capabilities:
    """Which ops a backend lowers for a target: the kernel-IR lowering's table, less the
    ops the backend refuses (``excluded``: qualified names such as ``"LSTM"`` or
    ``"irkit.ScaledDotProductAttention"``). Node-level limits (dtypes, attributes) are
    reported by lowering itself."""

    backend: str = "llvm"
    excluded: frozenset[str] = frozenset()

    def lowers(self, op: str, domain: str) -> bool:
        if not lowers(op, domain):
            return False
        return (op if domain in ("", "ai.onnx") else f"{domain}.{op}") not in self.excluded

    def unsupported(self, graph: Graph) -> list[Node]:
        return [n for n in graph.nodes if not self.lowers(n.op, n.domain)]


def unsupported_nodes(graph: Graph, capabilities: Capabilities | None = None) -> list[Node]:
    return (capabilities or Capabilities()).unsupported(graph)


def graph_symbols(graph: Graph) -> dict[str, str]:
    """The graph's symbolic input dims in order of first appearance, each mapped to its
    kernel-IR var: the first is ``N``, the others ``N1``, ``N2``… (``k*S`` style dims
    name the symbol ``S``). A dim already named like a var (``N`` in ``[S, N, 32]``)
    keeps that name, so the manifest's names and the program's agree."""
    from irkit.lower.symbolic import is_symbol, symbol_var_name
    from irkit.lower.tensor import _DIM

    order: list[str] = []
    for v in graph.inputs:
        if not isinstance(v.type, TensorType) or not v.type.shape:
            continue
        for d in v.type.shape:
            match = _DIM.match(d) if isinstance(d, str) else None
            if match and match.group(2) not in order:
                order.append(match.group(2))
    taken = {name for name in order if is_symbol(name) and name != CALL_KEY
             } if "N" in order else set()
    free = (symbol_var_name(k) for k in range(2 * len(order) + 1)
            if symbol_var_name(k) not in taken)
    return {name: name if name in taken else next(free) for name in order}


def batch_symbol(graph: Graph) -> str | None:
    """The first symbolic input dim (the one lowering calls ``N``), if any."""
    return next(iter(graph_symbols(graph)), None)


class GraphLowering:
    def __init__(self, graph: Graph, tiles: Tiles, target: Target) -> None:
        self.graph = graph
        self.ctx = LoweringContext(graph.name or "model", tiles, target)
        self.refs: dict[Value, TensorRef] = {}
        self.done: set[Node] = set()
        self.symbols = graph_symbols(graph)
        self.fused: list[str] = []
        self.outputs = {v for v in graph.outputs}

    def type_shape(self, value: Value) -> tuple[Expr, ...]:
        shape = value.shape
        if shape is None:
            raise LoweringError(f"value %{value.name} has an unknown rank")
        dims = [parse_dim(d, self.symbols) for d in shape]
        if any(d is None for d in dims):
            raise LoweringError(f"value %{value.name} has unknown dims {shape}")
        return tuple(d for d in dims if d is not None)

    def dtype(self, value: Value) -> str:
        dt = KIR_DTYPES.get(value.dtype) if value.dtype is not None else None
        if lowbit.is_low_bit(value.dtype):
            dt = lowbit.STORAGE  # one code per byte (irkit.lower.lowbit)
        if dt is None:
            raise LoweringError(f"value %{value.name} has unsupported dtype {value.dtype}")
        return dt

    def run(self) -> LoweredModel:
        ctx = self.ctx
        for value in self.graph.inputs:
            shape = self.type_shape(value)
            ctx.inputs.add(value.name)
            buf = ctx.io_buffer(value.name, self.dtype(value), product(shape))
            self.refs[value] = buffer_ref(buf, shape)
        for value in self.graph.constants.values():
            const = lowbit.codes(value.const) if lowbit.is_low_bit(value.dtype) else value.const
            self.refs[value] = ctx.const_ref(const, self.dtype(value))
        for node in self.graph.nodes:
            if node in self.done:
                continue
            self.lower_node(node)
        for value in self.graph.outputs:
            self.bind_output(value)
        return self.finish()

    def _input_refs(self, node: Node) -> list[TensorRef | None]:
        refs: list[TensorRef | None] = []
        for v in node.inputs:
            if v is None or v.name == "":
                refs.append(None)
            else:
                refs.append(self.refs[v])
        return refs

    def heavy(self, op: str) -> Callable[..., HeavyPlan]:
        """The heavy-op plan of ``op`` for the target's family (irkit.lower.templates)."""
        return family_template(self.ctx.target.family, "heavy", op) or HEAVY[op]

    def lowering(self, op: str) -> LowerFn:
        return family_template(self.ctx.target.family, "lowering", op) or LOWERINGS[op]

    def lower_node(self, node: Node) -> None:
        ins = self._input_refs(node)
        try:
            low_bit = lowbit.touches(node)  # int4, float8…: irkit.lower.lowbit
            generic = not low_bit and linalg.needs_generic(node, ins)  # f64/integer MatMul
            if node.op in HEAVY and not low_bit and not generic and not any(
                    r is not None and r.dtype in ("f16", "bf16") for r in ins):
                self.lower_heavy(node, self.heavy(node.op)(self.ctx, node, ins))
                return
            folded = None if low_bit else ew.fold_constant(node, ins)
            if low_bit:
                outs = lowbit.lower_node(self.ctx, node, ins, LOWERINGS)
            elif generic:
                outs = linalg.lower_matmul_generic(self.ctx, node, ins)
            elif node.op in HEAVY:
                outs = [self.lower_half_heavy(node, ins)]
            elif node.op in WIDEN_HALF and any(r is not None and r.dtype in HALF for r in ins):
                outs = self.lower_widened(node, ins)
            elif folded is not None:
                outs = [self.ctx.const_ref(a, self.dtype(o)) for a, o in zip(folded, node.outputs)]
            else:
                outs = self.lowering(node.op)(self.ctx, node, ins)
        except LoweringError as exc:
            raise LoweringError(f"{node.describe()}: {exc}") from exc
        unbound = [v for v in node.outputs[len(outs):] if v.is_used]
        if unbound:
            raise LoweringError(f"{node.describe()}: its output(s) "
                                f"{', '.join('%' + v.name for v in unbound)} are not supported")
        for value, ref in zip(node.outputs, outs):
            self.refs[value] = self.settle(value, ref)

    def settle(self, value: Value, ref: TensorRef) -> TensorRef:
        """Materialize inline refs read more than once, too costly to recompute, or
        that are graph outputs (written straight into the output buffer)."""
        if ref.buffer is not None or ref.const is not None:
            return ref
        if _is_shape_like(ref):
            return ref  # folds at compile time wherever it is read
        real_uses = [u for u in value.uses if u.node.op != "Shape"]
        if value in self.outputs:
            return self.ctx.materialize(ref, value.name, target=self.output_buffer(value, ref))
        if len(real_uses) > 1 or ref.cost > MAX_INLINE_COST:
            return self.ctx.materialize(ref, value.name)
        return ref

    def output_buffer(self, value: Value, ref: TensorRef):
        existing = self.ctx.io.get(value.name)
        if existing is not None:
            return existing
        return self.ctx.io_buffer(value.name, ref.dtype, product(ref.shape))

    # -- heavy ops with fused epilogues -------------------------------------------
    def epilogue_chain(self, node: Node, shape: tuple[Expr, ...]) -> list[Node]:
        chain: list[Node] = []
        value = node.outputs[0]
        while True:
            if value in self.outputs or len(value.uses) != 1:
                return chain
            user = value.uses[0].node
            if user.op not in FUSABLE or len(user.outputs) != 1 or user.op == "Cast":
                return chain
            others = [v for v in user.inputs if v is not None and v is not value]
            if any(v not in self.refs for v in others):
                return chain
            out_shape = user.outputs[0].shape
            if out_shape is None or len(out_shape) != len(shape):
                return chain
            try:
                if not all(dims_equal(a, b) for a, b in zip(self.type_shape(user.outputs[0]),
                                                               shape)):
                    return chain
            except LoweringError:
                return chain
            if user.outputs[0].dtype is None or self.dtype(user.outputs[0]) != "f32":
                return chain
            chain.append(user)
            value = user.outputs[0]

    def lower_heavy(self, node: Node, plan: HeavyPlan) -> None:
        chain = self.epilogue_chain(node, plan.shape)
        self.refs[node.outputs[0]] = TensorRef(plan.shape, "f32", lambda idx: ACC)
        for user in chain:
            ins = self._input_refs(user)
            self.refs[user.outputs[0]] = LOWERINGS[user.op](self.ctx, user, ins)[0]
            self.done.add(user)
            self.fused.append(f"{node.op}+{user.op}")
        final_value = chain[-1].outputs[0] if chain else node.outputs[0]
        final = self.refs[final_value]

        def value_of(idx: Index, acc: Expr) -> Expr:
            return substitute(final.read(idx), {ACC: acc})

        sink = None if plan.emit_words is None else self.int8_sink(final_value, plan.shape)
        if sink is not None:  # the epilogue writes the words the next int8 conv reads
            assert plan.emit_words is not None
            plan.emit_words(sink, value_of)
            self.fused.append(f"{node.op}+quantize")
            return
        pool_node = None if plan.emit_pooled is None else self.global_pool_of(final_value)
        if pool_node is not None:  # the epilogue sums the output per channel
            assert plan.emit_pooled is not None
            pooled = pool_node.outputs[0]
            shape = (plan.shape[0], plan.shape[1], *[Const(1)] * (len(self.type_shape(
                pooled)) - 2))
            pool = self.output_buffer(pooled, TensorRef(shape, "f32", lambda idx: ACC)) \
                if pooled in self.outputs else self.ctx.new_buffer("pool", "f32",
                                                                    product(shape))
            plan.emit_pooled(pool, value_of)
            self.done.add(pool_node)
            self.fused.append(f"{node.op}+{pool_node.op}")
            self.refs[pooled] = buffer_ref(pool, shape)
            return
        window = None if plan.emit_window is None else self.window_pool_of(final_value)
        if window is not None:
            pool_node, kind, kernel, strides = window
            pooled = pool_node.outputs[0]
            out_type = self.type_shape(pooled)
            shape = (plan.shape[0], plan.shape[1], *out_type[2:])
            made: list[Buffer] = []

            def make_buffer() -> Buffer:
                made.append(self.output_buffer(pooled, TensorRef(
                    shape, "f32", lambda idx: ACC)) if pooled in self.outputs else
                    self.ctx.new_buffer("pool", "f32", product(shape)))
                return made[0]

            assert plan.emit_window is not None
            out = plan.emit_window(kind, kernel, strides, make_buffer, value_of)
            if out is not None:
                assert all(dims_equal(Const(a), b) for a, b in zip(out, out_type[2:]))
                self.done.add(pool_node)
                self.fused.append(f"{node.op}+{pool_node.op}")
                self.refs[pooled] = buffer_ref(made[0], shape)
                return
        if final_value in self.outputs:
            target = self.output_buffer(final_value, final)
        else:
            target = self.ctx.new_buffer(node.op.lower(), "f32", product(plan.shape))

        def epilogue(idx: Index, acc: Expr) -> Stmt:
            value = substitute(final.read(idx), {ACC: acc})
            return Store(target, flat_index(idx, plan.shape), value)

        plan.emit(epilogue)
        result = buffer_ref(target, plan.shape)
        for value in [node.outputs[0], *(u.outputs[0] for u in chain)]:
            self.refs[value] = result

    def int8_sink(self, value: Value, shape: tuple[Expr, ...]) -> WordSink | None:
        """Where the int8 conv that alone reads ``value`` wants its four-channel words
        (irkit.lower.quantized_conv.input_sink), or None. ``value`` then has no float
        buffer; reading it is an error."""
        if value in self.outputs or len(value.uses) != 1 or value.uses[0].index != 0:
            return None
        consumer = value.uses[0].node
        if consumer.op != "QLinearConvInt8" or self.heavy(consumer.op) is not INT8_HEAVY[
                consumer.op] or lowbit.touches(consumer):
            return None
        if any(v is not None and v.name and v is not value and v not in self.refs
               for v in consumer.inputs):
            return None

        def unread(idx: Index) -> Expr:
            raise LoweringError(f"%{value.name} is written as int8 words for "
                                f"{consumer.describe()} only")

        self.refs[value] = TensorRef(shape, "f32", unread)
        sink = input_sink(self.ctx, consumer, self._input_refs(consumer))
        if sink is None:
            del self.refs[value]
        return sink

    def global_pool_of(self, value: Value) -> Node | None:
        """The GlobalAveragePool (or ReduceMean over the spatial axes, keeping them)
        that alone reads 4-D ``value``, or None."""
        if value in self.outputs or len(value.uses) != 1 or value.shape is None or len(
                value.shape) != 4:
            return None
        user = value.uses[0].node
        if user.domain not in ("", "ai.onnx") or user.outputs[0].dtype is None:
            return None
        if user.op == "GlobalAveragePool":
            return user
        if user.op != "ReduceMean" or int(user.attr("keepdims", 1)) != 1 or len(
                user.inputs) > 1:
            return None
        axes = sorted(int(a) % 4 for a in user.attr("axes", []))
        return user if axes == [2, 3] else None

    def window_pool_of(self, value: Value
                       ) -> tuple[Node, str, tuple[int, int], tuple[int, int]] | None:
        """The 2-D MaxPool/AveragePool without padding, dilation or ceil mode, windows
        no larger than its strides, that alone reads ``value``: (node, "max" or
        "average", kernel, strides); or None."""
        if value in self.outputs or len(value.uses) != 1 or value.shape is None or len(
                value.shape) != 4:
            return None
        user = value.uses[0].node
        if user.op not in ("MaxPool", "AveragePool") or user.domain not in ("", "ai.onnx"):
            return None
        if len(user.outputs) > 1 and user.outputs[1].is_used:
            return None
        kernel = [int(k) for k in user.attr("kernel_shape", [])]
        strides = [int(s) for s in user.attr("strides", None) or [1, 1]]
        if len(kernel) != 2 or len(strides) != 2 or any(
                k > s for k, s in zip(kernel, strides)):
            return None
        if any(int(p) for p in user.attr("pads", None) or []) or user.attr(
                "auto_pad", "NOTSET") not in ("NOTSET", "VALID") or int(user.attr(
                "ceil_mode", 0)) or any(int(d) != 1 for d in user.attr("dilations", None)
                                        or []):
            return None
        kind = "max" if user.op == "MaxPool" else "average"
        return user, kind, (kernel[0], kernel[1]), (strides[0], strides[1])

    def widen(self, ref: TensorRef | None) -> TensorRef | None:
        """``ref`` read as f32 when it holds f16/bf16; other refs as they are."""
        if ref is None or ref.dtype not in HALF:
            return ref
        if ref.const is not None:
            return self.ctx.const_ref(np.asarray(ref.const, np.float32), "f32")
        return TensorRef(ref.shape, "f32", lambda idx: Cast("f32", ref.read(idx)),
                         cost=ref.cost + 1)

    def lower_half_heavy(self, node: Node, ins: list[TensorRef | None]) -> TensorRef:
        """A heavy op on f16/bf16 inputs: the f32 kernel on the inputs widened to f32 (so
        it accumulates in f32, like numpy), its result rounded back when read."""
        plan = self.heavy(node.op)(self.ctx, node, [self.widen(r) for r in ins])
        wide = self.ctx.new_buffer(node.op.lower(), "f32", product(plan.shape))
        plan.emit(lambda idx, acc: Store(wide, flat_index(idx, plan.shape), acc))
        dtype = self.dtype(node.outputs[0])
        return TensorRef(plan.shape, dtype, lambda idx: Cast(dtype, buffer_ref(
            wide, plan.shape).read(idx)), cost=1)

    def lower_widened(self, node: Node, ins: list[TensorRef | None]) -> list[TensorRef]:
        """A ``WIDEN_HALF`` op on f16/bf16 inputs: its f32 kernel, each f32 result rounded
        to the output's declared 16-bit type when read (MaxPool's indices stay i64)."""
        outs = self.lowering(node.op)(self.ctx, node, [self.widen(r) for r in ins])
        return [_rounded(ref, self.dtype(value)) if ref.dtype == "f32" else ref
                for value, ref in zip(node.outputs, outs)]

    # -- outputs and plan -----------------------------------------------------------
    def bind_output(self, value: Value) -> None:
        ref = self.refs[value]
        target = self.output_buffer(value, ref)
        if ref.buffer is not target:
            self.refs[value] = self.ctx.materialize(ref, value.name, target=target)

    def finish(self) -> LoweredModel:
        ctx = self.ctx
        io_order = [v.name for v in self.graph.inputs] + [v.name for v in self.graph.outputs]
        placements: dict[str, Placement] = {}
        for index, name in enumerate(io_order):
            placements[ctx.io[name].name] = Placement("io", index=index)
        blob = bytearray()
        for name, data in ctx.weights.items():
            pad = (-len(blob)) % 64
            blob.extend(b"\0" * pad)
            placements[name] = Placement("weights", offset_c=len(blob))
            blob.extend(np.ascontiguousarray(data).tobytes())
        workspace = [b for name, b in ctx.buffers.items() if name not in placements]
        plan = plan_workspace(ctx.kernels, workspace)
        placements.update(plan.placements)
        used = {b.name for k in ctx.kernels for b in k.buffers}
        for name in list(placements):
            if name not in used and placements[name].kind == "workspace":
                del placements[name]
        name = "".join(c if c.isalnum() else "_" for c in ctx.name) or "model"
        program = Program(name, tuple(ctx.kernels), placements, tuple(io_order),
                          plan.workspace_n, plan.workspace_c, bytes(blob),
                          symbols=(tuple(self.symbols.values()) or ("N",))
                          + ((CALL_KEY,) if ctx.call_key else ()),
                          workspace_terms=plan.workspace_terms)
        shapes = {v.name: [_dim_json(d) for d in self.refs[v].shape] for v in self.graph.outputs}
        in_shapes = {v.name: [_dim_json(d) for d in self.refs[v].shape]
                     for v in self.graph.inputs}
        from irkit.lower.symbolic import to_json, to_poly

        constraints: list[dict[str, object]] = [
            {"size": to_json(to_poly(size)), "why": why} for size, why in ctx.constraints]
        return LoweredModel(program, plan, list(self.graph.inputs), list(self.graph.outputs),
                            self.fused, shapes, in_shapes, constraints, ctx.guards,
                            dict(ctx.kernel_notes))


def _rounded(ref: TensorRef, dtype: str) -> TensorRef:
    """``ref`` read in the 16-bit float ``dtype`` (other dtypes: ``ref`` itself)."""
    if dtype not in HALF:
        return ref
    return TensorRef(ref.shape, dtype, lambda idx: Cast(dtype, ref.read(idx)), cost=ref.cost + 1)


def _dim_json(dim: Expr) -> dict[str, int]:
    """A dim for the manifest: the polynomial form of :func:`irkit.lower.symbolic.to_json`."""
    from irkit.lower.symbolic import to_json, to_poly

    return to_json(to_poly(dim))


def _is_shape_like(ref: TensorRef) -> bool:
    """A small 1-D int64 tensor whose elements are compile-time polynomials in the
    symbolic dims."""
    from irkit.kir import simplify_expr
    from irkit.lower.symbolic import to_poly

    if ref.dtype != "i64" or ref.rank > 1 or ref.const is not None:
        return False
    length = simplify_expr(ref.shape[0]) if ref.rank else Const(1)
    if not isinstance(length, Const) or length.value > 16:
        return False
    try:
        for i in range(int(length.value)):
            to_poly(simplify_expr(ref.read((Const(i),) if ref.rank else ())))
    except (LoweringError, KeyError, TypeError, ValueError):
        return False
    return True


def lower_graph(graph: Graph, target: Target | str = "x86-64-v3", tiles: Tiles | None = None,
                capabilities: Capabilities | None = None) -> LoweredModel:
    """Lower ``graph`` to a kernel-IR program for ``target`` (its default register tiles
    unless ``tiles`` are given); raises LoweringError naming every unsupported node at
    once."""
    target = get_target(target)
    capabilities = capabilities or Capabilities()
    missing = capabilities.unsupported(graph)
    if missing:
        names = ", ".join(sorted({n.qualified_op for n in missing}))
        raise LoweringError(
            f"graph {graph.name!r}: {len(missing)} node(s) use ops the {capabilities.backend} "
            f"backend cannot lower: {names} (nodes: "
            f"{', '.join(n.describe() for n in missing[:10])})"
            + ("; these ONNX-ML ops have no native lowering (Scaler, Normalizer, Binarizer, "
               "Imputer, ArrayFeatureExtractor, Linear*, TreeEnsemble* have): run them on the "
               "'ort' backend (--target ort), or in ONNX Runtime segments of an llvm artifact "
               "(fallback = \"ort\" on a spec's llvm target)"
               if any(n.qualified_op.startswith("ai.onnx.ml.") for n in missing) else "")
        )
    return GraphLowering(graph, tiles or Tiles.for_target(target), target).run()


__all__ = ["SUPPORTED_OPS", "Capabilities", "LoweredModel", "LoweringError", "graph_symbols",
           "lower_graph", "unsupported_nodes"]
_ = Const
