"""What the http and grpc adapters share: options, the model repository behind them, the
bridge from the batchers back to an event loop, metadata, and serving several frontends
over one repository in one process.

A *frontend* is a network protocol in front of a ``repository.ModelRepository``:
``HttpAdapter`` and ``GrpcAdapter`` both subclass ``Frontend``. Built as an adapter plugin,
``Adapter(model, **options)``, a frontend makes a repository of its own from ``model``
and the shared options below (``MODEL_OPTIONS``: how that model is batched;
``REPOSITORY_OPTIONS``: a repository directory served beside it, polling, version policy,
model control) and its ``serve()`` starts and stops that repository. Built as
``Adapter(None, repository=repo, **network_options)``, it serves a repository that
someone else owns: ``serve_frontends([http, grpc])`` runs several of them (HTTP and gRPC
on two ports) over one repository, so each model has one batcher whichever protocol a
request came in on. Server construction stays in plain functions and constructors, so a
caller can run a frontend in a process of its own.

Request path: ``Frontend.infer`` routes the request (``ModelRepository.submit``: model,
version, validation, enqueue; a version being swapped out is routed again), and awaits
the result, which ``LoopBridge`` hands back to the event loop once per finished batch.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from irkit.runtime.options import Option

from .batcher import DynamicBatcher, Job
from .common import (
    NONFINITE_OPTION,
    AdapterMetrics,
    BadInput,
    RequestTimeout,
    ServableModel,
    UnknownModel,
    resolve_options,
    signature_json,
    stop_on_signals,
)
from .extensions import model_config, model_statistics, platform_of
from .repository import Batching, ModelRepository, ModelVersion, VersionPolicy

__all__ = [
    "MODEL_OPTIONS",
    "REPOSITORY_OPTIONS",
    "Frontend",
    "LoopBridge",
    "check_control_parameters",
    "repository_from_options",
    "serve_frontends",
]

MODEL_OPTIONS: dict[str, Option] = {
    "max_batch": Option(int, 32, "most rows per model call (1 disables batching)"),
    "max_delay_ms": Option(float, 2.0, "longest a request waits for a batch to fill"),
    "max_queue": Option(int, 1024, "requests waiting beyond this are refused (429 / "
                        "RESOURCE_EXHAUSTED)"),
    "timeout_ms": Option(float, None, "per-request deadline -> 504 / DEADLINE_EXCEEDED "
                         "(None: no deadline)"),
    "workers": Option(int, 1, "inference threads per model version"),
    "version": Option(str, "1", "version of the spec's model, reported and accepted in requests"),
    "required": Option(bool, True, "server readiness waits for this model"),
    "reject_nonfinite": NONFINITE_OPTION,
}  # fmt: skip

REPOSITORY_OPTIONS: dict[str, Option] = {
    "model_repository": Option(Path, None, "directory <model>/<version>/ of artifacts served "
                               "as well"),
    "poll_s": Option(float, None, "rescan model_repository every poll_s seconds and swap in "
                     "new versions (None: scan at start only)"),
    "version_policy": Option(str, "latest", "versions served from model_repository: latest, "
                             "latest:N, all, specific:1,3"),
    "allow_model_control": Option(bool, False, "allow repository load/unload requests"),
}  # fmt: skip

SHARED_OPTIONS = {**MODEL_OPTIONS, **REPOSITORY_OPTIONS}


def repository_from_options(
    model: ServableModel | None, config: Mapping[str, Any], label: str
) -> ModelRepository:
    """A repository serving ``model`` and ``config["model_repository"]`` (if given)."""
    poll_s = config.get("poll_s")
    if poll_s is not None and poll_s <= 0:
        raise ValueError(f"option 'poll_s' must be > 0, got {poll_s!r}")
    policy = VersionPolicy.parse(config.get("version_policy") or "latest")
    repository = ModelRepository(label=label, poll_s=poll_s,
                                 allow_model_control=bool(config.get("allow_model_control")))
    batching = Batching.from_options(config)
    if model is not None:
        repository.add_model(model.name, model, version=config.get("version") or "1",
                             batching=batching, required=config.get("required", True))
    if config.get("model_repository"):
        repository.add_directory(config["model_repository"], policy=policy, batching=batching)
    if not repository.entries and not config.get("model_repository"):
        raise ValueError("nothing to serve: give a model or a model_repository")
    return repository


class LoopBridge:
    """The batchers' sink for one event loop: one loop wakeup per burst of finished batches.

    A wakeup per request (``asyncio.wrap_future``: a self-pipe write and a loop iteration
    each) would cost every request what batching saves. A worker hands over a whole batch
    at once; if batches finish faster than the loop picks them up, the later ones join
    the delivery already scheduled. No lock is shared with the workers: deque appends and
    pops are atomic, and ``_scheduled`` is cleared before the queue is drained, so a batch
    either is drained by a delivery or schedules its own.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._done: deque[Job] = deque()
        self._scheduled = False
        self._waking: list[DynamicBatcher] = []

    def wake_soon(self, batcher: DynamicBatcher) -> None:
        """Wake ``batcher``'s workers once the loop has run what is ready now (loop thread).

        Requests that arrive together (one poll of the sockets) are then queued by the time
        a worker wakes, and it takes them as one batch; woken per request, the worker would
        take the GIL back and forth with the loop that is still parsing the rest.
        """
        if not self._waking:
            self.loop.call_soon(self._wake)
        if batcher not in self._waking:
            self._waking.append(batcher)

    def _wake(self) -> None:
        batchers, self._waking = self._waking, []
        for batcher in batchers:
            batcher.wake()

    def deliver(self, jobs: list[Job]) -> None:
        """Batcher sink (worker thread): resolve the jobs' asyncio waiters on the loop."""
        self._done.extend(jobs)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        self._scheduled = False  # first: a batch delivered from now on schedules again
        done = self._done
        while done:
            job = done.popleft()
            waiter: asyncio.Future[Any] = job.waiter
            if waiter.done():
                continue  # the request timed out and was cancelled
            if job.error is not None:
                waiter.set_exception(job.error)
            else:
                waiter.set_result(job.outputs)


