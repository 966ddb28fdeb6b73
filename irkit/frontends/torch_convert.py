"""ExportedProgram (core ATen) -> irkit Graph, through the lowering table in ``torch_ops``."""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import fx
from torch.export.graph_signature import InputKind, OutputKind

from irkit.errors import UnsupportedOpsError
from irkit.frontends.torch_lowering import LoweringContext, LoweringUnsupported, sym_expr
from irkit.frontends.torch_ops import LOWERINGS, SKIPPED, SYM_BINARY, lower_sym_binary
from irkit.ir import DEFAULT_OPSET, Graph, Value

GELU_OPSET = 20  # the first opset with a Gelu op
WEIGHT_KINDS = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
_FAILED = object()  # marks a node whose lowering failed; its users are skipped
_FRAME_RE = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')


def op_key(node: fx.Node) -> str:
    return str(node.target)


def source_line(node: fx.Node) -> str:
    """Where the op came from in the user's code: the innermost frame outside torch."""
    trace = node.meta.get("stack_trace") or ""
    frames = _FRAME_RE.findall(trace)
    user = [f for f in frames if "/torch/" not in f[0]] or frames
    if not user:
        return "<unknown source>"
    path, line, func, code = user[-1]
    return f"{path}:{line} in {func}: {code.strip()}"


def find_unsupported(graph: fx.Graph) -> list[dict[str, Any]]:
    """Every ATen op of the graph the table has no lowering for, with where it came from."""
    found: dict[str, dict[str, Any]] = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        key = op_key(node)
        if node.target is operator.getitem or node.target in SYM_BINARY:
            continue
        if key in LOWERINGS or key in SKIPPED:
            continue
        entry = found.setdefault(key, {"op": key, "count": 0, "nodes": [], "sources": []})
        entry["count"] += 1
        entry["nodes"].append(node.name)
        src = source_line(node)
        if src not in entry["sources"]:
            entry["sources"].append(src)
    return list(found.values())


def unsupported_error(ops: list[dict[str, Any]], name: str) -> UnsupportedOpsError:
    lines = [f"{name}: {len(ops)} ATen op(s) have no irkit lowering:"]
    for entry in ops:
        reason = f" ({entry['reason']})" if entry.get("reason") else ""
        lines.append(f"  {entry['op']} x{entry['count']}{reason}")
        lines.extend(f"      at {src}" for src in entry["sources"][:3])
    return UnsupportedOpsError("\n".join(lines), ops=ops)


def convert_program(
    program: torch.export.ExportedProgram,
    name: str,
    *,
    opset: int | None = None,
    output_names: Sequence[str] | None = None,
    dim_names: Mapping[str, Mapping[int, str]] | None = None,
) -> Graph:
    """Lower a decomposed ExportedProgram. ``dim_names``: input name -> {axis: symbol}."""
    fx_graph = program.graph_module.graph
    missing = find_unsupported(fx_graph)
    if missing:
        raise unsupported_error(missing, name)
    if opset is None:
        has_gelu = any(op_key(n) == "aten.gelu.default" for n in fx_graph.nodes)
        opset = GELU_OPSET if has_gelu else DEFAULT_OPSET

    graph = Graph(name, opset_imports={"": opset})
    specs = {s.arg.name: s for s in program.graph_signature.input_specs}
    placeholders = [n for n in fx_graph.nodes if n.op == "placeholder"]
    symbols = _symbol_names(placeholders, specs, dim_names or {})
    ctx = LoweringContext(graph, opset, symbols)
    weights = {**program.state_dict, **program.constants}

    for node in placeholders:
        spec = specs[node.name]
        if spec.kind in WEIGHT_KINDS:
            ctx.values[node] = graph.add_constant(spec.target, _to_numpy(weights[spec.target]))
        elif spec.kind is InputKind.USER_INPUT and isinstance(node.meta.get("val"), torch.Tensor):
            ctx.values[node] = graph.add_input(node.name, ctx.type_of(node.meta["val"]))
        else:
            ctx.values[node] = node.meta.get("val")  # a specialized non-tensor input

    output_node = next(n for n in fx_graph.nodes if n.op == "output")
    outputs = _user_outputs(program, output_node, output_names)
    ctx.output_names = {node: out_name for node, out_name in outputs}
    failures: dict[str, dict[str, Any]] = {}
    for node in fx_graph.nodes:
        if node.op != "call_function":
            continue
        if any(ctx.values.get(a) is _FAILED for a in node.all_input_nodes):
            ctx.values[node] = _FAILED
            continue
        ctx.current = node
        try:
            ctx.values[node] = _lower_node(ctx, node)
        except LoweringUnsupported as exc:
            entry = failures.setdefault(
                op_key(node),
                {"op": op_key(node), "count": 0, "nodes": [], "sources": [], "reason": str(exc)},
            )
            entry["count"] += 1
            entry["nodes"].append(node.name)
            entry["sources"].append(source_line(node))
            ctx.values[node] = _FAILED
    if failures:
        raise unsupported_error(list(failures.values()), name)

    _set_outputs(ctx, outputs)
    remove_dead_code(graph)
    graph.meta["producer"] = f"torch {torch.__version__} (torch.export)"
    return graph


