"""The embedded Tansu broker's life cycle, and the adapter's options."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from irkit.runtime import CompiledModel
from irkit.runtime.adapters import get_adapter
from irkit.runtime.adapters.kafka import KafkaAdapter
from irkit.runtime.adapters.kafka_broker import BrokerError, EmbeddedBroker
from irkit.runtime.adapters.kafka_codec import binary_request, decode_result


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.service
def test_embedded_broker_starts_answers_and_leaves_no_process() -> None:
    with EmbeddedBroker() as broker:
        pid = broker.pid
        assert pid is not None and os.getpgid(pid) == pid  # a process group of its own
        topics = AdminClient({"bootstrap.servers": broker.bootstrap_servers}).list_topics(
            timeout=5)
        assert topics.brokers  # it answers Kafka metadata requests
        url = f"tcp://127.0.0.1:{broker.port}"
        assert _processes_mentioning(url) == [pid]
    assert _processes_mentioning(url) == []
    assert _refused(broker.port)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


@pytest.mark.service
def test_embedded_broker_that_cannot_listen_raises() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=r"exited|did not answer"):
            EmbeddedBroker(port=port, start_timeout_s=10).start()
    assert _processes_mentioning(f"tcp://127.0.0.1:{port}") == []


@pytest.mark.service
def test_adapter_with_embedded_broker_serves_and_stops_it(mlp: CompiledModel) -> None:
    adapter = KafkaAdapter(mlp, input_topic="emb.in", output_topic="emb.out", partitions=1)
    thread = threading.Thread(target=adapter.serve, daemon=True)
    thread.start()
    assert adapter.ready.wait(30)
    servers = adapter.bootstrap_servers
    assert servers is not None
    port = int(servers.rsplit(":", 1)[1])
    x = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)
    producer = Producer({"bootstrap.servers": servers})
    value, headers = binary_request({"x": x})
    producer.produce("emb.in", value, b"only", headers=headers)
    assert producer.flush(10) == 0
    consumer = Consumer({"bootstrap.servers": servers, "group.id": "emb-check",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    consumer.subscribe(["emb.out"])
    results = []
    for _ in range(100):
        results += [m for m in consumer.consume(10, 0.3) if m.error() is None]
        if results:
            break
    consumer.close()
    assert [m.key() for m in results] == [b"only"]
    got = decode_result(results[0].value(), results[0].headers())["logits"]
    np.testing.assert_allclose(got, mlp(x=x)["logits"], rtol=1e-6, atol=1e-6)
    del producer
    adapter.stop()
    thread.join(30)
    assert not thread.is_alive()
    assert _refused(port)
    assert _processes_mentioning(f"tcp://127.0.0.1:{port}") == []


class _Named:
    name = "m"


def test_options_defaults_and_checks() -> None:
    assert get_adapter("kafka") is KafkaAdapter
    adapter = KafkaAdapter(_Named(), input_topic="req")  # type: ignore[arg-type]
    assert adapter.config.dlq_topic == "req.dlq"
    assert adapter.config.group == "irkit-m"
    assert adapter.config.max_batch == KafkaAdapter.options["max_batch"].default
    assert adapter.settings["brokers"] == "embedded"
    assert KafkaAdapter(_Named(), max_delay_ms=3).config.max_delay_ms == 3.0  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown option"):
        KafkaAdapter(_Named(), topic="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_batch"):
        KafkaAdapter(_Named(), max_batch="8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="processes"):
        KafkaAdapter(_Named(), processes=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_delay_ms"):
        KafkaAdapter(_Named(), max_delay_ms=-1)  # type: ignore[arg-type]
    for name, option in KafkaAdapter.options.items():
        assert option.doc, name
