"""Typed node attributes (ONNX AttributeProto kinds)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from irkit.ir.graph import Graph


class AttrKind(enum.Enum):
    INT = "int"
    FLOAT = "float"
    STRING = "string"
    TENSOR = "tensor"
    GRAPH = "graph"
    TYPE = "type"
    INTS = "ints"
    FLOATS = "floats"
    STRINGS = "strings"
    TENSORS = "tensors"
    GRAPHS = "graphs"
    TYPES = "types"

    @property
    def is_list(self) -> bool:
        return self.value.endswith("s") and self is not AttrKind.STRING

    @property
    def element(self) -> AttrKind:
        return AttrKind(self.value[:-1]) if self.is_list else self


@dataclass(frozen=True, eq=False)
class Attr:
    """An attribute value with its ONNX kind. List values are tuples; tensors are arrays."""

    kind: AttrKind
    value: Any

    @staticmethod
    def infer(value: Any) -> Attr:
        """Wrap a plain Python value, inferring its kind (empty lists need an explicit kind)."""
        from irkit.ir.graph import Graph
        from irkit.ir.types import MapType, OptionalType, SequenceType, TensorType

        type_classes = (TensorType, SequenceType, OptionalType, MapType)
        if isinstance(value, Attr):
            return value
        if isinstance(value, bool | int | np.integer):
            return Attr(AttrKind.INT, int(value))
        if isinstance(value, float | np.floating):
            return Attr(AttrKind.FLOAT, float(value))
        if isinstance(value, str | bytes):
            return Attr(AttrKind.STRING, value)
        if isinstance(value, np.ndarray):
            return Attr(AttrKind.TENSOR, value)
        if isinstance(value, Graph):
            return Attr(AttrKind.GRAPH, value)
        if isinstance(value, type_classes):
            return Attr(AttrKind.TYPE, value)
        if isinstance(value, list | tuple):
            items = tuple(value)
            if not items:
                raise ValueError("an empty list attribute needs an explicit Attr(kind, ())")
            elem = Attr.infer(items[0]).kind
            if elem is AttrKind.INT and any(isinstance(v, float) for v in items):
                elem = AttrKind.FLOAT
            kind = AttrKind(elem.value + "s")
            return Attr(kind, tuple(Attr(elem, v).normalized().value for v in items))
        raise TypeError(f"cannot use {type(value).__name__} as an attribute value")

    def normalized(self) -> Attr:
        if self.kind is AttrKind.INT:
            return Attr(self.kind, int(self.value))
        if self.kind is AttrKind.FLOAT:
            return Attr(self.kind, float(self.value))
        return self

    def graphs(self) -> tuple[Graph, ...]:
        if self.kind is AttrKind.GRAPH:
            return (self.value,)
        if self.kind is AttrKind.GRAPHS:
            return tuple(self.value)
        return ()
