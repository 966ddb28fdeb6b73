"""Layout views: which elements of a source tensor a chain of view ops reads.

Exporters split attention heads with Reshape/Transpose/Squeeze/Gather chains whose
intermediate shapes are not strided views of anything (``[S, 4*N, 32]`` from ``[S, N,
128]``), although the end result is. A :class:`View` keeps each dim as a group of
*atoms* — (size, stride) pairs of the source's flat layout, split when a reshape cuts
through one — so such chains are followed exactly, and :func:`emit_view` rebuilds the
result from the source with one Reshape, Gathers and one Transpose: ops a backend reads
as plain strided loads.

Sizes are monomials ``coef * N * ...`` in the graph's symbolic dims; a chain whose
shapes need anything else is not followed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from irkit.ir import Graph, Node, TensorType, Value

_FACTOR = re.compile(r"^(\d+|[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass(frozen=True)
class Mono:
    """``coef * product(syms)``; syms sorted, symbols are positive integers."""

    coef: int
    syms: tuple[str, ...] = ()

    def __mul__(self, other: Mono) -> Mono:
        return Mono(self.coef * other.coef, tuple(sorted(self.syms + other.syms)))

    def div(self, other: Mono) -> Mono | None:
        """``self / other`` when it is a monomial for every binding of the symbols."""
        if other.coef == 0 or self.coef % other.coef:
            return None
        rest = list(self.syms)
        for s in other.syms:
            if s not in rest:
                return None
            rest.remove(s)
        return Mono(self.coef // other.coef, tuple(rest))

    @property
    def is_const(self) -> bool:
        return not self.syms

    def dim(self) -> int | str:
        """As a graph dim: an int, or a string like ``4*N``."""
        if self.is_const:
            return self.coef
        names = "*".join(self.syms)
        return names if self.coef == 1 else f"{self.coef}*{names}"


ONE = Mono(1)


def parse_dim(dim: object) -> Mono | None:
    if isinstance(dim, int | np.integer) and not isinstance(dim, bool):
        return Mono(int(dim))
    if not isinstance(dim, str):
        return None
    coef, syms = 1, []
    for part in dim.replace(" ", "").split("*"):
        if not _FACTOR.match(part):
            return None
        if part.isdigit():
            coef *= int(part)
        else:
            syms.append(part)
    return Mono(coef, tuple(sorted(syms)))


def parse_shape(shape: Sequence[object] | None) -> list[Mono] | None:
    if shape is None:
        return None
    dims = [parse_dim(d) for d in shape]
    return None if any(d is None for d in dims) else dims  # type: ignore[return-value]


def mono_prod(values: Sequence[Mono]) -> Mono:
    out = ONE
    for v in values:
        out = out * v
    return out


@dataclass(frozen=True)
class Atom:
    size: Mono
    stride: Mono


@dataclass
class View:
    """``value[i0, i1, ...] = source.flat[offset + sum(atom index * atom stride)]``, where
    dim ``d``'s index is the row-major combination of the atoms in ``groups[d]``."""

    source: Value
    groups: list[list[Atom]]
    offset: int = 0
    scale: float = 1.0  # scalar factors met on the way (Mul/Div by a constant)
    nodes: list[Node] = field(default_factory=list)  # the view ops followed

    @property
    def shape(self) -> list[Mono]:
        return [mono_prod([a.size for a in g]) for g in self.groups]


def source_view(value: Value) -> View | None:
    """The identity view of a contiguous tensor."""
    dims = parse_shape(value.shape)
    if dims is None:
        return None
    groups: list[list[Atom]] = []
    stride = ONE
    for size in reversed(dims):
        groups.insert(0, [] if size == ONE else [Atom(size, stride)])
        stride = stride * size
    return View(value, groups)


def regroup(atoms: list[Atom], target: Sequence[Mono]) -> list[list[Atom]] | None:
    """Row-major atoms regrouped into dims of the ``target`` sizes, splitting an atom
    when a dim boundary cuts through it; None when the sizes do not line up."""
    queue = [a for a in atoms if a.size != ONE]
    groups: list[list[Atom]] = []
    for size in target:
        group: list[Atom] = []
        have = ONE
        while have != size:
            need = size.div(have)
            if need is None or not queue:
                return None
            atom = queue[0]
            if need.div(atom.size) is not None:  # the whole atom fits
                group.append(queue.pop(0))
                have = have * atom.size
                continue
            inner = atom.size.div(need)
            if inner is None:
                return None
            group.append(Atom(need, atom.stride * inner))  # outer part of the split
            queue[0] = Atom(inner, atom.stride)
            have = size
        groups.append(group)
    return groups if not queue else None


def _const_ints(value: Value | None) -> list[int] | None:
    if value is None or value.const is None:
        return None
    return [int(x) for x in np.asarray(value.const).reshape(-1)]


