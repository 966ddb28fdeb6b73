"""Graph IR -> onnx.ModelProto. irkit-domain ops are decomposed into standard ops first."""

from __future__ import annotations

import onnx
from onnx import helper

from irkit.errors import IrkitError
from irkit.interop.onnx_types import array_to_tensor, attr_to_proto, type_to_proto
from irkit.ir import Graph, Value
from irkit.ops import IRKIT_DOMAIN, get_irkit_op


class ExportError(IrkitError):
    """The graph could not be written as a valid ONNX model."""


def decompose_irkit_ops(graph: Graph) -> Graph:
    """A copy of ``graph`` in which every irkit-domain node is replaced by standard ops."""
    if not any(node.domain == IRKIT_DOMAIN for node in graph.walk()):
        return graph
    graph = graph.clone()
    _decompose_in(graph)
    graph.opset_imports.pop(IRKIT_DOMAIN, None)
    return graph


def _decompose_in(graph: Graph) -> None:
    for node in list(graph.nodes):
        for sub in node.subgraphs():
            _decompose_in(sub)
        if node.domain != IRKIT_DOMAIN:
            continue
        original_names = [v.name for v in node.outputs]
        new_outputs = get_irkit_op(node).decompose(graph, node)
        renames = []
        for old, new, name in zip(node.outputs, new_outputs, original_names):
            new.type = old.type
            old.replace_all_uses_with(new)
            if new.name != name and new.producer is not None and not old.absent:
                renames.append((new, name))
        graph.remove_node(node)
        # The decomposition's results take the op's output names: graph outputs and
        # artifact signatures keep their names.
        for new, name in renames:
            if name not in graph._names:
                graph._names.discard(new.name)
                graph._names.add(name)
                new.name = name


def _value_info(value: Value) -> onnx.ValueInfoProto:
    info = onnx.ValueInfoProto()
    info.name = value.name
    tp = type_to_proto(value.type)
    if tp is not None:
        info.type.CopyFrom(tp)
    return info


def graph_to_proto(graph: Graph) -> onnx.GraphProto:
    gp = onnx.GraphProto()
    gp.name = graph.name
    gp.input.extend(_value_info(v) for v in graph.inputs)
    gp.output.extend(_value_info(v) for v in graph.outputs)
    for name, value in graph.constants.items():
        assert value.const is not None
        gp.initializer.append(array_to_tensor(value.const, name))
    for node in graph.nodes:
        np_node = gp.node.add()
        np_node.op_type = node.op
        np_node.domain = node.domain
        if node.name:
            np_node.name = node.name
        np_node.input.extend("" if v is None else v.name for v in node.inputs)
        np_node.output.extend("" if v.absent else v.name for v in node.outputs)
        for key, attr in node.attrs.items():
            np_node.attribute.append(attr_to_proto(key, attr, graph_to_proto))
        for value in node.outputs:
            if not value.absent and not value.is_graph_output:
                tp = type_to_proto(value.type)
                if tp is not None:
                    gp.value_info.append(_value_info(value))
    return gp


def to_onnx(graph: Graph, *, check: bool = True) -> onnx.ModelProto:
    """Export ``graph`` as an ONNX model; with ``check`` it must pass
    ``onnx.checker.check_model(full_check=True)``."""
    graph = decompose_irkit_ops(graph)
    opsets = [helper.make_opsetid(domain, version)
              for domain, version in sorted(graph.opset_imports.items())]
    ir_version = graph.meta.get("ir_version") or helper.find_min_ir_version_for(
        opsets, ignore_unknown=True
    )
    model = helper.make_model(
        graph_to_proto(graph),
        opset_imports=opsets,
        ir_version=max(int(ir_version), helper.find_min_ir_version_for(opsets, True)),
        producer_name="irkit",
    )
    if check:
        try:
            onnx.checker.check_model(model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ExportError(
                f"graph {graph.name!r} exports to an invalid ONNX model: {exc}"
            ) from None
    return model
