"""Triton's model configuration and statistics extensions: the documents both frontends send.

``model_config(entry, served)`` is a model's configuration as Triton's ``ModelConfig``
describes it, in the JSON form of ``GET /v2/models/{m}/config`` (the gRPC ``ModelConfig``
RPC parses the same document into its message), built from what irkit knows:

- ``platform`` is ``irkit_<artifact backend>`` (``irkit_llvm``, ``irkit_ort``, ...), as the
  model metadata says; ``backend`` is ``irkit``, the runtime that executes every artifact.
- ``max_batch_size`` is the batcher's ``max_batch`` when every input and output starts
  with the same symbolic dim (the batch dim irkit batches along); ``dims`` then leave it
  out (a tensor of the batch dim alone is ``dims: [1]`` with ``reshape: {shape: []}``, as
  Triton writes it). Otherwise ``max_batch_size`` is 0 and ``dims`` are the full shape.
  Other variable dims are -1. irkit accepts requests of more rows than ``max_batch``
  (it runs them in pieces of ``max_batch``); Triton would refuse them.
- ``dynamic_batching`` (with a batch dim and ``max_batch`` > 1): ``max_queue_delay_microseconds``
  from ``max_delay_ms``; its ``default_queue_policy`` holds ``max_queue`` (more waiting
  requests are refused) and ``timeout_ms`` (a request that waited longer is refused).
- ``version_policy`` is the model's (``latest``, ``latest:N``, ``all``, ``specific``).

``model_statistics(repository, model, version)`` is the statistics extension's
``{"model_stats": [...]}`` from the counts the metrics keep (``common.AdapterMetrics``):

- ``inference_stats.success`` / ``fail``: requests the frontends (HTTP and gRPC, every
  protocol together) answered with a result / with an error (bad input, queue full,
  timeout, unknown version ...), with their end-to-end latencies summed. Requests for a
  model the server does not serve count for no model.
- ``queue``: requests that reached a model call, and their time from enqueue to the call.
- ``compute_infer``: per request that a successful model call ran, that call's duration
  (Triton's per-request sum); ``batch_stats``: per batch size (rows), the model calls and
  their summed duration. ``inference_count`` is the rows and ``execution_count`` the
  model calls of successful calls; ``last_inference`` is when the last one ended (ms since
  the epoch; 0 before any). irkit does not time input preparation and output extraction
  apart from the call: ``compute_input`` and ``compute_output`` stay 0.

irkit's counts are per model, not per version: ``model_stats`` has one entry per model,
with the version asked for or else the version serving now, and counts since the server
started over every version served.
"""

from __future__ import annotations

from typing import Any

from .common import DATATYPES, AdapterMetrics, UnknownModel, datatype_of
from .repository import ModelEntry, ModelRepository, ModelVersion, VersionPolicy

__all__ = ["TRITON_TYPES", "model_config", "model_statistics", "platform_of"]

TRITON_TYPES = {name: f"TYPE_{name}" for name in DATATYPES}  # FP32 -> TYPE_FP32
"""Triton's ``DataType`` enum name of each v2 datatype irkit serves."""


def platform_of(model: Any) -> str:
    """``irkit_<artifact backend>`` from the model's signature, or ``irkit``."""
    signature = getattr(model, "signature", None)
    return str(signature().get("platform", "irkit")) if callable(signature) else "irkit"


def _has_batch_dim(specs: list[Any]) -> bool:
    """Whether every tensor starts with one and the same symbolic dim."""
    firsts = {spec.shape[0] if spec.shape else None for spec in specs}
    return len(firsts) == 1 and isinstance(next(iter(firsts)), str)


def _tensor(spec: Any, batched: bool) -> dict[str, Any]:
    shape = spec.shape[1:] if batched else spec.shape
    doc: dict[str, Any] = {"name": spec.name, "data_type": TRITON_TYPES[datatype_of(spec.dtype)]}
    if batched and not shape:  # [batch] alone: Triton's form for a per-row scalar
        doc.update(dims=[1], reshape={"shape": []})
    else:
        doc["dims"] = [d if isinstance(d, int) else -1 for d in shape]
    return doc


