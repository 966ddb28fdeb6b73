"""Helpers of the postgres adapter tests: a queue, a serving thread, a worker process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from irkit.runtime.adapters.postgres import PostgresAdapter
from irkit.runtime.adapters.postgres_schema import Tables, init_schema

HERE = Path(__file__).resolve().parent
SERVE_CHILD = HERE / "serve_child.py"


@dataclass(frozen=True)
class Queue:
    dsn: str
    tables: Tables

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True)

    def init(self) -> None:
        with self.connect() as conn:
            init_schema(conn, self.tables)

    def options(self) -> dict[str, Any]:
        return {"dsn": self.dsn, "table": self.tables.requests,
                "result_table": self.tables.results}

    def counts(self, conn: psycopg.Connection[Any]) -> dict[str, int]:
        row = conn.execute(sql.SQL("SELECT pending, retrying, done, dead FROM {}").format(
            self.tables.ident(self.tables.requests, "_counts"))).fetchone()
        assert row is not None
        return dict(zip(("pending", "retrying", "done", "dead"), row))

    def wait_settled(self, conn: psycopg.Connection[Any], total: int,
                     timeout: float = 120.0) -> dict[str, int]:
        """Poll until no request is pending and ``total`` are done or dead (or fail)."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.counts(conn)
            if counts["pending"] == 0 and counts["done"] + counts["dead"] >= total:
                return counts
            assert time.monotonic() < deadline, f"queue did not settle: {counts}"
            time.sleep(0.05)


@contextlib.contextmanager
def serving(model: Any, queue: Queue, **options: Any) -> Iterator[PostgresAdapter]:
    """Run ``PostgresAdapter.serve`` in a thread for the block; stop and join it after."""
    adapter = PostgresAdapter(model, **{**queue.options(), **options})
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            adapter.serve()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, name="postgres-adapter", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not adapter.ready.is_set() and not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert not errors, errors
        assert adapter.ready.is_set(), "the adapter did not start"
        yield adapter
    finally:
        adapter.stop()
        thread.join(60)
        assert not thread.is_alive(), "serve() did not return after stop()"
        if errors:
            raise errors[0]


class Worker:
    """``serve_child.py`` in its own process group, its output kept in a file."""

    def __init__(self, model_dir: Path, queue: Queue, log_path: Path, workers: int = 1,
                 max_batch: int = 16) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, str(SERVE_CHILD), str(model_dir), "--dsn", queue.dsn,
                 "--table", queue.tables.requests, "--result-table", queue.tables.results,
                 "--workers", str(workers), "--max-batch", str(max_batch)],
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=HERE,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 60.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.findall(pattern, self.log())
            if len(found) >= count:
                return found
            assert self.process.poll() is None, f"worker exited early:\n{self.log()[-3000:]}"
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not logged {count}x:\n{self.log()[-3000:]}")

    def freeze(self) -> None:
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        assert self.process.wait(10) == -signal.SIGKILL

    def stop(self) -> None:
        """SIGTERM: the worker finishes its batch, commits and exits 0."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(60) == 0, self.log()[-3000:]
        assert "serve returned" in self.log()

    def close(self) -> None:
        if self.process.poll() is None:  # a failed test: leave nothing behind
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
