"""irkit's Graph IR: typed SSA graphs with ONNX op semantics, a text format and a verifier."""

from irkit.ir.attrs import Attr, AttrKind
from irkit.ir.dtypes import DType
from irkit.ir.graph import DEFAULT_OPSET, Graph, Node, Use, Value
from irkit.ir.parser import parse_graph
from irkit.ir.printer import format_type, print_graph
from irkit.ir.types import (
    Dim,
    MapType,
    OptionalType,
    SequenceType,
    SparseTensorType,
    TensorType,
    UnknownType,
    ValueType,
)
from irkit.ir.verifier import verify

__all__ = [
    "DEFAULT_OPSET",
    "Attr",
    "AttrKind",
    "DType",
    "Dim",
    "Graph",
    "MapType",
    "Node",
    "OptionalType",
    "SequenceType",
    "SparseTensorType",
    "TensorType",
    "UnknownType",
    "Use",
    "Value",
    "ValueType",
    "format_type",
    "parse_graph",
    "print_graph",
    "verify",
]