def _reshape_target(node: Node, view: View) -> list[Mono] | None:
    """The dims a Reshape/Flatten/Squeeze/Unsqueeze produces (they keep element order):
    the constant shape input (``0`` and ``-1`` resolved), else the output's type."""
    shape = _const_ints(node.inputs[1]) if node.op == "Reshape" and len(node.inputs) > 1 \
        else None
    if shape is not None:
        current = view.shape
        allowzero = bool(node.attr("allowzero", 0))
        dims: list[Mono | None] = []
        for i, s in enumerate(shape):
            if s == 0 and not allowzero:
                dims.append(current[i] if i < len(current) else None)
            else:
                dims.append(None if s == -1 else Mono(s))
        if dims.count(None) == 1 and -1 in shape:
            known = mono_prod([d for d in dims if d is not None])
            rest = mono_prod(current).div(known)
            dims[dims.index(None)] = rest
        if None not in dims:
            return dims  # type: ignore[return-value]
    return parse_shape(node.output.shape)


def _scalar(value: Value | None) -> float | None:
    if value is None or value.const is None or value.const.size != 1:
        return None
    return float(np.asarray(value.const).reshape(-1)[0])


RESHAPES = ("Reshape", "Squeeze", "Unsqueeze", "Flatten")


def _data_input(node: Node) -> Value | None:
    """The tensor a view op (or a multiplication by a constant scalar) reads."""
    if node.domain or len(node.outputs) != 1 or not node.inputs:
        return None
    if node.op in RESHAPES or node.op == "Transpose":
        return node.inputs[0]
    if node.op == "Gather" and _gather_index(node) is not None:
        return node.inputs[0]
    if node.op in ("Mul", "Div") and len(node.inputs) == 2:
        a, b = node.inputs
        out_shape = node.output.shape
        if out_shape is None or any(v is None or v.shape is None or len(v.shape) > len(
                out_shape) or (v.const is None and len(v.shape) != len(out_shape))
                for v in (a, b)):
            return None  # a scalar that broadcasts to a higher rank is not a view
        if _scalar(b) is not None and a is not None and _scalar(a) is None:
            return a
        if node.op == "Mul" and _scalar(a) is not None and b is not None and _scalar(b) is None:
            return b
    return None


def _gather_index(node: Node) -> int | None:
    index = node.inputs[1] if len(node.inputs) > 1 else None
    if index is None or index.const is None or np.asarray(index.const).ndim != 0:
        return None
    return int(np.asarray(index.const))


def apply(node: Node, view: View) -> View | None:
    """The view of ``node``'s output given the view of its data input (None: not one)."""
    groups = view.groups
    if node.op in RESHAPES:
        target = _reshape_target(node, view)
        if target is None:
            return None
        regrouped = regroup([a for g in groups for a in g], target)
        if regrouped is None:
            return None
        return View(view.source, regrouped, view.offset, view.scale, [*view.nodes, node])
    if node.op == "Transpose":
        perm = node.attr("perm", None)
        perm = list(perm) if perm is not None else list(reversed(range(len(groups))))
        if sorted(perm) != list(range(len(groups))):
            return None
        return View(view.source, [groups[p] for p in perm], view.offset, view.scale,
                    [*view.nodes, node])
    if node.op == "Gather":
        index = _gather_index(node)
        axis = int(node.attr("axis", 0)) % max(len(groups), 1)
        atoms = [a for a in groups[axis] if a.size != ONE] if groups else []
        if index is None or len(atoms) > 1:
            return None
        offset = view.offset
        if atoms:
            size, stride = atoms[0].size, atoms[0].stride
            if index < 0:
                if not size.is_const:
                    return None
                index += size.coef
            if index != 0 and not stride.is_const:
                return None
            offset += index * stride.coef if index else 0
        return View(view.source, groups[:axis] + groups[axis + 1:], offset, view.scale,
                    [*view.nodes, node])
    if node.op in ("Mul", "Div"):
        a, b = node.inputs[0], node.inputs[1]
        factor = _scalar(b) if _scalar(b) is not None else _scalar(a)
        if factor is None or factor == 0.0:
            return None
        scale = view.scale * (factor if node.op == "Mul" else 1.0 / factor)
        return View(view.source, groups, view.offset, scale, [*view.nodes, node])
    return None


def trace_view(value: Value) -> View | None:
    """``value`` as a view of the tensor that a chain of view ops (Reshape, Transpose,
    Squeeze, Unsqueeze, Flatten, Gather of one index, scaling by a constant) reads: the
    longest such chain that can be followed; the identity view when there is none."""
    chain: list[Node] = []
    current = value
    while current.producer is not None:
        x = _data_input(current.producer)
        if x is None:
            break
        chain.insert(0, current.producer)
        current = x
    # Apply forward; an op that cannot be followed starts the chain again after it.
    view = source_view(current)
    for node in chain:
        moved = apply(node, view) if view is not None else None
        view = moved if moved is not None else source_view(node.output)
    return view


