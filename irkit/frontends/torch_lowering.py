"""The state shared by the ATen lowerings: FX node -> Value map, constants, types, shapes.

A lowering (see ``torch_ops``) reads its FX node's arguments through this context and
emits ONNX-semantics nodes into the irkit Graph. Symbolic integers (``SymInt``: a dynamic
batch or sequence length) are carried as ``int64[1]`` tensors made from ``Shape`` nodes,
and shape arguments use ONNX's ``0`` (copy the input dim) and ``-1`` (infer) entries first,
so a graph stays free of shape arithmetic whenever the dims allow it.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import fx

from irkit.ir import DType, Graph, TensorType, Value

TORCH_DTYPES: dict[torch.dtype, DType] = {
    torch.float32: DType.FLOAT32,
    torch.float64: DType.FLOAT64,
    torch.float16: DType.FLOAT16,
    torch.bfloat16: DType.BFLOAT16,
    torch.int64: DType.INT64,
    torch.int32: DType.INT32,
    torch.int16: DType.INT16,
    torch.int8: DType.INT8,
    torch.uint8: DType.UINT8,
    torch.bool: DType.BOOL,
}


class LoweringUnsupported(Exception):
    """A mapped op was called with arguments the lowering cannot express (the reason)."""


def torch_dtype(dtype: torch.dtype) -> DType:
    if dtype not in TORCH_DTYPES:
        raise LoweringUnsupported(f"dtype {dtype} has no irkit equivalent")
    return TORCH_DTYPES[dtype]


def sym_expr(dim: Any) -> Any:
    """The sympy expression of a SymInt, or the int itself."""
    if isinstance(dim, torch.SymInt):
        return dim.node.expr
    return int(dim)


class LoweringContext:
    """Builds one irkit Graph from one ExportedProgram's FX graph."""

    def __init__(self, graph: Graph, opset: int, dim_names: dict[Any, str]) -> None:
        self.graph = graph
        self.opset = opset
        self.dim_names = dim_names  # sympy symbol -> "N", "S", …
        self.values: dict[fx.Node, Any] = {}
        self.current: fx.Node | None = None
        self.output_names: dict[fx.Node, str] = {}  # FX output node -> graph output name
        self._const_cache: dict[tuple[str, bytes, tuple[int, ...]], Value] = {}

    # -- types -----------------------------------------------------------------------
    def dim(self, size: Any) -> int | str | None:
        expr = sym_expr(size)
        if isinstance(expr, int):
            return expr
        if getattr(expr, "is_Integer", False):
            return int(expr)
        return self.dim_names.get(expr)

    def type_of(self, val: Any) -> TensorType | None:
        """The TensorType of a FakeTensor (None for anything else, e.g. a SymInt)."""
        if not isinstance(val, torch.Tensor):
            return None
        return TensorType(torch_dtype(val.dtype), tuple(self.dim(d) for d in val.shape))

    def meta(self, arg: Any) -> Any:
        """The example value (FakeTensor / SymInt / tuple) recorded for an FX argument."""
        return arg.meta.get("val") if isinstance(arg, fx.Node) else arg

    def dtype_of(self, arg: Any) -> DType:
        val = self.meta(arg)
        if isinstance(val, torch.Tensor):
            return torch_dtype(val.dtype)
        if isinstance(val, bool):
            return DType.BOOL
        if isinstance(val, int | torch.SymInt):
            return DType.INT64
        return DType.FLOAT32

    def rank_of(self, arg: Any) -> int:
        return self.meta(arg).dim()

    def shape_of(self, arg: Any) -> tuple[Any, ...]:
        return tuple(self.meta(arg).shape)

    @property
    def node(self) -> fx.Node:
        """The FX node being lowered."""
        if self.current is None:
            raise LoweringUnsupported("no FX node is being lowered")
        return self.current

    @property
    def target(self) -> str:
        """The ATen overload being lowered, e.g. ``"aten.addmm.default"``."""
        return str(self.node.target)

    @property
    def out_val(self) -> Any:
        assert self.current is not None
        return self.current.meta.get("val")

    @property
    def out_dtype(self) -> DType:
        val = self.out_val
        if isinstance(val, tuple | list):
            val = val[0]
        return torch_dtype(val.dtype)

    # -- values ----------------------------------------------------------------------
    def get(self, arg: fx.Node) -> Value:
        value = self.values[arg]
        if not isinstance(value, Value):
            raise LoweringUnsupported(f"%{arg.name} is not a single tensor here")
        return value

    def tensor(self, arg: Any, dtype: DType | None = None) -> Value:
        """An FX tensor argument, or a Python scalar as a constant of ``dtype``.

        With ``dtype``, a tensor of another element type is cast to it (torch promotes
        types implicitly; ONNX ops want equal input types).
        """
        if isinstance(arg, fx.Node):
            value = self.values[arg]
            if isinstance(value, Value):
                if dtype is not None and self.dtype_of(arg) is not dtype:
                    return self.cast(value, dtype)
                return value
            # a SymInt used as a scalar operand
            value = self.scalar(value)
            return self.cast(value, dtype) if dtype not in (None, DType.INT64) else value
        target = dtype or self.dtype_of(arg)
        return self.const(np.asarray(arg, dtype=target.numpy))

    def const(self, array: Any, hint: str = "c") -> Value:
        """A constant; small equal constants are shared."""
        arr = np.asarray(array)
        if arr.size <= 16:
            key = (arr.dtype.str, arr.tobytes(), arr.shape)
            if key not in self._const_cache:
                self._const_cache[key] = self.graph.add_constant(hint, arr)
            return self._const_cache[key]
        return self.graph.add_constant(hint, arr)

    def ints(self, values: Sequence[int]) -> Value:
        return self.const(np.asarray(list(values), dtype=np.int64), "shape")

    def cast(self, value: Value, dtype: DType) -> Value:
        return self.emit("Cast", [value], {"to": dtype.value}, typed=False)

    def cast_typed(self, value: Value, dtype: DType) -> Value:
        """A Cast that is the current FX node's result."""
        return self.emit("Cast", [value], {"to": dtype.value})

    def const_typed(self, array: np.ndarray) -> Value:
        """A constant that is the current FX node's result (named after it)."""
        assert self.current is not None
        return self.graph.add_constant(self.current.name, np.asarray(array))

    @staticmethod
    def const_tensor_attr(value: Any, dtype: DType) -> np.ndarray:
        """The one-element tensor ConstantOfShape takes as its ``value`` attribute."""
        return np.asarray([value], dtype=dtype.numpy)

    def scalar(self, value: Value) -> Value:
        """An ``int64[1]`` symbolic size as a 0-d tensor."""
        return self.emit("Squeeze", [value, self.ints([0])], typed=False)

    # -- emitting --------------------------------------------------------------------
    def emit(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: dict[str, Any] | None = None,
        *,
        typed: bool = True,
        outputs: int = 1,
    ) -> Any:
        """Append a node. ``typed``: its outputs are the current FX node's result (named
        and typed after it); otherwise an intermediate with a derived name and no type."""
        assert self.current is not None
        names: list[str | None]
        types: list[TensorType | None]
        if typed:
            val = self.out_val
            vals = list(val) if isinstance(val, tuple | list) else [val]
            vals = vals[:outputs] + [None] * (outputs - len(vals[:outputs]))
            names = [self._output_name(i, outputs) for i in range(outputs)]
            types = [self.type_of(v) for v in vals]
        else:
            names = [f"{self.current.name}_{op.lower()}"] * outputs
            types = [None] * outputs
        node = self.graph.add_node(
            op, list(inputs), attrs or {}, outputs=names, types=types, name=""
        )
        return node.output if outputs == 1 else node.outputs

    def _output_name(self, index: int, count: int) -> str:
        """A graph output's name if the result (or its ``getitem``) is one, else the FX name."""
        assert self.current is not None
        node = self.current
        if node in self.output_names and count == 1:
            return self.output_names[node]
        for user in node.users:
            if user.target is operator.getitem and user.args[1] == index:
                return self.output_names.get(user, user.name)
        return node.name if index == 0 else f"{node.name}_{index}"

    # -- symbolic sizes and shape arguments -------------------------------------------
    def size_value(self, size: Any) -> Value:
        """An int or a SymInt FX node as an ``int64[1]`` tensor."""
        if isinstance(size, fx.Node):
            value = self.values[size]
            if isinstance(value, Value):
                return value
        if isinstance(size, int):
            return self.ints([size])
        raise LoweringUnsupported(f"size {size!r} is neither an int nor a SymInt node")

    def shape_tensor(self, sizes: Sequence[Any]) -> Value:
        """A shape built from ints and SymInt nodes: one constant, or a Concat."""
        if all(isinstance(s, int) for s in sizes):
            return self.ints(sizes)
        pieces: list[Value] = []
        run: list[int] = []
        for size in sizes:
            if isinstance(size, int):
                run.append(size)
                continue
            if run:
                pieces.append(self.ints(run))
                run = []
            pieces.append(self.size_value(size))
        if run:
            pieces.append(self.ints(run))
        return self.emit("Concat", pieces, {"axis": 0}, typed=False)

    def reshape_shape(self, source: Any, sizes: Sequence[Any]) -> Value:
        """Reshape's shape input for ``view(source, sizes)``.

        A symbolic size equal to the source's dim at the same position becomes 0 (copy);
        then one remaining symbolic size becomes -1 (infer). Only what is left after that
        is computed at run time.
        """
        src = [sym_expr(d) for d in self.shape_of(source)]
        entries: list[Any] = []
        for i, size in enumerate(sizes):
            if isinstance(size, int):
                entries.append(size)
                continue
            expr = sym_expr(self.meta(size))
            if isinstance(expr, int) or getattr(expr, "is_Integer", False):
                entries.append(int(expr))
            elif i < len(src) and src[i] == expr and not _has_zero_dim(src):
                entries.append(0)
            else:
                entries.append(size)
        dynamic = [e for e in entries if not isinstance(e, int)]
        if len(dynamic) + entries.count(-1) <= 1:
            entries = [-1 if not isinstance(e, int) else e for e in entries]
        return self.shape_tensor(entries)

    def expand_shape(self, source: Any, sizes: Sequence[Any]) -> Value:
        """Expand's shape input: ONNX broadcasts, so a dim that keeps its size becomes 1."""
        src = [sym_expr(d) for d in self.shape_of(source)]
        lead = len(sizes) - len(src)
        entries: list[Any] = []
        for i, size in enumerate(sizes):
            keeps = i >= lead and (size == -1 or (sym_expr(self.meta(size)) == src[i - lead]))
            if keeps:
                entries.append(1)
            elif isinstance(size, fx.Node):
                expr = sym_expr(self.meta(size))
                static = isinstance(expr, int) or getattr(expr, "is_Integer", False)
                entries.append(int(expr) if static else size)
            else:
                entries.append(size)
        return self.shape_tensor(entries)


def _has_zero_dim(dims: Sequence[Any]) -> bool:
    return any(isinstance(d, int) and d == 0 for d in dims)
