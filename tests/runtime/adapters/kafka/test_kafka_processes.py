"""The Kafka adapter as separate processes: a consumer group of two, and SIGKILL recovery."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer
from kafka_testing import SERVE_CHILD, Collector, Topics, produce

from irkit.runtime.adapters.kafka_codec import binary_request, json_request

pytestmark = pytest.mark.service


class Server:
    """``serve_child.py`` running in its own process group, its stderr kept in a file."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 60.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.findall(pattern, self.log())
            if len(found) >= count:
                return found
            assert self.process.poll() is None, f"server exited early:\n{self.log()[-3000:]}"
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not logged {count}x:\n{self.log()[-3000:]}")


@contextmanager
def server(model_dir: Path, topics: Topics, log_path: Path, processes: int = 1
           ) -> Iterator[Server]:
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(SERVE_CHILD), str(model_dir), "--brokers", topics.servers,
             "--input-topic", topics.input, "--output-topic", topics.output,
             "--group", topics.group, "--processes", str(processes)],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=SERVE_CHILD.parent,
        )
    handle = Server(process, log_path)
    try:
        yield handle
    finally:
        if process.poll() is None:  # a failed test: leave nothing behind
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _stop(handle: Server) -> None:
    """SIGTERM: the server finishes its batch, commits and exits 0."""
    handle.process.send_signal(signal.SIGTERM)
    assert handle.process.wait(60) == 0, handle.log()[-3000:]
    assert "serve returned" in handle.log()


