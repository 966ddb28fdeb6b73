"""Parse IR text (see printer.py) back into a Graph.

Constants declared without inline values take their arrays from ``weights``; values
are resolved by name through enclosing scopes, so subgraphs can read outer values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedInput, VisitError

from irkit.errors import ParseError
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

_PARSER: Lark | None = None


def _lark() -> Lark:
    global _PARSER
    if _PARSER is None:
        _PARSER = Lark.open(
            str(Path(__file__).with_name("ir.lark")),
            parser="lalr",
            propagate_positions=True,
            maybe_placeholders=False,
        )
    return _PARSER


def parse_graph(text: str, weights: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Build a Graph from IR text; ``weights`` supplies arrays of non-inline constants."""
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as exc:
        context = exc.get_context(text).rstrip("\n")
        raise ParseError(
            f"line {exc.line}, column {exc.column}: {_describe(exc)}\n{context}"
        ) from None
    except LarkError as exc:
        raise ParseError(str(exc)) from None
    try:
        return _Builder(text, weights or {}).build(tree)
    except VisitError as exc:  # pragma: no cover - defensive; builder does not use visitors
        raise ParseError(str(exc.orig_exc)) from None


def _describe(exc: UnexpectedInput) -> str:
    token = getattr(exc, "token", None)
    expected = sorted(getattr(exc, "expected", None) or getattr(exc, "allowed", None) or [])
    got = f"unexpected {token!r}" if token is not None else "unexpected input"
    if expected:
        return f"{got}; expected one of {', '.join(expected[:8])}"
    return got


def _unquote(text: str) -> str:
    return json.loads(text) if text.startswith('"') else text


