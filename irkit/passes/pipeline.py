"""Pipeline text -> pass objects.

``fuse,quantize{mode=static,per_channel=true},prune{sparsity=0.5,exclude=[fc1,fc2]}``
is a comma-separated list of pass names, each optionally followed by ``{key=value,...}``.
Values are typed by the pass's dataclass field annotations (bool, int, float, str,
``Literal[...]`` choices, ``tuple[str, ...]`` lists written ``[a,b]``). Names are looked
up in a pass table the caller hands in (``irkit.optimize`` passes the plugin registry's, so
third-party passes work the same as built-in ones); this layer never imports the plugins.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from irkit.errors import IrkitError
from irkit.passes.base import Pass


class PipelineError(IrkitError):
    """Pipeline text names an unknown pass or option, or gives an option a bad value."""


class PassOptionError(PipelineError, ValueError):
    """A pass rejected its options in its own check (still a ValueError, as before)."""


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside of ``{}``/``[]`` and quotes."""
    parts: list[str] = []
    depth = 0
    quote: str | None = None
    current: list[str] = []
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"unbalanced {ch!r} in {text!r}")
        elif ch == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if depth != 0 or quote:
        raise PipelineError(f"unbalanced brackets or quotes in {text!r}")
    parts.append("".join(current).strip())
    return parts


PassTable = Mapping[str, Any]
"""Pass name -> pass class, or a registry entry whose ``obj`` is the class (resolved on
first use, so naming a pass does not import every other one)."""


def _pass_class(entry: Any) -> Any:
    return entry if isinstance(entry, type) else entry.obj


def parse_pipeline(text: str, table: PassTable) -> list[Pass]:
    """Parse pipeline text into configured pass objects (errors name the culprit)."""
    entries = table
    passes: list[Pass] = []
    for item in split_top_level(text.strip()) if text.strip() else []:
        if not item:
            raise PipelineError(f"empty pass name in pipeline {text!r}")
        name, brace, rest = item.partition("{")
        name = name.strip()
        if brace and not rest.endswith("}"):
            raise PipelineError(f"pass {name!r}: options must end with '}}' in {item!r}")
        if name not in entries:
            known = sorted(entries)
            raise PipelineError(
                f"unknown pass {name!r}{_did_you_mean(name, known)} (known: {', '.join(known)})"
            )
        cls = _pass_class(entries[name])
        options = _parse_options(name, cls, rest[:-1] if brace else "")
        try:
            passes.append(cls(**options))
        except (ValueError, TypeError) as exc:  # a pass's own check of its options
            raise PassOptionError(f"pass {name!r}: {exc}") from None
    return passes


def _parse_options(pass_name: str, cls: Any, text: str) -> dict[str, Any]:
    if not dataclasses.is_dataclass(cls):
        raise PipelineError(f"pass {pass_name!r} ({cls!r}) is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for item in split_top_level(text) if text.strip() else []:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq:
            raise PipelineError(f"pass {pass_name!r}: option {item!r} is not key=value")
        if key not in fields:
            known = sorted(fields)
            raise PipelineError(
                f"pass {pass_name!r} has no option {key!r}{_did_you_mean(key, known)} "
                f"(options: {', '.join(known) or 'none'})"
            )
        try:
            out[key] = convert_option(raw.strip(), hints.get(key, str))
        except ValueError as exc:
            raise PipelineError(f"pass {pass_name!r}, option {key!r}: {exc}") from None
    return out


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    return raw


def convert_option(raw: str, hint: Any) -> Any:
    """Convert option text to the type ``hint`` asks for."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw in ("none", "None", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert_option(raw, arg)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin is typing.Literal:
        value = _unquote(raw)
        for choice in args:
            if str(choice) == value:
                return choice
        raise ValueError(
            f"{value!r} is not one of {', '.join(map(repr, args))}{_did_you_mean(value, args)}"
        )
    if origin in (tuple, list):
        body = raw.strip()
        if body.startswith("[") and body.endswith("]"):
            body = body[1:-1]
        items = [p for p in split_top_level(body)] if body.strip() else []
        elem = args[0] if args else str
        return tuple(convert_option(p, elem) for p in items)
    if hint is bool:
        lowered = raw.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if hint is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
    if hint is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
    return _unquote(raw)


def resolve_passes(passes: str | Pass | Sequence[Any], table: PassTable | None = None
                   ) -> list[Pass]:
    """Pipeline text, one pass, or a list mixing pass objects and pipeline text (text
    needs ``table``)."""

    def parse(text: str) -> list[Pass]:
        if table is None:
            if not text.strip():
                return []
            raise PipelineError(f"pipeline text {text!r} needs a pass table to resolve names")
        return parse_pipeline(text, table)

    if isinstance(passes, str):
        return parse(passes)
    if isinstance(passes, Pass):
        return [passes]
    out: list[Pass] = []
    for item in passes:
        if isinstance(item, str):
            out.extend(parse(item))
        elif isinstance(item, type) and dataclasses.is_dataclass(item):
            out.append(item())  # type: ignore[arg-type]  # third-party passes duck-type
        elif hasattr(item, "run"):
            out.append(item)
        else:
            raise PipelineError(f"{item!r} is neither a pass nor pipeline text")
    return out