def _lower_node(ctx: LoweringContext, node: fx.Node) -> Any:
    if node.target is operator.getitem:
        source: Any = node.args[0]
        index: Any = node.args[1]
        result = ctx.values[source][index]
        if result is None:
            raise LoweringUnsupported(
                f"output {index} of {op_key(source)} (a training-only or index output "
                "ONNX has no equivalent of)"
            )
        return result
    if node.target in SYM_BINARY:
        return lower_sym_binary(ctx, *node.args)
    key = op_key(node)
    if key in SKIPPED:
        return None
    return LOWERINGS[key](ctx, *node.args, **node.kwargs)


def _symbol_names(
    placeholders: list[fx.Node],
    specs: Mapping[str, Any],
    dim_names: Mapping[str, Mapping[int, str]],
) -> dict[Any, str]:
    """sympy symbol -> dim name: "N" for the batch dim, else what ``dim_names`` says."""
    names: dict[Any, str] = {}
    for node in placeholders:
        if specs[node.name].kind is not InputKind.USER_INPUT:
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        given = dim_names.get(node.name, {0: "N"})
        for axis, size in enumerate(val.shape):
            expr = sym_expr(size)
            if isinstance(expr, int) or getattr(expr, "is_Integer", False):
                continue
            if expr.is_Symbol and expr not in names:
                names[expr] = given.get(axis, str(expr))
    return names


def _to_numpy(tensor: Any) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype is torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy().copy()


def _user_outputs(
    program: torch.export.ExportedProgram,
    output_node: fx.Node,
    output_names: Sequence[str] | None,
) -> list[tuple[fx.Node, str]]:
    """(FX node, graph output name) of every user output, in order."""
    specs = program.graph_signature.output_specs
    returned: Any = output_node.args[0]
    results = list(returned)
    user = [r for r, s in zip(results, specs) if s.kind is OutputKind.USER_OUTPUT]
    if output_names is None:
        output_names = ["output"] if len(user) == 1 else [f"output_{i}" for i in range(len(user))]
    if len(output_names) != len(user):
        raise ValueError(f"{len(user)} outputs but {len(output_names)} output_names")
    return list(zip(user, output_names))


def _set_outputs(ctx: LoweringContext, outputs: list[tuple[fx.Node, str]]) -> None:
    """Mark the outputs; a value that is an input, a weight, another output or was named
    before (an alias) is copied by an Identity that carries the output name."""
    values: list[Value] = []
    for fx_out, out_name in outputs:
        value = ctx.values[fx_out]
        if not isinstance(value, Value):
            raise LoweringUnsupported(f"output %{fx_out.name} is not a tensor")
        if value.producer is None or value.name != out_name or any(v is value for v in values):
            ctx.current = fx_out
            node = ctx.graph.add_node("Identity", [value], outputs=[out_name], types=[value.type])
            value = node.output
        values.append(value)
    ctx.graph.set_outputs(values)


def remove_dead_code(graph: Graph) -> None:
    """Drop nodes and constants nothing reads (e.g. the transpose a Gemm absorbed)."""
    for node in reversed(graph.nodes):
        if not any(v.is_used for v in node.outputs):
            graph.remove_node(node)
    for value in list(graph.constants.values()):
        if not value.is_used:
            graph.remove_constant(value)
