"""Checks of input values that set output sizes, run before native code.

Some ONNX inputs are sizes rather than data: ReduceSum's ``axes``, Reshape's ``shape``,
Pad's ``pads``, TopK's ``K``. When such an input is a graph input, its values are only known
at call time, yet native kernels are compiled for fixed sizes. The llvm backend then builds
the node for its *declared* static output shape and records a guard in the manifest; before
every call the runtime recomputes the output shape from the input values with ONNX's rule
for that op and rejects the call with :class:`InputError` when it differs from the shape
the kernels were built for.

A guard is data, never code: ``{"op": kind, "node": text, "inputs": {role: input name},
"consts": {role: [ints]}, "in_shape": [...], "out_shapes": [[...], ...], "attrs": {...}}``. Kinds are the keys of
:data:`RULES`; an unknown kind fails loading, so a newer artifact is refused rather than
run unchecked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from irkit.runtime.signature import InputError

Shape = tuple[int, ...]
Values = Mapping[str, np.ndarray]


def _ints(values: Values, guard: Mapping[str, Any], role: str) -> list[int] | None:
    """The role's values: a graph input's at call time, or a constant from the manifest."""
    name = guard["inputs"].get(role)
    if name is None:
        const = guard.get("consts", {}).get(role)
        return None if const is None else [int(c) for c in const]
    return [int(v) for v in np.asarray(values[name]).reshape(-1)]


def _floats(values: Values, guard: Mapping[str, Any], role: str) -> list[float] | None:
    """The role's values as floats (Resize's scales), from a graph input at call time."""
    name = guard["inputs"].get(role)
    if name is None:
        return None
    return [float(v) for v in np.asarray(values[name]).reshape(-1)]


def _one(values: Values, guard: Mapping[str, Any], role: str) -> int:
    """The role's single value (TopK's K, OneHot's depth)."""
    found = _ints(values, guard, role) or []
    if len(found) != 1:
        raise InputError(f"{guard['node']}: {role} must hold one value, got {found}")
    return found[0]


