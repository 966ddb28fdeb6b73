"""The postgres adapter in a thread against a real PostgreSQL: results, dead letters,
retries, wakeups, batching and metrics."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

import numpy as np
import psycopg
import pytest
from pg_testing import Queue, serving
from psycopg import sql

from irkit.runtime import CompiledModel
from irkit.runtime.adapters.kafka_codec import json_tensors
from irkit.runtime.adapters.postgres import PostgresAdapter, PostgresError
from irkit.runtime.adapters.postgres_schema import (
    decode_outputs,
    fetch_result,
    submit_binary,
    submit_json,
)

pytestmark = pytest.mark.service

ATOL = 1e-5  # one ORT model; batched vs single-row calls may differ in the last bits


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 64)).astype(np.float32)


def _requests(conn: psycopg.Connection[Any], queue: Queue, where: str = "true"
              ) -> dict[int, tuple[str, int, str | None]]:
    rows = conn.execute(sql.SQL("SELECT id, status, attempts, error FROM {} WHERE " + where)
                        .format(queue.tables.req)).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_binary_and_json_requests_get_the_models_outputs(
    digits_model: CompiledModel, queue: Queue
) -> None:
    x = _rows(105, 1)
    with serving(digits_model, queue, max_batch=32, version="7") as adapter, \
            queue.connect() as conn:
        binary = submit_binary(conn, [{"x": x[i : i + 1]} for i in range(60)], queue.tables)
        json_ids = submit_json(conn, [{"x": x[i : i + 1]} for i in range(60, 100)],
                               queue.tables)
        several = submit_binary(conn, [{"x": x[100:105]}], queue.tables)  # 5 rows at once
        body = json.dumps({"inputs": json_tensors({"x": x[:1]})})
        by_sql = [
            conn.execute("SELECT irkit_submit(%s::jsonb, %s)",
                         (body, queue.tables.requests)).fetchone()[0],
            conn.execute("SELECT irkit_submit('x:FP32:1,64', %s::bytea, %s)",
                         (x[1].tobytes(), queue.tables.requests)).fetchone()[0],
        ]
        counts = queue.wait_settled(conn, 103)
        expected = digits_model.run({"x": x})["logits"]
        for i, request_id in enumerate(binary + json_ids):
            got = fetch_result(conn, request_id, queue.tables)
            assert got is not None and got["logits"].shape == (1, 10)
            np.testing.assert_allclose(got["logits"][0], expected[i], atol=ATOL)
        got = fetch_result(conn, several[0], queue.tables)
        np.testing.assert_allclose(got["logits"], expected[100:105], atol=ATOL)
        for i, request_id in enumerate(by_sql):
            np.testing.assert_allclose(fetch_result(conn, request_id, queue.tables)["logits"][0],
                                       expected[i], atol=ATOL)
        rows = conn.execute(sql.SQL(
            "SELECT request_id, model_name, model_version, latency_ms, worker, outputs_json "
            "FROM {} ORDER BY request_id").format(queue.tables.res)).fetchall()
        assert adapter.metrics.model == "digits"
    assert counts == {"pending": 0, "retrying": 0, "done": 103, "dead": 0}
    assert len(rows) == 103 and {r[1:3] for r in rows} == {("digits", "7")}
    assert all(0 < r[3] < 60_000 for r in rows)  # insert -> result written, in ms
    responses = {r[0]: r[5] for r in rows if r[5] is not None}
    assert set(responses) == set(json_ids) | {by_sql[0]}
    first = responses[json_ids[0]]
    assert first["id"] == str(json_ids[0]) and first["model_name"] == "digits"


MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("not a tensor list", {"inputs_json": '{"inputs": 5}'}, "non-empty list of tensors"),
    ("unknown datatype", {"inputs_json": json.dumps({"inputs": [
        {"name": "x", "datatype": "FP99", "shape": [1, 64], "data": [0] * 64}]})},
     "unsupported datatype"),
    ("data too short", {"inputs_json": json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 10}]})},
     "needs 64 elements"),
    ("bytes too short", {"tensors": "x:FP32:1,64", "inputs": b"\0" * 10}, "needs bytes 0..256"),
    ("garbage description", {"tensors": "hello", "inputs": b"\0" * 256},
     "is not name:DATATYPE"),
    ("both forms", {"tensors": "x:FP32:1,64", "inputs": b"\0" * 256,
                    "inputs_json": '{"inputs": []}'}, "both inputs_json and tensors"),
    ("neither form", {}, "has no inputs"),
    ("wrong width", {"tensors": "x:FP32:1,32", "inputs": b"\0" * 128}, "'x'"),
    ("wrong name", {"tensors": "y:FP32:1,64", "inputs": b"\0" * 256}, "'x'"),
    ("NaN value", {"tensors": "x:FP32:1,64", "inputs": np.where(
        np.arange(64) == 5, np.nan, 0.5).astype("<f4").tobytes()},
     "input 'x': NaN at index [0, 5]; "),
    ("unknown output", {"inputs_json": json.dumps({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}],
        "outputs": [{"name": "probabilities"}]})}, "unknown output(s) 'probabilities'"),
]


def test_malformed_rows_are_dead_lettered_at_once_with_their_reason(
    digits_model: CompiledModel, queue: Queue
) -> None:
    x = _rows(20, 2)
    queue.init()
    with queue.connect() as conn:
        ids: dict[int, tuple[str, str]] = {}
        good = submit_binary(conn, [{"x": x[i : i + 1]} for i in range(10)], queue.tables)
        for name, columns, reason in MALFORMED:
            query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
                queue.tables.req,
                sql.SQL(", ").join(map(sql.Identifier, columns)) if columns else
                sql.SQL("status"),
                sql.SQL(", ").join(sql.Placeholder() * len(columns)) if columns else
                sql.Literal("pending"))
            ids[conn.execute(query, list(columns.values())).fetchone()[0]] = (name, reason)
        good += submit_json(conn, [{"x": x[i : i + 1]} for i in range(10, 20)], queue.tables)
        with serving(digits_model, queue, max_batch=64):  # all in one claimed batch
            counts = queue.wait_settled(conn, len(good) + len(ids))
        requests = _requests(conn, queue)
    assert counts["done"] == 20 and counts["dead"] == len(MALFORMED)
    for request_id, (name, reason) in ids.items():
        status, attempts, error = requests[request_id]
        assert status == "dead" and attempts == 1, name
        assert error is not None and reason in error, (name, error)
    assert all(requests[i][:2] == ("done", 1) for i in good)


class FlakyModel:
    """The digits model, failing for marked rows: x[0, 0] == 999 always, == 555 once."""

    def __init__(self, inner: CompiledModel) -> None:
        self.inner, self.name = inner, inner.name
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.flaked: set[float] = set()

    def validate(self, inputs: Mapping[str, Any]) -> Any:
        return self.inner.validate(inputs)

    def warmup(self) -> Any:
        return self.inner.warmup()

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        marks = set(np.asarray(inputs["x"])[:, 0].tolist())
        if 999.0 in marks:
            raise RuntimeError("the accelerator fell over")
        if 555.0 in marks and 555.0 not in self.flaked:
            self.flaked.add(555.0)
            raise RuntimeError("transient failure")
        return self.inner.run(inputs)


def test_model_errors_are_retried_with_backoff_then_dead_lettered(
    digits_model: CompiledModel, queue: Queue
) -> None:
    x = _rows(12, 3)
    x[4, 0], x[8, 0] = 999.0, 555.0
    model = FlakyModel(digits_model)
    with serving(model, queue, max_batch=16, max_attempts=3, retry_backoff_ms=150,
                 poll_interval_ms=50) as adapter, queue.connect() as conn:
        ids = submit_binary(conn, [{"x": x[i : i + 1]} for i in range(12)], queue.tables)
        queue.wait_settled(conn, 12, timeout=30)
        rows = conn.execute(sql.SQL(
            "SELECT id, status, attempts, error, extract(epoch FROM finished - created) "
            "FROM {}").format(queue.tables.req)).fetchall()
        retries = adapter.metrics.render()[0].decode()
    by_id = {r[0]: r[1:] for r in rows}
    status, attempts, error, seconds = by_id[ids[4]]
    assert (status, attempts) == ("dead", 3)
    assert "the accelerator fell over" in error and "after 3 attempts" in error
    assert seconds >= 0.15 + 0.30  # backoffs of 150 ms and 300 ms before attempts 2 and 3
    assert by_id[ids[8]][:3] == ("done", 2, None)  # failed once, then succeeded
    others = [by_id[i] for n, i in enumerate(ids) if n not in (4, 8)]
    assert all(o[:2] == ("done", 1) for o in others)  # the batch's other rows were not held
    expected = digits_model.run({"x": x})["logits"]
    with queue.connect() as conn:
        np.testing.assert_allclose(fetch_result(conn, ids[8], queue.tables)["logits"][0],
                                   expected[8], atol=ATOL)
    assert 'irkit_retries_total{adapter="postgres",model="digits"} 3.0' in retries


def _disable_notify(conn: psycopg.Connection[Any], queue: Queue, disable: bool) -> None:
    trigger = sql.Identifier(queue.tables.requests + "_notify")
    conn.execute(sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(
        queue.tables.req, sql.SQL("DISABLE" if disable else "ENABLE"), trigger))


def test_notify_wakes_an_idle_worker_and_polling_is_the_fallback(
    digits_model: CompiledModel, queue: Queue
) -> None:
    x = _rows(3, 4)
    with serving(digits_model, queue, poll_interval_ms=60_000) as _adapter, \
            queue.connect() as conn:
        time.sleep(0.3)  # the worker found the queue empty and waits
        _disable_notify(conn, queue, True)
        silent = submit_binary(conn, [{"x": x[:1]}], queue.tables)[0]
        time.sleep(1.0)
        assert fetch_result(conn, silent, queue.tables) is None  # no NOTIFY, no poll yet
        _disable_notify(conn, queue, False)
        started = time.monotonic()
        woken = submit_binary(conn, [{"x": x[1:2]}], queue.tables)[0]
        while fetch_result(conn, woken, queue.tables) is None:
            assert time.monotonic() - started < 5, "NOTIFY did not wake the worker"
            time.sleep(0.005)
        woken_after = time.monotonic() - started
        assert fetch_result(conn, silent, queue.tables) is not None  # claimed in passing
    assert woken_after < 1.0
    with serving(digits_model, queue, poll_interval_ms=200), queue.connect() as conn:
        time.sleep(0.3)
        _disable_notify(conn, queue, True)
        polled = submit_binary(conn, [{"x": x[2:3]}], queue.tables)[0]
        started = time.monotonic()
        while fetch_result(conn, polled, queue.tables) is None:
            assert time.monotonic() - started < 5, "polling did not find the row"
            time.sleep(0.01)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_backlog_is_served_in_full_batches_and_metrics_are_exported(
    digits_model: CompiledModel, queue: Queue
) -> None:
    x = _rows(640, 5)
    queue.init()
    port = _free_port()
    with queue.connect() as conn:
        ids = submit_binary(conn, [{"x": x[i : i + 1]} for i in range(640)], queue.tables)
        conn.execute(sql.SQL("INSERT INTO {} (inputs_json) VALUES ('{{}}')").format(
            queue.tables.req))
        with serving(digits_model, queue, max_batch=64, metrics_port=port):
            queue.wait_settled(conn, 641)
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10
                                          ).read().decode()
            _disable_notify(conn, queue, True)  # a row nobody is woken for: depth 1
            submit_binary(conn, [{"x": x[:1]}], queue.tables)
            pending = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10
                                             ).read().decode()
        rows = conn.execute(sql.SQL("SELECT tensors, outputs, outputs_json FROM {} "
                                    "ORDER BY request_id").format(queue.tables.res)).fetchall()
    got = np.concatenate([decode_outputs(*row)["logits"] for row in rows[: len(ids)]])
    np.testing.assert_allclose(got, digits_model.run({"x": x})["logits"], atol=ATOL)
    metrics = _samples(text)
    assert metrics['irkit_requests_total{adapter="postgres",model="digits",outcome="ok"}'] == 640
    assert metrics['irkit_requests_total{adapter="postgres",model="digits",'
                   'outcome="bad_input"}'] == 1
    calls = metrics['irkit_batch_size_count{adapter="postgres",model="digits"}']
    rows_run = metrics['irkit_batch_size_sum{adapter="postgres",model="digits"}']
    assert rows_run == 640 and calls <= 12  # 10 full batches of 64 (+ slack for timing)
    assert metrics['irkit_request_latency_seconds_count{adapter="postgres",model="digits"}'] \
        == 640
    assert metrics["irkit_queue_depth"] == 0
    assert _samples(pending)["irkit_queue_depth"] == 1


def _samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_a_missing_schema_or_database_is_a_clear_error(
    digits_model: CompiledModel, queue: Queue
) -> None:
    adapter = PostgresAdapter(digits_model, **queue.options(), init_db=False)
    with pytest.raises(PostgresError, match=r"do not exist .* --init-db"):
        adapter.serve()
    secret = "hunter2-secret"
    unreachable = f"postgresql://irkit:{secret}@127.0.0.1:{_free_port()}/irkit?connect_timeout=2"
    with pytest.raises(PostgresError, match="cannot connect to") as caught:
        PostgresAdapter(digits_model, dsn=unreachable).serve()
    assert secret not in str(caught.value)
    for bad, message in [({"table": "drop table x;"}, "must be a table name"),
                         ({"table": "a", "result_table": "a"}, "different tables"),
                         ({"max_batch": 0}, "'max_batch' must be >= 1"),
                         ({"workers": "two"}, "'workers' must be int")]:
        with pytest.raises((ValueError, TypeError), match=message):
            PostgresAdapter(digits_model, **bad)


def test_init_schema_is_idempotent_and_safe_to_run_concurrently(queue: Queue) -> None:
    import threading

    errors: list[BaseException] = []

    def init() -> None:
        try:
            queue.init()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=init) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    queue.init()
    with queue.connect() as conn:
        assert queue.counts(conn) == {"pending": 0, "retrying": 0, "done": 0, "dead": 0}
        conn.execute(sql.SQL("INSERT INTO {} (inputs_json) VALUES ('{{}}')").format(
            queue.tables.req))
        assert queue.counts(conn)["pending"] == 1
