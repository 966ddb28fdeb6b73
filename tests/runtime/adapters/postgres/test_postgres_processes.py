"""The postgres adapter as separate processes: SIGKILLs mid-stream, and several workers.

``REQUESTS`` (20,000) requests, every 50th malformed, are inserted while a worker process
runs; the worker is SIGKILLed five times at random moments, each time while it holds a
claimed batch (it is frozen first and killed only if its transaction holds rows; the
server then reports that transaction aborted), and restarted. Afterwards every good
request has exactly one result, with the model's outputs, and was committed once
(``attempts = 1``: a killed transaction rolled back its claim); every malformed one is
dead with its reason; nothing is lost. About 25 s on 2 shared cores.
"""

from __future__ import annotations

import ast
import itertools
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from pg_testing import Queue, Worker
from psycopg import sql

from irkit.runtime import CompiledModel
from irkit.runtime.adapters.postgres_schema import decode_outputs, submit_binary, submit_json

pytestmark = [pytest.mark.service, pytest.mark.slow]

REQUESTS = 20_000
KILLS = 5
ATOL = 1e-5

# (columns, values, the reason the dead letter must give)
MALFORMED: list[tuple[tuple[str, ...], tuple[Any, ...], str]] = [
    (("inputs_json",), ('{"inputs": "x"}',), "non-empty list of tensors"),
    (("tensors", "inputs"), ("x:FP32:1,64", b"\0" * 100), "needs bytes 0..256"),
    (("tensors", "inputs"), ("x:FP32:1,63", b"\0" * 252), "'x'"),
    (("tensors", "inputs"), ("x:FLOAT:1,64", b"\0" * 256), "unsupported datatype"),
]


def _insert_malformed(conn: psycopg.Connection[Any], queue: Queue, kind: int) -> int:
    columns, values, _reason = MALFORMED[kind]
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
        queue.tables.req, sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)))
    return conn.execute(query, values).fetchone()[0]


def _kill_mid_batch(worker: Worker, conn: psycopg.Connection[Any], rng: random.Random
                    ) -> int:
    """SIGKILL ``worker`` at a random moment while it holds claimed rows; the id of the
    transaction that was open then.

    The worker is frozen (SIGSTOP) at a random moment; if its transaction holds claimed
    rows (it has a transaction id) it is killed frozen, else thawed and tried again.
    """
    for _ in range(200):
        time.sleep(rng.uniform(0.0, 0.05))
        worker.freeze()
        time.sleep(0.02)  # a COMMIT already sent finishes meanwhile
        row = conn.execute("SELECT backend_xid::text::bigint FROM pg_stat_activity WHERE "
                           "application_name = 'irkit-worker' AND backend_xid IS NOT NULL"
                           ).fetchone()
        if row is not None:
            worker.kill()
            return int(row[0])
        worker.thaw()
    raise AssertionError("the worker never held a claimed batch")


def _fate(conn: psycopg.Connection[Any], xid: int) -> str:
    """'committed' or 'aborted' (waits while the server notices the dead client)."""
    deadline = time.monotonic() + 10
    while True:
        status = conn.execute("SELECT pg_xact_status(%s::text::xid8)", (xid,)).fetchone()[0]
        if status != "in progress" or time.monotonic() > deadline:
            return str(status)
        time.sleep(0.01)


