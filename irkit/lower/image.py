"""Lowerings of image ops (filled in by the op-coverage work)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

LOWERINGS: dict[str, Callable[..., Any]] = {}
