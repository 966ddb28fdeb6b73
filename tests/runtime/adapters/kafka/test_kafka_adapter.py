"""The Kafka adapter against a real (embedded Tansu) broker: round trips and dead letters."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from kafka_testing import Collector, Topics, mlp_onnx_bytes, produce, serving

from irkit.runtime import CompiledModel, TensorSpec
from irkit.runtime.adapters import kafka_worker
from irkit.runtime.adapters.kafka import DeliveryError
from irkit.runtime.adapters.kafka_broker import free_port
from irkit.runtime.adapters.kafka_codec import (
    TENSORS_HEADER,
    binary_request,
    decode_result,
    json_request,
)
from irkit.runtime.signature import validate_inputs

pytestmark = pytest.mark.service

RTOL = 1e-6


def _rows(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 64)).astype(np.float32)


def test_json_round_trip_matches_the_model(
    mlp: CompiledModel, make_topics: Callable[..., Topics],
    collector_for: Callable[[Topics], Collector],
) -> None:
    topics = make_topics(partitions=2)
    x = _rows(1, 60)
    sizes = [1, 2, 3] * 10  # multi-row requests are batched together and split back
    bounds = np.cumsum([0, *sizes])
    messages = []
    for i in range(len(sizes)):
        rows = x[bounds[i] : bounds[i + 1]]
        if i % 2:  # the request id is the key ...
            messages.append((f"key-{i}".encode(), json_request({"x": rows}),
                             [("trace", f"t{i}".encode()), ("tenant", b"acme")]))
        else:  # ... or the JSON body's id
            messages.append((None, json_request({"x": rows}, request_id=f"body-{i}"),
                             [("trace", f"t{i}".encode())]))
    produce(topics.servers, topics.input, messages)
    ids = {f"key-{i}" if i % 2 else f"body-{i}" for i in range(len(sizes))}
    with serving(mlp, topics, max_batch=8, max_delay_ms=20):
        collector = collector_for(topics)
        collector.wait_for(ids)
    results = collector.by_key(topics.output)
    assert set(results) == ids and not collector.keys(topics.dlq)
    checked = 0
    for i, n in enumerate(sizes):
        rid = f"key-{i}" if i % 2 else f"body-{i}"
        record = results[rid]
        body = json.loads(record.value)
        assert body["id"] == rid and body["model_name"] == "kafka_mlp"
        assert body["outputs"][0]["datatype"] == "FP32"
        assert body["outputs"][0]["shape"] == [n, 10]
        expected = mlp(x=x[bounds[i] : bounds[i + 1]])["logits"]
        got = decode_result(record.value, record.header_list)["logits"]
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-6)
        assert record.headers["trace"] == f"t{i}".encode()
        assert record.headers["content-type"] == b"application/json"
        if i % 2:
            assert record.headers["tenant"] == b"acme"
        checked += 1
    assert checked == 30


def test_binary_round_trip_matches_the_model(
    mlp: CompiledModel, make_topics: Callable[..., Topics],
    collector_for: Callable[[Topics], Collector],
) -> None:
    topics = make_topics(partitions=3)
    x = _rows(2, 200)
    messages = []
    for i in range(100):
        value, headers = binary_request({"x": x[2 * i : 2 * i + 2]})
        messages.append((f"req-{i}".encode(), value, [*headers, ("trace", str(i).encode())]))
    produce(topics.servers, topics.input, messages)
    ids = {f"req-{i}" for i in range(100)}
    port = free_port()
    with serving(mlp, topics, max_batch=32, metrics_port=port):
        collector = collector_for(topics)
        collector.wait_for(ids)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            metrics = page.read().decode()
    assert 'irkit_requests_total{adapter="kafka",model="kafka_mlp",outcome="ok"} 100.0' \
        in metrics
    assert 'irkit_rows_total{adapter="kafka",model="kafka_mlp"} 200.0' in metrics
    results = collector.by_key(topics.output)
    assert set(results) == ids
    expected = mlp(x=x)["logits"]
    for i in range(100):
        record = results[f"req-{i}"]
        assert record.headers[TENSORS_HEADER] == b"logits:FP32:2,10"
        assert record.headers["trace"] == str(i).encode()
        assert len(record.value) == 2 * 10 * 4
        got = decode_result(record.value, record.header_list)["logits"]
        np.testing.assert_allclose(got, expected[2 * i : 2 * i + 2], rtol=RTOL, atol=1e-6)


def _bad_messages() -> dict[str, tuple[bytes, list[tuple[str, bytes]], str]]:
    """id -> (value, headers, a fragment the error header must contain)."""
    good = _rows(3, 1)
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 64], "data": good.ravel().tolist()}
    wrong_shape_value, wrong_shape_headers = binary_request({"x": _rows(4, 1)[:, :32]})
    wrong_dtype_value, wrong_dtype_headers = binary_request({"x": good.astype(np.float64)})
    inf_value, inf_headers = binary_request({"x": np.where(np.arange(64) == 5, np.inf, good)
                                             .astype(np.float32)})
    nan_data = [float("nan") if i == 5 else v for i, v in enumerate(tensor["data"])]
    return {
        "malformed-json": (b'{"inputs": [', [], "malformed JSON"),
        "not-an-object": (b"[1, 2]", [], "JSON object"),
        "no-inputs": (b'{"id": "x"}', [], '"inputs"'),
        "unknown-input": (json.dumps({"inputs": [{**tensor, "name": "image"}]}).encode(), [],
                          "'image'"),
        "json-wrong-shape": (json.dumps({"inputs": [{**tensor, "shape": [2, 64]}]}).encode(),
                             [], "needs 128"),
        "json-wrong-dtype": (json.dumps({"inputs": [{**tensor, "datatype": "FP64"}]}).encode(),
                             [], "float32"),
        "binary-wrong-shape": (wrong_shape_value, wrong_shape_headers, "axis 1 must be 64"),
        "binary-wrong-dtype": (wrong_dtype_value, wrong_dtype_headers, "float32"),
        "binary-short": (good.tobytes()[:-4], [(TENSORS_HEADER, b"x:FP32:1,64")], "bytes"),
        "binary-bad-header": (good.tobytes(), [(TENSORS_HEADER, b"x-FP32-1x64")],
                              "name:DATATYPE"),
        "unknown-output": (json_request({"x": good}, outputs=["probabilities"]), [],
                           "'probabilities'"),
        "json-nan": (json.dumps({"inputs": [{**tensor, "data": nan_data}]}).encode(), [],
                     "input 'x': NaN at index [0, 5]; "),
        "binary-inf": (inf_value, inf_headers, "input 'x': +inf at index [0, 5]; "),
    }


def test_a_wasm_artifact_serves_from_kafka(
    mlp: CompiledModel, make_topics: Callable[..., Topics],
    collector_for: Callable[[Topics], Collector], tmp_path: Path,
) -> None:
    """The same MLP compiled to WebAssembly (run by wasmtime) answers over Kafka what the
    ONNX Runtime artifact answers."""
    pytest.importorskip("wasmtime")
    pytest.importorskip("ziglang")
    import onnx

    import irkit
    from irkit.runtime import load

    graph = irkit.load_model(onnx.load_from_string(mlp_onnx_bytes()))
    model = load(irkit.compile(graph, target="wasm").save(tmp_path / "mlp-wasm"))
    topics = make_topics()
    x = _rows(3, 40)
    produce(topics.servers, topics.input,
            [(f"w-{i}".encode(), *binary_request({"x": x[2 * i : 2 * i + 2]})) for i in range(20)])
    ids = {f"w-{i}" for i in range(20)}
    with serving(model, topics, max_batch=16):
        collector = collector_for(topics)
        collector.wait_for(ids)
    results = collector.by_key(topics.output)
    assert set(results) == ids
    expected = mlp(x=x)["logits"]
    for i in range(20):
        record = results[f"w-{i}"]
        got = decode_result(record.value, record.header_list)["logits"]
        np.testing.assert_allclose(got, expected[2 * i : 2 * i + 2], rtol=1e-4, atol=1e-5)


def test_bad_messages_go_to_the_dead_letter_topic_and_consumption_goes_on(
    mlp: CompiledModel, make_topics: Callable[..., Topics],
    collector_for: Callable[[Topics], Collector],
) -> None:
    topics = make_topics(partitions=1)
    bad = _bad_messages()
    x = _rows(5, 20)
    messages = []
    for i, (rid, (value, headers, _)) in enumerate(bad.items()):
        # good requests before and after every bad one
        messages.append((f"good-{i}".encode(), *binary_request({"x": x[i : i + 1]})))
        messages.append((rid.encode(), value, [*headers, ("trace", rid.encode())]))
    messages.append((b"good-last", json_request({"x": x[19:20]}), []))
    placed = produce(topics.servers, topics.input, messages)
    with serving(mlp, topics, max_batch=64):
        collector = collector_for(topics)
        collector.wait_for({m[0].decode() for m in messages})
    dead = collector.by_key(topics.dlq)
    results = collector.by_key(topics.output)
    assert set(dead) == set(bad)
    assert set(results) == {f"good-{i}" for i in range(len(bad))} | {"good-last"}
    for index, (key, value, _headers) in enumerate(messages):
        rid = key.decode()
        if rid not in bad:
            continue
        record = dead[rid]
        assert record.value == value  # the original payload, untouched
        error = record.headers["error"].decode()
        assert bad[rid][2] in error, (rid, error)
        assert record.headers["error-outcome"] == b"bad_input"
        assert record.headers["trace"] == rid.encode()
        partition, offset = placed[index]
        assert record.headers["original-topic"] == topics.input.encode()
        assert record.headers["original-partition"] == str(partition).encode()
        assert record.headers["original-offset"] == str(offset).encode()
    np.testing.assert_allclose(
        decode_result(results["good-last"].value, results["good-last"].header_list)["logits"],
        mlp(x=x[19:20])["logits"], rtol=RTOL, atol=1e-6,
    )


class FlakyMatmul:
    """A duck-typed model (numpy matmul) that raises when a row starts with 666."""

    name = "flaky"
    inputs = [TensorSpec("x", np.dtype("float32"), ("N", 4))]
    outputs = [TensorSpec("y", np.dtype("float32"), ("N", 2))]
    weight = np.arange(8, dtype=np.float32).reshape(4, 2)

    def __init__(self) -> None:
        self.calls: list[int] = []

    def validate(self, inputs: Any) -> dict[str, np.ndarray]:
        return validate_inputs(inputs, self.inputs)[0]

    def run(self, inputs: Any) -> dict[str, np.ndarray]:
        x = self.validate(inputs)["x"]
        self.calls.append(len(x))
        if (x[:, 0] == 666).any():
            raise RuntimeError("the kernel failed on a poisoned row")
        return {"y": x @ self.weight}

    def warmup(self) -> None:
        pass


def test_a_failing_request_is_dead_lettered_alone(
    make_topics: Callable[..., Topics], collector_for: Callable[[Topics], Collector],
) -> None:
    topics = make_topics(partitions=1)
    model = FlakyMatmul()
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    rows[6, 0] = 666
    messages = [(f"r{i}".encode(), *binary_request({"x": rows[i : i + 1]})) for i in range(10)]
    produce(topics.servers, topics.input, messages)
    with serving(model, topics, max_batch=64, max_delay_ms=200):
        collector = collector_for(topics)
        collector.wait_for({f"r{i}" for i in range(10)})
    assert collector.keys(topics.dlq) == {"r6"}
    dead = collector.by_key(topics.dlq)["r6"]
    assert b"poisoned row" in dead.headers["error"]
    assert dead.headers["error-outcome"] == b"error"
    results = collector.by_key(topics.output)
    assert len(results) == 9
    for i in set(range(10)) - {6}:
        got = decode_result(results[f"r{i}"].value, results[f"r{i}"].header_list)["y"]
        np.testing.assert_allclose(got, rows[i : i + 1] @ model.weight, rtol=RTOL)
    assert max(model.calls) > 1  # the good requests really were batched


def test_offsets_are_committed_after_delivery(
    mlp: CompiledModel, make_topics: Callable[..., Topics],
    collector_for: Callable[[Topics], Collector],
) -> None:
    topics = make_topics(partitions=2)
    x = _rows(6, 50)
    messages = [(f"c{i}".encode(), *binary_request({"x": x[i : i + 1]})) for i in range(50)]
    placed = produce(topics.servers, topics.input, messages)
    with serving(mlp, topics, max_batch=8):
        collector = collector_for(topics)
        collector.wait_for({f"c{i}" for i in range(50)})
    # serve() returned: every result is delivered and every offset committed.
    expected = {p: max(o for q, o in placed if q == p) + 1 for p, _ in placed}
    consumer = Consumer({"bootstrap.servers": topics.servers, "group.id": topics.group})
    committed = consumer.committed([TopicPartition(topics.input, p) for p in expected],
                                   timeout=10)
    consumer.close()
    assert {tp.partition: tp.offset for tp in committed} == expected
    # A second run of the same group finds nothing left to do.
    more = [(b"late", *binary_request({"x": x[:1]}))]
    produce(topics.servers, topics.input, more)
    with serving(mlp, topics):
        collector.wait_for({"late"})
        collector.poll(1.0)
    keys = [r.key for r in collector.records]
    assert keys.count("late") == 1 and len(keys) == 51


class RefusingProducer(Producer):
    """A real producer whose delivery reports all say the broker refused the message."""

    def produce(self, *args: Any, on_delivery: Any = None, **kwargs: Any) -> None:
        def refused(_error: Any, message: Any) -> None:
            on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), message)

        super().produce(*args, on_delivery=refused, **kwargs)


def test_unacknowledged_results_are_not_committed(
    mlp: CompiledModel, make_topics: Callable[..., Topics],
    collector_for: Callable[[Topics], Collector], monkeypatch: pytest.MonkeyPatch,
) -> None:
    topics = make_topics(partitions=1)
    x = _rows(7, 5)
    produce(topics.servers, topics.input,
            [(f"u{i}".encode(), *binary_request({"x": x[i : i + 1]})) for i in range(5)])
    with monkeypatch.context() as patch:
        patch.setattr(kafka_worker, "Producer", RefusingProducer)
        with pytest.raises(DeliveryError, match="did not acknowledge"):  # noqa: SIM117
            with serving(mlp, topics):
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not _consumed_any(topics):
                    time.sleep(0.2)
    consumer = Consumer({"bootstrap.servers": topics.servers, "group.id": topics.group})
    committed = consumer.committed([TopicPartition(topics.input, 0)], timeout=10)
    consumer.close()
    assert committed[0].offset < 0  # nothing committed: the requests are still pending
    with serving(mlp, topics):  # the next run answers every one of them
        collector = collector_for(topics)
        collector.wait_for({f"u{i}" for i in range(5)})
        collector.poll(1.0)
    # The refused run really produced (and the broker stored) its results: duplicates.
    keys = [r.key for r in collector.records if r.topic == topics.output]
    assert set(keys) == {f"u{i}" for i in range(5)} and len(keys) == 10


def _consumed_any(topics: Topics) -> bool:
    """True once the output topic holds a message (the refused run has produced)."""
    consumer = Consumer({"bootstrap.servers": topics.servers, "group.id": "peek",
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topics.output, 0, 0)])
        return any(m.error() is None for m in consumer.consume(1, 0.5))
    finally:
        consumer.close()
