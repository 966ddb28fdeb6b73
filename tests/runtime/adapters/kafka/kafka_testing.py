"""Helpers of the Kafka adapter tests: a test model, topics, a serving thread, readers."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, Producer

from irkit.runtime.adapters.kafka import KafkaAdapter

SESSION_TIMEOUT_MS = 6000
HERE = Path(__file__).resolve().parent
SERVE_CHILD = HERE / "serve_child.py"


def mlp_onnx_bytes() -> bytes:
    """x: f32[N,64] -> logits: f32[N,10], Gemm-Relu-Gemm with seeded random weights."""
    from onnx import TensorProto, checker, helper, numpy_helper

    rng = np.random.default_rng(7)
    weights = {
        "w0": rng.standard_normal((64, 32)).astype(np.float32) * 0.2,
        "b0": rng.standard_normal(32).astype(np.float32),
        "w1": rng.standard_normal((32, 10)).astype(np.float32) * 0.2,
        "b1": rng.standard_normal(10).astype(np.float32),
    }
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w0", "b0"], ["h"]),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w1", "b1"], ["logits"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    return model.SerializeToString()


@dataclass(frozen=True)
class Topics:
    servers: str
    input: str
    output: str
    dlq: str
    group: str


@contextlib.contextmanager
def serving(model: Any, topics: Topics, **options: Any) -> Iterator[KafkaAdapter]:
    """Run ``KafkaAdapter.serve`` in a thread for the block; stop and join it after."""
    adapter = KafkaAdapter(model, brokers=topics.servers, input_topic=topics.input,
                           output_topic=topics.output, group=topics.group,
                           create_topics=False, **options)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            adapter.serve()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, name="kafka-adapter", daemon=True)
    thread.start()
    assert adapter.ready.wait(30), "the adapter did not start"
    try:
        yield adapter
    finally:
        adapter.stop()
        thread.join(60)
        assert not thread.is_alive(), "serve() did not return after stop()"
        if errors:
            raise errors[0]


Header = tuple[str, bytes | None]


def produce(servers: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None,
                                                               Sequence[Header]]]
            ) -> list[tuple[int, int]]:
    """Produce (key, value, headers) messages; returns their (partition, offset)."""
    producer = Producer({"bootstrap.servers": servers, "linger.ms": 2})
    placed: dict[int, tuple[int, int]] = {}
    for index, (key, value, headers) in enumerate(messages):
        def delivered(err: Any, msg: Any, index: int = index) -> None:
            assert err is None, err
            placed[index] = (msg.partition(), msg.offset())

        producer.produce(topic, value, key, headers=list(headers), on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0
    return [placed[i] for i in range(len(placed))]


@dataclass(frozen=True)
class Record:
    topic: str
    key: str | None
    value: bytes | None
    headers: dict[str, bytes | None]
    header_list: list[Header]


class Collector:
    """Reads the output and dead-letter topics from the beginning, in a group of its own."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.records: list[Record] = []
        self._consumer = Consumer({
            "bootstrap.servers": topics.servers, "group.id": f"check-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
        })
        self._consumer.subscribe([topics.output, topics.dlq])

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self._consumer.consume(1000, 0.2):
                assert message.error() is None, message.error()
                key = message.key()
                headers = list(message.headers() or [])
                self.records.append(Record(message.topic(), key.decode() if key else None,
                                           message.value(), dict(headers), headers))

    def keys(self, topic: str | None = None) -> set[str | None]:
        return {r.key for r in self.records if topic is None or r.topic == topic}

    def wait_for(self, keys: set[str], timeout: float = 60.0) -> None:
        """Poll until every key is in the output or dead-letter topic (or fail)."""
        deadline = time.monotonic() + timeout
        while not keys <= self.keys() and time.monotonic() < deadline:
            self.poll(0.5)
        missing = keys - self.keys()
        assert not missing, f"{len(missing)} request ids never answered, e.g. {sorted(missing)[:5]}"

    def by_key(self, topic: str) -> dict[str | None, Record]:
        return {r.key: r for r in self.records if r.topic == topic}

    def close(self) -> None:
        self._consumer.close()


