"""Ordering elements at run time in kernel IR, for Unique and NonMaxSuppression.

:func:`merge_sort`: a stable bottom-up merge sort of a buffer (optionally carrying a
second one along): ``log2(n)`` passes, each a linear merge of adjacent runs from one
scratch buffer into the other (two passes per round, so the result always ends in the
first buffer); ``O(n log n)`` comparisons, ties keep input order. :class:`Heap`: a
binary heap for taking the best elements one at a time when only the first few are
wanted (``O(n)`` to build, ``O(log n)`` a pop). Only serial loops, ``If``, ``Let`` and
``Select``: every backend that runs kernel IR runs them, the interpreter included.
"""

from __future__ import annotations

from collections.abc import Callable

from irkit.kir import (
    Binary,
    Buffer,
    Const,
    Expr,
    For,
    If,
    Let,
    Load,
    Select,
    Stmt,
    Store,
    Var,
    block,
)
from irkit.kir.nodes import FLOATS
from irkit.lower.context import LoweringContext

Before = Callable[[Expr, Expr], tuple[Stmt | None, Expr]]
"""``before(p, q)``: a statement to run first (or None) and a bool expression, true when
element ``p`` must come strictly before element ``q`` (a strict weak order)."""

_ROUNDS = 32  # two passes a round: runs up to 4**32 elements long


def _b(op: str, a: Expr, b: Expr | int) -> Expr:
    return Binary(op, a, b if isinstance(b, Expr) else Const(b))


def _local(ctx: LoweringContext, hint: str) -> Buffer:
    return Buffer(ctx.fresh(hint), "i64", Const(1), "local")


def is_nan(x: Expr) -> Expr:
    """True where ``x`` is NaN (false for every integer)."""
    if x.dtype not in FLOATS:
        return Const(False, "bool")
    return _b("ne", x, x)


def less(a: Expr, b: Expr) -> Expr:
    """A strict total order on values: ``a < b``, with NaN after every number and equal
    to NaN (so sorting and grouping stay well defined on NaN)."""
    if a.dtype not in FLOATS:
        return _b("lt", a, b)
    return _b("or", _b("lt", a, b), _b("and", is_nan(b), _b("eq", a, a)))


def merge_sort(ctx: LoweringContext, keys: Buffer, scratch: Buffer, size: Expr,
               before: Before, payload: tuple[Buffer, Buffer] | None = None
               ) -> tuple[Stmt, list[Buffer]]:
    """A statement sorting ``keys[0:size)`` stably by ``before`` (``scratch`` holds at
    least ``size`` elements too), and the local buffers it uses. With ``payload``
    (a buffer and its scratch), its elements move along with the keys (sorting values
    themselves, with their indices as payload, keeps one load off each step's chain)."""
    width, left, right = _local(ctx, "w"), _local(ctx, "li"), _local(ctx, "ri")
    zero = Const(0)
    last = _b("sub", size, 1)

    def merge(src: Buffer, dst: Buffer, carry: tuple[Buffer, Buffer] | None) -> Stmt:
        w = Load(width, zero)
        span = _b("mul", w, 2)
        r, k = ctx.var("run"), ctx.var("k")
        lo, mid, hi = (Var(ctx.fresh(h)) for h in ("lo", "mid", "hi"))
        p, q = Var(ctx.fresh("p"), src.dtype), Var(ctx.fresh("q"), src.dtype)
        i, j = Load(left, zero), Load(right, zero)
        at_i, at_j = Binary("min", i, last), Binary("min", j, last)
        setup, right_first = before(q, p)
        take = Var(ctx.fresh("take"), "bool")
        moves = None if carry is None else Store(carry[1], k, Select(
            take, Load(carry[0], at_j), Load(carry[0], at_i)))
        step = block(
            Let(p, Load(src, at_i)),
            Let(q, Load(src, at_j)),
            setup,
            Let(take, _b("and", _b("lt", j, hi), _b("or", _b("ge", i, mid), right_first))),
            Store(dst, k, Select(take, q, p)), moves,
            Store(left, zero, _b("add", i, Select(take, Const(0), Const(1)))),
            Store(right, zero, _b("add", j, Select(take, Const(1), Const(0)))))
        run = block(
            Let(lo, _b("mul", r, span)),
            Let(mid, Binary("min", _b("add", lo, w), size)),
            Let(hi, Binary("min", _b("add", lo, span), size)),
            Store(left, zero, lo), Store(right, zero, mid),
            For(k, _b("sub", hi, lo), step, "serial", start=lo))
        runs = _b("div", _b("sub", _b("add", size, span), 1), span)
        return block(For(r, runs, run, "serial"), Store(width, zero, span))

    back = None if payload is None else (payload[1], payload[0])
    rounds = ctx.var("round")
    body = block(Store(width, zero, Const(1)), For(rounds, Const(_ROUNDS), If(
        _b("lt", Load(width, zero), size),
        block(merge(keys, scratch, payload), merge(scratch, keys, back)))))
    return body, [width, left, right]


