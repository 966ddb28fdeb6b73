"""Ops the lowering lacks, replaced by their ONNX function bodies.

Many ONNX ops are defined by a function over simpler ops (Attention, RMSNormalization,
NegativeLogLikelihoodLoss, Selu, ReduceLogSumExp, …), some of them built per node from its
attributes and input types ("context-dependent" functions). Before lowering, every node
whose op has no lowering but has such a body is inlined through ONNX's own function
builder and inliner, and the graph is re-imported with inferred types. Nodes the lowering
handles directly are left alone, so a direct lowering always wins over the expansion.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from irkit.ir import Graph

if TYPE_CHECKING:
    import onnx

_log = logging.getLogger(__name__)

EXPAND_DOMAIN = "irkit.expand"
MAX_ROUNDS = 4  # bodies may use ops that are themselves functions


def expandable(op: str, domain: str, opset: int) -> bool:
    """Whether ONNX defines ``op`` at ``opset`` by a function body."""
    import onnx.defs

    if domain not in ("", "ai.onnx"):
        return False
    try:
        schema: Any = onnx.defs.get_schema(op, opset, "")
    except onnx.defs.SchemaError:
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


def expand_functions(graph: Graph, lowers: Callable[[str, str], bool]) -> Graph:
    """``graph`` itself when no node needs expanding, else a re-imported copy where every
    node with ``not lowers(op, domain)`` and an ONNX function body is inlined."""
    opset = graph.opset_imports.get("", graph.opset_imports.get("ai.onnx", 17))
    if not any(not lowers(n.op, n.domain) and expandable(n.op, n.domain, opset)
               for n in graph.nodes):
        return graph
    from onnx.shape_inference import InferenceError

    from irkit.errors import IrkitError

    try:
        return _expand(graph, lowers, opset)
    except (IrkitError, InferenceError, ValueError, RuntimeError) as exc:
        # ONNX could not build, inline or type the bodies: the ops stay unsupported and
        # the lowering names them.
        _log.debug("function expansion of %r failed: %s", graph.name, exc)
        return graph


def _expand(graph: Graph, lowers: Callable[[str, str], bool], opset: int) -> Graph:
    import onnx
    import onnx.inliner
    import onnx.shape_inference

    from irkit.interop.onnx_export import to_onnx

    model = to_onnx(graph, check=False)
    for _ in range(MAX_ROUNDS):
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        types = _value_types(model)
        functions: list[onnx.FunctionProto] = []
        for node in model.graph.node:
            if lowers(node.op_type, node.domain) or not expandable(node.op_type, node.domain,
                                                                     opset):
                continue
            _fill_defaults(node, opset)
            body = _function_body(node, opset, types)
            if body is None:
                continue
            body.domain, body.name = EXPAND_DOMAIN, f"{node.op_type}_{len(functions)}"
            node.domain, node.op_type = EXPAND_DOMAIN, body.name
            functions.append(body)
        if not functions:
            break
        model.functions.extend(functions)
        if not any(o.domain == EXPAND_DOMAIN for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid(EXPAND_DOMAIN, 1))
        model = onnx.inliner.inline_local_functions(model)
        kept = [o for o in model.opset_import if o.domain != EXPAND_DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    from irkit.interop.onnx_import import load_onnx

    expanded = load_onnx(model)
    expanded.name = graph.name
    return expanded


def _fill_defaults(node: onnx.NodeProto, opset: int) -> None:
    """Give ``node`` its schema's default for each attribute it omits: ONNX's inliner
    leaves a body's reference to an absent attribute empty (Selu's ``alpha`` becomes a
    Constant with no value) instead of using the default."""
    import onnx.defs

    schema: Any = onnx.defs.get_schema(node.op_type, opset, "")
    present = {a.name for a in node.attribute}
    for name, attr in schema.attributes.items():
        default = attr.default_value
        if name in present or not default.type:
            continue
        filled = node.attribute.add()
        filled.CopyFrom(default)
        filled.name = name


def _value_types(model: onnx.ModelProto) -> dict[str, bytes]:
    import onnx

    g = model.graph
    types = {vi.name: vi.type.SerializeToString()
             for vi in [*g.input, *g.value_info, *g.output] if vi.type.HasField("tensor_type")}
    for init in g.initializer:
        tp = onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims))
        types[init.name] = tp.SerializeToString()
    return types


def _function_body(node: onnx.NodeProto, opset: int, types: dict[str, bytes]
                   ) -> onnx.FunctionProto | None:
    """The node's function body at ``opset``, or None when ONNX can't build one (a
    context-dependent function whose input types are not known)."""
    import onnx
    import onnx.defs

    schema: Any = onnx.defs.get_schema(node.op_type, opset, "")
    body = onnx.FunctionProto()
    if schema.has_function:
        body.CopyFrom(schema.function_body)
        return body if _retarget(body, opset) else None
    input_types = []
    for name in node.input:
        if name == "":
            input_types.append(onnx.TypeProto().SerializeToString())
        elif name in types:
            input_types.append(types[name])
        else:
            return None
    try:
        data = schema.get_context_dependent_function(node.SerializeToString(), input_types)
    except Exception:  # ONNX's builder rejects contexts it cannot expand
        return None
    if not data:
        return None
    body.ParseFromString(data)
    return body if body.node and _retarget(body, opset) else None


def _retarget(body: onnx.FunctionProto, opset: int) -> bool:
    """Move a body written against another default opset to ``opset`` (ONNX's inliner
    needs one version per domain): as is when none of its ops changed in between, else
    through ONNX's version converter (which rewrites ops whose meaning changed); False
    when that fails, so the node stays unexpanded rather than change meaning."""
    import onnx
    import onnx.defs

    for imp in body.opset_import:
        if imp.domain not in ("", "ai.onnx") or imp.version == opset:
            continue
        changed = False
        for node in body.node:
            if node.domain not in ("", "ai.onnx"):
                continue
            try:
                old = onnx.defs.get_schema(node.op_type, imp.version, "").since_version
                new = onnx.defs.get_schema(node.op_type, opset, "").since_version
            except onnx.defs.SchemaError:
                return False
            changed = changed or old != new
        if changed and not _convert_body(body, imp.version, opset):
            return False
        imp.version = opset
    return True


def _convert_body(body: onnx.FunctionProto, version: int, opset: int) -> bool:
    """Rewrite ``body``'s nodes from ``version`` to ``opset`` with ONNX's converter."""
    import onnx
    import onnx.version_converter

    def untyped(name: str) -> onnx.ValueInfoProto:
        return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)

    graph = onnx.helper.make_graph(list(body.node), body.name or "body",
                                   [untyped(i) for i in body.input],
                                   [untyped(o) for o in body.output])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", version)])
    try:
        converted = onnx.version_converter.convert_version(model, opset)
    except Exception:  # the converter raises C++ errors for ops it has no adapter for
        return False
    new_nodes = list(converted.graph.node)
    if len(new_nodes) == len(body.node) and all(
            _same_node(a, b) for a, b in zip(body.node, new_nodes)):
        return True  # only the version moved: keep the original nodes
    if any(a.ref_attr_name for n in body.node for a in n.attribute):
        return False  # the converter drops references to the function's attributes
    del body.node[:]
    body.node.extend(new_nodes)
    return True


def _same_node(a: onnx.NodeProto, b: onnx.NodeProto) -> bool:
    """Same op, wiring and attributes (those ``a`` takes from the function's attributes
    are compared by name only: the converter fills them with defaults)."""
    refs = {x.name for x in a.attribute if x.ref_attr_name}

    def attrs(n: onnx.NodeProto) -> list[bytes]:
        return sorted(x.name.encode() if x.name in refs else x.SerializeToString()
                      for x in n.attribute)

    return (a.op_type == b.op_type and list(a.input) == list(b.input)
            and list(a.output) == list(b.output) and attrs(a) == attrs(b))
