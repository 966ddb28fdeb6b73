"""One worker of the postgres adapter: claim, run, write results and acknowledge (one thread).

Per batch, in one transaction:

1. claim up to ``max_batch`` due pending requests, oldest first, ``FOR UPDATE SKIP LOCKED``
   (rows other workers hold are skipped); when fewer came and ``max_delay_ms`` > 0, wait
   for more (woken by NOTIFY) until the batch is full or the delay is over;
2. decode each row (binary ``tensors`` + ``inputs``, or ``inputs_json``, with the codec of
   :mod:`kafka_codec`) and check it against the model signature; a row that fails is
   dead-lettered at once with the reason;
3. run the good ones (:func:`grouping.run_grouped`: grouped by shape, one model call per
   chunk of at most ``max_batch`` rows, a failing call retried request by request);
4. insert the results and mark those requests done in one statement; a model error sends
   its request back to pending with an exponential backoff (``retry_backoff_ms`` doubled
   per attempt), or to dead once it has had ``max_attempts`` attempts;
5. commit. Nothing is visible before the commit, and a worker that dies before it (even by
   SIGKILL) leaves its claimed rows pending and unlocked for the next worker: every
   request gets exactly one result or one dead-letter verdict.

Idle workers wait on ``LISTEN <table>`` (the insert trigger notifies), polling every
``poll_interval_ms`` as the fallback (retried requests becoming due, a lost notification).
A lost database connection is reconnected with a backoff; the transaction it held was
rolled back by the server, so its requests are simply claimed again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from prometheus_client import Counter, Gauge

from irkit.errors import IrkitError
from irkit.runtime.adapters.common import AdapterError, AdapterMetrics, BadInput, ServableModel
from irkit.runtime.adapters.grouping import SignatureCheck, run_grouped
from irkit.runtime.adapters.kafka_codec import (
    TENSORS_HEADER,
    PayloadError,
    Request,
    decode_request,
    encode_result,
)
from irkit.runtime.adapters.postgres_schema import Tables

log = logging.getLogger("irkit.runtime.adapters.postgres")

_MAX_ERROR_CHARS = 2000
_MAX_BACKOFF_MS = 300_000.0
_WAIT_SLICE_S = 0.25  # an idle worker notices stop() at least this often
_RECONNECT_MAX_S = 5.0


class PostgresError(IrkitError, RuntimeError):
    """The database cannot be reached or lacks the queue's tables."""


