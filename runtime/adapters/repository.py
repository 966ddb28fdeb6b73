"""A model repository: many models, each with versions, behind the http and grpc adapters.

A ``ModelRepository`` owns one ``DynamicBatcher`` per model version, so every frontend
(HTTP and gRPC, in one process on two ports) sends a model's requests into the same batches.
Models come from three kinds of source:

- ``add_model(name, model)``: a model object already in memory (version "1" by default);
- ``add_artifact(name, path)``: an artifact directory (a spec pipeline's build output);
  loading it again (the load call) reads it from disk again;
- ``add_directory(path)``: a repository directory laid out as Triton's::

      repo/<model>/<version>/manifest.json     (an irkit artifact; versions are integers)
      repo/<model>/config.json                 (optional: version_policy, max_batch,
                                                max_delay_ms, max_queue, workers,
                                                timeout_ms, required)

  Names starting with "." are skipped (write a version as ``.tmp`` and rename it into
  place: the rename is atomic). A version that fails to load (half-copied files fail
  the checksum check) is ``UNAVAILABLE`` with the reason, and is tried again once its
  files change.

Versions. A ``VersionPolicy`` picks the versions to serve from those on disk: ``latest``
(the highest), ``latest:N``, ``all`` or ``specific:1,3``. A request without a version goes
to the highest ready version; one with a version goes to that version.

Live reload. ``sync()`` (called by ``start``, by the polling thread every ``poll_s``
seconds, and by ``load``) brings every model to its policy: it loads and warms up the new
versions first, and only once one of them is ready does it take traffic; then the
versions the policy dropped stop taking new requests and their batchers drain (queued
and running batches finish) before they are closed. A request that picked a version
while it was being retired is routed again (``submit``), so a swap fails no request.

Control. ``index()`` lists every model and version with its state (``LOADING``,
``READY``, ``UNLOADING``, ``UNAVAILABLE``) and reason; ``load(name)`` and
``unload(name)`` need ``allow_model_control`` (``ControlDisabled`` otherwise). An unloaded
model answers ``NotReady`` until it is loaded again, and polling leaves it unloaded.

Readiness. ``ready`` (a ``threading.Event``) is set while every required model has a
ready version; a model is required unless added with ``required=False`` (or
``"required": false`` in its config.json), and an explicit unload makes it not required
until it is loaded again. ``stop()`` ends polling and drains every batcher.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from .batcher import DynamicBatcher, Job, Sink
from .common import (
    AdapterMetrics,
    ControlDisabled,
    NotReady,
    ServableModel,
    UnknownModel,
    check_inputs,
    set_reject_nonfinite,
)

__all__ = ["Batching", "ModelEntry", "ModelRepository", "ModelVersion", "VersionPolicy"]

log = logging.getLogger(__name__)

LOADING, READY, UNLOADING, UNAVAILABLE = "LOADING", "READY", "UNLOADING", "UNAVAILABLE"
Loader = Callable[[], ServableModel]


@dataclass(frozen=True)
class Batching:
    """How one model's requests are batched (``DynamicBatcher`` arguments)."""

    max_batch: int = 32
    max_delay_ms: float = 2.0
    max_queue: int = 1024
    workers: int = 1
    timeout_ms: float | None = None
    reject_nonfinite: bool | None = None  # NaN/inf inputs: None keeps the model's setting

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Batching:
        """The fields of ``options`` that are batching options (others ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names})


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions on disk to serve: ``latest[:N]``, ``all`` or ``specific:V,...``."""

    kind: str = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """ValueError with the accepted forms when ``text`` is none of them."""
        kind, _, arg = str(text).strip().partition(":")
        try:
            if kind == "latest":
                count = int(arg) if arg else 1
                if count >= 1:
                    return cls("latest", count)
            elif kind == "all" and not arg:
                return cls("all")
            elif kind == "specific" and arg:
                versions = tuple(sorted({int(v) for v in arg.split(",")}))
                if all(v >= 0 for v in versions):
                    return cls("specific", versions=versions)
        except ValueError:
            pass
        raise ValueError(f"version policy {text!r} is not one of latest, latest:N (N >= 1), "
                         "all, specific:V1,V2,...")  # fmt: skip

    def select(self, available: Iterable[int]) -> list[int]:
        """The versions of ``available`` to serve, ascending."""
        ordered = sorted(set(available))
        if self.kind == "latest":
            return ordered[-self.count :]
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered

    def __str__(self) -> str:
        if self.kind == "latest":
            return "latest" if self.count == 1 else f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"


