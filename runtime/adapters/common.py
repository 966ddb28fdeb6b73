"""Semantics shared by every serving adapter (batch, http, kafka): errors, metrics, tensors.

Nothing here imports a compiler module, onnx or torch; numpy and prometheus_client only.

Public API (kept small and stable — the kafka adapter builds on it too)
----------------------------------------------------------------------

Errors. Every adapter maps a failure to one ``AdapterError`` subclass. ``status`` is the
HTTP code the http adapter answers with; ``outcome`` is the metrics label (and what the
kafka adapter writes in a dead-letter record). ``error_body(exc)`` is ``{"error": str}``.

``grpc_code`` is the gRPC status code's name the grpc adapter answers with.

    ===============  ======  ==================  ==============  ==============================
    class            status  grpc_code           outcome         raised when
    ===============  ======  ==================  ==============  ==============================
    BadInput         400     INVALID_ARGUMENT    ``bad_input``   request does not fit the model
    ControlDisabled  403     PERMISSION_DENIED   ``forbidden``   load/unload without
                                                                 ``allow_model_control``
    UnknownModel     404     NOT_FOUND           ``not_found``   model/version not served here
    PayloadTooLarge  413     RESOURCE_EXHAUSTED  ``too_large``   body over the byte limit
    QueueFull        429     RESOURCE_EXHAUSTED  ``queue_full``  bounded queue is full
                                                                 (``retry_after`` s)
    NotReady         503     UNAVAILABLE         ``not_ready``   model not loaded+warmed up,
                                                                 unloaded, or stopping
    RequestTimeout   504     DEADLINE_EXCEEDED   ``timeout``     waited longer than its timeout
    AdapterError     500     INTERNAL            ``error``       anything else (the model raised)
    ===============  ======  ==================  ==============  ==============================

Validation.
    ``check_inputs(model, inputs)`` runs ``model.validate`` and turns its ValueError /
    TypeError into ``BadInput`` (the message names the input). A floating input holding
    NaN or +/-inf is such a ValueError unless the model lets them through:
    ``set_reject_nonfinite(model, reject)`` applies an adapter's ``reject_nonfinite``
    option (None: keep the model's own setting, which ``irkit.runtime.load`` makes True). ``batch_rows(inputs)`` is
    the size of the leading (batch) dimension shared by all inputs.

Batching helpers (used by ``batcher.DynamicBatcher`` and the batch adapter).
    ``concat_requests([inputs, ...]) -> (inputs, sizes)`` concatenates along axis 0;
    ``split_outputs(outputs, sizes) -> [outputs, ...]`` undoes it (views, no copies).

Metrics. ``AdapterMetrics(adapter, model)`` owns its own ``CollectorRegistry`` (so two
servers in one process never share counters) unless given one: several
``AdapterMetrics`` on one registry (one per adapter and model of a model repository) share
its metric families, each with its own label values (the same pair twice shares the
same series), with:

    irkit_requests_total{adapter,model,outcome}     counter
    irkit_request_latency_seconds{adapter,model}    histogram, end to end per request
    irkit_queue_time_seconds{adapter,model}         histogram, enqueue -> batch start
    irkit_batch_size{adapter,model}                 histogram, rows per model call
    irkit_inference_seconds{adapter,model}          histogram, one model call
    irkit_rows_total{adapter,model}                 counter, rows run through the model

``metrics.render() -> (bytes, content_type)`` is the Prometheus text exposition. Beside
the series, each ``AdapterMetrics`` keeps plain totals for the statistics extension
(``extensions``): per outcome the requests and their summed latency (``outcomes``), and
``batch_totals()``: per batch size the model calls and their summed duration, the
requests those calls ran and when the last one ended.

Options and signals.
    ``resolve_options(adapter_cls.options, given)`` checks names, types and choices of the
    keyword options an adapter was built with and fills in defaults (TypeError/ValueError
    naming the option). ``stop_on_signals(callback)`` is a context manager that calls
    ``callback(signum)`` on SIGINT/SIGTERM (main thread only; elsewhere it does nothing)
    and restores the previous handlers on exit — adapters finish their in-flight batch
    and return from ``serve()`` normally instead of dying mid-write.

Tensors (Open Inference Protocol v2 datatypes; the kafka adapter uses the same JSON form).
    ``DATATYPES`` maps "FP32", "INT64", ... to numpy dtypes; ``datatype_of(dtype)`` is the
    reverse. ``decode_tensor(obj, raw=None)`` builds an ndarray from a v2 JSON tensor
    (``name``, ``shape``, ``datatype``, ``data`` flat or nested) or from raw little-endian
    bytes (the binary tensor extension); ``encode_tensor(name, array)`` is the inverse
    JSON form (``tensor_json`` gives the same as JSON text, faster for floats: 9
    significant digits for float32, which read back exactly); ``signature_json(specs)`` renders ``TensorSpec`` lists for metadata.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import math
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.utils import floatToGoString

from irkit.runtime.options import Option

__all__ = [
    "DATATYPES",
    "AdapterError",
    "AdapterMetrics",
    "BadInput",
    "ControlDisabled",
    "NotReady",
    "PayloadTooLarge",
    "QueueFull",
    "RequestTimeout",
    "ServableModel",
    "UnknownModel",
    "batch_rows",
    "check_inputs",
    "concat_requests",
    "datatype_of",
    "decode_tensor",
    "encode_tensor",
    "error_body",
    "resolve_options",
    "set_reject_nonfinite",
    "signature_json",
    "split_outputs",
    "stop_on_signals",
    "tensor_json",
]


class ServableModel(Protocol):
    """What an adapter needs from ``irkit.runtime.CompiledModel``."""

    name: str
    inputs: Sequence[Any]  # TensorSpec(name, dtype, shape)
    outputs: Sequence[Any]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def validate(self, inputs: Mapping[str, np.ndarray]) -> Any: ...

    def warmup(self) -> Any: ...


# --------------------------------------------------------------------------- errors


class AdapterError(Exception):
    """A request failed; ``status`` is its HTTP code, ``grpc_code`` the name of its gRPC
    status code and ``outcome`` its metrics label."""

    status = 500
    grpc_code = "INTERNAL"
    outcome = "error"


class BadInput(AdapterError):
    status = 400
    grpc_code = "INVALID_ARGUMENT"
    outcome = "bad_input"


class ControlDisabled(AdapterError):
    status = 403
    grpc_code = "PERMISSION_DENIED"
    outcome = "forbidden"


class UnknownModel(AdapterError):
    status = 404
    grpc_code = "NOT_FOUND"
    outcome = "not_found"


class PayloadTooLarge(AdapterError):
    status = 413
    grpc_code = "RESOURCE_EXHAUSTED"
    outcome = "too_large"


class QueueFull(AdapterError):
    status = 429
    grpc_code = "RESOURCE_EXHAUSTED"
    outcome = "queue_full"

    def __init__(self, message: str = "queue full", retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotReady(AdapterError):
    status = 503
    grpc_code = "UNAVAILABLE"
    outcome = "not_ready"


class RequestTimeout(AdapterError):
    status = 504
    grpc_code = "DEADLINE_EXCEEDED"
    outcome = "timeout"


def error_body(exc: BaseException) -> dict[str, str]:
    """The JSON error body every adapter returns: ``{"error": message}``."""
    message = str(exc) or type(exc).__name__
    return {"error": message}


# ------------------------------------------------------------------------ validation


def check_inputs(model: ServableModel, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate ``inputs`` against the model signature; ValueError/TypeError -> BadInput."""
    try:
        checked = model.validate(inputs)
    except (ValueError, TypeError) as exc:
        raise BadInput(str(exc)) from exc
    # CompiledModel.validate returns the checked (contiguous, native-order) arrays.
    return dict(checked) if isinstance(checked, Mapping) else dict(inputs)


