"""Parse spec text into :mod:`irkit.spec.model` dataclasses (grammar: ``spec.lark``).

Parsing does the structural checks: syntax, dtypes and dims, duplicate names, data
reference arguments, ``${VAR}`` interpolation and path resolution. Registry and file
checks are :func:`irkit.spec.validation.validate`'s job.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lark import Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedInput, VisitError

from irkit.plugins import Registry, unknown_name_message
from irkit.spec.errors import SpecError, clip_text, spec_error
from irkit.spec.model import (
    DataRef,
    InputDecl,
    ModelSource,
    Options,
    PassSpec,
    Pipeline,
    Position,
    ServeSpec,
    SpecFile,
    TargetSpec,
)
from irkit.spec.syntax import grammar, syntax_error

DTYPES = ("bool", "bf16", "f16", "f32", "f64", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64")

# Keyword arguments each data format accepts, with the Python types they take.
_NAMES = (str, tuple)
DATA_FORMATS: Mapping[str, Mapping[str, tuple[type, ...]]] = {
    "npz": {"input": _NAMES, "labels": (str,), "limit": (int,)},
    "npy": {"labels": (str,), "limit": (int,)},
    "parquet": {"input": _NAMES, "labels": (str,), "limit": (int,)},
    "csv": {
        "input": _NAMES,
        "labels": (str,),
        "limit": (int,),
        "delimiter": (str,),
        "header": (bool,),
    },
    "jsonl": {"input": _NAMES, "labels": (str,), "limit": (int,)},
}

_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_ENV_NAME = re.compile(r"[A-Za-z_]\w*")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "$": "$"}


@dataclass(frozen=True)
class _Located:
    """A value with the position it was written at (only lives during parsing)."""

    value: Any
    line: int
    column: int


@dataclass(frozen=True)
class _Call:
    """``name(args, key = value)`` before it is known to be a model or data reference."""

    name: str
    positional: tuple[_Located, ...]
    keywords: tuple[tuple[Token, _Located], ...]


@dataclass(frozen=True)
class _Item:
    """One pipeline item: its kind (``model``, ``target`` ...), value and position."""

    kind: str
    value: Any
    line: int
    column: int


_OptionList = list[tuple[Token, _Located]]


def parse_spec(
    source: str | Path,
    *,
    text: str | None = None,
    validate: bool = True,
    registry: Registry | None = None,
    check_files: bool = True,
    env: Mapping[str, str] | None = None,
) -> SpecFile:
    """Parse the spec file at ``source`` (or ``text``, reported as ``source``).

    Relative paths are resolved against the spec file's directory; ``${VAR}`` and
    ``${VAR:-default}`` in strings are read from ``env`` (default ``os.environ``). Unless
    ``validate=False``, the result is checked with :func:`irkit.spec.validate` against
    ``registry`` (default: the loaded plugins), including file existence when
    ``check_files``. Every problem raises :class:`SpecError`.
    """
    display = str(source)
    try:
        path = resolve_path(Path.cwd(), str(source))
    except ValueError as exc:
        raise SpecError(f"cannot read spec file: {exc}", display, 1, 1) from None
    if text is None:
        try:
            text = path.read_text(encoding="utf-8-sig")  # tolerate a BOM
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"cannot read spec file: {exc}", display, 1, 1) from None
    spec = parse_text(text, display=display, path=path, env=os.environ if env is None else env)
    if not validate:
        return spec
    from irkit.spec.validation import validate as validate_spec

    return validate_spec(spec, registry, check_files=check_files)


def parse_text(text: str, *, display: str, path: Path, env: Mapping[str, str]) -> SpecFile:
    """Parse ``text`` without validation; ``path`` anchors relative paths."""
    try:
        tree = grammar().parse(text)
    except UnexpectedInput as exc:
        raise syntax_error(exc, display, text) from None
    _check_depth(tree, display, text)
    builder = _SpecBuilder(display, text, path.parent, env)
    try:
        pipelines: tuple[Pipeline, ...] = builder.transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, RecursionError):  # _check_depth should make this moot
            raise spec_error("values are nested too deeply", display, text, 1, 1) from None
        raise exc.orig_exc from None
    except RecursionError:
        raise spec_error("values are nested too deeply", display, text, 1, 1) from None
    return SpecFile(path=path, pipelines=pipelines, display_name=display, text=text)


MAX_NESTING = 32
"""Most lists and calls a value may nest (``[[1]]`` is 2). The transformer and every later
stage walk values recursively; a limit far below Python's recursion limit keeps a
hostile spec from reaching it."""

_NESTING_RULES = frozenset({"list_value", "call"})


def _check_depth(tree: Tree[Token], display: str, text: str) -> None:
    """SpecError at the first value nested more than ``MAX_NESTING`` deep (iteratively:
    the parse tree of a hostile spec may be deeper than Python's recursion limit)."""
    stack: list[tuple[Tree[Token], int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if node.data in _NESTING_RULES:
            depth += 1
            if depth > MAX_NESTING:
                meta = node.meta
                line = getattr(meta, "line", None) or 1
                column = getattr(meta, "column", None) or 1
                raise spec_error(f"values are nested too deeply (more than {MAX_NESTING} "
                                 "levels of lists and calls)", display, text, line, column)
        stack.extend((child, depth) for child in node.children if isinstance(child, Tree))


# ---------------------------------------------------------------- tree -> dataclasses


@v_args(meta=True)
class _SpecBuilder(Transformer[Token, Any]):
    """Builds the dataclasses; raises SpecError for every semantic problem it finds."""

    def __init__(self, file: str, text: str, base: Path, env: Mapping[str, str]) -> None:
        super().__init__(visit_tokens=False)
        self.file = file
        self.text = text
        self.base = base
        self.env = env

    def error(self, message: str, line: int, column: int) -> SpecError:
        return spec_error(message, self.file, self.text, line, column)

    def resolve(self, raw: str, line: int, column: int) -> Path:
        """``raw`` as an absolute path (``~`` expanded) relative to the spec's directory."""
        try:
            return resolve_path(self.base, raw)
        except ValueError as exc:
            raise self.error(str(exc), line, column) from None

    # -- values -----------------------------------------------------------------

    def string(self, meta: Any, children: list[Token]) -> _Located:
        token = children[0]
        return _Located(self.interpolate(token), token.line or 1, token.column or 1)

    def number(self, meta: Any, children: list[Token]) -> _Located:
        token = children[0]
        raw = token.value
        value: int | float
        if any(c in raw for c in ".eE"):
            value = float(raw)
            if not math.isfinite(value):
                raise self.error(f"number {clip_text(raw)} is out of range (a float beyond "
                                 f"{sys.float_info.max:.4g})", meta.line, meta.column)
        else:
            value = self.integer(raw, meta.line, meta.column)
        return _Located(value, meta.line, meta.column)

    def integer(self, raw: str, line: int, column: int) -> int:
        """``int(raw)`` for integers that fit in 64 bits; larger ones are refused before
        ``int`` sees them (Python refuses to convert more than 4,300 digits)."""
        digits = raw.lstrip("+-").lstrip("0")
        if len(digits) > 19 or abs(int(raw)) > _INT_MAX:
            raise self.error(f"integer {clip_text(raw)} is out of range (at most {_INT_MAX}, "
                             "a signed 64-bit integer)", line, column)
        return int(raw)

    def true(self, meta: Any, children: list[Any]) -> _Located:
        return _Located(True, meta.line, meta.column)

    def false(self, meta: Any, children: list[Any]) -> _Located:
        return _Located(False, meta.line, meta.column)

    def list_value(self, meta: Any, children: list[_Located | None]) -> _Located:
        items = tuple(child for child in children if child is not None)
        return _Located(items, meta.line, meta.column)

    def call(self, meta: Any, children: list[Any]) -> _Located:
        name: Token = children[0]
        positional: list[_Located] = []
        keywords: list[tuple[Token, _Located]] = []
        for kind, payload in (c for c in children[1:] if c is not None):
            if kind == "positional":
                if keywords:
                    raise self.error(
                        "positional argument after keyword argument", payload.line, payload.column
                    )
                positional.append(payload)
            else:
                key, value = payload
                if any(k == key for k, _ in keywords):
                    raise self.error(f"duplicate argument {key.value!r}", key.line, key.column)
                keywords.append((key, value))
        return _Located(
            _Call(name.value, tuple(positional), tuple(keywords)), name.line or 1, name.column or 1
        )

    def positional_arg(self, meta: Any, children: list[_Located]) -> tuple[str, Any]:
        return ("positional", children[0])

    def keyword_arg(self, meta: Any, children: list[Any]) -> tuple[str, Any]:
        return ("keyword", (children[0], children[1]))

    def interpolate(self, token: Token) -> str:
        """Unescape a STRING token and substitute ``${VAR}`` / ``${VAR:-default}``."""
        raw = token.value[1:-1]
        first = (token.column or 1) + 1  # column of raw[0]
        out: list[str] = []
        i = 0
        while i < len(raw):
            char = raw[i]
            if char == "\\":
                escaped = raw[i + 1]  # the STRING regex guarantees a following character
                if escaped not in _ESCAPES:
                    raise self.error(
                        f"unknown escape '\\{escaped}' in string (known: "
                        + " ".join("\\" + e for e in _ESCAPES)
                        + ")",
                        token.line or 1,
                        first + i,
                    )
                out.append(_ESCAPES[escaped])
                i += 2
            elif raw.startswith("${", i):
                end = raw.find("}", i + 2)
                if end < 0:
                    raise self.error(
                        "unterminated '${' in string (write \\$ for a literal $)",
                        token.line or 1,
                        first + i,
                    )
                out.append(self.lookup(raw[i + 2 : end], token.line or 1, first + i))
                i = end + 1
            else:
                out.append(char)
                i += 1
        return "".join(out)

    def lookup(self, reference: str, line: int, column: int) -> str:
        name, has_default, default = reference.partition(":-")
        if not _ENV_NAME.fullmatch(name):
            raise self.error(
                f"bad environment variable name {name!r} in '${{{reference}}}'", line, column
            )
        value = self.env.get(name)
        if has_default and not value:  # like the shell: unset or empty takes the default
            return default
        if value is None:
            raise self.error(
                f"environment variable {name!r} is not set "
                f"(write '${{{name}:-default}}' to give a default)",
                line,
                column,
            )
        return value

    # -- conversion of located values ---------------------------------------------

    def plain(self, located: _Located, where: str) -> Any:
        """The Python value of ``located``; calls become DataRefs (the only call values)."""
        value = located.value
        if isinstance(value, tuple):
            return tuple(self.plain(item, where) for item in value)
        if isinstance(value, _Call):
            return self.data_ref(located, where)
        return value

    def data_ref(self, located: _Located, where: str) -> DataRef:
        call = located.value
        if not isinstance(call, _Call):
            raise self.error(
                f'{where} must be a data reference such as npz("file.npz"), '
                f"got {_describe_value(call)}",
                located.line,
                located.column,
            )
        if call.name not in DATA_FORMATS:
            message = unknown_name_message("data format", call.name, DATA_FORMATS)
            raise self.error(message, located.line, located.column)
        allowed = DATA_FORMATS[call.name]
        path = self.single_string(call, located, "a file path")
        path_at = call.positional[0]
        values: dict[str, Any] = {}
        positions: dict[str, Position] = {}
        for key, arg in call.keywords:
            if key.value not in allowed:
                message = unknown_name_message(f"{call.name}() argument", key.value, allowed)
                raise self.error(message, key.line or 1, key.column or 1)
            value = arg.value
            if (
                isinstance(value, _Call)
                or not isinstance(value, allowed[key.value])
                or (isinstance(value, bool) and bool not in allowed[key.value])
            ):
                expected = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in allowed[key.value])
                raise self.error(
                    f"{call.name}() argument {key.value!r} expects {expected}, "
                    f"got {_describe_value(value)}",
                    arg.line,
                    arg.column,
                )
            values[key.value] = self.plain(arg, f"{call.name}() argument {key.value!r}")
            positions[key.value] = (key.line or 1, key.column or 1)
        return DataRef(
            call.name,
            self.resolve(path, path_at.line, path_at.column),
            Options.located(values, positions),
            located.line,
            located.column,
        )

    def single_string(self, call: _Call, located: _Located, what: str) -> str:
        if len(call.positional) != 1 or not isinstance(call.positional[0].value, str):
            raise self.error(
                f"{call.name}() takes exactly one positional argument, {what} as a string",
                located.line,
                located.column,
            )
        return str(call.positional[0].value)

    def model_source(self, located: _Located) -> ModelSource:
        call = located.value
        if not isinstance(call, _Call):
            raise self.error(
                'model must be a model source such as onnx("model.onnx") or '
                f'torch("package.module:factory"), got {_describe_value(call)}',
                located.line,
                located.column,
            )
        if call.name in DATA_FORMATS:
            raise self.error(
                f'model must be a model source such as onnx("model.onnx"), '
                f"not a {call.name}() data reference",
                located.line,
                located.column,
            )
        options = self.options(list(call.keywords), f"{call.name}()")
        if call.name == "torch":
            factory = self.single_string(call, located, '"package.module:factory"')
            if not _FACTORY.fullmatch(factory):
                arg = call.positional[0]
                raise self.error(
                    f"torch() factory must look like 'package.module:factory', got {factory!r}",
                    arg.line,
                    arg.column,
                )
            return ModelSource("torch", None, factory, options, located.line, located.column)
        path = self.single_string(call, located, "the model file path")
        path_at = call.positional[0]
        return ModelSource(
            call.name, self.resolve(path, path_at.line, path_at.column), None, options,
            located.line, located.column
        )

    def options(self, pairs: _OptionList, where: str) -> Options:
        values: dict[str, Any] = {}
        positions: dict[str, Position] = {}
        for key, located in pairs:
            if key.value in values:
                raise self.error(
                    f"duplicate option {key.value!r} in {where}", key.line or 1, key.column or 1
                )
            values[key.value] = self.plain(located, f"option {key.value!r}")
            positions[key.value] = (key.line or 1, key.column or 1)
        return Options.located(values, positions)

    # -- inputs ---------------------------------------------------------------------

    def dim_number(self, meta: Any, children: list[Token]) -> _Located:
        token = children[0]
        if not re.fullmatch(r"\+?\d+", token.value) or not token.value.strip("+0"):
            raise self.error(
                f"dimension must be a positive integer or a symbol name, got {clip_text(token.value)}",
                meta.line,
                meta.column,
            )
        return _Located(self.integer(token.value, meta.line, meta.column), meta.line, meta.column)

    def dim_symbol(self, meta: Any, children: list[Token]) -> _Located:
        return _Located(str(children[0].value), meta.line, meta.column)

    def shape(self, meta: Any, children: list[_Located | None]) -> tuple[int | str, ...]:
        return tuple(child.value for child in children if child is not None)

    def input_decl(self, meta: Any, children: list[Any]) -> InputDecl:
        name, dtype, shape = children
        if dtype.value not in DTYPES:
            raise self.error(
                unknown_name_message("dtype", dtype.value, DTYPES), dtype.line, dtype.column
            )
        return InputDecl(name.value, dtype.value, shape, name.line, name.column)

    # -- pipeline items -----------------------------------------------------------

    def option(self, meta: Any, children: list[Any]) -> tuple[Token, _Located]:
        return (children[0], children[1])

    def option_block(self, meta: Any, children: list[Any]) -> _OptionList:
        return [child for child in children if child is not None]

    def model_item(self, meta: Any, children: list[_Located]) -> _Item:
        return _Item("model", self.model_source(children[0]), meta.line, meta.column)

    def eval_item(self, meta: Any, children: list[_Located]) -> _Item:
        return _Item("eval", self.data_ref(children[0], "eval"), meta.line, meta.column)

    def train_item(self, meta: Any, children: list[_Located]) -> _Item:
        return _Item("train", self.data_ref(children[0], "train"), meta.line, meta.column)

    def output_item(self, meta: Any, children: list[_Located]) -> _Item:
        located = children[0]
        if not isinstance(located.value, str):
            raise self.error(
                f"output must be a directory path string, got {_describe_value(located.value)}",
                located.line,
                located.column,
            )
        output = self.resolve(located.value, located.line, located.column)
        return _Item("output", output, meta.line, meta.column)

    def inputs_item(self, meta: Any, children: list[Any]) -> _Item:
        decls = tuple(child for child in children if child is not None)
        seen: set[str] = set()
        for decl in decls:
            if decl.name in seen:
                raise self.error(f"duplicate input {decl.name!r}", decl.line, decl.column)
            seen.add(decl.name)
        return _Item("inputs", decls, meta.line, meta.column)

    def pass_item(self, meta: Any, children: list[Any]) -> PassSpec:
        name: Token = children[0]
        block = children[1] if len(children) > 1 and children[1] is not None else []
        options = self.options(block, f"pass {name.value!r}")
        return PassSpec(name.value, options, name.line or 1, name.column or 1)

    def passes_item(self, meta: Any, children: list[Any]) -> _Item:
        passes = tuple(child for child in children if child is not None)
        return _Item("passes", passes, meta.line, meta.column)

    def target_item(self, meta: Any, children: list[Any]) -> _Item:
        name: Token = children[0]
        block: _OptionList = children[1] if len(children) > 1 and children[1] else []
        options = self.options(block, f"target {name.value!r}")
        backend = name.value
        backend_position: Position | None = None
        if "backend" in options:
            backend_value = options["backend"]
            backend_position = options.position("backend")
            if not isinstance(backend_value, str) or not backend_value:
                line, column = backend_position or (name.line or 1, name.column or 1)
                raise self.error(
                    "target option 'backend' must be a backend name string, "
                    f"got {_describe_value(backend_value)}",
                    line,
                    column,
                )
            backend = backend_value
            options = options.without("backend")
        target = TargetSpec(
            name.value, backend, options, name.line or 1, name.column or 1, backend_position
        )
        return _Item("target", target, name.line or 1, name.column or 1)

    def serve_item(self, meta: Any, children: list[Any]) -> _Item:
        adapter: Token = children[0]
        block: _OptionList = children[1] if len(children) > 1 and children[1] else []
        options = self.options(block, f"serve {adapter.value!r}")
        serve = ServeSpec(adapter.value, options, adapter.line or 1, adapter.column or 1)
        return _Item("serve", serve, adapter.line or 1, adapter.column or 1)

    # -- pipeline and file ----------------------------------------------------------

    def pipeline(self, meta: Any, children: list[Any]) -> Pipeline:
        name: Token = children[0]
        single: dict[str, _Item] = {}
        targets: dict[str, TargetSpec] = {}
        serves: dict[str, ServeSpec] = {}
        for item in children[1:]:
            if item.kind == "target":
                _add_unique(targets, item.value.name, item.value, "target", self.error)
            elif item.kind == "serve":
                _add_unique(serves, item.value.adapter, item.value, "serve block", self.error)
            elif item.kind in single:
                first = single[item.kind]
                raise self.error(
                    f"duplicate {item.kind!r} in pipeline {name.value!r} "
                    f"(first given at line {first.line})",
                    item.line,
                    item.column,
                )
            else:
                single[item.kind] = item
        if "model" not in single:
            raise self.error(
                f"pipeline {name.value!r} has no model (add a line such as "
                f'model = onnx("model.onnx"))',
                name.line or 1,
                name.column or 1,
            )

        def get(kind: str, default: Any) -> Any:
            return single[kind].value if kind in single else default

        return Pipeline(
            name=name.value,
            model=single["model"].value,
            inputs=get("inputs", ()),
            eval=get("eval", None),
            train=get("train", None),
            passes=get("passes", ()),
            targets=tuple(targets.values()),
            serves=tuple(serves.values()),
            output=get("output", self.base / "build" / name.value),
            line=name.line or 1,
            column=name.column or 1,
            file=self.file,
        )

    def start(self, meta: Any, children: list[Pipeline]) -> tuple[Pipeline, ...]:
        if not children:
            raise self.error("spec declares no pipeline (expected 'pipeline NAME { ... }')", 1, 1)
        seen: dict[str, Pipeline] = {}
        for pipeline in children:
            _add_unique(seen, pipeline.name, pipeline, "pipeline", self.error)
        return tuple(children)


def _add_unique(
    table: dict[str, Any],
    name: str,
    item: Any,
    what: str,
    error: Callable[[str, int, int], SpecError],
) -> None:
    if name in table:
        first = table[name]
        raise error(
            f"duplicate {what} {name!r} (first declared at line {first.line})",
            item.line,
            item.column,
        )
    table[name] = item


_INT_MAX = 2**63 - 1


def resolve_path(base: Path, raw: str) -> Path:
    """``raw`` (``~`` and ``~user`` expanded) made absolute against ``base``, normalised.

    ValueError, with a message fit for a SpecError, when ``~user`` names no user or the
    path holds a NUL character (no file system takes one).
    """
    if "\x00" in raw:
        raise ValueError(f"path {clip_text(raw)!r} contains a NUL character")
    try:
        expanded = Path(raw).expanduser()
    except RuntimeError:  # ~user of a user that does not exist, or no home directory
        head = raw.split("/", 1)[0]
        raise ValueError(f"cannot expand {head!r} in path {clip_text(raw)!r}: no such user "
                         "or home directory") from None
    return Path(os.path.normpath(base / expanded))


_TYPE_WORDS: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    tuple: "a list",
}


def _describe_value(value: Any) -> str:
    if isinstance(value, _Call):
        return f"a call {value.name}(...)"
    if isinstance(value, DataRef):
        return f"a data reference {value.format}(...)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, tuple):
        return "a list"
    return type(value).__name__
