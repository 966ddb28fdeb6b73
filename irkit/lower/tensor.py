"""How lowering sees a graph value: a shape of index expressions and a ``read`` function.

A :class:`TensorRef` is either materialized (a contiguous global buffer; ``read`` loads
from it) or inline (``read`` builds the expression that computes the element, so
elementwise chains and layout views fuse into whichever kernel consumes them). Dims are
kernel-IR expressions: constants or polynomials in the symbolic dims ``N``, ``N1``…
(see :mod:`irkit.lower.symbolic`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from irkit.ir import DType, Node
from irkit.kir import Buffer, Const, Expr, Load, N, Var, simplify_expr
from irkit.kir.visit import substitute

Index = tuple[Expr, ...]
Reader = Callable[[Index], Expr]

KIR_DTYPES = {
    DType.FLOAT32: "f32",
    DType.FLOAT64: "f64",
    DType.FLOAT16: "f16",
    DType.BFLOAT16: "bf16",
    DType.INT64: "i64",
    DType.INT32: "i32",
    DType.INT16: "i16",
    DType.INT8: "i8",
    DType.UINT64: "u64",
    DType.UINT32: "u32",
    DType.UINT16: "u16",
    DType.UINT8: "u8",
    DType.BOOL: "bool",
}
NUMPY_DTYPES: dict[str, type] = {dtype: kind.numpy.type for kind, dtype in
                                 KIR_DTYPES.items()}


def fconst(value: float, dtype: str = "f32") -> Const:
    """A float literal of ``dtype`` (f32 values rounded to f32)."""
    return Const(float(np.float32(value)) if dtype == "f32" else float(value), dtype)


def str_attr(node: Node, name: str, default: str) -> str:
    """A string attribute of ``node`` (ONNX stores them as bytes)."""
    value = node.attr(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


class LoweringError(ValueError):
    """The graph uses something this lowering cannot express."""


@dataclass
class TensorRef:
    shape: tuple[Expr, ...]
    dtype: str
    read: Reader
    buffer: Buffer | None = None
    const: np.ndarray | None = None
    cost: int = 0  # expression nodes recomputed per element read (inline refs)

    @property
    def rank(self) -> int:
        return len(self.shape)


def dim_value(dim: Expr, n: int) -> int:
    """``dim`` at a sample point: ``N = n`` and the k-th further symbol ``N<k> = n + 4k``
    (distinct values, so products of different symbols do not collide)."""
    from irkit.kir.visit import walk_exprs
    from irkit.lower.symbolic import is_symbol

    binding: dict[Var, Expr] = {N: Const(n)}
    for node in walk_exprs(dim):
        if isinstance(node, Var) and is_symbol(node.name) and node.name != "N":
            binding[node] = Const(n + 4 * int(node.name[1:]))
    value = simplify_expr(substitute(dim, binding))
    if not isinstance(value, Const):
        raise LoweringError(f"dimension {dim} does not evaluate to a number")
    return int(value.value)


def affine(dim: Expr) -> tuple[int, int]:
    """``(a, b)`` with ``dim == a * N + b`` (checked at N = 1, 2, 3)."""
    v1, v2, v3 = dim_value(dim, 1), dim_value(dim, 2), dim_value(dim, 3)
    a, b = v2 - v1, v1 - (v2 - v1)
    if v3 != 3 * a + b:
        raise LoweringError(f"size {dim} is not affine in the batch size N")
    return a, b


def is_static(dim: Expr) -> bool:
    return isinstance(simplify_expr(dim), Const)


def static(dim: Expr, what: str = "dimension") -> int:
    dim = simplify_expr(dim)
    if not isinstance(dim, Const):
        raise LoweringError(f"{what} must be static, got {dim}")
    return int(dim.value)


def product(dims: Sequence[Expr]) -> Expr:
    total: Expr = Const(1)
    for d in dims:
        total = total * d
    return simplify_expr(total)


def dims_equal(a: Expr, b: Expr) -> bool:
    from irkit.lower.symbolic import is_poly, to_poly

    if is_poly(a) and is_poly(b):
        return to_poly(a) == to_poly(b)
    return all(dim_value(a, n) == dim_value(b, n) for n in (1, 2, 3))


def from_affine(a: int, b: int) -> Expr:
    return simplify_expr(N * a + b) if a else Const(b)


_DIM = re.compile(r"^\s*(?:(\d+)\s*\*\s*)?([A-Za-z_][\w]*)\s*(?:\*\s*(\d+))?\s*$")


def parse_dim(dim: object, symbols: str | Mapping[str, str] | None) -> Expr | None:
    """A type's dim as an Expr: ints, a symbol, ``k*sym``; else None. ``symbols`` maps
    graph symbol names to kernel-IR var names (``N``, ``N1``…); a single name means
    that symbol is ``N``."""
    if isinstance(dim, int):
        return Const(dim)
    if isinstance(symbols, str):
        symbols = {symbols: "N"}
    if isinstance(dim, str) and symbols:
        match = _DIM.match(dim)
        if match and match.group(2) in symbols:
            k = int(match.group(1) or 1) * int(match.group(3) or 1)
            return simplify_expr(Var(symbols[match.group(2)]) * k)
    return None


def contiguous_strides(shape: Sequence[Expr]) -> list[Expr]:
    strides: list[Expr] = []
    acc: Expr = Const(1)
    for d in reversed(shape):
        strides.append(acc)
        acc = simplify_expr(acc * d)
    return list(reversed(strides))


def flat_index(idx: Index, shape: Sequence[Expr]) -> Expr:
    """Row-major flat index (Horner form)."""
    if not idx:
        return Const(0)
    flat = idx[0]
    for i, d in zip(idx[1:], shape[1:]):
        flat = flat * d + i
    return simplify_expr(flat)


def unravel(flat: Expr, shape: Sequence[Expr]) -> Index:
    out: list[Expr] = []
    for k in range(len(shape)):
        inner = product(shape[k + 1 :])
        q = flat if isinstance(inner, Const) and inner.value == 1 else flat // inner
        out.append(simplify_expr(q if k == 0 else q % shape[k]))
    return tuple(out)


def buffer_ref(buf: Buffer, shape: Sequence[Expr]) -> TensorRef:
    shape = tuple(shape)
    return TensorRef(shape, buf.dtype, lambda idx: Load(buf, flat_index(idx, shape)), buffer=buf)


def broadcast_shape(shapes: Sequence[Sequence[Expr]]) -> tuple[Expr, ...]:
    rank = max(len(s) for s in shapes)
    out: list[Expr] = []
    for axis in range(rank):
        chosen: Expr = Const(1)
        for s in shapes:
            k = axis - (rank - len(s))
            if k < 0:
                continue
            d = s[k]
            if isinstance(d, Const) and d.value == 1:
                continue
            if isinstance(chosen, Const) and chosen.value == 1:
                chosen = d
            elif not dims_equal(chosen, d):
                raise LoweringError(f"shapes {shapes} do not broadcast")
        out.append(chosen)
    return tuple(out)


def broadcast_read(ref: TensorRef, out_rank: int) -> Reader:
    """A reader indexed in ``out_rank`` dims that broadcasts ``ref`` (size-1 dims → 0)."""
    offset = out_rank - ref.rank
    ones = [isinstance(d, Const) and d.value == 1 for d in ref.shape]

    def read(idx: Index) -> Expr:
        return ref.read(tuple(Const(0) if ones[k] else idx[k + offset] for k in range(ref.rank)))

    return read
