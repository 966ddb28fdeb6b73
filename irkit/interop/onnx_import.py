"""ONNX import: a path or ModelProto -> irkit Graph.

Initializers and Constant nodes become constants; local functions are inlined; opsets
older than 13 are converted with onnx's version converter; missing types are filled by
ONNX shape inference. Every failure is an IrkitError naming the file and the ops at fault.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.inliner  # a submodule that ``import onnx`` does not load
from google.protobuf.message import DecodeError

from irkit.errors import ModelLoadError, UnsupportedOpsError
from irkit.interop.onnx_types import (
    attr_from_proto,
    sparse_to_dense,
    tensor_to_array,
    type_from_proto,
)
from irkit.ir import Graph, Node, TensorType, UnknownType, Value
from irkit.ops import is_irkit_op

MIN_OPSET = 13
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview", "ai.onnx.preview.training")


def read_model(source: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Read and sanity-check a model; returns it with a label for messages."""
    if isinstance(source, onnx.ModelProto):
        model, label, base = source, "<ModelProto>", None
    else:
        path = Path(source)
        label = str(path)
        if not path.is_file():
            raise ModelLoadError(f"{label}: no such model file")
        data = path.read_bytes()
        model = onnx.ModelProto()
        try:
            model.ParseFromString(data)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise ModelLoadError(
                f"{label}: not a valid ONNX model: the protobuf is truncated or malformed "
                f"({len(data)} bytes; {exc})"
            ) from None
        base = path.parent
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise ModelLoadError(
            f"{label}: not an ONNX model (no ir_version, graph or opset_import; wrong file "
            "type or a truncated file?)"
        )
    if base is not None:
        _load_external_data(model, base, label)
    return model, label


def _iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _iter_graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _iter_graphs(g)


def _load_external_data(model: onnx.ModelProto, base: Path, label: str) -> None:
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    missing: dict[str, list[str]] = {}
    external = []
    for g in _iter_graphs(model.graph):
        for tensor in g.initializer:
            if uses_external_data(tensor):
                external.append(tensor)
                info = ExternalDataInfo(tensor)
                location = base / info.location
                if not location.is_file():
                    missing.setdefault(str(location), []).append(tensor.name)
    if missing:
        lines = [f"  {path} (tensors: {', '.join(names[:5])}{' …' if len(names) > 5 else ''})"
                 for path, names in missing.items()]
        raise ModelLoadError(
            f"{label}: external data file(s) missing:\n" + "\n".join(lines)
        )
    if external:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(base))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise ModelLoadError(f"{label}: cannot read external data: {exc}") from None


def _opset_of(model: onnx.ModelProto, domain: str) -> int | None:
    for entry in model.opset_import:
        if (entry.domain or "") == domain or (domain == "" and entry.domain == "ai.onnx"):
            return entry.version
    return None


def check_ops(model: onnx.ModelProto, label: str) -> None:
    """Raise one UnsupportedOpsError naming every op irkit cannot represent."""
    bad: list[dict[str, object]] = []
    seen: set[tuple[str, str]] = set()
    for g in _iter_graphs(model.graph):
        for node in g.node:
            domain = "" if node.domain == "ai.onnx" else node.domain
            opset = _opset_of(model, domain)
            if domain == "irkit":
                known = is_irkit_op(node.op_type)
            elif domain in STANDARD_DOMAINS:
                known = onnx.defs.has(node.op_type, domain) and opset is not None
            else:
                known = False
            if not known and (domain, node.op_type) not in seen:
                seen.add((domain, node.op_type))
                bad.append({"op": node.op_type, "domain": domain or "ai.onnx",
                            "opset": opset, "node": node.name})
    if bad:
        lines = [
            f"  {b['op']} (domain {b['domain']!r}, opset {b['opset']}, node {b['node']!r})"
            for b in bad
        ]
        raise UnsupportedOpsError(
            f"{label}: {len(bad)} op(s) cannot be represented (unknown op or domain):\n"
            + "\n".join(lines),
            bad,
        )


def _prepare(model: onnx.ModelProto, label: str, infer_shapes: bool) -> onnx.ModelProto:
    if model.functions:
        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception as exc:  # onnx raises a variety of C++-level errors here
            raise ModelLoadError(f"{label}: cannot inline local functions: {exc}") from None
    check_ops(model, label)
    version = _opset_of(model, "")
    if version is not None and version < MIN_OPSET:
        _coerce_legacy_hardmax(model.graph)
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:  # the converter raises C++ errors as RuntimeError etc.
            raise ModelLoadError(
                f"{label}: opset {version} is older than {MIN_OPSET} and onnx's version "
                f"converter failed: {exc}"
            ) from None
    if infer_shapes:
        # Keep the declared types when inference itself fails on a model.
        with contextlib.suppress(Exception):
            model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    return model