def test_two_processes_share_the_partitions(
    mlp_dir: Path, make_topics: Callable[..., Topics],
    collector_for: Callable[[Topics], Collector], tmp_path: Path,
) -> None:
    topics = make_topics(partitions=4)
    x = np.random.default_rng(11).standard_normal((400, 64)).astype(np.float32)
    with server(mlp_dir, topics, tmp_path / "serve.log", processes=2) as handle:
        # Both consumers must hold partitions before the load arrives.
        handle.wait_log(r"assigned partitions \[\d", count=2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assigned = _latest_assignments(handle.log())
            if len(assigned) == 2 and all(assigned.values()):
                break
            time.sleep(0.2)
        assert len(assigned) == 2
        first, second = assigned.values()
        assert first and second and not set(first) & set(second)
        assert sorted(first + second) == [0, 1, 2, 3]
        messages = [(f"p{i}".encode(), *binary_request({"x": x[i : i + 1]}))
                    for i in range(400)]
        produce(topics.servers, topics.input, messages)
        collector = collector_for(topics)
        collector.wait_for({f"p{i}" for i in range(400)})
        _stop(handle)
    counts = {int(pid): ast.literal_eval(stats) for pid, stats in
              re.findall(r"consumer \(pid (\d+)\) of \S+ stopped: (\{.*\})", handle.log())}
    assert len(counts) == 2, handle.log()[-3000:]
    assert all(stats["results"] > 0 for stats in counts.values()), counts
    assert sum(stats["results"] for stats in counts.values()) >= 400


def _latest_assignments(log: str) -> dict[int, list[int]]:
    """pid -> the partitions it was last assigned (empty after a revoke)."""
    current: dict[int, list[int]] = {}
    for pid, what, parts in re.findall(
        r"consumer \(pid (\d+)\) (assigned|revoked) partitions \[([\d, ]*)\]", log
    ):
        current[int(pid)] = [int(p) for p in parts.split(",") if p.strip()] \
            if what == "assigned" else []
    return current


def test_sigkill_mid_stream_loses_nothing(
    mlp_dir: Path, make_topics: Callable[..., Topics],
    collector_for: Callable[[Topics], Collector], tmp_path: Path,
) -> None:
    topics = make_topics(partitions=2)
    total = 3000
    x = np.random.default_rng(12).standard_normal((total, 64)).astype(np.float32)
    bad = {f"k{i}" for i in range(0, total, 37)}  # malformed: must reach the dead letters

    def send() -> None:  # a steady stream, still going when the server is killed
        producer = Producer({"bootstrap.servers": topics.servers, "linger.ms": 5})
        for i in range(total):
            key = f"k{i}"
            if key in bad:
                producer.produce(topics.input, b'{"inputs": oops', key.encode())
            elif i % 2:
                producer.produce(topics.input, json_request({"x": x[i : i + 1]}), key.encode())
            else:
                value, headers = binary_request({"x": x[i : i + 1]})
                producer.produce(topics.input, value, key.encode(), headers=headers)
            if i % 100 == 99:
                producer.flush()
                time.sleep(0.1)
        assert producer.flush(30) == 0

    collector = collector_for(topics)
    sender = threading.Thread(target=send)
    with server(mlp_dir, topics, tmp_path / "first.log") as first:
        first.wait_log(r"assigned partitions \[\d")
        sender.start()
        deadline = time.monotonic() + 60
        while len(collector.keys()) < 300 and time.monotonic() < deadline:
            collector.poll(0.2)
        os.killpg(first.process.pid, signal.SIGKILL)
        assert first.process.wait(10) == -signal.SIGKILL
    answered_before_kill = len(collector.keys())
    assert 300 <= answered_before_kill < total, "the kill must land mid-stream"

    with server(mlp_dir, topics, tmp_path / "second.log") as second:
        sender.join(120)
        collector.wait_for({f"k{i}" for i in range(total)}, timeout=120)
        _stop(second)
    ids = {f"k{i}" for i in range(total)}
    outputs, dead = collector.keys(topics.output), collector.keys(topics.dlq)
    assert outputs | dead == ids  # nothing lost ...
    assert dead == bad and outputs == ids - bad  # ... and each where it belongs
    # Duplicates are allowed (at least once): only what the killed process produced but had
    # not committed yet is read again, at most the batches awaiting acknowledgement
    # (max_inflight = 4) plus the one being produced, of max_batch = 16 (serve_child's).
    duplicates = len(collector.records) - total
    print(f"answered before the kill: {answered_before_kill}, duplicates per kill: "
          f"{duplicates} ({duplicates / total:.1%} of {total})")
    assert 0 <= duplicates <= (4 + 1) * 16


def test_a_consumer_process_killed_mid_stream_is_restarted_and_loses_nothing(
    mlp_dir: Path, make_topics: Callable[..., Topics],
    collector_for: Callable[[Topics], Collector], tmp_path: Path,
) -> None:
    topics = make_topics(partitions=4)
    total = 2000
    x = np.random.default_rng(13).standard_normal((total, 64)).astype(np.float32)
    ids = {f"r{i}" for i in range(total)}

    def send() -> None:
        producer = Producer({"bootstrap.servers": topics.servers, "linger.ms": 5})
        for i in range(total):
            value, headers = binary_request({"x": x[i : i + 1]})
            producer.produce(topics.input, value, f"r{i}".encode(), headers=headers)
            if i % 100 == 99:
                producer.flush()
                time.sleep(0.15)
        assert producer.flush(30) == 0

    collector = collector_for(topics)
    sender = threading.Thread(target=send)
    with server(mlp_dir, topics, tmp_path / "serve.log", processes=2) as handle:
        started = handle.wait_log(r"consumer \(pid (\d+)\) of \S+ in group", count=2)
        handle.wait_log(r"assigned partitions \[\d", count=2)
        victim = int(started[0])
        assert victim != handle.process.pid  # a forked consumer, not the supervisor
        sender.start()
        deadline = time.monotonic() + 60
        while len(collector.keys()) < 200 and time.monotonic() < deadline:
            collector.poll(0.2)
        os.kill(victim, signal.SIGKILL)
        answered_before_kill = len(collector.keys())
        handle.wait_log(r"exited with status -9; restarting")
        restarted = handle.wait_log(r"consumer \(pid (\d+)\) of \S+ in group", count=3)
        assert len(set(restarted)) == 3 and victim not in map(int, restarted[2:])
        sender.join(120)
        collector.wait_for(ids, timeout=120)
        _stop(handle)
    assert 200 <= answered_before_kill < total, "the kill must land mid-stream"
    assert collector.keys(topics.output) == ids and not collector.keys(topics.dlq)
