"""``quantize``: int8 weights (symmetric, per tensor or per output channel) and int8/uint8
activations, dynamic (range measured per call) or static (range calibrated ahead).

Two output formats:
- ``format=irkit``: ``irkit.QLinearMatMulInt8`` / ``irkit.QLinearConvInt8`` /
  ``irkit.DynamicQuantMatMulInt8`` with scales and zero points as constants, for irkit's
  own int8 kernels (fused epilogues kept).
- ``format=qdq``: standard ONNX. Static: QuantizeLinear/DequantizeLinear pairs on the
  activations, int8 weights and int32 biases behind DequantizeLinear, which ONNX Runtime
  turns into QLinearConv/QLinearMatMul/QGemm. Dynamic: DynamicQuantizeLinear + MatMulInteger.

Weight range (``weight_range``): ``full`` is [-127, 127]; ``reduced`` is 7-bit [-63, 63].
ONNX Runtime's u8 x s8 kernels on x86 CPUs without VNNI (every AVX2 CPU, AVX-512 before
Cascade Lake) multiply with ``vpmaddubsw``, which adds two u8*s8 products into a
saturating int16: 255 * 127 * 2 overflows it, 255 * 63 * 2 does not. A QDQ model is
served by ONNX Runtime on whatever CPU it lands on, so ``auto`` reduces the range for
``format=qdq`` (the saturated products cost 5% relative error on the digits MLP on an AVX2
CPU, against 0.5% with 7-bit weights) and keeps the full range for irkit's own kernels,
which accumulate exactly in int32 on every target. ``narrow`` is 6-bit [-31, 31]: on
targets that multiply with ``vpmaddubsw`` (no VNNI), irkit's kernels then add the int16
pair sums of two words before widening them (``dot8_u8s6``: three multiply-port
instructions per 64 multiply-adds instead of four), at the cost of coarser weights. For
irkit's kernels on such targets, ``auto`` in static mode picks 7-bit weights, then tries
6-bit ones on the calibration batches and keeps them when the outputs stay within
``narrow_tolerance`` (relative RMS, default 3%) of the fp32 model's; the report gives both
measured deviations. The report names the range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from irkit.errors import IrkitError
from irkit.ir import Graph, Node, Value
from irkit.ir.clone import extract_subgraph
from irkit.ir.dtypes import DType
from irkit.ir.types import TensorType
from irkit.passes.base import (
    CALIBRATE_DOC,
    IRKIT_DOMAIN,
    Pass,
    PassContext,
    drop_unused_constants,
    take_name,
    use_irkit_domain,
)
from irkit.passes.calibrate import (
    activation_qparams,
    choose_range,
    collect_stats,
    quantize_weight,
)
from irkit.passes.fuse import _bias_vector
from irkit.passes.fuse_conv_pool import split_conv_pool

_MATMUL_OPS = ("MatMul", "Gemm", "MatMulBiasAct")
_CONV_OPS = ("Conv", "ConvBiasAct")
_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


@dataclass
class LinearView:
    """A MatMul/Gemm/Conv (plain or fused) seen uniformly: ``act(op(x, w) + b + r)``."""

    node: Node
    kind: Literal["matmul", "conv"]
    x: Value
    weight: np.ndarray  # [K, N] for matmul; [Cout, Cin/g, k...] for conv
    bias: np.ndarray | None
    residual: Value | None
    act: str
    conv_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def weight_axis(self) -> int:
        return 1 if self.kind == "matmul" else 0


def linear_view(node: Node) -> LinearView | None:
    """Normalize a quantizable node, or None if it is not one (non-constant weights…)."""
    fused = node.domain == IRKIT_DOMAIN
    if node.domain not in ("", IRKIT_DOMAIN) or (fused and node.op not in
                                                 ("MatMulBiasAct", "ConvBiasAct")):
        return None
    if not fused and node.op not in ("MatMul", "Gemm", "Conv"):
        return None
    x, w = node.inputs[0], node.inputs[1]
    if x is None or w is None or w.const is None or x.dtype is not DType.FLOAT32:
        return None
    weight = w.const
    if weight.dtype != np.float32:
        return None
    extra = [*node.inputs[2:], None, None]
    bias_value, residual = extra[0], extra[1] if fused else None
    act = node.attr("act", "none")
    if node.op in _MATMUL_OPS:
        if weight.ndim != 2:
            return None
        bias = None
        if node.op == "Gemm":
            if node.attr("transA", 0):
                return None
            if node.attr("transB", 0):
                weight = weight.T
            weight = weight * np.float32(node.attr("alpha", 1.0))
            if bias_value is not None:
                bias = _bias_vector(bias_value, weight.shape[1], 0)
                if bias is None:
                    return None
                bias = bias * np.float32(node.attr("beta", 1.0))
        elif bias_value is not None:
            if bias_value.const is None:
                return None
            bias = np.asarray(bias_value.const).reshape(-1)
        return LinearView(node, "matmul", x, np.ascontiguousarray(weight), bias, residual, act)
    if bias_value is not None and bias_value.const is None:
        return None
    bias = None if bias_value is None else np.asarray(bias_value.const).reshape(-1)
    attrs = {k: node.attr(k) for k in _CONV_ATTRS if k in node.attrs}
    return LinearView(node, "conv", x, weight, bias, residual, act, attrs)


def _int8_conv_kernel_exists(view: LinearView) -> bool:
    """Whether irkit's int8 conv kernels cover ``view``: 2-D and ungrouped. A Conv1d
    (audio) or a depthwise conv (MobileNet) quantized to irkit.QLinearConvInt8 failed
    every backend's compile; ORT's QDQ format quantizes them."""
    if view.kind != "conv":
        return True
    return view.weight.ndim == 4 and int(view.conv_attrs.get("group", 1) or 1) == 1


def _excluded(node: Node, patterns: tuple[str, ...]) -> bool:
    names = {node.name, node.op, node.qualified_op, *(v.name for v in node.outputs)}
    return any(p in names for p in patterns)


_BITS = {127: "8-bit [-127, 127]", 63: "7-bit [-63, 63]", 31: "6-bit [-31, 31]"}


@dataclass(frozen=True)
class Quantize(Pass):
    """int8 quantization of MatMul/Gemm/Conv (and their fused forms).

    ``symmetric`` applies to activations (int8, zero point 0); otherwise activations are
    uint8 with a zero point. Weights are always symmetric int8. ``exclude`` names nodes,
    output values or op types to leave in float.

    With a cost model in the context (``irkit.optimize(..., measure=True)``, and every
    spec build), each candidate node is timed alone in fp32 and int8 on the targets, and
    one whose int8 form is slower anywhere stays fp32; the report says per node what it
    measured (``kept fp32: int8 0.62x on x86-64-v3``). ``force=true`` quantizes every
    candidate without timing.
    """

    name = "quantize"
    mode: Literal["dynamic", "static"] = "dynamic"
    per_channel: bool = False
    symmetric: bool = False
    calibrator: Literal["minmax", "percentile", "entropy"] = "minmax"
    percentile: float = 99.99
    format: Literal["irkit", "qdq"] = "irkit"
    weight_range: Literal["auto", "full", "reduced", "narrow"] = "auto"
    narrow_tolerance: float = 0.03
    exclude: tuple[str, ...] = ()
    force: bool = False
    calibrate: Any = field(default=None, compare=False, metadata={"doc": CALIBRATE_DOC})

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        return self.mode == "static"

    def apply(self, graph: Graph, context: PassContext) -> tuple[bool, dict[str, Any]]:
        split_conv_pool(graph)  # irkit.ConvBiasActPool -> ConvBiasAct + pool
        if self.format == "qdq":
            _decompose_fused_linear(graph)
        views = []
        for node in graph.nodes:
            view = linear_view(node)
            if view is None or _excluded(node, self.exclude):
                continue
            if self.mode == "dynamic" and view.kind != "matmul":
                continue  # no dynamic int8 conv: ORT's ConvInteger path is rarely faster
            if self.format == "irkit" and not _int8_conv_kernel_exists(view):
                continue  # stays fp32 rather than becoming an op no backend lowers
            views.append(view)
        if not views:
            return False, {"quantized": 0}
        ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if self.mode == "static":
            ranges = self._calibrate(graph, views, context)
        qmax, qmax_note = self.weight_qmax(context)
        if (qmax == 63 and self.weight_range == "auto" and self.mode == "static"
                and self.format == "irkit"):
            qmax, qmax_note = self._try_narrow(graph, views, ranges, context, qmax_note)
        timed: dict[str, str] = {}
        if context.cost is not None and self.format == "irkit" and not self.force:
            views, timed = self._keep_faster(graph, views, ranges, context, qmax)
            if not views:
                return False, {"quantized": 0, "nodes": timed}
        qdq_cache: dict[str, Value] = {}
        ops: dict[str, int] = {}
        for target in [v.node for v in views]:
            ops[target.op] = ops.get(target.op, 0) + 1
            view = linear_view(target)  # again: earlier rewrites replaced its input values
            assert view is not None
            if self.format == "qdq":
                self._emit_qdq(graph, view, ranges, qdq_cache, qmax)
            else:
                self._emit_irkit(graph, view, ranges, qmax)
        drop_unused_constants(graph)
        report: dict[str, Any] = {"quantized": len(views), "by_op": ops,
                                  "calibrated_tensors": len(ranges), "weight_range": qmax_note}
        if timed:
            report["nodes"] = timed
        return True, report

    def _keep_faster(self, graph: Graph, views: list[LinearView],
                     ranges: dict[str, tuple[np.ndarray, np.ndarray]], context: PassContext,
                     qmax: int) -> tuple[list[LinearView], dict[str, str]]:
        """The views whose int8 form is not slower than fp32 on any measured target by
        more than the trial's margin (each node timed alone, both forms compiled for the
        targets; see :meth:`irkit.cost.Timing.margin`), and a note per node with the ratio
        and its clock: ``int8 2.31x on x86-64-v3 (cpu time, spread 0.8%)`` or
        ``kept fp32: int8 0.62x on x86-64-v3 (cpu time, spread 1.1%)``."""
        kept: list[LinearView] = []
        notes: dict[str, str] = {}
        for view in views:
            name = view.node.name or view.node.outputs[0].name
            fp32 = extract_subgraph(graph, [view.node], f"{name}_fp32")
            int8 = fp32.clone()
            single = linear_view(int8.nodes[0])
            assert single is not None
            self._emit_irkit(int8, single, ranges, qmax)
            timing = context.cost.compare({"fp32": fp32, "int8": int8})
            speed = timing.speedup("fp32", "int8")
            if not speed:
                why = "; ".join(f"{t}: {w}" for t, w in timing.unmeasured.items())
                notes[name] = f"int8 (not timed: {why or 'no target'})"
                kept.append(view)
                continue
            target, worst = min(speed.items(), key=lambda item: item[1])
            how = timing.how(target)
            if worst < 1.0 - timing.margin(target):
                notes[name] = f"kept fp32: int8 {worst:.2f}x on {target}{how}"
            else:
                tie = (f", within the {100 * timing.margin(target):.0f}% margin"
                       if worst < 1.0 else "")
                notes[name] = f"int8 {worst:.2f}x on {target}{how}{tie}"
                kept.append(view)
        if len(kept) < len(views):
            kept = self._in_context(graph, views, kept, ranges, context, qmax, notes)
        return kept, notes

    def _in_context(self, graph: Graph, views: list[LinearView], kept: list[LinearView],
                    ranges: dict[str, tuple[np.ndarray, np.ndarray]], context: PassContext,
                    qmax: int, notes: dict[str, str]) -> list[LinearView]:
        """A node timed alone converts its input from float and its output back; in the
        model, an int8 conv feeding another writes that conv's bytes itself, so a chain of
        int8 nodes can pay where each alone does not. Time the whole model with every
        candidate in int8 against the alone-timed choice: the nodes stay fp32 only when
        that makes the model faster by more than the trial's margin (a tie within the
        noise goes int8, the pass's default)."""
        chosen = {_key(v.node) for v in kept}
        every = {_key(v.node) for v in views}
        timing = context.cost.compare({
            "chosen": self._quantized_copy(graph, chosen, ranges, qmax),
            "every": self._quantized_copy(graph, every, ranges, qmax)})
        speed = timing.speedup("chosen", "every")
        if not speed:
            return kept
        target, worst = min(speed.items(), key=lambda item: item[1])
        margin = timing.margin(target)
        if worst < 1.0 - margin:
            return kept
        how = timing.how(target)
        said = (f"is {worst:.2f}x faster on {target}{how}" if worst >= 1.0 else
                f"runs {worst:.2f}x on {target}{how}, within the {100 * margin:.0f}% margin,")
        for name in every - chosen:
            notes[name] = (f"int8 in context: the model {said} with every candidate in int8 "
                           f"(alone: {notes[name]})")
        return views

    def weight_qmax(self, context: PassContext) -> tuple[int, str]:
        """The weight range for the targets in ``context``, and why (for the report)."""
        if self.weight_range != "auto":
            qmax = {"reduced": 63, "full": 127, "narrow": 31}[self.weight_range]
            return qmax, f"{_BITS[qmax]} (asked)"
        if self.format == "qdq":
            return 63, ("7-bit [-63, 63] (auto for format=qdq: ONNX Runtime's u8*s8 kernels "
                        "saturate int16 pair sums on x86 CPUs without VNNI)")
        names = [str(getattr(t, "name", t)) for t in context.targets]
        madd = [name for t, name in zip(context.targets, names)
                if callable(getattr(t, "int8_dot", None)) and t.int8_dot() == "vpmaddubsw"]
        if madd:
            return 63, (f"7-bit [-63, 63] (auto: {', '.join(madd)} multiply int8 with "
                        "vpmaddubsw, whose int16 pair sums are exact for weights within "
                        "[-64, 64]; 8-bit weights would take two passes)")
        why = (f"{', '.join(names)} multiply int8 exactly at full range" if names
               else "no target given")
        return 127, f"8-bit [-127, 127] (auto: {why})"

    def _try_narrow(self, graph: Graph, views: list[LinearView],
                    ranges: dict[str, tuple[np.ndarray, np.ndarray]], context: PassContext,
                    note: str) -> tuple[int, str]:
        """6-bit weights (63 -> 31) when the int8 model with them stays within
        ``narrow_tolerance`` of the fp32 model on the calibration batches."""
        assert context.calibration
        names = {_key(v.node) for v in views}
        try:
            errors = {qmax: _deviation(graph, self._quantized_copy(graph, names, ranges, qmax),
                                       context.calibration) for qmax in (63, 31)}
        except IrkitError as exc:  # no engine evaluates the graph: stay with 7 bits
            return 63, f"{note}; 6-bit weights not tried: {str(exc).splitlines()[0]}"
        measured = (f"on the calibration batches, 6-bit weights move the outputs "
                    f"{100 * errors[31]:.2f}% RMS from fp32, 7-bit {100 * errors[63]:.2f}%")
        if errors[31] <= self.narrow_tolerance:
            return 31, (f"6-bit [-31, 31] (auto: vpmaddubsw adds two words' int16 pair "
                        f"sums before widening; {measured}, within "
                        f"{100 * self.narrow_tolerance:g}%)")
        return 63, (f"{note}; kept over 6-bit: {measured}, over "
                    f"{100 * self.narrow_tolerance:g}%")

    def _quantized_copy(self, graph: Graph, names: set[str],
                        ranges: dict[str, tuple[np.ndarray, np.ndarray]], qmax: int) -> Graph:
        """A copy of ``graph`` with the nodes named ``names`` in int8."""
        work = graph.clone()
        for node in list(work.nodes):
            view = linear_view(node) if _key(node) in names else None
            if view is not None:
                self._emit_irkit(work, view, ranges, qmax)
        drop_unused_constants(work)
        return work

    # -- calibration ----------------------------------------------------------------------
    def _calibrate(self, graph: Graph, views: list[LinearView],
                   context: PassContext) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if not context.calibration:
            raise ValueError("static quantization needs calibration batches")
        names: dict[str, None] = {}
        for view in views:
            names[view.x.name] = None
            site = _output_site(view)
            if self.format == "qdq" and not site.is_graph_output:
                names[site.name] = None
        stats = collect_stats(graph, list(names), context.calibration)
        out = {}
        for name, stat in stats.items():
            lo, hi = choose_range(stat, self.calibrator, self.percentile)
            out[name] = activation_qparams(lo, hi, self.symmetric)
        return out

    def _weight_params(self, graph: Graph, view: LinearView, qmax: int
                       ) -> tuple[Value, Value, Value]:
        axis = view.weight_axis if self.per_channel else None
        q, scale, zero = quantize_weight(view.weight, axis, qmax)
        base = view.node.name or view.node.outputs[0].name
        return (graph.add_constant(f"{base}_w_q", q),
                graph.add_constant(f"{base}_w_scale", scale),
                graph.add_constant(f"{base}_w_zp", zero))

    # -- irkit ops ------------------------------------------------------------------------
    def _emit_irkit(self, graph: Graph, view: LinearView,
                    ranges: dict[str, tuple[np.ndarray, np.ndarray]], qmax: int) -> None:
        node = view.node
        use_irkit_domain(graph)
        w_q, w_scale, w_zp = self._weight_params(graph, view, qmax)
        bias = None if view.bias is None else graph.add_constant(
            f"{w_q.name}_bias", view.bias.astype(np.float32))
        attrs: dict[str, Any] = {"act": view.act, "w_axis": view.weight_axis}
        if self.mode == "dynamic":
            op = "DynamicQuantMatMulInt8"
            inputs: list[Value | None] = [view.x, w_q, w_scale, w_zp, bias, view.residual]
        else:
            scale, zero = ranges[view.x.name]
            x_scale = graph.add_constant(f"{view.x.name}_scale", scale)
            x_zp = graph.add_constant(f"{view.x.name}_zp", zero)
            op = "QLinearMatMulInt8" if view.kind == "matmul" else "QLinearConvInt8"
            inputs = [view.x, x_scale, x_zp, w_q, w_scale, w_zp, bias, view.residual]
            attrs.update(view.conv_attrs)
        while inputs and inputs[-1] is None:
            inputs.pop()
        out = node.outputs[0]
        new = graph.add_node(op, inputs, attrs, domain=IRKIT_DOMAIN, before=node,
                             types=[out.type], name=node.name)
        out.replace_all_uses_with(new.output)
        name = out.name
        graph.remove_node(node)
        take_name(graph, new.output, name)

    # -- standard ONNX ------------------------------------------------------------------------
    def _emit_qdq(self, graph: Graph, view: LinearView,
                  ranges: dict[str, tuple[np.ndarray, np.ndarray]],
                  cache: dict[str, Value], qmax: int) -> None:
        if self.mode == "dynamic":
            self._emit_integer_matmul(graph, view, qmax)
            return
        node = view.node
        if any(view.x is v for v in cache.values()):
            x_dq = view.x  # already the DequantizeLinear of an earlier op's output pair
        else:
            x_dq = _qdq_pair(graph, view.x, ranges[view.x.name], cache, before=node)
            node.set_input(0, x_dq)
        assert x_dq.producer is not None and x_dq.producer.inputs[1] is not None
        x_scale_const = x_dq.producer.inputs[1].const
        assert x_scale_const is not None
        w_q, w_scale, w_zp = self._weight_params(graph, view, qmax)
        axis_attr = {"axis": view.weight_axis} if self.per_channel else None
        if node.op == "Gemm":  # weights were normalized to [K, N]: drop transB
            node.set_attr("transB", 0)
            node.set_attr("alpha", 1.0)
            node.set_attr("beta", 1.0)
        w_dq = graph.add_node("DequantizeLinear", [w_q, w_scale, w_zp], axis_attr, before=node,
                              types=[TensorType(DType.FLOAT32, view.weight.shape)])
        node.set_input(1, w_dq.output)
        if view.bias is not None and node.op in ("Gemm", "Conv"):
            x_scale = float(x_scale_const)
            assert w_scale.const is not None
            b_scale = (x_scale * np.asarray(w_scale.const)).astype(np.float32).reshape(-1)
            b_scale = np.broadcast_to(b_scale, view.bias.shape).copy()
            b_q = np.round(view.bias / b_scale).astype(np.int32)
            b_dq = graph.add_node(
                "DequantizeLinear",
                [graph.add_constant(f"{w_q.name}_bias_q", b_q),
                 graph.add_constant(f"{w_q.name}_bias_scale", b_scale),
                 graph.add_constant(f"{w_q.name}_bias_zp", np.zeros(b_q.shape, np.int32))],
                {"axis": 0}, before=node,
                types=[TensorType(DType.FLOAT32, view.bias.shape)])
            node.set_input(2, b_dq.output)
        site = _output_site(view)
        if site.name in ranges and not site.is_graph_output:
            anchor = site.producer
            assert anchor is not None
            consumers = [u for u in site.uses]
            dq = _qdq_pair(graph, site, ranges[site.name], cache, after=anchor)
            for use in consumers:
                use.node.set_input(use.index, dq)

    def _emit_integer_matmul(self, graph: Graph, view: LinearView, qmax: int) -> None:
        node = view.node
        w_q, w_scale, w_zp = self._weight_params(graph, view, qmax)
        x = view.x
        u8 = TensorType(DType.UINT8, x.shape)
        scalar_f = TensorType(DType.FLOAT32, ())
        dql = graph.add_node("DynamicQuantizeLinear", [x], before=node, outputs=3,
                             types=[u8, scalar_f, TensorType(DType.UINT8, ())])
        xq, xs, xzp = dql.outputs
        out = node.outputs[0]
        i32 = TensorType(DType.INT32, out.shape)
        mm = graph.add_node("MatMulInteger", [xq, w_q, xzp, w_zp], before=node, types=[i32])
        as_float = graph.add_node("Cast", [mm.output], {"to": 1}, before=node, types=[out.type])
        scale = graph.add_node("Mul", [xs, w_scale], before=node,
                               types=[TensorType(DType.FLOAT32, w_scale.shape)])
        y = graph.add_node("Mul", [as_float.output, scale.output], before=node,
                           types=[out.type]).output
        if view.bias is not None:
            bias = graph.add_constant(f"{w_q.name}_bias", view.bias.astype(np.float32))
            y = graph.add_node("Add", [y, bias], before=node, types=[out.type]).output
        out.replace_all_uses_with(y)
        name = out.name
        graph.remove_node(node)
        take_name(graph, y, name)


