"""The plugin manager and the built-in plugins (``irkit.plugins.*``).

``load_plugins()`` is explicit and idempotent: it registers the built-ins and every
distribution that declares an ``irkit`` entry point, through the same pluggy hooks.
Registries map a name to an :class:`Entry`; objects given as ``"module:attr"`` strings are
imported on first use, so listing plugins or starting the CLI stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from irkit import hookspecs
from irkit.errors import IrkitError
from irkit.runtime.options import Option

KINDS = ("frontends", "passes", "backends", "adapters")
SINGULAR = {"frontends": "frontend", "passes": "pass", "backends": "backend", "adapters": "adapter"}
ENTRY_POINT_GROUP = "irkit"


class PluginError(IrkitError):
    """A plugin could not be loaded, or two plugins registered the same name."""


@dataclass
class Entry:
    """A registered frontend, pass, backend or adapter."""

    kind: str
    name: str
    target: Any  # the object, or a "module:attr" string imported on first use
    plugin: str
    dist: str
    _resolved: Any = field(default=None, repr=False)

    @property
    def obj(self) -> Any:
        if self._resolved is None:
            target = self.target
            if isinstance(target, str):
                module_name, _, attr = target.partition(":")
                try:
                    target = getattr(importlib.import_module(module_name), attr)
                except (ImportError, AttributeError) as exc:
                    raise PluginError(
                        f"{SINGULAR[self.kind]} {self.name!r} from plugin {self.plugin!r} "
                        f"({self.dist}) could not be imported from {self.target!r}: {exc}"
                    ) from exc
            self._resolved = target
        return self._resolved

    def instance(self) -> Any:
        """The registered object, instantiated when a class was registered."""
        obj = self.obj
        return obj() if isinstance(obj, type) else obj

    @property
    def options(self) -> dict[str, Option]:
        """Options of this entry: dataclass fields for passes, ``.options`` otherwise."""
        obj = self.obj
        declared = getattr(obj, "options", None)
        if isinstance(declared, dict):
            return declared
        if dataclasses.is_dataclass(obj):
            return _dataclass_options(obj)
        return {}


def _dataclass_options(cls: Any) -> dict[str, Option]:
    import typing

    hints = typing.get_type_hints(cls)
    out: dict[str, Option] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        default = f.default
        required = default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out[f.name] = Option(
            type=_python_type(hints.get(f.name, object)),
            default=None if required else default,
            doc=str(f.metadata.get("doc", "")),
            choices=f.metadata.get("choices"),
            required=required,
        )
    return out


def _python_type(hint: Any) -> type | tuple[type, ...]:
    import types
    import typing

    if hint is typing.Any:
        return object
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        flat: list[type] = []
        for arg in typing.get_args(hint):
            t = _python_type(arg)
            flat.extend(t if isinstance(t, tuple) else (t,))
        return tuple(flat)
    if origin is typing.Literal:
        return tuple({type(a) for a in typing.get_args(hint)})
    if origin is not None:
        return origin if isinstance(origin, type) else object
    if hint is type(None):
        return type(None)
    return hint if isinstance(hint, type) else object


class Registry:
    """Name -> Entry maps for each kind of plugin part."""

    def __init__(self) -> None:
        self.frontends: dict[str, Entry] = {}
        self.passes: dict[str, Entry] = {}
        self.backends: dict[str, Entry] = {}
        self.adapters: dict[str, Entry] = {}

    def of(self, kind: str) -> dict[str, Entry]:
        if kind not in KINDS:
            raise ValueError(f"unknown plugin kind {kind!r}; known: {', '.join(KINDS)}")
        table: dict[str, Entry] = getattr(self, kind)
        return table

    def get(self, kind: str, name: str) -> Entry:
        table = self.of(kind)
        if name not in table:
            raise PluginError(unknown_name_message(SINGULAR[kind], name, table))
        return table[name]

    def entries(self) -> Iterable[Entry]:
        for kind in KINDS:
            yield from self.of(kind).values()


def unknown_name_message(what: str, name: str, known: Iterable[str]) -> str:
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {name!r}{hint} (known: {', '.join(names) or 'none'})"


class PluginManager:
    """pluggy manager named ``irkit`` plus the registries filled by its hooks."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self._sources: dict[str, tuple[str, str]] = {}  # plugin object name -> (plugin, dist)
        self._loaded = False
        self._lock = threading.RLock()

    def add_plugin(self, module: Any, name: str, dist: str) -> None:
        """Register one plugin module (or object) and run its hooks into the registries."""
        with self._lock:
            if self.pm.is_registered(module) or self.pm.get_plugin(name) is not None:
                return
            self.pm.register(module, name=name)
            for kind in KINDS:
                hook = getattr(self.pm.hook, f"register_{kind}")
                impls = [i for i in hook.get_hookimpls() if i.plugin is module]
                for impl in impls:
                    impl.function(register=self._registrar(kind, name, dist))

    def _registrar(self, kind: str, plugin: str, dist: str) -> Any:
        table = self.registry.of(kind)

        def register(entry_name: str, obj: Any) -> None:
            if entry_name in table:
                other = table[entry_name]
                raise PluginError(
                    f"{SINGULAR[kind]} {entry_name!r} is registered twice: by plugin "
                    f"{other.plugin!r} ({other.dist}) and by plugin {plugin!r} ({dist})"
                )
            table[entry_name] = Entry(kind, entry_name, obj, plugin, dist)

        return register

    def load(self, entry_points: bool = True) -> Registry:
        with self._lock:
            if self._loaded:
                return self.registry
            from importlib import metadata

            from irkit.plugins import builtins

            self.add_plugin(builtins, "builtins", "irkit")
            if entry_points:
                for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
                    if ep.value == "irkit.plugins.builtins":
                        continue
                    dist = ep.dist.name if ep.dist is not None else "?"
                    try:
                        module = ep.load()
                    except Exception as exc:
                        raise PluginError(
                            f"plugin {ep.name!r} from distribution {dist!r} failed to load "
                            f"({ep.value}): {exc}"
                        ) from exc
                    self.add_plugin(module, ep.name, dist)
            self._loaded = True
            return self.registry


_MANAGER: PluginManager | None = None


def load_plugins(entry_points: bool = True) -> Registry:
    """Load built-in and entry-point plugins once; later calls return the same registry."""
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = PluginManager()
    return _MANAGER.load(entry_points=entry_points)


def get_registry() -> Registry:
    return load_plugins()


def reset_plugins() -> None:
    """Forget every registration (tests use this to load a different plugin set)."""
    global _MANAGER
    _MANAGER = None


def manager() -> PluginManager:
    load_plugins()
    assert _MANAGER is not None
    return _MANAGER
