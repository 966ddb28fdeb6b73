"""Shape simplification: ``Shape``/``Size`` of statically known dims become constants,
``Gather`` of known dims out of a ``Shape`` too, and reshapes that do nothing or that
reshape a reshape collapse. Run ``fold`` afterwards to finish the arithmetic on shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from irkit.ir import Graph, Node, Value
from irkit.passes.base import Pass, PassContext, drop_unused_constants, replace_node


def _static_dims(value: Value | None) -> tuple[Any, ...] | None:
    return None if value is None else value.shape


def _shape_slice(node: Node, dims: tuple[Any, ...]) -> tuple[Any, ...]:
    rank = len(dims)
    start = node.attr("start", 0)
    end = node.attr("end", rank)
    start = max(0, min(rank, start + rank if start < 0 else start))
    end = max(0, min(rank, end + rank if end < 0 else end))
    return dims[start:end]


def _is_static(dims: tuple[Any, ...]) -> bool:
    return all(isinstance(d, int) for d in dims)


@dataclass(frozen=True)
class SimplifyShapes(Pass):
    """Replace shape computations whose results are known at compile time."""

    name = "shapes"

    def apply(self, graph: Graph, context: PassContext) -> tuple[bool, dict[str, Any]]:
        counts: dict[str, int] = {}

        def bump(key: str) -> None:
            counts[key] = counts.get(key, 0) + 1

        for node in graph.nodes:
            if node.domain:
                continue
            if any(v.is_graph_output for v in node.outputs):
                if node.op == "Reshape" and self._merge_reshapes(node):
                    bump("reshape_of_reshape")  # keeps the node, so its output name too
                continue
            if node.op == "Shape" and self._fold_shape(graph, node):
                bump("shape")
            elif node.op == "Size" and self._fold_size(graph, node):
                bump("size")
            elif node.op == "Gather" and self._fold_gather_of_shape(graph, node):
                bump("gather_of_shape")
            elif node.op == "Slice" and self._fold_slice_of_shape(graph, node):
                bump("slice_of_shape")
            elif node.op in ("Reshape", "Identity") and self._drop_noop(node):
                bump(f"noop_{node.op.lower()}")
            elif node.op == "Reshape" and self._merge_reshapes(node):
                bump("reshape_of_reshape")
        for node in reversed(graph.nodes):  # Shape nodes orphaned by the rewrites above
            if node.op == "Shape" and not any(v.is_used for v in node.outputs):
                graph.remove_node(node)
        drop_unused_constants(graph)
        return bool(counts), {"rewrites": counts}

    def _fold_shape(self, graph: Graph, node: Node) -> bool:
        dims = _static_dims(node.inputs[0])
        if dims is None:
            return False
        dims = _shape_slice(node, dims)
        if not _is_static(dims):
            return False
        const = graph.add_constant(node.output.name + "_static", np.array(dims, np.int64))
        replace_node(node, [const])
        return True

    def _fold_size(self, graph: Graph, node: Node) -> bool:
        dims = _static_dims(node.inputs[0])
        if dims is None or not _is_static(dims):
            return False
        size = np.array(int(np.prod(dims, dtype=np.int64)), np.int64)
        replace_node(node, [graph.add_constant(node.output.name + "_static", size)])
        return True

    def _fold_gather_of_shape(self, graph: Graph, node: Node) -> bool:
        data, indices = node.inputs[0], node.inputs[1]
        if data is None or indices is None or indices.const is None:
            return False
        shape_node = data.producer
        if shape_node is None or shape_node.op != "Shape" or node.attr("axis", 0) != 0:
            return False
        dims = _static_dims(shape_node.inputs[0])
        if dims is None:
            return False
        dims = _shape_slice(shape_node, dims)
        index = indices.const.astype(np.int64)
        flat = [dims[int(i)] for i in index.reshape(-1)]
        if not all(isinstance(d, int) for d in flat):
            return False
        result = np.array(flat, np.int64).reshape(index.shape)
        replace_node(node, [graph.add_constant(node.output.name + "_static", result)])
        return True

    def _fold_slice_of_shape(self, graph: Graph, node: Node) -> bool:
        data = node.inputs[0]
        shape_node = data.producer if data is not None else None
        if shape_node is None or shape_node.op != "Shape":
            return False
        params = list(node.inputs[1:])
        if any(v is not None and v.const is None for v in params):
            return False
        dims = _static_dims(shape_node.inputs[0])
        if dims is None:
            return False
        dims = _shape_slice(shape_node, dims)
        arrays = [None if v is None else v.const for v in params] + [None] * (4 - len(params))
        starts, ends, axes, steps = arrays
        if axes is not None and list(np.asarray(axes).reshape(-1)) not in ([0], [-1]):
            return False
        step = 1 if steps is None else int(np.asarray(steps).reshape(-1)[0])
        start = int(np.asarray(starts).reshape(-1)[0])
        end = int(np.asarray(ends).reshape(-1)[0])
        picked = list(range(len(dims)))[slice(start, end, step)]
        values = [dims[i] for i in picked]
        if not _is_static(tuple(values)):
            return False
        result = np.array(values, np.int64)
        replace_node(node, [graph.add_constant(node.output.name + "_static", result)])
        return True

    def _drop_noop(self, node: Node) -> bool:
        source = node.inputs[0]
        if source is None:
            return False
        if node.op == "Reshape":
            before, after = source.shape, node.output.shape
            if before is None or after is None or not _is_static(before) or before != after:
                return False
        replace_node(node, [source])
        return True

    def _merge_reshapes(self, node: Node) -> bool:
        source, shape = node.inputs[0], node.inputs[1]
        inner = source.producer if source is not None else None
        if inner is None or inner.op != "Reshape" or shape is None or shape.const is None:
            return False
        if np.any(shape.const == 0) and not node.attr("allowzero", 0):
            return False  # 0 copies a dim of the intermediate shape
        node.set_input(0, inner.inputs[0])
        return True
