"""Constant folding: a standard-domain node whose inputs are all constants is run once with
``onnx.reference`` (no hand-written kernels) and replaced by its result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from irkit.ir import Graph, Node
from irkit.passes.base import Pass, PassContext, drop_unused_constants

# Ops whose result is not a function of their inputs, or that produce sequences/maps.
_NEVER_FOLD = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli", "If", "Loop", "Scan", "SequenceConstruct", "SequenceEmpty",
})


def _no_subgraphs(graph: Graph) -> onnx.GraphProto:
    raise ValueError("nodes with subgraphs are never folded")


def evaluate_node(node: Node, opset: int) -> list[np.ndarray]:
    """Run one node on its constant inputs with ``onnx.reference``."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    from irkit.interop.onnx_types import attr_to_proto

    inputs = [f"in{i}" if v is not None else "" for i, v in enumerate(node.inputs)]
    outputs = [f"out{i}" for i in range(len(node.outputs))]
    proto = helper.make_node(node.op, inputs, outputs, domain=node.domain)
    for key, attr in node.attrs.items():
        proto.attribute.append(attr_to_proto(key, attr, _no_subgraphs))
    graph = helper.make_graph(
        [proto],
        "fold",
        [helper.make_value_info(n, onnx.TypeProto()) for n in inputs if n],
        [helper.make_value_info(n, onnx.TypeProto()) for n in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    feeds = {f"in{i}": v.const for i, v in enumerate(node.inputs) if v is not None}
    return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]


@dataclass(frozen=True)
class FoldConstants(Pass):
    """Evaluate constant subgraphs ahead of time.

    ``keep`` lists ops never folded: DequantizeLinear by default, so that int8 weights of a
    quantized (QDQ) graph stay int8 instead of being folded back to float.
    """

    name = "fold"
    max_elements: int = 1 << 22
    keep: tuple[str, ...] = ("DequantizeLinear",)

    def foldable(self, node: Node) -> bool:
        if node.domain not in ("", "ai.onnx") or node.subgraphs():
            return False
        if node.op in _NEVER_FOLD or node.op in self.keep:
            return False
        if any(v.absent for v in node.outputs):
            return False
        return all(v is None or v.is_constant for v in node.inputs)

    def apply(self, graph: Graph, context: PassContext) -> tuple[bool, dict[str, Any]]:
        opset = graph.opset_imports.get("", 17)
        folded: dict[str, int] = {}
        for node in graph.nodes:
            if not self.foldable(node) or any(v.is_graph_output for v in node.outputs):
                continue  # a graph output must stay a node output to keep its name
            try:
                results = evaluate_node(node, opset)
            except Exception:  # an op onnx.reference cannot run: leave it for runtime
                continue
            if any(r.size > self.max_elements for r in results):
                continue
            new_values = []
            for value, result in zip(node.outputs, results):
                dtype = value.dtype
                if dtype is not None and result.dtype != dtype.numpy:
                    result = result.astype(dtype.numpy)
                new_values.append(graph.add_constant(value.name + "_folded", result))
            for value, const in zip(node.outputs, new_values):
                value.replace_all_uses_with(const)
            graph.remove_node(node)
            folded[node.op] = folded.get(node.op, 0) + 1
        dropped = drop_unused_constants(graph)
        return bool(folded) or dropped > 0, {"folded": folded, "constants_dropped": dropped}