class ModelVersion:
    """One version of a model: the model, its batcher and its state."""

    def __init__(self, name: str, version: str, fingerprint: object = None) -> None:
        self.name = name
        self.version = version
        self.fingerprint = fingerprint
        self.state = LOADING
        self.reason = ""
        self.model: ServableModel | None = None
        self.batcher: DynamicBatcher | None = None
        self.output_names: list[str] = []
        self.timeout: float | None = None  # seconds a request may wait (timeout_ms)

    @property
    def ready(self) -> bool:
        return self.state == READY

    def describe(self) -> str:
        """The state in words, with the reason: "warming up", "unavailable (why)", ..."""
        words = {LOADING: "warming up", UNLOADING: "unloading"}.get(self.state, self.state.lower())
        return f"{words} ({self.reason})" if self.reason else words

    def __repr__(self) -> str:
        return f"<ModelVersion {self.name}/{self.version} {self.state}>"


class ModelEntry:
    """One model name: how to find its versions, its policy, and its loaded versions."""

    def __init__(self, name: str, discover: Callable[[], dict[str, tuple[Loader, object]]],
                 policy: VersionPolicy, batching: Batching, required: bool) -> None:
        self.name = name
        self.discover = discover  # version -> (loader, fingerprint of its files)
        self.policy = policy
        self.batching = batching
        self.required = required
        self.unloaded = False  # unloaded through the control API
        # replaced, never mutated: the request path reads both without a lock
        self.versions: dict[str, ModelVersion] = {}
        self.current: ModelVersion | None = None  # the highest ready version

    def routable(self) -> list[ModelVersion]:
        return sorted((v for v in self.versions.values() if v.ready), key=_version_key)

    def why_not_ready(self) -> str:
        if self.unloaded:
            return "unloaded"
        reasons = [f"version {v.version}: {v.describe()}" for v in self.versions.values()]
        return "; ".join(reasons) or "no version to serve"


def _version_key(version: ModelVersion) -> tuple[int, int | str]:
    text = version.version
    return (0, int(text)) if text.isdigit() else (1, text)