def irkit_version() -> str:
    try:
        return version("irkit")
    except PackageNotFoundError:
        return "unknown"


class Frontend:
    """A protocol server over a ``ModelRepository`` (see the module docstring)."""

    name = "frontend"
    network_options: dict[str, Option] = {}
    options: dict[str, Option] = {}

    def __init__(
        self,
        model: ServableModel | None,
        *,
        repository: ModelRepository | None = None,
        **options: Any,
    ) -> None:
        if repository is None:
            if model is None:
                raise TypeError(f"{type(self).__name__} needs a model or a repository")
            self.config = resolve_options(self.options, options)
            self.repository = repository_from_options(model, self.config, self.name)
            self.owns_repository = True
        else:
            if model is not None:
                raise TypeError("give a model or a repository, not both")
            self.config = resolve_options(self.network_options, options)
            self.repository = repository
            self.owns_repository = False
        self._arriving = 0  # requests between arrival and submit (event-loop thread)
        self.repository.add_arrivals(lambda: self._arriving)
        self.started = threading.Event()
        self._request_metrics: dict[str, AdapterMetrics] = {}

    # ------------------------------------------------------------------ single model

    @property
    def ready(self) -> threading.Event:
        """Set while every required model is ready."""
        return self.repository.ready

    def not_ready_reason(self) -> str:
        """Why the server is not ready: the required models that are not, and why."""
        waiting = [f"model {e.name!r}: {e.why_not_ready()}"
                   for e in self.repository.entries.values()
                   if e.required and not e.unloaded and e.current is None]  # fmt: skip
        return "server is not ready (" + ("; ".join(waiting) or "starting") + ")"

    def _only_version(self) -> ModelVersion:
        entries = list(self.repository.entries.values())
        if len(entries) != 1 or entries[0].current is None:
            raise AttributeError("the server does not serve exactly one ready model")
        return entries[0].current

    @property
    def batcher(self) -> DynamicBatcher:
        """The batcher of the only model served (for single-model servers and tests)."""
        batcher = self._only_version().batcher
        assert batcher is not None
        return batcher

    @property
    def model(self) -> ServableModel:
        """The only model served."""
        model = self._only_version().model
        assert model is not None
        return model

    # ------------------------------------------------------------------- requests

    def request_metrics(self, model: str) -> AdapterMetrics:
        """Per-request metrics of ``model`` on this frontend (unknown names share one)."""
        metrics = self._request_metrics.get(model)
        if metrics is None:
            # a label per name a client made up would grow the registry without bound
            label = model if model in self.repository.entries else "<unknown>"
            metrics = self._request_metrics.get(label)
            if metrics is None:
                metrics = AdapterMetrics(self.name, label, self.repository.registry)
                self._request_metrics[label] = metrics
                self.repository.request_metrics.append(metrics)  # for model_statistics
        return metrics

    async def infer(
        self,
        bridge: LoopBridge,
        model: str,
        version: str | None,
        inputs: Mapping[str, np.ndarray],
        deadline_s: float | None = None,
    ) -> tuple[ModelVersion, dict[str, np.ndarray]]:
        """Run ``inputs`` on ``model`` through its batcher; ``deadline_s`` caps the wait."""
        waiter = bridge.loop.create_future()
        served, job = self.repository.submit(
            model, version, inputs, bridge.deliver, waiter, wake=False,
            timeout_ms=None if deadline_s is None else deadline_s * 1000.0,
        )  # fmt: skip
        assert served.batcher is not None
        bridge.wake_soon(served.batcher)
        timeout = served.timeout
        limit = "" if timeout is None else f"timeout_ms={timeout * 1000:g}"
        if deadline_s is not None and (timeout is None or deadline_s < timeout):
            timeout, limit = deadline_s, f"the client's deadline ({deadline_s * 1000:.0f} ms)"
        try:
            if timeout is None:
                result = await waiter
            else:
                result = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            job.cancel()  # the batcher skips it if its batch has not started yet
            raise RequestTimeout(f"no result within {limit}") from None
        except asyncio.CancelledError:
            job.cancel()
            raise
        return served, result

    # ------------------------------------------------------------------- metadata

    def server_metadata(self) -> dict[str, Any]:
        extensions = ["binary_tensor_data", "model_repository", "model_configuration",
                      "statistics"]  # fmt: skip
        if self.repository.allow_model_control:
            extensions.append("model_repository(unload_dependents)")
        return {"name": "irkit", "version": irkit_version(), "extensions": extensions}

    def model_ready(self, model: str, version: str | None) -> bool:
        """Whether ``model`` (``version``) takes requests; UnknownModel if never served."""
        entry = self.repository.entry(model)
        if not version:
            return entry.current is not None
        served = entry.versions.get(version)
        if served is None:
            raise UnknownModel(f"model {model!r} has no version {version!r}")
        return served.ready

    def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        """Name, ready versions, platform and signature of ``model`` (``version``)."""
        served = self.repository.route(model, version)
        entry = self.repository.entry(model)
        return {
            "name": model,
            "versions": [v.version for v in entry.routable()],
            "platform": platform_of(served.model),
            "inputs": signature_json(served.model.inputs),  # type: ignore[union-attr]
            "outputs": signature_json(served.model.outputs),  # type: ignore[union-attr]
        }

    def model_config(self, model: str, version: str | None) -> dict[str, Any]:
        """Triton's model configuration of ``model`` (``version``): see ``extensions``."""
        served = self.repository.route(model, version)
        return model_config(self.repository.entry(model), served)

    def model_statistics(self, model: str | None, version: str | None) -> dict[str, Any]:
        """Triton's statistics of ``model`` (every model when None): see ``extensions``."""
        return model_statistics(self.repository, model, version)

    # ------------------------------------------------------------------ lifecycle

    def serve(self) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError


def serve_frontends(frontends: Sequence[Frontend], *, timeout: float = 30.0) -> None:
    """Run ``frontends`` (sharing one repository) until SIGINT/SIGTERM or one stops.

    Each frontend runs in a thread of its own, with an event loop of its own; an error
    of one (such as a port in use) stops the others and is raised here. The repository loads its models while the frontends start (health/live answers at
    once, ready once the models are); on a signal every frontend stops accepting and
    finishes its in-flight requests, then every batcher drains, then this returns.
    """
    repositories = {id(f.repository): f.repository for f in frontends}
    if len(repositories) != 1 or any(f.owns_repository for f in frontends):
        raise ValueError("serve_frontends runs frontends built on one shared repository")
    repository = next(iter(repositories.values()))
    stop = threading.Event()
    threads = []
    errors: list[BaseException] = []
    for frontend in frontends:
        def run(frontend: Frontend = frontend) -> None:
            try:
                frontend.serve()
            except BaseException as exc:  # re-raised below, in the caller's thread
                errors.append(exc)
            finally:
                stop.set()  # one server ending (or failing to bind) ends them all

        thread = threading.Thread(target=run, name=f"irkit-{frontend.name}", daemon=True)
        threads.append(thread)
    repository.start()
    try:
        with stop_on_signals(lambda signum: stop.set()):
            for thread in threads:
                thread.start()
            while not stop.wait(0.5):
                pass
    finally:
        for frontend in frontends:
            frontend.stop()
        for thread in threads:
            thread.join(timeout)
        repository.stop(timeout)
    if errors:
        raise errors[0]


def check_control_parameters(parameters: Any, action: str) -> None:
    """BadInput for load/unload parameters irkit does not take (a config or files override).

    ``unload_dependents`` is accepted: irkit has no ensembles, so there is nothing to do.
    """
    if parameters is None:
        return
    if not isinstance(parameters, Mapping):
        raise BadInput("'parameters' must be an object")
    for key in parameters:
        if key != "unload_dependents":
            raise BadInput(f"model {action} takes no parameter {key!r} (irkit loads artifacts "
                           "as they are on disk; no config or file overrides)")