def redact(dsn: str) -> str:
    """``dsn`` with its password replaced by ``***`` (for messages and logs)."""
    if "://" in dsn and "@" in dsn.split("://", 1)[1]:
        scheme, rest = dsn.split("://", 1)
        credentials, host = rest.split("@", 1)
        if ":" in credentials:
            credentials = credentials.split(":", 1)[0] + ":***"
        return f"{scheme}://{credentials}@{host}"
    return " ".join("password=***" if part.startswith("password=") else part
                    for part in dsn.split(" "))


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs besides the model (picklable, fork-safe)."""

    dsn: str
    tables: Tables = field(default_factory=Tables)
    max_batch: int = 64
    max_delay_ms: float = 2.0
    max_attempts: int = 3
    retry_backoff_ms: float = 500.0
    poll_interval_ms: float = 1000.0
    model_version: str = "1"
    synchronous_commit: str = "on"


class QueueMetrics:
    """The postgres adapter's metrics beyond ``AdapterMetrics``: queue depth and retries.

    ``irkit_queue_depth`` (pending requests) is read from the database when scraped, over
    a connection of its own; it reads NaN while the database cannot be reached.
    """

    def __init__(self, metrics: AdapterMetrics, config: WorkerConfig) -> None:
        self.metrics = metrics
        self._config = config
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        depth = Gauge("irkit_queue_depth", "Requests pending in the queue table.",
                      registry=metrics.registry)  # fmt: skip
        depth.set_function(self.queue_depth)
        self.retries = Counter("irkit_retries", "Model errors sent back with a backoff.",
                               ("adapter", "model"), registry=metrics.registry
                               ).labels(metrics.adapter, metrics.model)

    def queue_depth(self) -> float:
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self._config.dsn, autocommit=True,
                                                 application_name="irkit-metrics")
                row = self._conn.execute(self._config.tables.statements()["depth"]).fetchone()
                return float(row[0]) if row else float("nan")
            except psycopg.Error:
                self._conn = None
                return float("nan")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def decode_row(request_id: int, tensors: str | None, inputs: bytes | None,
               inputs_json: str | None) -> Request:
    """The request of one queue row; ``PayloadError`` (a ``BadInput``) when malformed."""
    default_id = str(request_id)
    if inputs_json is not None and (tensors is not None or inputs is not None):
        raise PayloadError("the row has both inputs_json and tensors/inputs: give one form")
    if inputs_json is not None:
        return decode_request(inputs_json.encode(), None, None, default_id)
    if tensors is None or inputs is None:
        raise PayloadError("the row has no inputs: give inputs_json (OIP v2 JSON), or "
                           "tensors and inputs (binary form)")
    return decode_request(bytes(inputs), None, [(TENSORS_HEADER, tensors.encode())],
                          default_id)


class PostgresWorker:
    """Serve the queue of ``config`` until ``stop`` is set; see the module docstring."""

    def __init__(self, model: ServableModel, config: WorkerConfig, stop: threading.Event,
                 metrics: AdapterMetrics | None = None,
                 queue_metrics: QueueMetrics | None = None,
                 ready: threading.Event | None = None) -> None:
        self.model = model
        self.config = config
        self.stop = stop
        self.metrics = metrics if metrics is not None else AdapterMetrics("postgres",
                                                                          model.name)
        self.queue_metrics = queue_metrics
        self.statements = config.tables.statements()
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.counts = {"claimed": 0, "results": 0, "dead": 0, "retries": 0, "batches": 0}
        self._check = SignatureCheck(model)
        self._ready = ready  # set once connected and listening
        self._conn: psycopg.Connection[Any] | None = None
        self._listener: psycopg.Connection[Any] | None = None

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        self._connect(first=True)
        log.info("worker %s on %s started", self.identity, self.config.tables.requests)
        if self._ready is not None:
            self._ready.set()
        try:
            while not self.stop.is_set():
                try:
                    if self._batch() == 0:
                        self._idle_wait()
                except psycopg.OperationalError as exc:
                    log.warning("worker %s lost the database (%s); reconnecting",
                                self.identity, " ".join(str(exc).split()))
                    self._reconnect()
        finally:
            self._close()
            log.info("worker %s stopped: %s", self.identity, self.counts)

    def _connect(self, first: bool = False) -> None:
        try:
            self._conn = psycopg.connect(self.config.dsn, autocommit=True,
                                         application_name="irkit-worker")
            if self.config.synchronous_commit != "on":  # this session's commits only
                self._conn.execute(psycopg.sql.SQL("SET synchronous_commit = {}").format(
                    psycopg.sql.Literal(self.config.synchronous_commit)))
            self._listener = psycopg.connect(self.config.dsn, autocommit=True,
                                             application_name="irkit-listener")
            self._listener.execute(psycopg.sql.SQL("LISTEN {}").format(
                psycopg.sql.Identifier(self.config.tables.channel)))
        except psycopg.OperationalError as exc:
            self._close()
            if first:
                raise PostgresError(f"cannot connect to {redact(self.config.dsn)}: "
                                    f"{str(exc).strip()}") from None
            raise

    def _reconnect(self) -> None:
        self._close()
        delay = 0.1
        while not self.stop.is_set():
            try:
                self._connect()
                log.info("worker %s reconnected", self.identity)
                return
            except psycopg.OperationalError:
                self.stop.wait(delay)
                delay = min(delay * 2, _RECONNECT_MAX_S)

    def _close(self) -> None:
        for conn in (self._conn, self._listener):
            if conn is not None:
                conn.close()
        self._conn = self._listener = None

    def _wait_notify(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a notification; True if one came."""
        assert self._listener is not None
        for _ in self._listener.notifies(timeout=max(timeout_s, 0.0), stop_after=1):
            return True
        return False

    def _drain_notifies(self) -> None:
        assert self._listener is not None
        for _ in self._listener.notifies(timeout=0):
            pass

    def _idle_wait(self) -> None:
        deadline = time.monotonic() + self.config.poll_interval_ms / 1000.0
        while not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._wait_notify(min(remaining, _WAIT_SLICE_S)):
                return

    # -- one batch ----------------------------------------------------------------------

    def _batch(self) -> int:
        """Claim, run, write and commit one batch; returns how many rows it claimed."""
        conn = self._conn
        assert conn is not None
        self._drain_notifies()  # what they announce, this claim sees
        claim, limit = self.statements["claim"], self.config.max_batch
        started = time.perf_counter()
        with conn.transaction():
            rows = conn.execute(claim, {"taken": [], "limit": limit}).fetchall()
            if not rows:
                return 0
            deadline = started + self.config.max_delay_ms / 1000.0
            while len(rows) < limit and time.perf_counter() < deadline:
                if not self._wait_notify(deadline - time.perf_counter()):
                    break
                rows += conn.execute(claim, {"taken": [row[0] for row in rows],
                                             "limit": limit - len(rows)}).fetchall()
            done, failed = self._process(conn, rows)
        committed = time.perf_counter()
        self._account(rows, done, failed, committed - started)
        return len(rows)

    def _process(self, conn: psycopg.Connection[Any], rows: Sequence[tuple[Any, ...]]
                 ) -> tuple[list[int], list[tuple[int, str, str, float, str]]]:
        """Run ``rows`` and write their outcomes (in the caller's transaction).

        Returns the ids done and, per failed row, (id, status, error, delay_ms, outcome).
        """
        failed: list[tuple[int, str, str, float, str]] = []
        decoded: list[tuple[tuple[Any, ...], Request]] = []
        for row in rows:
            request_id, tensors, inputs, inputs_json = row[:4]
            try:
                request = decode_row(request_id, tensors, inputs, inputs_json)
                self._check(request.inputs)
            except AdapterError as exc:
                failed.append(self._dead(request_id, exc))
                continue
            except Exception as exc:  # a payload nobody foresaw must not stop the queue
                log.exception("unexpected error decoding request %s", request_id)
                failed.append(self._dead(request_id, BadInput(f"{type(exc).__name__}: {exc}")))
                continue
            decoded.append((row, request))
        outcomes = run_grouped(self.model, [request.inputs for _, request in decoded],
                               self.config.max_batch, self.metrics)
        done: list[int] = []
        tensors_of: list[str | None] = []
        outputs_of: list[bytes | None] = []
        json_of: list[str | None] = []
        for (row, request), outcome in zip(decoded, outcomes):
            request_id, attempts = row[0], row[4]
            if isinstance(outcome, BadInput):
                failed.append(self._dead(request_id, outcome))
                continue
            if isinstance(outcome, AdapterError):
                failed.append(self._retry(request_id, attempts, outcome))
                continue
            try:
                value, headers = encode_result(request, outcome, self.model.name)
            except AdapterError as exc:  # e.g. an unknown output asked for
                failed.append(self._dead(request_id, exc))
                continue
            done.append(request_id)
            if request.binary:
                described = dict(headers)[TENSORS_HEADER]
                tensors_of.append(described.decode() if described is not None else "")
                outputs_of.append(value)
                json_of.append(None)
            else:
                tensors_of.append(None)
                outputs_of.append(None)
                json_of.append(value.decode())
        if done:
            conn.execute(self.statements["done"], {
                "ids": done, "tensors": tensors_of, "outputs": outputs_of,
                "outputs_json": json_of, "model": self.model.name,
                "version": self.config.model_version, "worker": self.identity,
            })
        if failed:
            conn.execute(self.statements["failed"], {
                "ids": [f[0] for f in failed], "statuses": [f[1] for f in failed],
                "errors": [f[2] for f in failed], "delays": [f[3] for f in failed],
            })
        return done, failed

    def _dead(self, request_id: int, exc: AdapterError) -> tuple[int, str, str, float, str]:
        text = (str(exc) or type(exc).__name__)[:_MAX_ERROR_CHARS]
        return request_id, "dead", text, 0.0, exc.outcome

    def _retry(self, request_id: int, attempts: int, exc: AdapterError
               ) -> tuple[int, str, str, float, str]:
        text = (str(exc) or type(exc).__name__)[:_MAX_ERROR_CHARS]
        if attempts + 1 >= self.config.max_attempts:
            return (request_id, "dead",
                    f"{text} (after {attempts + 1} attempts)"[:_MAX_ERROR_CHARS], 0.0,
                    exc.outcome)
        delay_ms = min(self.config.retry_backoff_ms * 2.0 ** attempts, _MAX_BACKOFF_MS)
        return request_id, "pending", text, delay_ms, "retry"

    def _account(self, rows: Sequence[tuple[Any, ...]], done: list[int],
                 failed: list[tuple[int, str, str, float, str]], elapsed_s: float) -> None:
        """Counters and metrics of a committed batch."""
        metrics = self.metrics
        self.counts["batches"] += 1
        self.counts["claimed"] += len(rows)
        self.counts["results"] += len(done)
        waited = {row[0]: row[5] for row in rows}
        for request_id in done:
            metrics.queue_time.observe(waited[request_id])
            metrics.latency.observe(waited[request_id] + elapsed_s)
        if done:
            metrics.count("ok", len(done))
        for request_id, status, error, _delay, outcome in failed:
            if status == "dead":
                self.counts["dead"] += 1
                metrics.count(outcome)
                log.debug("request %s dead: %s", request_id, error)
            else:
                self.counts["retries"] += 1
                if self.queue_metrics is not None:
                    self.queue_metrics.retries.inc()
                log.warning("request %s failed, retried later: %s", request_id, error)
