"""Per-call keys for the random ops of compiled kernel programs.

A random op without a ``seed`` attribute (RandomNormal, Bernoulli, Multinomial… see
``irkit.lower.random_ops``) must draw fresh values on every call, as ONNX Runtime does.
Its generator key is ``splitmix64(node_key ^ call_key)``, where the *call key* is one
more symbolic dim the compiled code reads: :data:`CALL_KEY_SYMBOL`, listed last in the
program's ``symbols`` when the program has such a node. No input shape binds that
symbol; the runner sets its slot of the ``dims`` array before each call from a
:class:`CallKeys` sequence, so users never pass it and the artifact stays data-only.

Keys: ``key_n = base + n`` for the ``n``-th program call (0 first), where ``base`` is a
62-bit value, so the dim stays a non-negative int64 on every backend. The code mixes it,
so consecutive keys give unrelated streams, and handing one out is one step of an
``itertools.count`` (about 0.1 µs; atomic in CPython). ``base`` comes from
``os.urandom`` at load time (and again in a forked child, so processes forked after
loading do not repeat each other's values), or from the load option ``random_seed``,
which makes unseeded nodes reproducible per (seed, call number): a model loaded twice
with the same ``random_seed`` gives the same values on its first call, the same on its
second, and so on. Keys are shared by the kernel programs of one loaded model; each
program call that holds an unseeded node takes the next one, so calls from several
threads never share a key (which thread gets which is up to the scheduler).
"""

from __future__ import annotations

import itertools
import os
import weakref
from collections.abc import Callable
from typing import Any

from irkit.runtime.artifact import ArtifactError

CALL_KEY_SYMBOL = "N64"
"""The symbol name of the call key in a program's ``symbols`` (``irkit.lower.random_ops``
declares the same name; the lowering never gives a shape dim this name)."""

_MASK = (1 << 64) - 1


def _mix(z: int) -> int:
    """The SplitMix64 finalizer."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _base(seed: int) -> int:
    return _mix(seed & _MASK) >> 2


def call_key(seed: int, call: int) -> int:
    """The call key of call number ``call`` (0 first) under ``random_seed=seed``."""
    return _base(seed) + call


class CallKeys:
    """The call keys of one loaded model: from ``random_seed`` ``seed``, or random."""

    next: Callable[[], int]
    """The next call key (a non-negative int below 2**63)."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._reseed()
        if seed is None:
            _UNSEEDED.add(self)

    def _reseed(self) -> None:
        seed = self.seed if self.seed is not None else int.from_bytes(os.urandom(8), "little")
        self.next = itertools.count(_base(seed)).__next__


_UNSEEDED: weakref.WeakSet[CallKeys] = weakref.WeakSet()


def _reseed_after_fork() -> None:
    for keys in list(_UNSEEDED):
        keys._reseed()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_after_fork)


def random_seed_option(value: Any, where: str) -> int | None:
    """The ``random_seed`` load option checked: None, or an int in [0, 2**64)."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MASK:
        raise ArtifactError(f"{where}: random_seed={value!r} must be an int between 0 and "
                            "2**64 - 1 (or None: fresh random values on every call)")
    return value