NONFINITE_OPTION = Option(
    bool, None, "refuse requests whose floating inputs hold NaN or inf (400 / "
    "INVALID_ARGUMENT / dead letter); false passes them to the model (default: the "
    "model's setting, which refuses them)")


def set_reject_nonfinite(model: Any, reject: bool | None) -> None:
    """Make ``model`` refuse (True) or pass on (False) NaN/inf inputs; None keeps its own
    setting. A duck-typed model without ``reject_nonfinite`` checks nothing itself."""
    if reject is not None and hasattr(model, "reject_nonfinite"):
        model.reject_nonfinite = reject


def batch_rows(inputs: Mapping[str, np.ndarray]) -> int:
    """Rows in the leading (batch) dimension; all inputs must agree."""
    sizes = {name: (arr.shape[0] if arr.ndim else 1) for name, arr in inputs.items()}
    distinct = set(sizes.values())
    if len(distinct) > 1:
        raise BadInput(f"inputs disagree on the batch dimension: {sizes}")
    return distinct.pop() if distinct else 0


def concat_requests(
    requests: Sequence[Mapping[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Concatenate requests along axis 0; returns the batch and each request's row count."""
    sizes = [batch_rows(r) for r in requests]
    if len(requests) == 1:
        return dict(requests[0]), sizes
    names = list(requests[0])
    batch = {name: np.concatenate([r[name] for r in requests], axis=0) for name in names}
    return batch, sizes


def split_outputs(
    outputs: Mapping[str, np.ndarray], sizes: Sequence[int]
) -> list[dict[str, np.ndarray]]:
    """Split batched outputs back into per-request dicts (views of ``outputs``)."""
    if len(sizes) == 1:
        return [dict(outputs)]
    bounds = np.cumsum([0, *sizes])
    return [
        {name: arr[bounds[i] : bounds[i + 1]] for name, arr in outputs.items()}
        for i in range(len(sizes))
    ]


# --------------------------------------------------------------------------- metrics

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)


class FastHistogram:
    """A Prometheus histogram whose ``observe`` is one list append.

    ``prometheus_client``'s ``Histogram.observe`` takes a lock and searches the buckets
    on every call, about 0.5 µs; a request records two of them, on a path that costs tens
    of µs in all. Here observations queue up and are folded into the bucket counts with one
    vectorized search when the registry is collected (or the queue grows long). Appends
    and the fold never lose an observation: the fold consumes only the prefix it read.
    """

    FOLD_AT = 1 << 16

    def __init__(self, name: str, doc: str, buckets: Sequence[float],
                 labels: dict[str, str]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # the last is +Inf
        self._sum = 0.0
        self._pending: list[float] = []
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        pending = self._pending
        pending.append(value)
        if len(pending) >= self.FOLD_AT:
            self.fold()

    def fold(self) -> None:
        with self._lock:
            pending = self._pending
            n = len(pending)
            if not n:
                return
            values = np.asarray(pending[:n], dtype=np.float64)
            del pending[:n]  # appends made meanwhile stay queued
            # Prometheus buckets are ``value <= le``.
            self._counts += np.bincount(np.searchsorted(self._bounds, values, side="left"),
                                        minlength=len(self._counts))
            self._sum += float(values.sum())

    def totals(self) -> tuple[int, float]:
        """How many values were observed, and their sum."""
        self.fold()
        return int(self._counts.sum()), self._sum

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=list(self.labels))
        self.add_to(family)
        return family

    def add_to(self, family: HistogramMetricFamily) -> None:
        """Add this label set's buckets, sum and count to ``family``."""
        self.fold()
        cumulative = np.cumsum(self._counts)
        bounds = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        family.add_metric(list(self.labels.values()),
                          [(b, float(c)) for b, c in zip(bounds, cumulative)], self._sum)


class _FastHistograms:
    """A collector exposing :class:`FastHistogram` instances in a registry: one family per
    metric name, one series per label set."""

    def __init__(self) -> None:
        self.histograms: dict[tuple[str, tuple[str, ...]], FastHistogram] = {}
        self._lock = threading.Lock()

    def get(self, name: str, doc: str, buckets: Sequence[float],
            labels: dict[str, str]) -> FastHistogram:
        """The histogram of ``name`` and ``labels``, made on first use."""
        key = (name, tuple(labels.values()))
        with self._lock:
            histogram = self.histograms.get(key)
            if histogram is None:
                histogram = self.histograms[key] = FastHistogram(name, doc, buckets, labels)
            return histogram

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            histograms = list(self.histograms.values())
        families: dict[str, HistogramMetricFamily] = {}
        for histogram in histograms:
            family = families.get(histogram.name)
            if family is None:
                family = families[histogram.name] = HistogramMetricFamily(
                    histogram.name, histogram.doc, labels=list(histogram.labels))
            histogram.add_to(family)
        yield from families.values()


class _Families:
    """The metric families of one registry, shared by every AdapterMetrics on it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("adapter", "model")
        self.requests = Counter("irkit_requests", "Requests by outcome.", (*labels, "outcome"),
                                registry=registry)  # fmt: skip
        self.rows = Counter("irkit_rows", "Rows run through the model.", labels,
                            registry=registry)  # fmt: skip
        self.histograms = _FastHistograms()
        registry.register(self.histograms)  # type: ignore[arg-type]


_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()
_FAMILIES_LOCK = threading.Lock()


class OutcomeTally:
    """Requests that ended with one outcome: their Prometheus counter, how many, and the
    sum of their latencies in seconds (``observe_request``)."""

    __slots__ = ("count", "counter", "seconds")

    def __init__(self, counter: Any) -> None:
        self.counter = counter
        self.count = 0
        self.seconds = 0.0


class AdapterMetrics:
    """Prometheus metrics of one adapter and model, in a registry of its own or a shared one."""

    def __init__(self, adapter: str, model: str, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.adapter = adapter
        self.model = model
        with _FAMILIES_LOCK:
            families = _FAMILIES.get(self.registry)
            if families is None:
                families = _FAMILIES[self.registry] = _Families(self.registry)
        self._requests = families.requests
        key = {"adapter": adapter, "model": model}
        histogram = families.histograms.get
        self.latency = histogram("irkit_request_latency_seconds", "End-to-end request latency.",
                                 _LATENCY_BUCKETS, key)  # fmt: skip
        self.queue_time = histogram("irkit_queue_time_seconds",
                                    "Time from enqueue to batch start.", _LATENCY_BUCKETS, key)
        self.batch_size = histogram("irkit_batch_size", "Rows per model call.",
                                    _BATCH_BUCKETS, key)  # fmt: skip
        self.inference_time = histogram("irkit_inference_seconds", "Duration of one model call.",
                                        _LATENCY_BUCKETS, key)  # fmt: skip
        # Bind the label sets once: .labels() costs a dict lookup + lock per call.
        self.rows = families.rows.labels(adapter, model)
        # What the statistics extension reports beside the Prometheus series (which
        # the same labels on another AdapterMetrics share, so they cannot be summed):
        self.outcomes: dict[str, OutcomeTally] = {}  # outcome -> requests and their seconds
        # model calls as (rows, seconds, requests, end ns), folded into totals when read
        # (an append is atomic: the batcher's workers record without a lock)
        self._calls: list[tuple[int, float, int, int]] = []
        self._batches: dict[int, tuple[int, float]] = {}  # rows -> model calls, their seconds
        self._batched: tuple[int, float] = (0, 0.0)  # requests run, sum of their call's seconds
        self._last_call_ns = 0
        self._fold_lock = threading.Lock()

    def _outcome(self, outcome: str) -> OutcomeTally:
        tally = self.outcomes.get(outcome)
        if tally is None:
            child = self._requests.labels(self.adapter, self.model, outcome)
            tally = self.outcomes[outcome] = OutcomeTally(child)
        return tally

    def count(self, outcome: str, n: int = 1) -> None:
        """Count ``n`` requests that ended with ``outcome`` ("ok" or an error outcome)."""
        tally = self.outcomes.get(outcome) or self._outcome(outcome)
        tally.counter.inc(n)
        tally.count += n

    def observe_request(self, outcome: str, seconds: float) -> None:
        """Count one request and record its latency (one thread per AdapterMetrics: the
        frontend's event loop)."""
        tally = self.outcomes.get(outcome) or self._outcome(outcome)
        tally.counter.inc()
        tally.count += 1
        tally.seconds += seconds
        self.latency.observe(seconds)

    def observe_batch(self, rows: int, seconds: float, requests: int = 1) -> None:
        """Record one model call over ``rows`` rows of ``requests`` requests."""
        self.batch_size.observe(rows)
        self.inference_time.observe(seconds)
        self.rows.inc(rows)
        calls = self._calls
        calls.append((rows, seconds, requests, time.time_ns()))
        if len(calls) >= 4096:  # bounded memory when nobody asks (~0.5 MB, 2 ms to fold)
            self.batch_totals()

    def batch_totals(self) -> tuple[dict[int, tuple[int, float]], int, float, int]:
        """A consistent copy of what ``observe_batch`` recorded: per batch size the calls
        and their seconds, the requests those calls ran and the sum of their call's
        seconds, and when the last call ended (ms since the epoch)."""
        with self._fold_lock:
            pending = self._calls
            n = len(pending)
            batches, (requests, weighted) = self._batches, self._batched
            for rows, seconds, count, ended_ns in pending[:n]:
                calls, total = batches.get(rows, (0, 0.0))
                batches[rows] = (calls + 1, total + seconds)
                requests += count
                weighted += seconds * count
                self._last_call_ns = max(self._last_call_ns, ended_ns)
            del pending[:n]  # calls recorded meanwhile stay queued
            self._batched = (requests, weighted)
            return dict(batches), requests, weighted, self._last_call_ns // 1_000_000

    def render(self) -> tuple[bytes, str]:
        """Prometheus text exposition of this registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------- memory

TRIM_AFTER_BYTES = 8 << 20
"""Requests with bodies at least this large hand freed memory back to the OS when done."""


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim  # type: ignore[no-any-return]


_MALLOC_TRIM = _load_malloc_trim()


def release_memory() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``; elsewhere nothing).

    A large request's body and arrays are freed when it is answered, but glibc keeps the
    pages of its arenas, so without this a server's RSS stays at its largest request.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


# --------------------------------------------------------------------------- tensors

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_NAMES = {dtype: name for name, dtype in DATATYPES.items()}


def datatype_of(dtype: Any) -> str:
    """The v2 datatype name of a numpy dtype ("FP32" for float32)."""
    try:
        return _NAMES[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise BadInput(f"unsupported dtype {dtype}") from None


MAX_DIMS = 32
"""Most dimensions a request tensor may have (numpy's own limit is 64)."""

MAX_ELEMENTS = 1 << 48
"""Most elements a request tensor's shape may declare, counting zero-sized dims as 1 (a
``[0, 2**62, 2**62]`` shape holds nothing, but numpy cannot even describe it)."""


def _shape_of(obj: Mapping[str, Any], name: str) -> tuple[int, ...]:
    shape = obj.get("shape")
    if type(shape) is list:
        for d in shape:  # type(d) is int: not a bool, not a float
            if type(d) is not int or d < 0:
                break
        else:
            problem = shape_problem(shape)
            if problem is not None:
                raise BadInput(f"input {name!r}: {problem}")
            return tuple(shape)
    raise BadInput(f"input {name!r}: shape must be a list of non-negative ints, got "
                   f"{_clip(shape)}")


def shape_problem(shape: Sequence[int]) -> str | None:
    """Why numpy could not hold a tensor of ``shape`` (non-negative ints), or None: more
    than ``MAX_DIMS`` dims, or more than ``MAX_ELEMENTS`` elements counting 0-dims as 1.
    Every adapter's decoder asks before it reshapes."""
    if len(shape) > MAX_DIMS:
        return f"shape has {len(shape)} dimensions, at most {MAX_DIMS} are allowed"
    if math.prod(d or 1 for d in shape) > MAX_ELEMENTS:
        return f"shape {_clip(list(shape))} is too large (more than {MAX_ELEMENTS} elements)"
    return None


def _clip(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# numpy kinds a JSON ``data`` list may hold for each datatype kind: no null (NaN in a
# float array), no strings ("0.5" would be parsed), no objects (ints past 64 bits)
_JSON_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_FLOAT_MAX = {np.dtype(t): float(np.finfo(t).max) for t in (np.float16, np.float32)}


def _big_ints(data: Any, dtype: np.dtype, name: str, datatype: str) -> np.ndarray:
    """``data`` as ``dtype`` when every item is a Python int (numpy reads ints past
    ``2**63`` as float64 or object); otherwise ``data`` as numpy reads it, for the caller
    to refuse."""
    items = np.asarray(data, dtype=object).ravel()
    if not all(type(v) is int for v in items):
        return np.asarray(data)
    try:
        return np.asarray(items.tolist(), dtype=dtype)
    except OverflowError:
        info = np.iinfo(dtype)
        bad = next(v for v in items if not info.min <= v <= info.max)
        raise BadInput(f"input {name!r}: {_clip(bad)} is out of range for {datatype}") from None


def _json_data(data: Any, dtype: np.dtype, name: str, datatype: str) -> np.ndarray:
    """``data`` (a JSON list, possibly nested) as a flat array of ``dtype``; BadInput for
    nulls, strings, booleans where numbers belong, and values out of the type's range."""
    try:
        probe = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise BadInput(f"input {name!r}: data is not {datatype}: {_clip(str(exc))}") from None
    if dtype.kind in "iu" and probe.dtype.kind in "fO" and probe.size:
        probe = _big_ints(data, dtype, name, datatype)  # uint64 past 2**63 reads as float
    if probe.dtype.kind not in _JSON_KINDS[dtype.kind] and probe.size:
        what = {"O": "null, mixed or out-of-range values", "U": "strings", "S": "strings",
                "b": "booleans", "f": "non-integer numbers"}.get(probe.dtype.kind, probe.dtype)
        raise BadInput(f"input {name!r}: data of a {datatype} tensor holds {what}")
    flat = probe.ravel()
    if dtype.kind == "f":
        if flat.size and dtype.itemsize < 8:  # 1e39 would silently become inf in FP32
            limit = _FLOAT_MAX[dtype]
            if not np.abs(flat).max() <= limit:  # NaN, Infinity or too large: look closer
                overflow = (np.abs(flat) > limit) & np.isfinite(flat)
                if overflow.any():
                    value = float(flat[int(np.argmax(overflow))])
                    raise BadInput(f"input {name!r}: {value!r} is out of range for {datatype}")
        return flat.astype(dtype)
    if flat.size and flat.dtype != dtype:
        info = np.iinfo(dtype) if dtype.kind in "iu" else None
        if info is not None and (int(flat.min()) < info.min or int(flat.max()) > info.max):
            bad = flat[(flat < info.min) | (flat > info.max)][0]
            raise BadInput(f"input {name!r}: {int(bad)} is out of range for {datatype}")
    return flat.astype(dtype)


def decode_tensor(obj: Mapping[str, Any], raw: bytes | memoryview | None = None) -> np.ndarray:
    """Build an array from a v2 JSON tensor; ``raw`` holds its bytes for binary data.

    Raises BadInput naming the tensor when the datatype is unknown or the data does not
    fill the declared shape.
    """
    if type(obj) is not dict and not isinstance(obj, Mapping):  # dict: skip the ABC check
        raise BadInput(f"tensor must be a JSON object, got {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str):
        raise BadInput("every input needs a string 'name'")
    datatype = obj.get("datatype")
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise BadInput(f"input {name!r}: unsupported datatype {datatype!r}")
    shape = _shape_of(obj, name)
    count = math.prod(shape)
    if raw is not None:
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise BadInput(
                f"input {name!r}: expected {expected} bytes for shape {list(shape)} "
                f"{datatype}, got {len(raw)}"
            )
        array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
        if not array.flags.aligned:  # bytes at any offset of the body: validation would copy
            array = array.copy()
        return array.reshape(shape)
    if "data" not in obj:
        raise BadInput(f"input {name!r}: no 'data' and no binary_data_size")
    flat = _json_data(obj["data"], dtype, name, str(datatype))
    if flat.size != count:
        raise BadInput(
            f"input {name!r}: shape {list(shape)} needs {count} elements, data has {flat.size}"
        )
    return flat.reshape(shape)


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """The v2 JSON form of ``array`` (row-major flat ``data``)."""
    return {
        "name": name,
        "datatype": datatype_of(array.dtype),
        "shape": list(array.shape),
        "data": array.ravel().tolist(),
    }


# Significant digits that make a float read back as the same float32 / float64.
_EXACT_DIGITS = {np.dtype(np.float16): "%.5g", np.dtype(np.float32): "%.9g",
                 np.dtype(np.float64): "%.17g"}  # fmt: skip


def tensor_json(name: str, array: np.ndarray) -> str:
    """``encode_tensor`` as JSON text, faster for floats.

    json.dumps writes a float32 value widened to float64 with up to 17 digits, through
    the slow shortest-repr path; 9 significant digits already read back as the same
    float32 and format about three times faster, and make the body shorter.
    """
    fmt = _EXACT_DIGITS.get(array.dtype)
    values = array.ravel().tolist()
    if fmt is not None and np.isfinite(array).all():
        data = "[" + ",".join([fmt % v for v in values]) + "]"
    else:  # ints, bools, and NaN/Inf (written as json.dumps does: NaN, Infinity)
        data = json.dumps(values)
    head = json.dumps(
        {"name": name, "datatype": datatype_of(array.dtype), "shape": list(array.shape)}
    )
    return head[:-1] + ',"data":' + data + "}"


def signature_json(specs: Iterable[Any]) -> list[dict[str, Any]]:
    """TensorSpecs as v2 metadata: symbolic dims (str/None) become -1."""
    return [
        {
            "name": spec.name,
            "datatype": datatype_of(spec.dtype),
            "shape": [d if isinstance(d, int) else -1 for d in spec.shape],
        }
        for spec in specs
    ]


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes (NaN/Inf are not JSON: numbers like that are a model bug)."""
    return json.dumps(obj, separators=(",", ":")).encode()


# ------------------------------------------------------------------ options, signals


def resolve_options(declared: Mapping[str, Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in and every given option checked against its declaration."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(declared)}")
    resolved: dict[str, Any] = {}
    for name, option in declared.items():
        if name not in given:
            if option.required:
                raise TypeError(f"option {name!r} is required: {option.doc}")
            resolved[name] = option.default
            continue
        value = given[name]
        allowed = option.type if isinstance(option.type, tuple) else (option.type,)
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, str) and any(issubclass(t, PurePath) for t in allowed):
            value = Path(value)
        nullable = value is None and option.default is None and not option.required
        wrong = not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)
        if wrong and not nullable:
            names = "/".join(t.__name__ for t in allowed)
            raise TypeError(f"option {name!r} must be {names}, got {value!r}")
        if option.choices is not None and value not in option.choices:
            raise ValueError(
                f"option {name!r} must be one of {list(option.choices)}, got {value!r}"
            )
        resolved[name] = value
    return resolved


@contextlib.contextmanager
def stop_on_signals(callback: Callable[[int], None]) -> Iterator[None]:
    """Call ``callback(signum)`` on SIGINT/SIGTERM while inside the block (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum: int, frame: object) -> None:
        callback(signum)

    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
