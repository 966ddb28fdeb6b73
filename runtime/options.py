"""Option declarations shared by backends, adapters and passes (no compiler imports)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
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


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(getattr(k, "__name__", str(k)) for k in kinds)


def resolve_options(owner: str, declared: Mapping[str, Option], given: Mapping[str, Any],
                    error: type[Exception]) -> dict[str, Any]:
    """Every declared option's value: ``given``'s, checked against its type and choices,
    or the default. Unknown names, wrong types (a bool is not an int) and values outside
    the choices raise ``error`` naming ``owner`` and the option."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(declared), n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise error(f"{owner} has no option(s) {', '.join(hints)}; its options: "
                    f"{', '.join(declared) or 'none'}")
    resolved: dict[str, Any] = {}
    for key, option in declared.items():
        value = given.get(key, option.default)
        kinds = option.type if isinstance(option.type, tuple) else (option.type,)
        ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise error(f"{owner} option {key}={value!r} must be of type {_type_name(option.type)}")
        if option.choices is not None and value not in option.choices:
            raise error(f"{owner} option {key}={value!r} must be one of "
                        f"{', '.join(map(str, option.choices))}")
        resolved[key] = value
    return resolved
