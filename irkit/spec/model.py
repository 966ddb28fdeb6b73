"""The parsed form of a spec file: frozen dataclasses that remember where they came from.

Every node carries the 1-based ``line`` and ``column`` of the name that introduced it, so
later stages (validation, build) can report errors in the user's terms. Option values are
Python scalars (str, int, float, bool), tuples (spec lists), :class:`DataRef` and, after
validation, :class:`pathlib.Path` for options declared with a Path type.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from irkit.plugins import unknown_name_message
from irkit.spec.errors import SpecError, spec_error

Position = tuple[int, int]


class Options(Mapping[str, Any]):
    """An immutable, ordered, hashable name -> value mapping that knows where each key was.

    Equality ignores positions and compares like a dict, so ``opts == {"energy": 0.95}``.
    """

    __slots__ = ("_positions", "_values")

    def __init__(
        self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), /, **values: Any
    ) -> None:
        self._values: Mapping[str, Any] = MappingProxyType({**dict(items), **values})
        self._positions: Mapping[str, Position] = MappingProxyType({})

    @classmethod
    def located(
        cls,
        items: Mapping[str, Any] | Iterable[tuple[str, Any]],
        positions: Mapping[str, Position],
    ) -> Options:
        """Options that remember the ``(line, column)`` each key was written at."""
        options = cls(items)
        options._positions = MappingProxyType(dict(positions))
        return options

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._values) == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        # Order-insensitive, like __eq__; values are hashable (lists are parsed to tuples).
        return hash(frozenset(self._values.items()))

    def __repr__(self) -> str:
        return f"Options({dict(self._values)!r})"

    def position(self, key: str) -> Position | None:
        """``(line, column)`` of ``key`` in the spec, or None for options made in code."""
        return self._positions.get(key)

    def replace(self, changes: Mapping[str, Any]) -> Options:
        """A copy with some values changed (positions kept); keys must already exist."""
        values = dict(self._values)
        values.update(changes)
        return Options.located(values, self._positions)

    def without(self, *keys: str) -> Options:
        """A copy without ``keys``."""
        kept = {k: v for k, v in self._values.items() if k not in keys}
        return Options.located(kept, {k: p for k, p in self._positions.items() if k in kept})


EMPTY_OPTIONS = Options()


@dataclass(frozen=True)
class DataRef:
    """A data file: ``npz("data/x.npz", input = "x", labels = "y")``; ``path`` is absolute."""

    format: str
    path: Path
    options: Options = EMPTY_OPTIONS
    line: int = 0
    column: int = 0


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from.

    ``onnx("m.onnx")`` sets ``path`` (absolute); ``torch("pkg.mod:factory", example=...)``
    sets ``factory``. ``kind`` names the frontend; keyword arguments are in ``options``.
    """

    kind: str
    path: Path | None = None
    factory: str | None = None
    options: Options = EMPTY_OPTIONS
    line: int = 0
    column: int = 0