def _axes(axes: Sequence[int], rank: int, what: str) -> list[int]:
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise InputError(f"{what}: axis {a} is out of range for rank {rank}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise InputError(f"{what}: repeated axes {list(axes)}")
    return out


def _reduce(g: Mapping[str, Any], v: Values) -> list[Shape]:
    shape, attrs = g["in_shape"], g["attrs"]
    axes = _ints(v, g, "axes") or []
    if not axes:
        axes = [] if attrs.get("noop_with_empty_axes", 0) else list(range(len(shape)))
    axes = _axes(axes, len(shape), g["node"])
    if attrs.get("keepdims", 1):
        return [tuple(1 if d in axes else n for d, n in enumerate(shape))]
    return [tuple(n for d, n in enumerate(shape) if d not in axes)]


def _reshape(g: Mapping[str, Any], v: Values) -> list[Shape]:
    shape, target = g["in_shape"], _ints(v, g, "shape") or []
    out = [shape[k] if t == 0 and not g["attrs"].get("allowzero", 0) and k < len(shape) else t
           for k, t in enumerate(target)]
    if out.count(-1) > 1:
        raise InputError(f"{g['node']}: more than one -1 in the target shape {target}")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        total = int(np.prod(shape))
        out[out.index(-1)] = total // known if known else 0
    return [tuple(out)]


def _expand(g: Mapping[str, Any], v: Values) -> list[Shape]:
    target = _ints(v, g, "shape") or []
    try:
        return [tuple(np.broadcast_shapes(tuple(g["in_shape"]), tuple(target)))]
    except ValueError as exc:
        raise InputError(f"{g['node']}: cannot expand {g['in_shape']} to {target}") from exc


def _unsqueeze(g: Mapping[str, Any], v: Values) -> list[Shape]:
    shape = list(g["in_shape"])
    axes = sorted(_axes(_ints(v, g, "axes") or [], len(shape) + len(g["out_shapes"][0]) -
                        len(shape), g["node"]))
    for a in axes:
        shape.insert(a, 1)
    return [tuple(shape)]


def _squeeze(g: Mapping[str, Any], v: Values) -> list[Shape]:
    shape = g["in_shape"]
    given = _ints(v, g, "axes")
    axes = (_axes(given, len(shape), g["node"]) if given is not None
            else [d for d, n in enumerate(shape) if n == 1])
    return [tuple(n for d, n in enumerate(shape) if d not in axes)]


def _split(g: Mapping[str, Any], v: Values) -> list[Shape]:
    shape, axis = g["in_shape"], g["attrs"]["axis"] % len(g["in_shape"])
    sizes = _ints(v, g, "split") or []
    return [tuple(s if d == axis else n for d, n in enumerate(shape)) for s in sizes]


def _pad(g: Mapping[str, Any], v: Values) -> list[Shape]:
    shape = list(g["in_shape"])
    pads = _ints(v, g, "pads") or []
    axes = _ints(v, g, "axes")
    axes = _axes(axes, len(shape), g["node"]) if axes is not None else list(range(len(shape)))
    if len(pads) != 2 * len(axes):
        raise InputError(f"{g['node']}: {len(pads)} pads for {len(axes)} axes")
    for k, a in enumerate(axes):
        shape[a] += pads[k] + pads[k + len(axes)]
    return [tuple(shape)]


def _tile(g: Mapping[str, Any], v: Values) -> list[Shape]:
    repeats = _ints(v, g, "repeats") or []
    if len(repeats) != len(g["in_shape"]) or any(r < 0 for r in repeats):
        raise InputError(f"{g['node']}: repeats {repeats} do not fit a rank-"
                         f"{len(g['in_shape'])} input")
    return [tuple(n * r for n, r in zip(g["in_shape"], repeats))]


def _topk(g: Mapping[str, Any], v: Values) -> list[Shape]:
    k = _one(v, g, "k")
    axis = g["attrs"]["axis"] % len(g["in_shape"])
    shape = tuple(k if d == axis else n for d, n in enumerate(g["in_shape"]))
    return [shape, shape]


def _onehot(g: Mapping[str, Any], v: Values) -> list[Shape]:
    depth = _one(v, g, "depth")
    shape = list(g["in_shape"])
    axis = g["attrs"]["axis"] % (len(shape) + 1)
    shape.insert(axis, depth)
    return [tuple(shape)]


def _compress(g: Mapping[str, Any], v: Values) -> list[Shape]:
    cond = np.asarray(v[g["inputs"]["condition"]]).reshape(-1).astype(bool)
    axis = g["attrs"].get("axis")
    shape = g["in_shape"]
    if axis is None:
        return [(int(cond[: int(np.prod(shape))].sum()),)]
    axis %= len(shape)
    kept = int(cond[: shape[axis]].sum())
    return [tuple(kept if d == axis else n for d, n in enumerate(shape))]


def _constant_of_shape(g: Mapping[str, Any], v: Values) -> list[Shape]:
    return [tuple(_ints(v, g, "shape") or [])]


def _resize(g: Mapping[str, Any], v: Values) -> list[Shape]:
    """ONNX Resize/Upsample: ``sizes`` (per ``axes``, kept to the aspect ratio under
    ``not_larger``/``not_smaller``: round(scale * dim)), else floor(dim * scale)."""
    shape, attrs, node = list(g["in_shape"]), g["attrs"], g["node"]
    axes = _axes(attrs.get("axes") or range(len(shape)), len(shape), node)
    sizes = _ints(v, g, "sizes")
    if sizes:
        if len(sizes) != len(axes):
            raise InputError(f"{node}: {len(sizes)} sizes for {len(axes)} axes")
        policy = attrs.get("policy", "stretch")
        if policy == "stretch":
            for a, s in zip(axes, sizes):
                shape[a] = s
            return [tuple(shape)]
        ratios = [s / shape[a] for a, s in zip(axes, sizes)]
        scale = min(ratios) if policy == "not_larger" else max(ratios)
        for a in axes:
            shape[a] = int(scale * shape[a] + 0.5)
        return [tuple(shape)]
    scales = _floats(v, g, "scales") or []
    if len(scales) != len(axes):
        raise InputError(f"{node}: {len(scales)} scales for {len(axes)} axes")
    if not all(s > 0 for s in scales):
        raise InputError(f"{node}: scales {scales} must be positive")
    for a, factor in zip(axes, scales):
        shape[a] = int(np.floor(factor * shape[a]))
    return [tuple(shape)]


def _slice(g: Mapping[str, Any], v: Values) -> list[Shape]:
    """ONNX Slice: per axis, start and end (negative: + dim) clamped to [0, dim]
    ([0, dim-1] and [-1, dim-1] for negative steps), then len(range(start, end, step))."""
    shape, node = list(g["in_shape"]), g["node"]
    starts, ends = _ints(v, g, "starts") or [], _ints(v, g, "ends") or []
    given = _ints(v, g, "axes")
    axes = _axes(given if given is not None else range(len(starts)), len(shape), node)
    steps = _ints(v, g, "steps") or [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise InputError(f"{node}: starts, ends, axes and steps differ in length")
    for start, end, a, step in zip(starts, ends, axes, steps):
        if step == 0:
            raise InputError(f"{node}: slice step 0 on axis {a}")
        dim = shape[a]
        start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        shape[a] = len(range(start, end, step))
    return [tuple(shape)]


def _number(values: Values, guard: Mapping[str, Any], role: str) -> float | int:
    """The role's single value, in its own type (Range's bounds may be floats)."""
    name = guard["inputs"].get(role)
    if name is None:
        return int(guard["consts"][role][0])
    found = np.asarray(values[name]).reshape(-1)
    if found.size != 1:
        raise InputError(f"{guard['node']}: {role} must hold one value, got {found.size}")
    number: float | int = found[0].item()
    return number


def _range(g: Mapping[str, Any], v: Values) -> list[Shape]:
    """ONNX Range: max(ceil((limit - start) / delta), 0) elements."""
    start, limit, delta = (_number(v, g, role) for role in ("start", "limit", "delta"))
    if delta == 0:
        raise InputError(f"{g['node']}: delta is 0")
    if isinstance(start, int) and isinstance(limit, int) and isinstance(delta, int):
        return [(max(-((start - limit) // delta), 0),)]
    return [(max(int(np.ceil((limit - start) / delta)), 0),)]


def _col2im(g: Mapping[str, Any], v: Values) -> list[Shape]:
    """ONNX Col2Im: (N, C * prod(block_shape), L) columns to (N, C, *image_shape); L must
    be the number of block positions."""
    (n, rows, length), attrs, node = g["in_shape"], g["attrs"], g["node"]
    image, blocks = _ints(v, g, "image_shape") or [], _ints(v, g, "block_shape") or []
    spatial = len(image)
    dil = attrs.get("dilations") or [1] * spatial
    pads = attrs.get("pads") or [0] * (2 * spatial)
    strides = attrs.get("strides") or [1] * spatial
    per_block = int(np.prod(blocks))
    if len(blocks) != spatial or min(blocks, default=1) < 1 or rows % per_block:
        raise InputError(f"{node}: block_shape {blocks} does not fit {rows} rows and "
                         f"image_shape {image}")
    counts = [(image[d] + pads[d] + pads[d + spatial] - dil[d] * (blocks[d] - 1) - 1)
              // strides[d] + 1 for d in range(spatial)]
    positions = int(np.prod(counts))
    if min(counts, default=1) < 1 or positions != length:
        raise InputError(f"{node}: block_shape {blocks} on image_shape {image} gives "
                         f"{positions} blocks, the input has {length}")
    return [(n, rows // per_block, *image)]


RULES: dict[str, Callable[[Mapping[str, Any], Values], list[Shape]]] = {
    "reduce": _reduce, "reshape": _reshape, "expand": _expand, "unsqueeze": _unsqueeze,
    "squeeze": _squeeze, "split": _split, "pad": _pad, "tile": _tile, "topk": _topk,
    "onehot": _onehot, "compress": _compress, "constant_of_shape": _constant_of_shape,
    "resize": _resize, "slice": _slice, "col2im": _col2im, "range": _range,
}  # fmt: skip


def validate_guards(guards: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The manifest's guards, checked for known kinds (raises ValueError otherwise)."""
    for g in guards:
        if g.get("op") not in RULES:
            raise ValueError(f"unknown shape guard kind {g.get('op')!r}")
    return list(guards)


def check_guards(guards: Sequence[Mapping[str, Any]], values: Values) -> None:
    """Raise InputError unless every guard's recomputed output shapes equal the shapes the
    kernels were compiled for."""
    for g in guards:
        got = RULES[g["op"]](g, values)
        want = [tuple(s) for s in g["out_shapes"]]
        if [tuple(s) for s in got[: len(want)]] != want or len(got) < len(want):
            names = ", ".join(f"{role} {name!r}" for role, name in g["inputs"].items())
            shown = {name: np.asarray(values[name]).reshape(-1).tolist()[:16]
                     for name in g["inputs"].values()}
            raise InputError(
                f"{g['node']}: input {names} = {shown} gives output shape(s) "
                f"{[list(s) for s in got]}, but this model was compiled for "
                f"{[list(s) for s in want]}; recompile with the new sizes")
