"""Postgres adapter: a request queue in PostgreSQL, results written back to the database.

``PostgresAdapter(model, **options).serve()`` makes the queue's schema (see
:mod:`postgres_schema`) unless ``init_db`` is false, then runs ``workers`` workers (see
:mod:`postgres_worker`) on the requests table ``table`` until SIGINT/SIGTERM or
``stop()``. Callers insert rows (plain INSERT, ``irkit_submit(...)`` in SQL, or
``postgres_schema.submit_binary``/``submit_json``) and read results from ``result_table``.

Delivery guarantee — exactly once. A worker claims rows with ``SELECT ... FOR UPDATE SKIP
LOCKED`` and, in the same transaction, inserts their results and marks them done (or
dead, or pending again after a backoff). The transaction commits or not as a whole: a
worker that dies at any moment leaves its rows pending for another worker, and no request
gets two results (``request_id`` is the results table's primary key). With
``synchronous_commit = "off"`` a database crash may undo the workers' last committed
batches (results and acknowledgements together): those requests are pending again and get
their one result later, but a reader may have seen the undone result. Several workers,
processes or hosts on one queue never work on the same row: a claimed row is locked and
the others skip it.

Dead letters. A row that does not decode (malformed JSON request, a ``tensors``
description that does not match the bytes, both forms or neither) or does not fit the
model signature becomes ``status = 'dead'`` at once, with the reason in ``error``. A model
error sends the request back to pending with an exponential backoff; after
``max_attempts`` attempts it is dead with the last error. A request whose model call
kills the worker process rolls back with it and is tried again; nothing counts those.

Database. ``dsn`` names any PostgreSQL 14+ server (libpq form or URL). Without one,
an embedded server is started for the life of ``serve()`` (see :mod:`postgres_server`):
in a temporary directory, or in ``data_dir`` where its data outlive the run; its DSN is
logged and written to ``<data_dir>/dsn``.

Workers and metrics. ``workers = N`` > 1 forks N worker processes (each reloads the model
from its artifact), restarted if they die. ``metrics_port`` serves the shared
``AdapterMetrics`` (requests by outcome, latency from insert to commit, queue time, batch
size, inference time) plus ``irkit_queue_depth`` (pending rows) and ``irkit_retries_total``
in Prometheus form; worker i of N uses port + i.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    import psycopg
except ImportError as exc:  # the adapter's own dependency: say how to get it
    raise ImportError(f"the postgres adapter needs psycopg 3 ({exc}): "
                      "pip install 'irkit[postgres]'") from exc

from irkit.runtime.adapters.common import (
    NONFINITE_OPTION,
    AdapterMetrics,
    ServableModel,
    resolve_options,
    set_reject_nonfinite,
    stop_on_signals,
)
from irkit.runtime.adapters.postgres_schema import Tables, init_schema, schema_exists
from irkit.runtime.adapters.postgres_server import EmbeddedPostgres
from irkit.runtime.adapters.postgres_worker import (
    PostgresError,
    PostgresWorker,
    QueueMetrics,
    WorkerConfig,
    redact,
)
from irkit.runtime.adapters.processes import child_model, metrics_server, supervise
from irkit.runtime.options import Option

__all__ = ["PostgresAdapter", "PostgresError"]

log = logging.getLogger(__name__)


class PostgresAdapter:
    """Serve a model from a PostgreSQL request queue; see the module docstring."""

    options: dict[str, Option] = {
        "dsn": Option(str, "", "PostgreSQL connection string (URL or 'host=... dbname=...'); "
                      "empty: start an embedded server for the life of serve()"),
        "table": Option(str, "irkit_requests", "the requests (queue) table, may be "
                        "schema-qualified"),
        "result_table": Option(str, "irkit_results", "the results table"),
        "max_batch": Option(int, 64, "most requests claimed (and rows run) per model call"),
        "max_delay_ms": Option(float, 2.0, "longest wait for a claimed batch to fill"),
        "workers": Option(int, 1, "worker processes (each claims its own batches)"),
        "max_attempts": Option(int, 3, "model errors a request may have before it is dead"),
        "retry_backoff_ms": Option(float, 500.0, "delay before the first retry; doubles "
                                   "per attempt"),
        "poll_interval_ms": Option(float, 1000.0, "an idle worker polls this often when "
                                   "no NOTIFY wakes it"),
        "init_db": Option(bool, True, "create missing tables, view, trigger and functions "
                          "at start"),
        "version": Option(str, "1", "model version written with each result"),
        "synchronous_commit": Option(str, "on", "the workers' synchronous_commit: 'off' "
                                     "skips waiting for the WAL flush of each batch (a "
                                     "database crash may then undo the last batches, which "
                                     "are claimed and computed again)",
                                     choices=("on", "off", "local", "remote_write",
                                              "remote_apply")),
        "data_dir": Option(str, "", "embedded server: keep its data in this directory "
                           "(empty: a temporary one, removed on exit)"),
        "embedded_port": Option(int, 0, "embedded server: its port on 127.0.0.1 (0: free)"),
        "reject_nonfinite": NONFINITE_OPTION,
        "metrics_port": Option(int, 0, "serve Prometheus /metrics on this port (0: off); "
                               "worker i of workers = N uses port + i"),
    }

    def __init__(self, model: ServableModel, **options: Any) -> None:
        resolved = resolve_options(self.options, options)
        for name in ("max_batch", "workers", "max_attempts"):
            if resolved[name] < 1:
                raise ValueError(f"option {name!r} must be >= 1, got {resolved[name]}")
        for name in ("max_delay_ms", "retry_backoff_ms"):
            if resolved[name] < 0:
                raise ValueError(f"option {name!r} must be >= 0, got {resolved[name]}")
        if resolved["poll_interval_ms"] <= 0:
            raise ValueError("option 'poll_interval_ms' must be > 0, got "
                             f"{resolved['poll_interval_ms']}")
        tables = Tables(resolved["table"], resolved["result_table"])  # ValueError if bad
        set_reject_nonfinite(model, resolved["reject_nonfinite"])
        self.model = model
        self.settings = resolved
        self.config = WorkerConfig(
            dsn=resolved["dsn"], tables=tables, max_batch=resolved["max_batch"],
            max_delay_ms=resolved["max_delay_ms"], max_attempts=resolved["max_attempts"],
            retry_backoff_ms=resolved["retry_backoff_ms"],
            poll_interval_ms=resolved["poll_interval_ms"], model_version=resolved["version"],
            synchronous_commit=resolved["synchronous_commit"],
        )
        self.metrics = AdapterMetrics("postgres", model.name)
        self._stop = threading.Event()
        self.dsn: str | None = None  # known once the database is reachable
        # Set once the schema exists and the worker listens (workers = N: once they fork).
        self.ready = threading.Event()

    def stop(self) -> None:
        """Ask ``serve()`` to finish the in-flight batch and return (any thread)."""
        self._stop.set()

    def init_db(self) -> None:
        """Create the queue's schema (idempotent) and return; ``irkit serve --init-db``."""
        with self._database() as dsn:
            self._prepare(dsn, create=True)

    def serve(self) -> None:
        """Work the queue until SIGINT/SIGTERM or ``stop()``; see the module docstring."""
        with stop_on_signals(lambda signum: self._stop.set()), self._database() as dsn:
            self._prepare(dsn, create=self.settings["init_db"])
            config = WorkerConfig(**{**self.config.__dict__, "dsn": dsn})
            try:
                if self.settings["workers"] == 1:
                    self._work(self.model, config, self._stop, self.metrics,
                               self.settings["metrics_port"], self.ready)
                else:
                    self.ready.set()
                    self._supervise(config, self.settings["workers"])
            finally:
                self.ready.clear()
                self._stop.clear()  # serve() may be called again

    @staticmethod
    def _work(model: ServableModel, config: WorkerConfig, stop: threading.Event,
              metrics: AdapterMetrics, port: int, ready: threading.Event | None = None
              ) -> None:
        queue_metrics = QueueMetrics(metrics, config)
        try:
            with metrics_server(metrics, port):
                PostgresWorker(model, config, stop, metrics, queue_metrics, ready).run()
        finally:
            queue_metrics.close()

    def _supervise(self, config: WorkerConfig, count: int) -> None:
        model, first_port = self.model, self.settings["metrics_port"]

        def work(slot: int, stop: threading.Event) -> None:
            metrics = AdapterMetrics("postgres", model.name)
            self._work(child_model(model), config, stop, metrics,
                       first_port and first_port + slot)

        supervise(work, count, self._stop, "worker")

    def _prepare(self, dsn: str, create: bool) -> None:
        """Create the schema (or check it exists) over a short-lived connection."""
        tables = self.config.tables
        try:
            with psycopg.connect(dsn, autocommit=True, application_name="irkit-init") as conn:
                if create:
                    init_schema(conn, tables)
                missing = schema_exists(conn, tables)
        except psycopg.OperationalError as exc:
            raise PostgresError(f"cannot connect to {redact(dsn)}: {str(exc).strip()}"
                                ) from None
        except psycopg.Error as exc:
            raise PostgresError(f"cannot create the queue's schema in {redact(dsn)}: "
                                f"{str(exc).strip()}") from None
        if missing:
            raise PostgresError(
                f"table(s) {', '.join(missing)} do not exist in {redact(dsn)}: run "
                "'irkit serve SPEC --adapter postgres --init-db' or set init_db = true"
            )

    @contextmanager
    def _database(self) -> Iterator[str]:
        if self.settings["dsn"]:
            self.dsn = self.settings["dsn"]
            yield self.settings["dsn"]
            return
        server = EmbeddedPostgres(self.settings["data_dir"] or None,
                                  port=self.settings["embedded_port"])
        with server:
            self.dsn = server.dsn
            where = server.root if self.settings["data_dir"] else "a temporary directory"
            log.warning("embedded PostgreSQL (data in %s); connect with: psql '%s'",
                        where, server.dsn)
            yield server.dsn