Better = Callable[[Expr, Expr, Expr, Expr], Expr]
"""``better(key_a, a, key_b, b)``: whether element ``a`` (with its key) comes strictly
before element ``b`` (a strict total order)."""


class Heap:
    """A binary heap of ``i64`` element indices in ``buf`` with their keys beside them in
    ``keys`` (best first by ``better``), for taking elements in order one at a time when
    only the first few are wanted: building it costs ``O(n)`` comparisons, each pop
    ``O(log n)`` (NonMaxSuppression's candidates, as ONNX Runtime takes them). Keys sit
    next to the indices so a comparison reads no third array, and each sift runs a loop
    only as long as the height it can fall."""

    def __init__(self, ctx: LoweringContext, buf: Buffer, keys: Buffer, better: Better,
                 base: Expr | None = None) -> None:
        """``base``: where the heap starts in ``buf`` and ``keys`` (one row's heap among
        many, at a per-row offset); 0 when None."""
        self.ctx, self.buf, self.keys, self.better = ctx, buf, keys, better
        self.base = base
        names = ("hsize", "hpos", "hgo", "hlvl", "hpw", "hdepth", "htop")
        self.size, self.pos, self.go, self.lvl, self.pw, self.depth, self.top = (
            _local(ctx, n) for n in names)

    @property
    def locals(self) -> list[Buffer]:
        return [self.size, self.pos, self.go, self.lvl, self.pw, self.depth, self.top]

    def _at(self, i: Expr) -> Expr:
        return i if self.base is None else _b("add", self.base, i)

    def _get(self, buf: Buffer) -> Expr:
        return Load(buf, Const(0))

    def _set(self, buf: Buffer, value: Expr | int) -> Stmt:
        return Store(buf, Const(0), value if isinstance(value, Expr) else Const(value))

    def _log2(self, value: Expr) -> Stmt:
        """``hlvl`` = floor(log2(value)) (0 for value <= 1), ``hpw`` = 2**hlvl."""
        t = self.ctx.var("t")
        grow = _b("le", _b("mul", self._get(self.pw), 2), value)
        return block(self._set(self.lvl, 0), self._set(self.pw, 1), For(t, Const(63), If(
            grow, block(self._set(self.pw, _b("mul", self._get(self.pw), 2)),
                        self._set(self.lvl, _b("add", self._get(self.lvl), 1))))))

    def _sift(self, start: Expr, steps: Expr) -> Stmt:
        """Move element ``start`` down to its place (at most ``steps`` levels): the
        children it loses to move up one at a time, the element itself is written once,
        where it stops."""
        heap, keys, size, pos = self.buf, self.keys, self._get(self.size), self._get(self.pos)
        d = self.ctx.var("d")
        child, right, at, c0, c1, best, cur = (
            Var(self.ctx.fresh(h)) for h in ("ch", "rt", "at", "c0", "c1", "best", "cur"))
        k0, k1, kbest, kcur = (Var(self.ctx.fresh(h), keys.dtype)
                               for h in ("k0", "k1", "kbest", "kcur"))
        take_right = Var(self.ctx.fresh("pickr"), "bool")
        clamp = Binary("min", right, _b("sub", size, 1))
        step = block(
            Let(child, _b("add", _b("mul", pos, 2), 1)),
            If(_b("ge", child, size), self._set(self.go, 0), block(
                Let(right, _b("add", child, 1)),
                Let(c0, Load(heap, self._at(child))), Let(k0, Load(keys, self._at(child))),
                Let(c1, Load(heap, self._at(clamp))), Let(k1, Load(keys, self._at(clamp))),
                Let(take_right, _b("and", _b("lt", right, size),
                                   self.better(k1, c1, k0, c0))),
                Let(best, Select(take_right, c1, c0)), Let(kbest, Select(take_right, k1, k0)),
                Let(at, Select(take_right, right, child)),
                If(self.better(kbest, best, kcur, cur), block(
                    Store(heap, self._at(pos), best), Store(keys, self._at(pos), kbest),
                    self._set(self.pos, at)),
                   self._set(self.go, 0)))))
        return block(Let(cur, Load(heap, self._at(start))),
                     Let(kcur, Load(keys, self._at(start))),
                     self._set(self.pos, start), self._set(self.go, 1),
                     For(d, steps, If(_b("ne", self._get(self.go), 0), step)),
                     Store(heap, self._at(pos), cur), Store(keys, self._at(pos), kcur))

    def build(self, size: Expr) -> Stmt:
        """Heap order on ``buf[0:size)`` (Floyd: sift each parent, last first)."""
        t = self.ctx.var("t")
        half = _b("div", size, 2)
        at = Var(self.ctx.fresh("at"))
        node = block(
            Let(at, _b("sub", _b("sub", half, 1), t)),
            If(_b("lt", _b("add", at, 1), self._get(self.pw)), block(
                self._set(self.pw, _b("div", self._get(self.pw), 2)),
                self._set(self.lvl, _b("sub", self._get(self.lvl), 1)))),
            self._sift(at, _b("sub", self._get(self.depth), self._get(self.lvl))))
        return block(self._set(self.size, size), self._log2(size),
                     self._set(self.depth, self._get(self.lvl)), self._log2(half),
                     For(t, half, node))

    def _sink(self, cur: Expr, kcur: Expr) -> Stmt:
        """Place element ``cur`` (key ``kcur``) from a hole at the root, bottom-up
        (Floyd): the hole walks down to a leaf, the better child moving up each level
        (one comparison a level, no early exit to mispredict), then ``cur`` climbs from
        there to its place (a level or two at most, typically)."""
        ctx, heap, keys = self.ctx, self.buf, self.keys
        size, pos = self._get(self.size), self._get(self.pos)
        d, u = ctx.var("d"), ctx.var("u")
        child, right, at, c0, c1, parent, cp = (
            Var(ctx.fresh(h)) for h in ("ch", "rt", "at", "c0", "c1", "par", "cp"))
        k0, k1, kp = (Var(ctx.fresh(h), keys.dtype) for h in ("k0", "k1", "kp"))
        take_right = Var(ctx.fresh("pickr"), "bool")
        clamp = Binary("min", right, _b("sub", size, 1))
        down = block(
            Let(child, _b("add", _b("mul", pos, 2), 1)),
            If(_b("lt", child, size), block(
                Let(right, _b("add", child, 1)),
                Let(c0, Load(heap, self._at(child))), Let(k0, Load(keys, self._at(child))),
                Let(c1, Load(heap, self._at(clamp))), Let(k1, Load(keys, self._at(clamp))),
                Let(take_right, _b("and", _b("lt", right, size),
                                   self.better(k1, c1, k0, c0))),
                Let(at, Select(take_right, right, child)),
                Store(heap, self._at(pos), Select(take_right, c1, c0)),
                Store(keys, self._at(pos), Select(take_right, k1, k0)),
                self._set(self.pos, at))))
        up = If(_b("and", _b("ne", self._get(self.go), 0), _b("gt", pos, 0)), block(
            Let(parent, _b("div", _b("sub", pos, 1), 2)),
            Let(cp, Load(heap, self._at(parent))), Let(kp, Load(keys, self._at(parent))),
            If(self.better(kcur, cur, kp, cp), block(
                Store(heap, self._at(pos), cp), Store(keys, self._at(pos), kp),
                self._set(self.pos, parent)), self._set(self.go, 0))))
        steps = self._get(self.depth)
        return block(self._set(self.pos, 0), For(d, steps, down),
                     self._set(self.go, 1), For(u, steps, up),
                     Store(heap, self._at(pos), cur), Store(keys, self._at(pos), kcur))

    def pop(self, bottom_up: bool = False) -> Stmt:
        """Move the best element to ``top`` (the heap must not be empty); ``bottom_up``
        re-places the last element by :meth:`_sink` (fewer comparisons where it falls
        back near the leaves, as after a pop it does)."""
        heap, keys, last = self.buf, self.keys, _b("sub", self._get(self.size), 1)
        root, end = self._at(Const(0)), self._at(last)
        if bottom_up:
            cur, kcur = Var(self.ctx.fresh("cur")), Var(self.ctx.fresh("kcur"), keys.dtype)
            return block(self._set(self.top, Load(heap, root)),
                         Let(cur, Load(heap, end)), Let(kcur, Load(keys, end)),
                         self._set(self.size, last), self._sink(cur, kcur))
        return block(self._set(self.top, Load(heap, root)),
                     Store(heap, root, Load(heap, end)),
                     Store(keys, root, Load(keys, end)), self._set(self.size, last),
                     self._sift(Const(0), self._get(self.depth)))

    def replace_top(self, index: Expr, key: Expr) -> Stmt:
        """Put element ``index`` (with ``key``) in place of the root and sift it down
        (bottom-up): keeping the K best of a stream in a heap whose root is the worst of
        them, where a newcomer mostly belongs near the leaves."""
        return self._sink(index, key)

    @property
    def popped(self) -> Expr:
        return self._get(self.top)


__all__ = ["Before", "Better", "Heap", "is_nan", "less", "merge_sort"]
