"""Check a parsed spec against the plugin registry and the file system.

Names of frontends, passes, backends and adapters must be registered; options must be
declared by the part (``Entry.options``), of the declared type and among its choices, and
required options must be given. Parts whose module cannot be imported yet are checked by
name only. Input files (the model, ``eval`` data, data references in model and pass
options) must exist when ``check_files`` is true; serve options are runtime concerns and
are not checked for existence.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path, PurePath
from typing import Any

from irkit.plugins import Entry, PluginError, Registry, get_registry, unknown_name_message
from irkit.runtime.options import Option
from irkit.spec.errors import SpecError, clip_text
from irkit.spec.model import (
    DataRef,
    ModelSource,
    Options,
    PassSpec,
    Pipeline,
    ServeSpec,
    SpecFile,
    TargetSpec,
)
from irkit.spec.parser import resolve_path


def validate(
    spec: SpecFile, registry: Registry | None = None, *, check_files: bool = True
) -> SpecFile:
    """Validate ``spec``; return it with option values normalised to their declared types.

    ``registry`` defaults to :func:`irkit.plugins.get_registry`. Normalisation: an int
    given for a float option becomes a float, and a string given for a Path option becomes
    an absolute Path resolved against the spec file's directory. Raises SpecError.
    """
    checker = _Checker(spec, registry if registry is not None else get_registry(), check_files)
    pipelines = tuple(checker.pipeline(p) for p in spec.pipelines)
    return dataclasses.replace(spec, pipelines=pipelines)


class _Checker:
    def __init__(self, spec: SpecFile, registry: Registry, check_files: bool) -> None:
        self.spec = spec
        self.registry = registry
        self.check_files = check_files
        self.base = spec.path.parent if spec.path is not None else Path.cwd()

    def error(self, message: str, line: int, column: int) -> SpecError:
        return self.spec.error(message, line, column)

    def pipeline(self, pipeline: Pipeline) -> Pipeline:
        self.model(pipeline.model)
        if pipeline.eval is not None:
            self.data_file(pipeline.eval, "eval data")
        if pipeline.train is not None:
            self.data_file(pipeline.train, "train data")
        passes = tuple(self.pass_spec(p) for p in pipeline.passes)
        targets = tuple(self.target(t) for t in pipeline.targets)
        serves = tuple(self.serve(s) for s in pipeline.serves)
        return dataclasses.replace(pipeline, passes=passes, targets=targets, serves=serves)

    # -- parts ----------------------------------------------------------------------

    def model(self, model: ModelSource) -> None:
        self.entry("frontends", "model frontend", model.kind, model.line, model.column)
        if model.path is not None and self.check_files:
            self.require_file(model.path, "model file", model.line, model.column)
        for value in model.options.values():
            self.data_files_in(value, f"{model.kind}() data")

    def pass_spec(self, spec: PassSpec) -> PassSpec:
        entry = self.entry("passes", "pass", spec.name, spec.line, spec.column)
        options = self.options(entry, "pass", spec.name, spec.options, (spec.line, spec.column))
        for key, value in options.items():
            self.data_files_in(value, f"pass {spec.name!r} option {key!r}")
        return dataclasses.replace(spec, options=options)

    def target(self, spec: TargetSpec) -> TargetSpec:
        line, column = spec.backend_position or (spec.line, spec.column)
        entry = self.entry("backends", "backend", spec.backend, line, column)
        options = self.options(
            entry, "backend", spec.backend, spec.options, (spec.line, spec.column)
        )
        return dataclasses.replace(spec, options=options)

    def serve(self, spec: ServeSpec) -> ServeSpec:
        entry = self.entry("adapters", "adapter", spec.adapter, spec.line, spec.column)
        options = self.options(
            entry, "adapter", spec.adapter, spec.options, (spec.line, spec.column)
        )
        return dataclasses.replace(spec, options=options)

    def entry(self, kind: str, what: str, name: str, line: int, column: int) -> Entry:
        table = self.registry.of(kind)
        if name not in table:
            raise self.error(unknown_name_message(what, name, table), line, column)
        return table[name]

    # -- options ----------------------------------------------------------------------

    def options(
        self, entry: Entry, what: str, name: str, options: Options, at: tuple[int, int]
    ) -> Options:
        try:
            declared = entry.options
        except PluginError:
            return options  # registered, but its module is not importable yet: name only
        owner = f"{what} {name!r}"
        changes: dict[str, Any] = {}
        for key, value in options.items():
            line, column = options.position(key) or at
            if key not in declared:
                if not declared:
                    raise self.error(f"{owner} takes no options (got {key!r})", line, column)
                message = unknown_name_message("option", key, declared)
                raise self.error(f"{owner}: {message}", line, column)
            option = declared[key]
            normalised = self.coerce(option, value, f"{owner}: option {key!r}", line, column)
            if normalised is not value:
                changes[key] = normalised
        for key, option in declared.items():
            if option.required and key not in options:
                raise self.error(
                    f"{owner}: missing required option {key!r}"
                    + (f" ({option.doc})" if option.doc else ""),
                    *at,
                )
        return options.replace(changes) if changes else options

    def coerce(self, option: Option, value: Any, where: str, line: int, column: int) -> Any:
        types = option.type if isinstance(option.type, tuple) else (option.type,)
        try:
            accepted = _accept(types, value, self.base)
        except ValueError as exc:  # a path that cannot be resolved (~nosuchuser/...)
            raise self.error(f"{where}: {exc}", line, column) from None
        if accepted is _REJECTED:
            raise self.error(
                f"{where} expects {_type_words(types)}, got {_describe(value)}", line, column
            )
        if option.choices is not None and accepted not in option.choices:
            known = ", ".join(repr(c) for c in option.choices)
            close = difflib.get_close_matches(str(accepted), [str(c) for c in option.choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise self.error(
                f"{where} must be one of {known}, got {accepted!r}{hint}", line, column
            )
        return accepted

    # -- files ------------------------------------------------------------------------

    def data_files_in(self, value: Any, what: str) -> None:
        if isinstance(value, DataRef):
            self.data_file(value, what)
        elif isinstance(value, tuple):
            for item in value:
                self.data_files_in(item, what)

    def data_file(self, ref: DataRef, what: str) -> None:
        if self.check_files:
            self.require_file(ref.path, f"{what} file", ref.line, ref.column)

    def require_file(self, path: Path, what: str, line: int, column: int) -> None:
        """SpecError unless ``path`` exists; a path the OS cannot even look up (a name
        too long for the file system, a loop of links) says why."""
        try:
            found = path.exists()
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise self.error(f"{what} {clip_text(str(path))}: {reason}", line, column) from None
        if not found:
            raise self.error(f"{what} not found: {path}", line, column)


_REJECTED = object()


def _accept(types: tuple[Any, ...], value: Any, base: Path) -> Any:
    """``value`` (normalised) if one of ``types`` takes it, else ``_REJECTED``."""
    classes = [t for t in types if isinstance(t, type)]
    if object in classes or len(classes) < len(types):
        return value  # `object` or an annotation we cannot check: anything goes
    if isinstance(value, bool):
        return value if bool in classes else _REJECTED
    if isinstance(value, int) and int not in classes and float in classes:
        return float(value)
    if isinstance(value, str) and not any(issubclass(str, t) for t in classes):
        if any(issubclass(t, PurePath) for t in classes):
            return resolve_path(base, value)
        return _REJECTED
    if isinstance(value, tuple) and (list in classes or tuple in classes):
        return value
    return value if isinstance(value, tuple(classes)) else _REJECTED


_WORDS = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    tuple: "a list",
    DataRef: "a data reference such as npz(...)",
    type(None): "nothing",
}


def _type_words(types: tuple[Any, ...]) -> str:
    words: list[str] = []
    for t in types:
        if isinstance(t, type) and issubclass(t, PurePath):
            word = "a path string"
        else:
            word = _WORDS.get(t, getattr(t, "__name__", str(t)))
        if word not in words:
            words.append(word)
    return " or ".join(words)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, tuple):
        return "a list"
    if isinstance(value, DataRef):
        return f"a data reference {value.format}(...)"
    return type(value).__name__