class Producer(threading.Thread):
    """Inserts the requests in chunks (binary, JSON and malformed ones interleaved)."""

    def __init__(self, queue: Queue, x: np.ndarray, chunk: int = 500, pause_s: float = 0.05):
        super().__init__(name="producer")
        self.queue, self.x, self.chunk, self.pause_s = queue, x, chunk, pause_s
        self.good: dict[int, int] = {}  # request id -> row of x
        self.bad: dict[int, int] = {}  # request id -> MALFORMED kind
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.queue.connect() as conn:
                for start in range(0, len(self.x), self.chunk):
                    self._insert(conn, range(start, min(start + self.chunk, len(self.x))))
                    time.sleep(self.pause_s)
        except BaseException as exc:
            self.error = exc

    def _insert(self, conn: psycopg.Connection[Any], rows: range) -> None:
        bad = [i for i in rows if i % 50 == 49]
        binary = [i for i in rows if i % 50 != 49 and i % 3 != 0]
        json_rows = [i for i in rows if i % 50 != 49 and i % 3 == 0]
        with conn.transaction():
            for i, request_id in zip(binary, submit_binary(
                    conn, [{"x": self.x[i : i + 1]} for i in binary], self.queue.tables)):
                self.good[request_id] = i
            for i, request_id in zip(json_rows, submit_json(
                    conn, [{"x": self.x[i : i + 1]} for i in json_rows], self.queue.tables)):
                self.good[request_id] = i
            for i in bad:
                kind = (i // 50) % len(MALFORMED)
                self.bad[_insert_malformed(conn, self.queue, kind)] = kind


def test_sigkills_mid_stream_lose_and_duplicate_nothing(
    digits_dir: Path, digits_model: CompiledModel, queue: Queue, tmp_path: Path
) -> None:
    queue.init()
    x = np.random.default_rng(21).standard_normal((REQUESTS, 64)).astype(np.float32)
    producer = Producer(queue, x)
    rng = random.Random(5)
    done_at_kills: list[int] = []
    fates: list[str] = []  # of the transaction open when each kill was sent
    with queue.connect() as conn:
        for round_ in range(KILLS):
            worker = Worker(digits_dir, queue, tmp_path / f"worker{round_}.log")
            try:
                worker.wait_log(r"worker \S+ on \S+ started")
                if round_ == 0:
                    producer.start()
                start_done = queue.counts(conn)["done"]
                deadline = time.monotonic() + 60
                while queue.counts(conn)["done"] < start_done + 200:  # it is working ...
                    assert time.monotonic() < deadline, worker.log()[-3000:]
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.4))  # ... and dies at a random moment
                fates.append(_fate(conn, _kill_mid_batch(worker, conn, rng)))
            finally:
                worker.close()
            done_at_kills.append(queue.counts(conn)["done"])
        last = Worker(digits_dir, queue, tmp_path / "last.log")
        try:
            producer.join(120)
            assert producer.error is None, producer.error
            counts = queue.wait_settled(conn, REQUESTS, timeout=240)
            last.stop()
        finally:
            last.close()
        requests = {r[0]: r[1:] for r in conn.execute(sql.SQL(
            "SELECT id, status, attempts, error FROM {}").format(queue.tables.req))}
        results = conn.execute(sql.SQL(
            "SELECT request_id, tensors, outputs, outputs_json FROM {}").format(
            queue.tables.res)).fetchall()
    assert fates == ["aborted"] * KILLS  # each kill interrupted a claimed batch
    assert all(0 < a < b for a, b in itertools.pairwise(done_at_kills)), done_at_kills
    assert done_at_kills[-1] < REQUESTS - len(producer.bad), "the kills must land mid-stream"
    good, bad = producer.good, producer.bad
    assert len(good) + len(bad) == REQUESTS == len(requests)  # nothing lost
    assert counts == {"pending": 0, "retrying": 0, "done": len(good), "dead": len(bad)}
    # Exactly one result per good request, none for the malformed ones.
    result_ids = [row[0] for row in results]
    assert len(result_ids) == len(set(result_ids)) == len(good)
    assert set(result_ids) == set(good)
    # Each good request was committed once: a killed claim rolled back with its attempt.
    assert {requests[i][:2] for i in good} == {("done", 1)}
    for request_id, kind in bad.items():
        status, attempts, error = requests[request_id]
        assert (status, attempts) == ("dead", 1)
        assert MALFORMED[kind][2] in error, error
    expected = digits_model.run({"x": x})["logits"]
    got = np.stack([decode_outputs(*row[1:])["logits"][0] for row in results])
    want = expected[[good[row[0]] for row in results]]
    np.testing.assert_allclose(got, want, atol=ATOL)
    print(f"done at each kill: {done_at_kills}; claiming transactions: {fates}; "
          f"malformed: {len(bad)}")


def test_several_workers_share_one_queue_without_double_processing(
    digits_dir: Path, queue: Queue, tmp_path: Path
) -> None:
    total = 3000
    queue.init()
    x = np.random.default_rng(22).standard_normal((total, 64)).astype(np.float32)
    forked = Worker(digits_dir, queue, tmp_path / "forked.log", workers=2)  # one host ...
    other = Worker(digits_dir, queue, tmp_path / "other.log")  # ... and another
    try:
        forked.wait_log(r"worker \S+ on \S+ started", count=2)
        other.wait_log(r"worker \S+ on \S+ started")
        with queue.connect() as conn:
            ids: list[int] = []
            for start in range(0, total, 100):
                ids += submit_binary(conn, [{"x": x[i : i + 1]} for i in
                                            range(start, start + 100)], queue.tables)
                time.sleep(0.01)
            counts = queue.wait_settled(conn, total)
            forked.stop()
            other.stop()
            per_worker = dict(conn.execute(sql.SQL(
                "SELECT worker, count(*) FROM {} GROUP BY worker").format(queue.tables.res)))
            distinct = conn.execute(sql.SQL(
                "SELECT count(*), count(DISTINCT request_id) FROM {}").format(
                queue.tables.res)).fetchone()
            attempts = conn.execute(sql.SQL("SELECT DISTINCT attempts FROM {}").format(
                queue.tables.req)).fetchall()
            primary_key = conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = "
                "i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass "
                "AND i.indisprimary", (queue.tables.results,)).fetchall()
    finally:
        forked.close()
        other.close()
    assert primary_key == [("request_id",)]  # a second result would violate it
    assert counts == {"pending": 0, "retrying": 0, "done": total, "dead": 0}
    assert distinct == (total, total) and attempts == [(1,)]
    logged = {ident: ast.literal_eval(stats) for ident, stats in re.findall(
        r"worker (\S+) stopped: (\{.*\})", forked.log() + other.log())}
    assert len(logged) == 3 and set(logged) == set(per_worker)
    assert all(stats["results"] > 0 for stats in logged.values()), logged
    assert {ident: stats["results"] for ident, stats in logged.items()} == per_worker
    assert sum(stats["claimed"] for stats in logged.values()) == total  # no row claimed twice
    print(f"results per worker: {per_worker}")