def emit_view(graph: Graph, view: View, before: Node,
              reshapes: dict[tuple[int, tuple[int, ...]], Value] | None = None) -> Value | None:
    """Standard ops computing ``view`` (each dim one atom at most) from its source: a
    Reshape into the atoms' sizes, Gathers for the fixed indices, one Transpose. None
    when the view needs more than that (an offset inside a dim, several symbolic
    factors, a dim made of several atoms). ``reshapes`` shares the source Reshape
    between views of one tensor (keyed by the source's id and the shape)."""
    if any(len([a for a in g if a.size != ONE]) > 1 for g in view.groups):
        return None
    dims = [next((a for a in g if a.size != ONE), None) for g in view.groups]
    total = parse_shape(view.source.shape)
    if total is None:
        return None
    numel = mono_prod(total)
    # Factor the source's flat index space, innermost first: used atoms and fillers.
    used = [(d, a) for d, a in enumerate(dims) if a is not None]
    factors: list[tuple[Mono, int | None]] = []  # (size, dim using it or None)
    stride = ONE
    remaining = list(used)
    while remaining:
        exact = [(d, a) for d, a in remaining if a.stride == stride]
        if exact:
            d, a = exact[0]
            factors.append((a.size, d))
            stride = stride * a.size
            remaining.remove((d, a))
            continue
        gaps = [(a.stride.div(stride), d, a) for d, a in remaining]
        gaps = [g for g in gaps if g[0] is not None]
        if not gaps:
            return None
        gap = min(gaps, key=lambda g: (len(g[0].syms), g[0].coef))[0]  # type: ignore[union-attr]
        assert gap is not None
        factors.append((gap, None))
        stride = stride * gap
    outer = numel.div(stride)
    if outer is None:
        return None
    if outer != ONE:
        factors.append((outer, None))
    factors.reverse()  # row-major, outermost first
    # Fixed indices of the filler factors from the offset (mixed radix).
    strides: list[Mono] = []
    acc = ONE
    for size, _ in reversed(factors):
        strides.insert(0, acc)
        acc = acc * size
    offset = view.offset
    fixed: dict[int, int] = {}
    for axis, ((size, dim), st) in enumerate(zip(factors, strides)):
        if offset == 0:
            index = 0
        elif st.is_const:
            index, offset = divmod(offset, st.coef)
        elif offset < st.coef:
            index = 0  # a symbolic stride is at least its coefficient
        else:
            return None
        if dim is not None and index != 0:
            return None
        if dim is None and size.is_const and index >= size.coef:
            return None
        if dim is None:
            fixed[axis] = index
    if offset != 0:
        return None
    symbolic = [size for size, _ in factors if not size.is_const]
    if len(symbolic) > 1:
        return None
    shape = [-1 if not size.is_const else size.coef for size, _ in factors]
    x = view.source
    dtype = x.dtype
    if dtype is None:
        return None

    def add(op: str, inputs: list[Value | None], attrs: dict[str, object] | None,
            dims_: list[Mono]) -> Value:
        return graph.add_node(op, inputs, attrs, before=before,
                              types=[TensorType(dtype, tuple(d.dim() for d in dims_))]).output

    current_dims = [size for size, _ in factors]
    if current_dims != total:
        key = (id(view.source), tuple(shape))
        shared = reshapes.get(key) if reshapes is not None else None
        if shared is None:
            shape_value = graph.add_constant("view_shape", np.array(shape, np.int64))
            shared = add("Reshape", [x, shape_value], None, current_dims)
            if reshapes is not None:
                reshapes[key] = shared
        x = shared
    order = [dim for _, dim in factors]
    for axis in sorted(fixed, reverse=True):
        index_value = graph.add_constant("view_index", np.array(fixed[axis], np.int64))
        del current_dims[axis], order[axis]
        x = add("Gather", [x, index_value], {"axis": axis}, current_dims)
    # Size-1 dims of the view have no atom: the final Reshape puts them back.
    perm = [order.index(d) for d, _ in used]
    if perm != list(range(len(perm))):
        current_dims = [current_dims[p] for p in perm]
        x = add("Transpose", [x], {"perm": perm}, current_dims)
    want = view.shape
    if current_dims != want:
        shape_value = graph.add_constant("view_shape", np.array(
            [-1 if not d.is_const else d.coef for d in want], np.int64))
        if sum(not d.is_const for d in want) > 1:
            return None
        x = add("Reshape", [x, shape_value], None, want)
    return x


__all__ = ["ONE", "Atom", "Mono", "View", "emit_view", "parse_dim", "parse_shape",
           "regroup", "source_view", "trace_view"]
