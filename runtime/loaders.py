"""Runtime loaders: backend name -> factory that turns an artifact directory into a runner.

A loader factory is called as ``factory(artifact_dir: Path, manifest: Manifest, **options)``
(``options`` are load-time overrides given to :func:`irkit.runtime.load`; none by default)
and returns a :class:`Runner`. It must read artifact files through
:func:`irkit.runtime.artifact.read_verified` and may import only numpy, the standard
library and its own native library (onnxruntime, llvmlite, …), lazily.

Loaders come from three places, all resolved only when an artifact of that backend loads:

- built-ins: ``irkit.runtime.backends.<name>:load`` for the names in ``BUILTIN_LOADERS``;
- :func:`register_loader` calls, with a callable or a ``"module:attr"`` string;
- entry points in the ``irkit.runtime`` group (name = backend, value = ``module:attr``),
  so a third-party distribution can add a backend without touching irkit.

The artifact only ever selects a *name*; the module imported for it comes from this table,
never from the artifact, so a manifest cannot make the runtime import arbitrary code.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from irkit.runtime.artifact import ArtifactError, Manifest

ENTRY_POINT_GROUP = "irkit.runtime"
BUILTIN_LOADERS: dict[str, str] = {
    name: f"irkit.runtime.backends.{name}:load"
    for name in ("ort", "llvm", "numba", "cuda", "wasm")
}


@runtime_checkable
class Runner(Protocol):
    """What a loader returns: runs validated, C-contiguous inputs through native code.

    ``run`` receives exactly the signature's inputs (dtypes and shapes already checked) and
    returns at least every signature output by name. A runner whose ``run`` may be called
    from several threads at once sets ``thread_safe = True``; otherwise ``CompiledModel``
    serializes calls with a lock. ``close()`` is optional.
    """

    def run(self, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]: ...


LoaderFactory = Callable[..., Runner]


@dataclass
class _LoaderEntry:
    name: str
    target: str | LoaderFactory
    source: str
    resolved: LoaderFactory | None = None

    def factory(self) -> LoaderFactory:
        if self.resolved is None:
            if callable(self.target):
                self.resolved = self.target
            else:
                module_name, _, attr = self.target.partition(":")
                try:
                    obj = getattr(importlib.import_module(module_name), attr)
                except ImportError as exc:
                    missing = getattr(exc, "name", None) or ""
                    if missing and (module_name == missing
                                    or module_name.startswith(missing + ".")):
                        why = (f"{module_name} does not exist in this installation; is the "
                               "plugin that provides the backend installed?")
                    else:
                        why = (f"{module_name} needs a library that is not installed "
                               f"({missing or 'see above'})")
                    raise ArtifactError(
                        f"runtime loader for backend {self.name!r} ({self.target}, from "
                        f"{self.source}) could not be imported: {exc}; {why}"
                    ) from exc
                except AttributeError as exc:
                    raise ArtifactError(
                        f"runtime loader {self.target!r} for backend {self.name!r} "
                        f"(from {self.source}) does not exist: {exc}"
                    ) from exc
                if not callable(obj):
                    raise ArtifactError(f"runtime loader {self.target!r} is not callable")
                self.resolved = obj
        return self.resolved


_LOCK = threading.RLock()
_REGISTRY: dict[str, _LoaderEntry] = {
    name: _LoaderEntry(name, target, "irkit") for name, target in BUILTIN_LOADERS.items()
}
_ENTRY_POINTS_READ = False
# Entry-point loaders that clash with an existing name: reported when that name is asked
# for, so one badly packaged plugin does not break loading every other backend.
_CONFLICTS: dict[str, str] = {}


def _describe(target: str | LoaderFactory) -> str:
    if isinstance(target, str):
        return target
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', target)}"


def register_loader(
    name: str, target: str | LoaderFactory, *, source: str = "register_loader", replace: bool = False
) -> None:
    """Register the runtime loader of backend ``name``.

    ``target`` is a factory or a ``"module:attr"`` string imported on first use. Registering
    a name twice with a different target raises ``ArtifactError`` naming both, unless
    ``replace=True``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backend name must be a non-empty string, got {name!r}")
    if isinstance(target, str) and (":" not in target or target.startswith(":")):
        raise ValueError(f"loader target {target!r} must look like 'package.module:function'")
    if not isinstance(target, str) and not callable(target):
        raise TypeError(f"loader for {name!r} must be callable or 'module:attr', got {target!r}")
    with _LOCK:
        old = _REGISTRY.get(name)
        if old is not None and not replace and _describe(old.target) != _describe(target):
            raise ArtifactError(
                f"runtime loader for backend {name!r} is registered twice: "
                f"{_describe(old.target)} (from {old.source}) and {_describe(target)} "
                f"(from {source})"
            )
        if old is not None and not replace and _describe(old.target) == _describe(target):
            return  # registering the same loader again is a no-op
        _REGISTRY[name] = _LoaderEntry(name, target, source)
        _CONFLICTS.pop(name, None)


def unregister_loader(name: str) -> None:
    """Forget the loader of ``name`` (a built-in comes back only on interpreter restart)."""
    with _LOCK:
        _REGISTRY.pop(name, None)
        _CONFLICTS.pop(name, None)


def _read_entry_points() -> None:
    global _ENTRY_POINTS_READ
    with _LOCK:
        if _ENTRY_POINTS_READ:
            return
        _ENTRY_POINTS_READ = True
        from importlib import metadata

        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            try:
                register_loader(ep.name, ep.value, source=f"entry point of {dist}")
            except (ArtifactError, ValueError) as exc:
                _CONFLICTS[ep.name] = str(exc)


def known_loaders() -> list[str]:
    """Backend names that have a runtime loader (built-in, registered or entry point)."""
    _read_entry_points()
    with _LOCK:
        return sorted(_REGISTRY)


def get_loader(name: str) -> LoaderFactory:
    """The loader factory for backend ``name``; ``ArtifactError`` if there is none."""
    _read_entry_points()
    with _LOCK:
        entry = _REGISTRY.get(name)
        conflict = _CONFLICTS.get(name)
    if conflict is not None:
        raise ArtifactError(conflict)
    if entry is None:
        raise ArtifactError(
            f"no runtime loader for backend {name!r} (known: {', '.join(known_loaders())}); "
            f"install the plugin that provides it (entry-point group {ENTRY_POINT_GROUP!r})"
        )
    return entry.factory()


def open_runner(artifact_dir: Path, manifest: Manifest, **options: Any) -> Runner:
    """Build the runner of a verified artifact with its backend's loader."""
    factory = get_loader(manifest.backend)
    runner = factory(artifact_dir, manifest, **options)
    if not callable(getattr(runner, "run", None)):
        raise ArtifactError(
            f"runtime loader for backend {manifest.backend!r} returned {type(runner).__name__}, "
            "which has no run() method"
        )
    return runner