def _key(node: Node) -> str:
    return node.name or node.outputs[0].name


def _deviation(reference: Graph, candidate: Graph, batches: Any) -> float:
    """Relative RMS difference of ``candidate``'s float outputs from ``reference``'s."""
    from irkit.passes.manager import evaluate_graph

    diff = total = 0.0
    for batch in batches:
        want, got = evaluate_graph(reference, batch), evaluate_graph(candidate, batch)
        for name, value in want.items():
            ref = np.asarray(value, np.float64)
            if ref.dtype.kind != "f" or name not in got:
                continue
            diff += float(np.sum((np.asarray(got[name], np.float64) - ref) ** 2))
            total += float(np.sum(ref ** 2))
    return float(np.sqrt(diff / total)) if total > 0 else 0.0


def _output_site(view: LinearView) -> Value:
    """Where the output QDQ pair goes: after a Relu that is the only consumer (ORT folds
    Conv+Relu+Q), else on the op's output."""
    out = view.node.outputs[0]
    if len(out.uses) == 1 and not out.is_graph_output:
        user = out.uses[0].node
        if user.op == "Relu" and not user.domain:
            return user.outputs[0]
    return out


def _qdq_pair(graph: Graph, value: Value, params: tuple[np.ndarray, np.ndarray],
              cache: dict[str, Value], *, before: Node | None = None,
              after: Node | None = None) -> Value:
    """QuantizeLinear -> DequantizeLinear on ``value`` (one pair per tensor)."""
    if value.name in cache:
        return cache[value.name]
    scale, zero = params
    s = graph.add_constant(f"{value.name}_scale", scale)
    z = graph.add_constant(f"{value.name}_zp", zero)
    qtype = TensorType(DType.from_numpy(zero.dtype), value.shape)
    if after is not None:
        q = graph.add_node("QuantizeLinear", [value, s, z], after=after, types=[qtype])
        dq = graph.add_node("DequantizeLinear", [q.output, s, z], after=q, types=[value.type])
    else:
        assert before is not None
        q = graph.add_node("QuantizeLinear", [value, s, z], before=before, types=[qtype])
        dq = graph.add_node("DequantizeLinear", [q.output, s, z], before=before,
                            types=[value.type])
    cache[value.name] = dq.output
    return dq.output


def _decompose_fused_linear(graph: Graph) -> None:
    """Standard ops for irkit.MatMulBiasAct/ConvBiasAct, so QDQ targets ORT's patterns."""
    from irkit.ops.registry import get_irkit_op

    for node in graph.nodes:
        if node.domain != IRKIT_DOMAIN or node.op not in ("MatMulBiasAct", "ConvBiasAct"):
            continue
        new_outputs = get_irkit_op(node).decompose(graph, node)
        for old, new in zip(node.outputs, new_outputs):
            new.type = old.type
            old.replace_all_uses_with(new)
            name = old.name
            graph.remove_node(node)
            take_name(graph, new, name)
