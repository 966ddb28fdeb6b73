"""Conversions between ONNX protobuf types/attributes and irkit IR types/attributes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TypeProto, numpy_helper

from irkit.ir import (
    Attr,
    AttrKind,
    DType,
    Graph,
    MapType,
    OptionalType,
    SequenceType,
    SparseTensorType,
    TensorType,
    UnknownType,
    ValueType,
)


def _shape_from_proto(tensor_type: Any) -> tuple[int | str | None, ...] | None:
    if not tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def type_from_proto(tp: TypeProto) -> ValueType:
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        if tp.tensor_type.elem_type == 0:
            return UnknownType()
        return TensorType(DType.from_onnx(tp.tensor_type.elem_type),
                          _shape_from_proto(tp.tensor_type))
    if kind == "sparse_tensor_type":
        return SparseTensorType(DType.from_onnx(tp.sparse_tensor_type.elem_type),
                                _shape_from_proto(tp.sparse_tensor_type))
    if kind == "sequence_type":
        return SequenceType(type_from_proto(tp.sequence_type.elem_type))
    if kind == "optional_type":
        return OptionalType(type_from_proto(tp.optional_type.elem_type))
    if kind == "map_type":
        return MapType(DType.from_onnx(tp.map_type.key_type),
                       type_from_proto(tp.map_type.value_type))
    return UnknownType()


def _fill_shape(target: Any, shape: tuple[int | str | None, ...] | None) -> None:
    if shape is None:
        return
    target.shape.SetInParent()
    for d in shape:
        dim = target.shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d


def type_to_proto(t: ValueType) -> TypeProto | None:
    """TypeProto for ``t``; None when the type is unknown."""
    tp = TypeProto()
    if isinstance(t, TensorType):
        tp.tensor_type.elem_type = t.dtype.value
        _fill_shape(tp.tensor_type, t.shape)
    elif isinstance(t, SparseTensorType):
        tp.sparse_tensor_type.elem_type = t.dtype.value
        _fill_shape(tp.sparse_tensor_type, t.shape)
    elif isinstance(t, SequenceType):
        inner = type_to_proto(t.elem)
        tp.sequence_type.SetInParent()
        if inner is not None:
            tp.sequence_type.elem_type.CopyFrom(inner)
    elif isinstance(t, OptionalType):
        inner = type_to_proto(t.elem)
        tp.optional_type.SetInParent()
        if inner is not None:
            tp.optional_type.elem_type.CopyFrom(inner)
    elif isinstance(t, MapType):
        tp.map_type.key_type = t.key.value
        inner = type_to_proto(t.value)
        if inner is not None:
            tp.map_type.value_type.CopyFrom(inner)
    else:
        return None
    return tp


def tensor_to_array(tensor: onnx.TensorProto) -> np.ndarray:
    if tensor.data_type == onnx.TensorProto.STRING:
        # Raw bytes, as the IR parser and Constant value_string give: ONNX strings need
        # not be UTF-8 (numpy_helper decodes them and fails on other bytes).
        flat = np.empty(len(tensor.string_data), dtype=object)
        flat[:] = list(tensor.string_data)
        return flat.reshape(tuple(tensor.dims))
    return numpy_helper.to_array(tensor)


def sparse_to_dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    values = tensor_to_array(sparse.values)
    indices = tensor_to_array(sparse.indices).astype(np.int64)
    dims = tuple(sparse.dims)
    dense = np.zeros(dims, dtype=values.dtype)
    if indices.ndim == 1:
        dense.reshape(-1)[indices] = values
    else:
        dense[tuple(indices.T)] = values
    return dense


def array_to_tensor(array: np.ndarray, name: str = "") -> onnx.TensorProto:
    if array.dtype == object:
        flat: Any = [
            v if isinstance(v, bytes) else str(v).encode("utf-8", errors="surrogateescape")
            for v in array.reshape(-1)
        ]
        return onnx.helper.make_tensor(name, onnx.TensorProto.STRING, array.shape, flat)
    return numpy_helper.from_array(np.asarray(array), name)


def attr_from_proto(a: AttributeProto, subgraph: Callable[[onnx.GraphProto], Graph]) -> Attr:
    t = a.type
    A = AttributeProto
    if t == A.INT:
        return Attr(AttrKind.INT, int(a.i))
    if t == A.FLOAT:
        return Attr(AttrKind.FLOAT, float(a.f))
    if t == A.STRING:
        return Attr(AttrKind.STRING, _decode(a.s))
    if t == A.TENSOR:
        return Attr(AttrKind.TENSOR, tensor_to_array(a.t))
    if t == A.SPARSE_TENSOR:
        return Attr(AttrKind.TENSOR, sparse_to_dense(a.sparse_tensor))
    if t == A.GRAPH:
        return Attr(AttrKind.GRAPH, subgraph(a.g))
    if t == A.TYPE_PROTO:
        return Attr(AttrKind.TYPE, type_from_proto(a.tp))
    if t == A.INTS:
        return Attr(AttrKind.INTS, tuple(int(v) for v in a.ints))
    if t == A.FLOATS:
        return Attr(AttrKind.FLOATS, tuple(float(v) for v in a.floats))
    if t == A.STRINGS:
        return Attr(AttrKind.STRINGS, tuple(_decode(s) for s in a.strings))
    if t == A.TENSORS:
        return Attr(AttrKind.TENSORS, tuple(tensor_to_array(x) for x in a.tensors))
    if t == A.SPARSE_TENSORS:
        return Attr(AttrKind.TENSORS, tuple(sparse_to_dense(x) for x in a.sparse_tensors))
    if t == A.GRAPHS:
        return Attr(AttrKind.GRAPHS, tuple(subgraph(g) for g in a.graphs))
    if t == A.TYPE_PROTOS:
        return Attr(AttrKind.TYPES, tuple(type_from_proto(x) for x in a.type_protos))
    raise ValueError(f"attribute {a.name!r} has unsupported type {t}")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="surrogateescape")


def attr_to_proto(
    name: str, attr: Attr, subgraph: Callable[[Graph], onnx.GraphProto]
) -> AttributeProto:
    kind, value = attr.kind, attr.value
    out = AttributeProto()
    out.name = name
    A = AttributeProto
    if kind is AttrKind.INT:
        out.type, out.i = A.INT, int(value)
    elif kind is AttrKind.FLOAT:
        out.type, out.f = A.FLOAT, float(value)
    elif kind is AttrKind.STRING:
        out.type = A.STRING
        out.s = value.encode("utf-8", errors="surrogateescape") if isinstance(value, str) else value
    elif kind is AttrKind.TENSOR:
        out.type = A.TENSOR
        out.t.CopyFrom(array_to_tensor(value))
    elif kind is AttrKind.GRAPH:
        out.type = A.GRAPH
        out.g.CopyFrom(subgraph(value))
    elif kind is AttrKind.TYPE:
        out.type = A.TYPE_PROTO
        tp = type_to_proto(value)
        if tp is not None:
            out.tp.CopyFrom(tp)
    elif kind is AttrKind.INTS:
        out.type = A.INTS
        out.ints.extend(int(v) for v in value)
    elif kind is AttrKind.FLOATS:
        out.type = A.FLOATS
        out.floats.extend(float(v) for v in value)
    elif kind is AttrKind.STRINGS:
        out.type = A.STRINGS
        out.strings.extend(
            v.encode("utf-8", errors="surrogateescape") if isinstance(v, str) else v
            for v in value
        )
    elif kind is AttrKind.TENSORS:
        out.type = A.TENSORS
        out.tensors.extend(array_to_tensor(v) for v in value)
    elif kind is AttrKind.GRAPHS:
        out.type = A.GRAPHS
        out.graphs.extend(subgraph(g) for g in value)
    elif kind is AttrKind.TYPES:
        out.type = A.TYPE_PROTOS
        out.type_protos.extend(tp for tp in (type_to_proto(v) for v in value) if tp is not None)
    return out