class _Builder:
    def __init__(self, text: str, weights: Mapping[str, np.ndarray]) -> None:
        self.text = text
        self.weights = weights

    def fail(self, item: Any, message: str) -> ParseError:
        line = getattr(item, "line", None) or getattr(getattr(item, "meta", None), "line", "?")
        column = getattr(item, "column", None) or getattr(
            getattr(item, "meta", None), "column", "?"
        )
        return ParseError(f"line {line}, column {column}: {message}")

    def build(self, tree: Any) -> Graph:
        opsets = {"": DEFAULT_OPSET}
        graph_tree = tree.children[-1]
        if len(tree.children) == 2:
            opsets = {}
            for entry in tree.children[0].children:
                domain, version = entry.children
                opsets["" if str(domain) == "ai.onnx" else str(domain)] = int(version)
        graph = self.graph(graph_tree, outer=None)
        graph.opset_imports = opsets
        return graph

    # -- graphs ------------------------------------------------------------------------
    def graph(self, tree: Any, outer: Graph | None) -> Graph:
        name_tree, inputs_tree, results_tree, *stmts = tree.children
        params = inputs_tree.children
        results = results_tree.children
        graph = Graph(_unquote(str(name_tree.children[0])), outer=outer)
        scope: dict[str, Value] = {}
        for param in params:
            ref, type_tree = param.children
            name = _unquote(str(ref)[1:])
            if str(ref).startswith("@"):
                raise self.fail(ref, f"graph input {ref} must be a %value, not a constant")
            try:
                scope[name] = graph.add_input(name, self.type(type_tree))
            except ValueError as exc:
                raise self.fail(ref, str(exc)) from None
        for stmt in stmts:
            if stmt.data == "const_decl":
                self.const(stmt, graph, scope)
            else:
                self.node(stmt, graph, scope)
        outputs = []
        for result in results:
            ref, _type = result.children
            outputs.append(self.lookup(ref, graph, scope))
        graph.set_outputs(outputs)
        return graph

    def lookup(self, ref: Any, graph: Graph, scope: dict[str, Value]) -> Value:
        text = str(ref)
        name = _unquote(text[1:])
        g: Graph | None = graph
        found = scope.get(name)
        while found is None and g is not None:
            found = g.find_value(name)
            g = g.outer
        if found is None:
            raise self.fail(ref, f"{text} is not defined before use")
        if text.startswith("@") != found.is_constant:
            kind = "a constant (@)" if found.is_constant else "a value (%)"
            raise self.fail(ref, f"{text} refers to {kind}")
        return found

    def const(self, stmt: Any, graph: Graph, scope: dict[str, Value]) -> None:
        ref, type_tree, *values = stmt.children
        name = _unquote(str(ref)[1:])
        ctype = self.type(type_tree)
        if not isinstance(ctype, TensorType) or ctype.shape is None:
            raise self.fail(ref, f"constant {ref} needs a tensor type with a known shape")
        if any(not isinstance(d, int) for d in ctype.shape):
            raise self.fail(ref, f"constant {ref} needs a static shape, got {ctype}")
        if values:  # a const_init tree; it has no children for an empty ``= []``
            literals = values[0].children[0].children if values[0].children else []
            array = self.array(literals, ctype.dtype, ctype.shape, ref)
        elif name in self.weights:
            array = np.asarray(self.weights[name])
        else:
            raise self.fail(ref, f"constant {ref} has no inline value and no entry in weights")
        if tuple(array.shape) != tuple(ctype.shape) or DType.from_numpy(array.dtype) is not (
            ctype.dtype
        ):
            raise self.fail(
                ref, f"constant {ref} is declared {ctype} but its data is "
                f"{DType.from_numpy(array.dtype).short}{list(array.shape)}"
            )
        try:
            scope[name] = graph.add_constant(name, array, exact_name=True)
        except ValueError as exc:
            raise self.fail(ref, str(exc)) from None

    def node(self, stmt: Any, graph: Graph, scope: dict[str, Value]) -> None:
        children = list(stmt.children)
        outs_tree, op_tree = children[0], children[1]
        args: list[Any] = []
        attrs: dict[str, Attr] = {}
        types: list[ValueType] = []
        node_name = ""
        for child in children[2:]:
            if child.data == "args":
                args = child.children
            elif child.data == "attrs":
                for attr in child.children:
                    key_tree, value_tree = attr.children
                    key = _unquote(str(key_tree.children[0]))
                    attrs[key] = self.attr(value_tree, graph)
            elif child.data == "type_list":
                types = [self.type(t) for t in child.children]
            elif child.data == "node_name":
                node_name = json.loads(str(child.children[0]))
        op_full = str(op_tree.children[0])
        domain, _, op = op_full.rpartition(".")
        inputs = [
            None if isinstance(a, Token) and a.type == "HOLE" else self.lookup(a, graph, scope)
            for a in args
        ]
        outs = outs_tree.children
        if len(types) != len(outs):
            raise self.fail(op_tree, f"{op_full}: {len(outs)} outputs but {len(types)} types")
        names: list[str | None] = []
        for out in outs:
            if out.type == "HOLE":
                names.append(None)
                continue
            if str(out).startswith("@"):
                raise self.fail(out, f"node outputs are %values, got {out}")
            name = _unquote(str(out)[1:])
            if name in graph._names:
                raise self.fail(out, f"value %{name} is defined twice")
            names.append(name)
        node = Node(op, inputs, attrs, domain=domain, outputs=names, types=types, name=node_name)
        graph.append(node)
        for value in node.outputs:
            if not value.absent:
                scope[value.name] = value

    # -- attributes --------------------------------------------------------------------------
    def attr(self, tree: Any, graph: Graph) -> Attr:
        kind = tree.data
        if kind == "attr_int":
            return Attr(AttrKind.INT, int(tree.children[0]))
        if kind == "attr_float":
            return Attr(AttrKind.FLOAT, float(np.float32(self.float_of(tree.children[0]))))
        if kind == "attr_string":
            return Attr(AttrKind.STRING, json.loads(str(tree.children[0])))
        if kind == "tensor":
            return Attr(AttrKind.TENSOR, self.tensor(tree))
        if kind == "graph":
            return Attr(AttrKind.GRAPH, self.graph(tree, outer=graph))
        if kind == "attr_type":
            return Attr(AttrKind.TYPE, self.type(tree.children[0]))
        if kind == "attr_empty":
            return Attr(AttrKind(str(tree.children[0])), ())
        if kind == "attr_list":
            items = [self.attr(child, graph) for child in tree.children]
            elem_kinds = {item.kind for item in items}
            if elem_kinds == {AttrKind.INT, AttrKind.FLOAT}:
                elem_kinds = {AttrKind.FLOAT}
            if len(elem_kinds) != 1:
                raise self.fail(tree, "attribute list mixes kinds")
            elem = elem_kinds.pop()
            if elem.is_list:
                raise self.fail(tree, "nested attribute lists are not allowed")
            list_kind = AttrKind(elem.value + "s")
            values = tuple(
                float(np.float32(i.value)) if elem is AttrKind.FLOAT else i.value for i in items
            )
            return Attr(list_kind, values)
        raise self.fail(tree, f"unknown attribute form {kind}")

    def float_of(self, tree: Any) -> float:
        token = tree.children[0] if isinstance(tree, Tree) else tree
        text = str(token)
        return float(text)

    def tensor(self, tree: Any) -> np.ndarray:
        type_tree, *rest = tree.children
        ttype = self.type(type_tree)
        assert isinstance(ttype, TensorType)
        if ttype.shape is None or any(not isinstance(d, int) for d in ttype.shape):
            raise self.fail(tree, f"tensor literal needs a static shape, got {ttype}")
        literals = rest[0].children if rest else []
        return self.array(literals, ttype.dtype, ttype.shape, tree)

    def array(self, literals: list[Any], dtype: DType, shape: tuple, where: Any) -> np.ndarray:
        values = [self.literal(lit) for lit in literals]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if len(values) != count:
            raise self.fail(where, f"{len(values)} values given for shape {list(shape)}")
        if dtype is DType.STRING:
            array = np.empty(count, dtype=object)
            array[:] = [v.encode("utf-8", errors="surrogateescape") for v in values]
            return array.reshape(shape)
        try:
            return np.array(values, dtype=dtype.numpy).reshape(shape)
        except (TypeError, ValueError, OverflowError) as exc:
            raise self.fail(where, f"bad {dtype.short} tensor values: {exc}") from None

    def literal(self, tree: Any) -> Any:
        kind = tree.data
        if kind == "lit_int":
            return int(tree.children[0])
        if kind == "lit_float":
            return self.float_of(tree.children[0])
        if kind == "lit_string":
            return json.loads(str(tree.children[0]))
        if kind == "lit_true":
            return True
        if kind == "lit_false":
            return False
        if kind == "lit_complex":
            return complex(self.literal(tree.children[0]), self.literal(tree.children[1]))
        raise self.fail(tree, f"unknown literal {kind}")

    # -- types -----------------------------------------------------------------------------
    def type(self, tree: Any) -> ValueType:
        kind = tree.data
        if kind == "tensor_type":
            return self.tensor_type(tree)
        if kind == "sparse_type":
            inner = self.tensor_type(tree.children[0])
            return SparseTensorType(inner.dtype, inner.shape)
        if kind == "seq_type":
            return SequenceType(self.type(tree.children[0]))
        if kind == "opt_type":
            return OptionalType(self.type(tree.children[0]))
        if kind == "map_type":
            return MapType(self.dtype(tree.children[0]), self.type(tree.children[1]))
        if kind == "unknown_type":
            return UnknownType()
        raise self.fail(tree, f"unknown type form {kind}")

    def dtype(self, token: Any) -> DType:
        try:
            return DType.from_short(str(token))
        except ValueError as exc:
            raise self.fail(token, str(exc)) from None

    def tensor_type(self, tree: Any) -> TensorType:
        dtype_token, dims_tree = tree.children
        dtype = self.dtype(dtype_token)
        if dims_tree.data == "dims_unknown":
            return TensorType(dtype, None)
        if dims_tree.data == "dims_scalar":
            return TensorType(dtype, ())
        dims: list[int | str | None] = []
        for dim in dims_tree.children:
            if dim.data == "dim_int":
                value = int(dim.children[0])
                if value < 0:
                    raise self.fail(dim.children[0], f"negative dimension {value}")
                dims.append(value)
            elif dim.data == "dim_sym":
                dims.append(_unquote(str(dim.children[0])))
            else:
                dims.append(None)
        return TensorType(dtype, tuple(dims))