def _coerce_legacy_hardmax(graph: onnx.GraphProto) -> None:
    """Before opset 13, Hardmax works on the input flattened to 2-D at ``axis``; onnx's
    version converter keeps the node as is, which changes its meaning for inputs of rank
    > 2. Spell the old meaning out (as the converter does for Softmax): Flatten, Hardmax
    on axis 1, Reshape back."""
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "Hardmax" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        x, y = node.input[0], node.output[0]
        tag = f"{y}__legacy_hardmax"
        nodes += [
            onnx.helper.make_node("Shape", [x], [f"{tag}_shape"]),
            onnx.helper.make_node("Flatten", [x], [f"{tag}_2d"], axis=axis),
            onnx.helper.make_node("Hardmax", [f"{tag}_2d"], [f"{tag}_max"], axis=1,
                                  name=node.name),
            onnx.helper.make_node("Reshape", [f"{tag}_max", f"{tag}_shape"], [y]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)


def load_onnx(source: str | os.PathLike | onnx.ModelProto, *, infer_shapes: bool = True) -> Graph:
    """Import an ONNX model (file path or ModelProto) into irkit's Graph IR."""
    model, label = read_model(source)
    model = _prepare(model, label, infer_shapes)
    opsets = {("" if e.domain == "ai.onnx" else e.domain): int(e.version)
              for e in model.opset_import}
    name = model.graph.name or (Path(label).stem if label != "<ModelProto>" else "main")
    graph = _Importer(label).graph(model.graph, None, {}, name=name)
    graph.opset_imports = opsets
    graph.meta.update(
        ir_version=int(model.ir_version),
        producer=model.producer_name,
        source=label,
    )
    return graph


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    for a in node.attribute:
        if a.name == "value":
            return tensor_to_array(a.t)
        if a.name == "sparse_value":
            return sparse_to_dense(a.sparse_tensor)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
        if a.name == "value_string":
            return np.array(a.s, dtype=object)
        if a.name == "value_strings":
            arr = np.empty(len(a.strings), dtype=object)
            arr[:] = list(a.strings)
            return arr
    raise ModelLoadError(f"Constant node {node.name!r} has no value attribute")


class _Importer:
    def __init__(self, label: str) -> None:
        self.label = label

    def graph(
        self,
        gp: onnx.GraphProto,
        outer: Graph | None,
        outer_scope: dict[str, Value],
        name: str | None = None,
    ) -> Graph:
        graph = Graph(name or gp.name or "body", outer=outer)
        scope: dict[str, Value] = dict(outer_scope)
        types = {vi.name: type_from_proto(vi.type) for vi in gp.value_info}
        types.update({vi.name: type_from_proto(vi.type) for vi in gp.output})
        initializers = {t.name for t in gp.initializer} | {
            s.values.name for s in gp.sparse_initializer
        }
        for vi in gp.input:
            if vi.name in initializers:
                continue  # an initializer listed as input (IR < 4 style): a constant
            scope[vi.name] = graph.add_input(self._fresh(graph, vi.name),
                                             type_from_proto(vi.type))
        for tensor in gp.initializer:
            scope[tensor.name] = graph.add_constant(tensor.name, tensor_to_array(tensor))
        for sparse in gp.sparse_initializer:
            scope[sparse.values.name] = graph.add_constant(
                sparse.values.name, sparse_to_dense(sparse)
            )
        for np_node in gp.node:
            if np_node.op_type == "Constant" and np_node.domain in ("", "ai.onnx"):
                out = np_node.output[0]
                scope[out] = graph.add_constant(out, _constant_value(np_node))
                continue
            self.node(np_node, graph, scope, types)
        outputs = []
        for vi in gp.output:
            value = scope.get(vi.name)
            if value is None:
                raise ModelLoadError(
                    f"{self.label}: graph {gp.name!r} output {vi.name!r} is never produced"
                )
            if isinstance(value.type, UnknownType):
                value.type = type_from_proto(vi.type)
            outputs.append(value)
        graph.set_outputs(outputs)
        return graph

    def _fresh(self, graph: Graph, name: str) -> str:
        """``name``, or an unused variant when a (shadowed) outer value already has it.
        Not reserved here: ``add_input`` / ``append`` reserve it."""
        if name not in graph._names:
            return name
        fresh = graph.unique_name(name)
        graph._names.discard(fresh)
        return fresh

    def node(
        self,
        np_node: onnx.NodeProto,
        graph: Graph,
        scope: dict[str, Value],
        types: dict[str, Any],
    ) -> None:
        inputs: list[Value | None] = []
        for name in np_node.input:
            if not name:
                inputs.append(None)
                continue
            value = scope.get(name)
            if value is None:
                raise ModelLoadError(
                    f"{self.label}: node {np_node.op_type} {np_node.name!r} reads {name!r}, "
                    "which is not defined before it (the graph is not topologically sorted "
                    "or the name is misspelled)"
                )
            inputs.append(value)
        def subgraph(g: onnx.GraphProto) -> Graph:
            return self.graph(g, graph, scope)

        attrs = {a.name: attr_from_proto(a, subgraph) for a in np_node.attribute}
        outputs: list[str | None] = [name or None for name in np_node.output]
        out_types = [types.get(n) if n else None for n in np_node.output]
        node = Node(
            np_node.op_type,
            inputs,
            attrs,
            domain=np_node.domain,
            outputs=[None if n is None else self._fresh(graph, n) for n in outputs],
            types=[t if t is not None else UnknownType() for t in out_types],
            name=np_node.name,
        )
        graph.append(node)
        for original, value in zip(np_node.output, node.outputs):
            if original:
                scope[original] = value


__all__ = ["TensorType", "load_onnx", "read_model"]
