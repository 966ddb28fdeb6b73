"""The IR text format: ``print_graph(g)`` writes text that ``parse_graph`` reads back exactly.

Weights are referenced by ``@name``; only small constants (up to ``INLINE_LIMIT`` elements)
carry their values inline, so golden files stay readable and self-contained.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from irkit.ir.attrs import Attr, AttrKind
from irkit.ir.dtypes import DType
from irkit.ir.graph import DEFAULT_OPSET, Graph, Node, Value
from irkit.ir.types import (
    MapType,
    OptionalType,
    SequenceType,
    SparseTensorType,
    TensorType,
    UnknownType,
    ValueType,
)

INLINE_LIMIT = 16
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]*\Z")
_PLAIN_DIM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_KEYWORDS = {"graph", "const", "opset", "seq", "opt", "map", "sparse", "tensor", "type", "as",
             "true", "false", "nan", "inf", "ints", "floats", "strings", "tensors", "graphs",
             "types"}


def quote_name(name: str) -> str:
    return name if _PLAIN_NAME.match(name) else json.dumps(name)


def quote_ident(name: str, *, dotted: bool = True) -> str:
    """A graph name (``NAME``/``DOTTED`` bare) or an attribute name (``NAME`` bare): the
    grammar is stricter for these than for value names, which may start with a digit."""
    plain = _IDENT if dotted else _PLAIN_DIM
    return name if plain.match(name) else json.dumps(name)


def value_ref(value: Value) -> str:
    sigil = "@" if value.is_constant else "%"
    return sigil + quote_name(value.name)


def format_type(t: ValueType) -> str:
    if isinstance(t, TensorType):
        return _format_tensor_type(t.dtype, t.shape)
    if isinstance(t, SparseTensorType):
        return f"sparse<{_format_tensor_type(t.dtype, t.shape)}>"
    if isinstance(t, SequenceType):
        return f"seq<{format_type(t.elem)}>"
    if isinstance(t, OptionalType):
        return f"opt<{format_type(t.elem)}>"
    if isinstance(t, MapType):
        return f"map<{t.key.short},{format_type(t.value)}>"
    if isinstance(t, UnknownType):
        return "?"
    raise TypeError(f"cannot print type {t!r}")


def _format_tensor_type(dtype: DType, shape: tuple | None) -> str:
    if shape is None:
        return f"{dtype.short}[*]"
    return f"{dtype.short}[{','.join(_format_dim(d) for d in shape)}]"


def _format_dim(d: int | str | None) -> str:
    if d is None:
        return "?"
    if isinstance(d, int):
        return str(d)
    return d if _PLAIN_DIM.match(d) and d not in _KEYWORDS else json.dumps(d)


def _format_scalar(x: Any, dtype: DType) -> str:
    if dtype is DType.STRING:
        if isinstance(x, bytes):
            x = x.decode("utf-8", errors="surrogateescape")
        return json.dumps(str(x))
    if dtype is DType.BOOL:
        return "true" if bool(x) else "false"
    if dtype.is_float:
        return _format_float(float(x), dtype)
    if dtype in (DType.COMPLEX64, DType.COMPLEX128):
        c = complex(x)
        return f"({_format_float(c.real)},{_format_float(c.imag)})"
    return str(int(x))


def _format_float(f: float, dtype: DType = DType.FLOAT32) -> str:
    """Shortest text that reads back to the same value of ``dtype`` (float32 for attrs)."""
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if dtype in (DType.FLOAT32, DType.FLOAT16):
        text = str(dtype.numpy.type(f))  # numpy prints the shortest round-tripping digits
    else:
        text = repr(f)  # exact for float64 and for every narrower ml_dtypes value
    return text if any(c in text for c in ".eE") else text + ".0"


def format_tensor(array: np.ndarray) -> str:
    dtype = DType.from_numpy(array.dtype)
    items = ", ".join(_format_scalar(x, dtype) for x in array.reshape(-1).tolist())
    return f"tensor<{_format_tensor_type(dtype, array.shape)}>[{items}]"


class _Printer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def graph(self, g: Graph, indent: str) -> str:
        params = ", ".join(f"{value_ref(v)}: {format_type(v.type)}" for v in g.inputs)
        results = ", ".join(f"{value_ref(v)}: {format_type(v.type)}" for v in g.outputs)
        head = f"graph {quote_ident(g.name)}({params}) -> ({results}) {{"
        inner = indent + "  "
        body = []
        for value in g.constants.values():
            body.append(inner + self.const(value))
        for node in g.nodes:
            body.append(inner + self.node(node, inner))
        return "\n".join([head, *body, indent + "}"])

    def const(self, value: Value) -> str:
        assert value.const is not None
        text = f"const {value_ref(value)}: {format_type(value.type)}"
        array = value.const
        if array.size <= INLINE_LIMIT:
            dtype = DType.from_numpy(array.dtype)
            items = ", ".join(_format_scalar(x, dtype) for x in array.reshape(-1).tolist())
            text += f" = [{items}]"
        return text

    def node(self, node: Node, indent: str) -> str:
        outs = ", ".join(
            "_" if v.absent else value_ref(v) for v in node.outputs
        )
        args = ", ".join("_" if v is None else value_ref(v) for v in node.inputs)
        text = f"{outs} = {node.qualified_op}({args})"
        if node.attrs:
            attrs = ", ".join(
                f"{quote_ident(k, dotted=False)}={self.attr(a, indent)}" for k, a in node.attrs.items()
            )
            text += f" {{{attrs}}}"
        text += " : " + ", ".join(format_type(v.type) for v in node.outputs)
        if node.name:
            text += f" as {json.dumps(node.name)}"
        return text

    def attr(self, attr: Attr, indent: str) -> str:
        kind, value = attr.kind, attr.value
        if kind is AttrKind.INT:
            return str(value)
        if kind is AttrKind.FLOAT:
            return _format_float(value)
        if kind is AttrKind.STRING:
            if isinstance(value, bytes):
                value = value.decode("utf-8", errors="surrogateescape")
            return json.dumps(value)
        if kind is AttrKind.TENSOR:
            return format_tensor(value)
        if kind is AttrKind.GRAPH:
            return self.graph(value, indent)
        if kind is AttrKind.TYPE:
            return f"type({format_type(value)})"
        if not value:
            return f"{kind.value}[]"
        elem = kind.element
        return "[" + ", ".join(self.attr(Attr(elem, v), indent) for v in value) + "]"


def print_graph(graph: Graph) -> str:
    """The text form of ``graph`` (with an ``opset`` line when not the default opset)."""
    printer = _Printer()
    text = printer.graph(graph, "")
    if graph.opset_imports != {"": DEFAULT_OPSET}:
        entries = ", ".join(
            f"{domain or 'ai.onnx'}={version}"
            for domain, version in sorted(graph.opset_imports.items())
        )
        text = f"opset({entries})\n" + text
    return text + "\n"