@dataclass(frozen=True)
class InputDecl:
    """``x: f32[N, 1, 8, 8]``: dims are positive ints or symbol names."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    line: int = 0
    column: int = 0


@dataclass(frozen=True)
class PassSpec:
    """One entry of the ``passes`` block: ``prune { sparsity = 0.5 }``."""

    name: str
    options: Options = EMPTY_OPTIONS
    line: int = 0
    column: int = 0

    def to_pipeline_text(self) -> str:
        """This pass in pass-pipeline text: ``quantize{mode=static,per_channel=true}``.

        Options holding data references (e.g. a calibration set) have no text form; they are
        left out and the caller hands the data to the pass manager separately.
        """
        rendered = [
            f"{key}={_pipeline_value(value)}"
            for key, value in self.options.items()
            if not _holds_data(value)
        ]
        return f"{self.name}{{{','.join(rendered)}}}" if rendered else self.name


@dataclass(frozen=True)
class TargetSpec:
    """``target NAME { backend = "...", ... }``; without ``backend`` the name is the backend.

    ``options`` holds everything but ``backend``.
    """

    name: str
    backend: str
    options: Options = EMPTY_OPTIONS
    line: int = 0
    column: int = 0
    backend_position: Position | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ServeSpec:
    """``serve ADAPTER { ... }``: one way to serve the compiled artifact."""

    adapter: str
    options: Options = EMPTY_OPTIONS
    line: int = 0
    column: int = 0


@dataclass(frozen=True)
class Pipeline:
    """One ``pipeline NAME { ... }`` block. ``output`` is the artifact directory (absolute)."""

    name: str
    model: ModelSource
    inputs: tuple[InputDecl, ...] = ()
    eval: DataRef | None = None
    passes: tuple[PassSpec, ...] = ()
    # ``train = npz(path, input =, labels =)``: what training passes (distill) learn from.
    train: DataRef | None = field(default=None, metadata={"omit_if_none": True})
    targets: tuple[TargetSpec, ...] = ()
    serves: tuple[ServeSpec, ...] = ()
    output: Path = Path("build")
    line: int = 0
    column: int = 0
    file: str = field(default="<spec>", compare=False)

    def pass_pipeline_text(self) -> str:
        """The pass list as pass-pipeline text, e.g. ``fuse,prune{sparsity=0.5}``."""
        return ",".join(p.to_pipeline_text() for p in self.passes)

    def target(self, name: str | None = None) -> TargetSpec:
        """The only target, or the one called ``name``."""
        return _pick(self.targets, name, "target", self._where(), lambda t: t.name)

    def serve(self, adapter: str | None = None) -> ServeSpec:
        """The only serve block, or the one for ``adapter``."""
        return _pick(self.serves, adapter, "serve block", self._where(), lambda s: s.adapter)

    def _where(self) -> tuple[str, str, int, int]:
        return (f"pipeline {self.name!r}", self.file, self.line, self.column)


@dataclass(frozen=True)
class SpecFile:
    """A parsed spec file. ``path`` is absolute (or None for text without a file)."""

    path: Path | None
    pipelines: tuple[Pipeline, ...]
    display_name: str = field(default="<spec>", compare=False)
    text: str | None = field(default=None, repr=False, compare=False)

    def pipeline(self, name: str | None = None) -> Pipeline:
        """The only pipeline, or the one called ``name``; SpecError otherwise."""
        where = ("spec file", self.display_name, 1, 1)
        return _pick(self.pipelines, name, "pipeline", where, lambda p: p.name)

    def error(self, message: str, line: int, column: int) -> SpecError:
        """A SpecError located in this file (shows the source line when known)."""
        return spec_error(message, self.display_name, self.text, line, column)


# The irkit command-line option that picks one of several declared items.
_CHOOSE_WITH = {"pipeline": "--pipeline", "target": "--target", "serve block": "--adapter"}


def _pick(
    items: tuple[Any, ...],
    name: str | None,
    what: str,
    where: tuple[str, str, int, int],
    key: Any,
) -> Any:
    """The only item, or the one whose ``key`` is ``name``; SpecError located at ``where``."""
    owner, file, line, column = where
    names = [key(item) for item in items]
    if name is None:
        if len(items) == 1:
            return items[0]
        if not items:
            raise SpecError(f"{owner} declares no {what}", file, line, column)
        listed = ", ".join(repr(n) for n in names)
        flag = _CHOOSE_WITH.get(what, "")
        raise SpecError(
            f"{owner} declares {len(items)} {what}s ({listed}); choose one by name"
            + (f" (on the command line: {flag} NAME)" if flag else ""),
            file,
            line,
            column,
        )
    for item in items:
        if key(item) == name:
            return item
    raise SpecError(f"{unknown_name_message(what, name, names)} in {owner}", file, line, column)


def _holds_data(value: Any) -> bool:
    if isinstance(value, tuple | list):
        return any(_holds_data(item) for item in value)
    return isinstance(value, DataRef)


_BARE_TEXT = re.compile(r"[A-Za-z0-9_.+\-/:]+")


def _pipeline_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return value if _BARE_TEXT.fullmatch(value) else json.dumps(value)
    if isinstance(value, tuple | list):
        return "[" + ",".join(_pipeline_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} in pass-pipeline text")


_POSITION_FIELDS = frozenset({"line", "column"})


def to_data(obj: Any, base: Path | None = None) -> Any:
    """Plain JSON-able data for a parsed spec (positions left out).

    Paths under ``base`` are written relative to it (POSIX separators), others absolute.
    Used by golden tests and ``irkit inspect``.
    """
    if isinstance(obj, Options):
        return {key: to_data(value, base) for key, value in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: to_data(getattr(obj, f.name), base)
            for f in dataclasses.fields(obj)
            if f.compare and f.name not in _POSITION_FIELDS
            and not (f.metadata.get("omit_if_none") and getattr(obj, f.name) is None)
        }
    if isinstance(obj, Path):
        if base is not None and obj.is_relative_to(base):
            return obj.relative_to(base).as_posix()
        return obj.as_posix()
    if isinstance(obj, tuple | list):
        return [to_data(item, base) for item in obj]
    return obj
