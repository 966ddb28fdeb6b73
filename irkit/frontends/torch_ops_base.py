"""The ATen lowering registry shared by ``torch_ops`` and ``torch_ops_shape``."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from torch import fx

Lowering = Callable[..., Any]
LOWERINGS: dict[str, Lowering] = {}
INT64_MAX = 2**63 - 1


def lowers(*names: str) -> Callable[[Lowering], Lowering]:
    def register(fn: Lowering) -> Lowering:
        for name in names:
            LOWERINGS[name] = fn
        return fn

    return register


def _axis(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def _as_list(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]


def _used_outputs(node: fx.Node, count: int) -> list[bool]:
    used = [False] * count
    for user in node.users:
        index: Any = user.args[1]
        if user.target is operator.getitem:
            used[int(index)] = True
    return used