class ModelRepository:
    """The models served, their versions, batchers, readiness and live reload."""

    def __init__(
        self,
        *,
        label: str = "http",
        allow_model_control: bool = False,
        poll_s: float | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.label = label
        self.allow_model_control = allow_model_control
        self.poll_s = poll_s
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(_RepositoryCollector(self))  # type: ignore[arg-type]
        self.ready = threading.Event()
        self.entries: dict[str, ModelEntry] = {}
        self._directories: list[tuple[Path, VersionPolicy, Batching]] = []
        self._arrivals: list[Callable[[], int]] = []
        self._metrics: dict[str, AdapterMetrics] = {}
        self.request_metrics: list[AdapterMetrics] = []  # every frontend's, per model
        self._lock = threading.RLock()  # sync, load, unload and stop, one at a time
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = False

    # --------------------------------------------------------------------- sources

    def add_model(self, name: str, model: ServableModel, *, version: str = "1",
                  batching: Batching | None = None, required: bool = True) -> ModelEntry:
        """Serve ``model`` (already loaded) as ``name`` version ``version``."""
        return self._add(ModelEntry(name, lambda: {version: (lambda: model, None)},
                                    VersionPolicy("all"), batching or Batching(), required))

    def add_artifact(self, name: str, path: str | Path, *, version: str = "1",
                     batching: Batching | None = None, required: bool = True) -> ModelEntry:
        """Serve the artifact directory ``path`` as ``name`` version ``version``."""
        from irkit.runtime.model import load

        directory = Path(path)
        return self._add(ModelEntry(name, lambda: {version: (lambda: load(directory), None)},
                                    VersionPolicy("all"), batching or Batching(), required))

    def add_directory(self, path: str | Path, *, policy: VersionPolicy | None = None,
                      batching: Batching | None = None) -> list[ModelEntry]:
        """Serve every ``path/<model>/<version>/`` (see the module docstring)."""
        root = Path(path)
        if not root.is_dir():
            raise ValueError(f"model repository {str(root)!r} is not a directory")
        spec = (root, policy or VersionPolicy(), batching or Batching())
        self._directories.append(spec)
        return [self._add(self._directory_entry(root / name, spec[1], spec[2]))
                for name in _model_dirs(root)]  # fmt: skip

    def _add(self, entry: ModelEntry) -> ModelEntry:
        with self._lock:
            if entry.name in self.entries:
                raise ValueError(f"model {entry.name!r} is served twice")
            self.entries = {**self.entries, entry.name: entry}
        return entry

    def _directory_entry(self, directory: Path, policy: VersionPolicy,
                         batching: Batching) -> ModelEntry:
        config = _read_config(directory)
        if "version_policy" in config:
            policy = VersionPolicy.parse(config["version_policy"])
        batching = replace(batching, **{k: v for k, v in config.items()
                                        if k in Batching.__dataclass_fields__})  # fmt: skip
        return ModelEntry(directory.name, lambda: _discover(directory), policy, batching,
                          bool(config.get("required", True)))

    def add_arrivals(self, counter: Callable[[], int]) -> None:
        """A frontend's count of requests being read (see ``DynamicBatcher(arrivals=)``)."""
        self._arrivals.append(counter)

    def _arriving(self) -> int:
        return sum(counter() for counter in self._arrivals)

    def metrics(self, model: str) -> AdapterMetrics:
        """The batch metrics of ``model`` (label ``adapter`` is this repository's label)."""
        metrics = self._metrics.get(model)
        if metrics is None:
            metrics = self._metrics[model] = AdapterMetrics(self.label, model, self.registry)
        return metrics

    def batch_metrics(self, model: str) -> AdapterMetrics | None:
        """The batch metrics of ``model`` if one of its versions was ever loaded."""
        return self._metrics.get(model)

    # ------------------------------------------------------------------- lifecycle

    def start(self, *, background: bool = True) -> None:
        """Load every model; then poll every ``poll_s`` seconds if set (idempotent)."""
        if self.started:
            return
        self.started = True
        self._stopped.clear()
        if not background:
            self.sync()
        target = self._run if background else self._poll_loop
        thread = threading.Thread(target=target, name="irkit-repository", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _run(self) -> None:
        self.sync()
        self._poll_loop()

    def _poll_loop(self) -> None:
        while self.poll_s and not self._stopped.wait(self.poll_s):
            try:
                self.sync()
            except Exception:  # keep polling: the next scan may succeed
                log.exception("repository poll failed")

    def stop(self, timeout: float | None = None) -> None:
        """Stop polling; every version stops taking requests and its batcher drains."""
        self._stopped.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
        self._threads = []
        with self._lock:
            self.ready.clear()
            for entry in self.entries.values():
                for version in list(entry.versions.values()):
                    self._retire(entry, version, timeout)
            self.started = False

    # ------------------------------------------------------------------------ sync

    def sync(self) -> None:
        """Bring every model to its version policy (see the module docstring)."""
        with self._lock:
            if self._stopped.is_set():
                return
            for root, policy, batching in self._directories:
                for name in _model_dirs(root):
                    if name not in self.entries:
                        self._add(self._directory_entry(root / name, policy, batching))
            for entry in list(self.entries.values()):
                if not entry.unloaded:
                    self._sync_entry(entry)
            self._update_ready()

    def _sync_entry(self, entry: ModelEntry) -> None:
        try:
            available = entry.discover()
        except OSError as exc:
            log.error("model %r: cannot list versions: %s", entry.name, exc)
            return
        numbered = {int(v): v for v in available if v.isdigit()}
        wanted = [numbered[n] for n in entry.policy.select(numbered)]
        wanted += [v for v in available if not v.isdigit()]  # fixed names (add_model)
        for version in wanted:
            loader, fingerprint = available[version]
            old = entry.versions.get(version)
            if old is not None and (old.ready or old.fingerprint == fingerprint):
                continue  # serving already, or failed and its files did not change
            self._load_version(entry, version, loader, fingerprint)
        if not any(entry.versions[v].ready for v in wanted if v in entry.versions) and wanted:
            return  # keep serving the old versions until a new one is ready
        for stale in list(entry.versions.values()):
            if stale.version not in wanted:
                self._retire(entry, stale)

    def _load_version(self, entry: ModelEntry, version: str, loader: Loader,
                      fingerprint: object) -> None:
        served = ModelVersion(entry.name, version, fingerprint)
        self._set_versions(entry, {**entry.versions, version: served})
        try:
            model = loader()
            batching = entry.batching
            set_reject_nonfinite(model, batching.reject_nonfinite)
            model.warmup()
            batcher = DynamicBatcher(
                model, max_batch=batching.max_batch, max_delay_ms=batching.max_delay_ms,
                max_queue=batching.max_queue, workers=batching.workers,
                timeout_ms=batching.timeout_ms, metrics=self.metrics(entry.name),
                arrivals=self._arriving,
            )  # fmt: skip
            batcher.start()
        except Exception as exc:  # a bad artifact must not take the server down
            served.state, served.reason = UNAVAILABLE, f"{type(exc).__name__}: {exc}"
            log.error("model %r version %s failed to load: %s", entry.name, version, exc)
            self._set_versions(entry, entry.versions)
            return
        served.model, served.batcher = model, batcher
        served.output_names = [spec.name for spec in model.outputs]
        served.timeout = batching.timeout_ms / 1000.0 if batching.timeout_ms else None
        served.state = READY
        self._set_versions(entry, entry.versions)  # takes traffic from here on
        log.info("model %r version %s is ready", entry.name, version)

    def _retire(self, entry: ModelEntry, version: ModelVersion,
                timeout: float | None = None) -> None:
        """Stop routing to ``version``, drain its batcher, forget it."""
        version.state = UNLOADING
        self._set_versions(entry, entry.versions)
        if version.batcher is not None:
            version.batcher.stop(timeout)  # queued and running batches finish
        remaining = dict(entry.versions)
        if remaining.get(version.version) is version:
            del remaining[version.version]
        self._set_versions(entry, remaining)
        log.info("model %r version %s unloaded", entry.name, version.version)

    @staticmethod
    def _set_versions(entry: ModelEntry, versions: dict[str, ModelVersion]) -> None:
        entry.versions = dict(versions)
        routable = entry.routable()
        entry.current = routable[-1] if routable else None

    def _update_ready(self) -> None:
        ready = all(entry.current is not None for entry in self.entries.values()
                    if entry.required and not entry.unloaded)  # fmt: skip
        if ready and self.entries and not self._stopped.is_set():
            self.ready.set()
        else:
            self.ready.clear()

    # --------------------------------------------------------------------- control

    def _check_control(self, action: str) -> None:
        if not self.allow_model_control:
            raise ControlDisabled(f"model {action} is disabled on this server "
                                  "(start it with allow_model_control = true)")  # fmt: skip

    def load(self, name: str) -> None:
        """Load (or reload) ``name`` per its policy; blocks until its versions are ready."""
        self._check_control("load")
        with self._lock:
            entry = self.entries.get(name)
            if entry is None:
                for root, policy, batching in self._directories:
                    if (root / name).is_dir():
                        entry = self._add(self._directory_entry(root / name, policy, batching))
                        break
                else:
                    raise UnknownModel(f"no model {name!r} in the repository")
            entry.unloaded = False
            self._sync_entry(entry)
            self._update_ready()
            if entry.current is None:
                raise NotReady(f"model {name!r} did not load: {entry.why_not_ready()}")

    def unload(self, name: str) -> None:
        """Stop serving ``name``: new requests get NotReady, queued ones finish."""
        self._check_control("unload")
        with self._lock:
            entry = self.entry(name)
            entry.unloaded = True
            for version in list(entry.versions.values()):
                self._retire(entry, version)
            self._update_ready()

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model and version with its state and reason (the repository index)."""
        rows = []
        for entry in sorted(self.entries.values(), key=lambda e: e.name):
            versions = sorted(entry.versions.values(), key=_version_key)
            if not versions and not ready_only:
                reason = "unloaded" if entry.unloaded else "no version to serve"
                rows.append({"name": entry.name, "version": "", "state": UNAVAILABLE,
                             "reason": reason})  # fmt: skip
            for version in versions:
                if ready_only and not version.ready:
                    continue
                rows.append({"name": entry.name, "version": version.version,
                             "state": version.state, "reason": version.reason})  # fmt: skip
        return rows

    # ------------------------------------------------------------------- requests

    def entry(self, name: str) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            known = ", ".join(repr(n) for n in sorted(self.entries)) or "none"
            raise UnknownModel(f"unknown model {name!r}; this server serves {known}")
        return entry

    def route(self, name: str, version: str | None = None) -> ModelVersion:
        """The version that answers a request (UnknownModel / NotReady otherwise)."""
        entry = self.entries.get(name)
        if entry is None:
            self.entry(name)  # raises, naming the models served
        assert entry is not None
        if not version:
            current = entry.current
            if current is None:
                raise NotReady(f"model {name!r} is not ready ({entry.why_not_ready()})")
            return current
        served = entry.versions.get(version)
        if served is None:
            versions = ", ".join(repr(v.version) for v in entry.routable()) or "none"
            raise UnknownModel(f"model {name!r} has no version {version!r} (served: {versions})")
        if not served.ready:
            raise NotReady(f"model {name!r} version {version} is not ready ({served.describe()})")
        return served

    def submit(
        self,
        name: str,
        version: str | None,
        inputs: Mapping[str, Any],
        sink: Sink,
        waiter: Any = None,
        *,
        wake: bool = True,
        timeout_ms: float | None = None,
    ) -> tuple[ModelVersion, Job]:
        """Validate ``inputs`` and enqueue them on the version that answers them.

        A version being retired refuses new requests (NotReady); a request that did not
        ask for a version is then routed again, to the version that replaced it.
        """
        for _ in range(8):
            served = self.route(name, version)
            checked = check_inputs(served.model, inputs)  # type: ignore[arg-type]
            batcher = served.batcher
            assert batcher is not None
            try:
                return served, batcher.enqueue(checked, sink, waiter, timeout_ms, wake=wake)
            except NotReady:
                if version or served.state == READY:
                    raise
                time.sleep(0)  # let the retiring thread publish the new routing
        raise NotReady(f"model {name!r} is being reloaded; try again")

    def batchers(self) -> list[DynamicBatcher]:
        return [v.batcher for e in self.entries.values() for v in e.versions.values()
                if v.batcher is not None]  # fmt: skip


class _RepositoryCollector:
    """``irkit_queue_depth{model,version}`` and ``irkit_model_ready{model,version}``."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily("irkit_queue_depth", "Requests waiting for a batch.",
                                  labels=["model", "version"])  # fmt: skip
        ready = GaugeMetricFamily("irkit_model_ready", "1 while a model version takes requests.",
                                  labels=["model", "version"])  # fmt: skip
        for entry in list(self.repository.entries.values()):
            for version in list(entry.versions.values()):
                labels = [entry.name, version.version]
                if version.batcher is not None:
                    depth.add_metric(labels, version.batcher.queue_depth)
                ready.add_metric(labels, 1.0 if version.ready else 0.0)
        yield depth
        yield ready


def _model_dirs(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    known = {"version_policy", "required", *Batching.__dataclass_fields__}
    unknown = sorted(set(config) - known) if isinstance(config, dict) else ["<not an object>"]
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
    return config


def _discover(directory: Path) -> dict[str, tuple[Loader, object]]:
    """Integer-named version directories that hold a manifest, with their fingerprints."""
    from irkit.runtime.model import load

    found: dict[str, tuple[Loader, object]] = {}
    for path in sorted(directory.iterdir()):
        if not (path.name.isdigit() and (path / "manifest.json").is_file()):
            continue
        fingerprint = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                                   for f in path.rglob("*") if f.is_file()))  # fmt: skip
        found[str(int(path.name))] = (functools.partial(load, path), fingerprint)
    return found
