"""Option declarations shared by backends, adapters and passes (no compiler imports)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One option of a backend, adapter or pass: its Python type, default and help text."""

    type: type | tuple[type, ...]
    default: Any = None
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    required: bool = False
