"""Sizes as polynomials in the symbolic dims (``N``, ``N1``, ``N2`` …).

A graph may have several symbolic input dims (batch ``N`` and sequence ``S`` for a
BERT). Lowering names them ``N`` (the first) and ``N1``, ``N2``… (kernel-IR vars and
kernel arguments), so every dim, buffer size and workspace offset is an integer
polynomial in those vars: ``{("N", "N1"): 384, (): 64}`` is ``384*N*N1 + 64``.

A monomial is the sorted tuple of its symbol names (repeated for powers). Polynomials
are plain dicts; :func:`freeze` gives the hashable sorted-tuple form that frozen kernel-IR
dataclasses hold, and :func:`to_json` / :func:`from_json` the manifest form
``{"N*N1": 384, "": 64}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from irkit.kir import Binary, Const, Expr, Var, simplify_expr
from irkit.kir.nodes import SYMBOL_NAME
from irkit.lower.tensor import LoweringError

Monomial = tuple[str, ...]
Poly = dict[Monomial, int]
FrozenPoly = tuple[tuple[Monomial, int], ...]



def symbol_var_name(position: int) -> str:
    """The kernel-IR name of the ``position``-th symbolic dim (``N``, ``N1``, …)."""
    return "N" if position == 0 else f"N{position}"


def is_symbol(name: str) -> bool:
    # Loop vars are ``hint_<counter>`` (always an underscore), so they never match.
    return bool(SYMBOL_NAME.match(name))


def _clean(p: Poly) -> Poly:
    return {m: c for m, c in p.items() if c}


def add(a: Mapping[Monomial, int], b: Mapping[Monomial, int], sign: int = 1) -> Poly:
    out = dict(a)
    for m, c in b.items():
        out[m] = out.get(m, 0) + sign * c
    return _clean(out)


def mul(a: Mapping[Monomial, int], b: Mapping[Monomial, int]) -> Poly:
    out: Poly = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            m = tuple(sorted(ma + mb))
            out[m] = out.get(m, 0) + ca * cb
    return _clean(out)


def exact_div(a: Mapping[Monomial, int], b: Mapping[Monomial, int]) -> Poly | None:
    """``a / b`` when ``b`` is one term that divides every term of ``a``; else None."""
    if len(b) != 1:
        return None
    (mb, cb), = b.items()
    out: Poly = {}
    for ma, ca in a.items():
        rest = list(ma)
        for s in mb:
            if s not in rest:
                return None
            rest.remove(s)
        if ca % cb:
            return None
        out[tuple(rest)] = ca // cb
    return _clean(out)


def to_poly(expr: Expr) -> Poly:
    """``expr`` as a polynomial in the symbol vars; LoweringError when it is not one
    (loop vars, data-dependent values, inexact division)."""
    expr = simplify_expr(expr)
    if isinstance(expr, Const) and not isinstance(expr.value, float | bool):
        return _clean({(): int(expr.value)})
    if isinstance(expr, Var) and is_symbol(expr.name):
        return {(expr.name,): 1}
    if isinstance(expr, Binary) and expr.op in ("add", "sub", "mul", "div", "max", "min"):
        a, b = to_poly(expr.a), to_poly(expr.b)
        if expr.op == "add":
            return add(a, b)
        if expr.op == "sub":
            return add(a, b, -1)
        if expr.op == "mul":
            return mul(a, b)
        if expr.op == "div":
            q = exact_div(a, b)
            if q is not None:
                return q
        elif a == b:
            return a
        elif not a.keys() - {()} and not b.keys() - {()}:
            pick = max if expr.op == "max" else min
            return _clean({(): pick(a.get((), 0), b.get((), 0))})
    raise LoweringError(f"size {expr} is not a polynomial in the symbolic dims")


def is_poly(expr: Expr) -> bool:
    try:
        to_poly(expr)
        return True
    except (LoweringError, KeyError, TypeError, ValueError):
        return False


def to_expr(p: Mapping[Monomial, int]) -> Expr:
    total: Expr = Const(0)
    for m, c in sorted(p.items()):
        term: Expr = Const(c)
        for s in m:
            term = term * Var(s)
        total = total + term
    return simplify_expr(total)


def evaluate(p: Mapping[Monomial, int], values: Mapping[str, int]) -> int:
    total = 0
    for m, c in p.items():
        term = c
        for s in m:
            term *= values[s]
        total += term
    return total


def upper_bound(a: Mapping[Monomial, int], b: Mapping[Monomial, int]) -> Poly:
    """Coefficient-wise max: at least ``a`` and ``b`` wherever every symbol is >= 0
    (each monomial is then >= 0)."""
    keys = sorted(set(a) | set(b))
    return _clean({m: max(a.get(m, 0), b.get(m, 0)) for m in keys})


def symbols_of(polys: Sequence[Mapping[Monomial, int]]) -> list[str]:
    return sorted({s for p in polys for m in p for s in m}, key=lambda s: (len(s), s))


def freeze(p: Mapping[Monomial, int]) -> FrozenPoly:
    return tuple(sorted(_clean(dict(p)).items()))


def to_json(p: Mapping[Monomial, int]) -> dict[str, int]:
    """The manifest form ``{"N*N1": 384, "": 64}``; the zero polynomial is ``{"": 0}``."""
    return {"*".join(m): int(c) for m, c in sorted(p.items()) if c} or {"": 0}


def from_json(obj: object) -> Poly:
    """The manifest form back; also reads the older ``[a, b]`` (``a*N + b``) pairs."""
    if isinstance(obj, list | tuple) and len(obj) == 2:
        return _clean({("N",): int(obj[0]), (): int(obj[1])})
    if isinstance(obj, int):
        return _clean({(): obj})
    if isinstance(obj, dict):
        return _clean({tuple(k.split("*")) if k else (): int(v) for k, v in obj.items()})
    raise ValueError(f"not a polynomial: {obj!r}")