def _policy(policy: VersionPolicy) -> dict[str, Any]:
    if policy.kind == "latest":
        return {"latest": {"num_versions": policy.count}}
    if policy.kind == "specific":
        return {"specific": {"versions": list(policy.versions)}}
    return {"all": {}}


def model_config(entry: ModelEntry, served: ModelVersion) -> dict[str, Any]:
    """The configuration of ``served``, a version of ``entry`` (module docstring)."""
    model = served.model
    assert model is not None
    inputs, outputs = list(model.inputs), list(model.outputs)
    batching = entry.batching
    batched = _has_batch_dim(inputs + outputs)
    config: dict[str, Any] = {
        "name": entry.name,
        "platform": platform_of(model),
        "backend": "irkit",
        "version_policy": _policy(entry.policy),
        "max_batch_size": batching.max_batch if batched else 0,
        "input": [_tensor(spec, batched) for spec in inputs],
        "output": [_tensor(spec, batched) for spec in outputs],
    }
    if batched and batching.max_batch > 1:
        queue: dict[str, Any] = {"timeout_action": "REJECT", "max_queue_size": batching.max_queue}
        if batching.timeout_ms:
            queue["default_timeout_microseconds"] = round(batching.timeout_ms * 1000)
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": round(batching.max_delay_ms * 1000),
            "default_queue_policy": queue,
        }
    return config


def _duration(count: float, seconds: float) -> dict[str, int]:
    return {"count": int(count), "ns": round(seconds * 1e9)}


_ZERO = {"count": 0, "ns": 0}


def _model_stats(repository: ModelRepository, entry: ModelEntry, version: str) -> dict[str, Any]:
    ok: list[float] = [0, 0.0]  # requests, seconds
    failed: list[float] = [0, 0.0]
    for metrics in list(repository.request_metrics):
        if metrics.model != entry.name:
            continue
        for outcome, tally in dict(metrics.outcomes).items():
            into = ok if outcome == "ok" else failed
            into[0] += tally.count
            into[1] += tally.seconds
    batch: AdapterMetrics | None = repository.batch_metrics(entry.name)
    batches: dict[int, tuple[int, float]] = {}
    requests, request_seconds, last_ms = 0, 0.0, 0
    queued: tuple[int, float] = (0, 0.0)
    if batch is not None:
        batches, requests, request_seconds, last_ms = batch.batch_totals()
        queued = batch.queue_time.totals()
    return {
        "name": entry.name,
        "version": version,
        "last_inference": last_ms,
        "inference_count": sum(size * calls for size, (calls, _) in batches.items()),
        "execution_count": sum(calls for calls, _ in batches.values()),
        "inference_stats": {
            "success": _duration(*ok),
            "fail": _duration(*failed),
            "queue": _duration(*queued),
            "compute_input": _ZERO,
            "compute_infer": _duration(requests, request_seconds),
            "compute_output": _ZERO,
            "cache_hit": _ZERO,
            "cache_miss": _ZERO,
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _ZERO,
                "compute_infer": _duration(calls, seconds),
                "compute_output": _ZERO,
            }
            for size, (calls, seconds) in sorted(batches.items())
        ],
    }


def model_statistics(
    repository: ModelRepository, model: str | None, version: str | None
) -> dict[str, Any]:
    """``{"model_stats": [...]}`` of ``model`` (every model when None); UnknownModel for a
    model or version not served."""
    if not model:
        entries = [repository.entries[name] for name in sorted(repository.entries)]
    else:
        entries = [repository.entry(model)]  # UnknownModel, naming the models served
        if version and version not in entries[0].versions:
            served = ", ".join(repr(v.version) for v in entries[0].routable()) or "none"
            raise UnknownModel(f"model {model!r} has no version {version!r} (served: {served})")
    stats = []
    for entry in entries:
        current = entry.current
        shown = version or (current.version if current is not None else "")
        stats.append(_model_stats(repository, entry, shown))
    return {"model_stats": stats}
