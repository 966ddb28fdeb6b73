"""Kafka adapter: a consumer group that runs a model over request messages.

``KafkaAdapter(model, **options).serve()`` joins the consumer group ``group`` on
``input_topic``, takes micro-batches of up to ``max_batch`` messages (waiting at most
``max_delay_ms`` for a batch to fill), runs the model once per batch of compatible
requests and produces one result per request to ``output_topic``, keyed by the request
id and carrying the request's headers. Payload forms (OIP v2 JSON and irkit's binary
tensor form) are defined in :mod:`irkit.runtime.adapters.kafka_codec`; a result has the
form of its request.

Delivery guarantee — at least once. The offsets of a batch are committed only after the
broker acknowledged every message produced for it (result or dead letter: producer
delivery reports, ``acks=all``, idempotent producer), and batches commit in order. A
crash (even SIGKILL) between producing and committing re-delivers those requests to the
next consumer of the partition, so every request ends up in the output or dead-letter
topic, possibly more than once; consumers of the output deduplicate by key when they
must. If the broker finally refuses a result, the worker stops without committing it.

Dead letters. A message that cannot be decoded, does not fit the model signature (unknown
or missing input, wrong dtype or shape) or makes the model raise goes to ``dlq_topic``
(default ``input_topic + ".dlq"``) with its original key, value and headers plus
``error`` (the message), ``error-outcome`` (``bad_input`` or ``error``, as in
``common``), ``original-topic``, ``original-partition`` and ``original-offset``
headers; consumption goes on. A failing batch is retried request by request so that only
the guilty requests are dead-lettered.

Bounded work. At most ``max_batch`` messages are decoded at a time, at most
``max_inflight`` produced batches wait for acknowledgement (the consumer stops polling
until the oldest is acknowledged), and the consumer's prefetch queue is capped
(``queued.max.messages.kbytes``).

Scaling out. ``processes = N`` forks N consumer processes in the same group, so the
partitions of ``input_topic`` (``partitions`` of them when ``create_topics`` creates it)
are spread over them; a process that dies unexpectedly is restarted. Each process reloads
a ``CompiledModel`` from its artifact directory, so no native thread pool crosses the
fork. Several ``irkit serve`` commands with the same ``group`` work the same way, on one
machine or many.

Metrics. The shared ``common.AdapterMetrics`` (requests by outcome, end-to-end latency
from the request's Kafka timestamp, rows and duration per model call); ``metrics_port``
serves them in Prometheus form (consumer process i of ``processes = N`` on port + i).

Stopping. SIGINT/SIGTERM end ``serve()``: the in-flight batch is finished, its results
delivered and its offsets committed, the consumer leaves the group, and ``serve()``
returns (exit status 0). ``brokers = "embedded"`` starts a Tansu broker on a loopback port
for the duration of ``serve()`` (see :mod:`irkit.runtime.adapters.kafka_broker`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from irkit.runtime.adapters.common import (
    NONFINITE_OPTION,
    AdapterMetrics,
    ServableModel,
    resolve_options,
    set_reject_nonfinite,
    stop_on_signals,
)
from irkit.runtime.adapters.kafka_broker import EmbeddedBroker, ensure_topics
from irkit.runtime.adapters.kafka_worker import DeliveryError, KafkaWorker, WorkerConfig
from irkit.runtime.adapters.processes import child_model, metrics_server, supervise
from irkit.runtime.options import Option

__all__ = ["DeliveryError", "KafkaAdapter"]

log = logging.getLogger(__name__)

class KafkaAdapter:
    """Serve a model over Kafka topics; see the module docstring for the guarantees."""

    options: dict[str, Option] = {
        "brokers": Option(str, "embedded",
                          "bootstrap servers (host:port,...), or 'embedded' to start a "
                          "Tansu broker on 127.0.0.1 for the life of serve()"),
        "embedded_port": Option(int, 0, "port of the embedded broker (0: a free port)"),
        "input_topic": Option(str, "irkit.requests", "topic the requests are read from"),
        "output_topic": Option(str, "irkit.predictions", "topic the results are written to"),
        "dlq_topic": Option(str, "", "dead-letter topic (default: input_topic + '.dlq')"),
        "group": Option(str, "", "consumer group id (default: 'irkit-' + model name)"),
        "max_batch": Option(int, 64, "most messages taken (and rows run) per model call"),
        "max_delay_ms": Option(float, 5.0, "longest wait for a batch to fill"),
        "max_inflight": Option(int, 4, "produced batches that may await acknowledgement"),
        "processes": Option(int, 1, "consumer processes forked into the group"),
        "create_topics": Option(bool, True, "create missing input/output/dead-letter topics"),
        "partitions": Option(int, 4, "partitions of topics that create_topics creates"),
        "session_timeout_ms": Option(int, 6000, "consumer group session timeout"),
        "kafka_config": Option(dict, None, "extra librdkafka settings for both clients"),
        "reject_nonfinite": NONFINITE_OPTION,
        "metrics_port": Option(int, 0, "serve Prometheus /metrics on this port (0: off); "
                               "consumer process i of processes = N uses port + i"),
    }

    def __init__(self, model: ServableModel, **options: Any) -> None:
        resolved = resolve_options(self.options, options)
        for name in ("max_batch", "max_inflight", "processes", "partitions"):
            if resolved[name] < 1:
                raise ValueError(f"option {name!r} must be >= 1, got {resolved[name]}")
        if resolved["max_delay_ms"] < 0:
            raise ValueError(f"option 'max_delay_ms' must be >= 0, got {resolved['max_delay_ms']}")
        if not resolved["input_topic"] or not resolved["output_topic"]:
            raise ValueError("options 'input_topic' and 'output_topic' must not be empty")
        set_reject_nonfinite(model, resolved["reject_nonfinite"])
        self.model = model
        self.settings = resolved
        self.config = WorkerConfig(
            bootstrap_servers="",  # known once the broker runs
            input_topic=resolved["input_topic"],
            output_topic=resolved["output_topic"],
            dlq_topic=resolved["dlq_topic"] or resolved["input_topic"] + ".dlq",
            group=resolved["group"] or f"irkit-{model.name}",
            max_batch=resolved["max_batch"],
            max_delay_ms=resolved["max_delay_ms"],
            max_inflight=resolved["max_inflight"],
            session_timeout_ms=resolved["session_timeout_ms"],
            kafka_config=dict(resolved["kafka_config"] or {}),
        )
        self.metrics = AdapterMetrics("kafka", model.name)
        self._stop = threading.Event()
        self.bootstrap_servers: str | None = None
        self.ready = threading.Event()  # set once the broker runs and the topics exist

    def stop(self) -> None:
        """Ask ``serve()`` to finish the in-flight batch and return (any thread)."""
        self._stop.set()

    def serve(self) -> None:
        """Consume until SIGINT/SIGTERM or ``stop()``; see the module docstring."""
        with stop_on_signals(lambda signum: self._stop.set()), self._broker() as servers:
            self.bootstrap_servers = servers
            config = self.config.with_servers(servers)
            if self.settings["create_topics"]:
                ensure_topics(servers, (config.input_topic, config.output_topic,
                                        config.dlq_topic), self.settings["partitions"])
            self.ready.set()
            try:
                if self.settings["processes"] == 1:
                    with metrics_server(self.metrics, self.settings["metrics_port"]):
                        KafkaWorker(self.model, config, self._stop, self.metrics).run()
                else:
                    self._supervise(config, self.settings["processes"])
            finally:
                self.ready.clear()
                self._stop.clear()  # serve() may be called again

    @contextmanager
    def _broker(self) -> Iterator[str]:
        if self.settings["brokers"] != "embedded":
            yield self.settings["brokers"]
            return
        with EmbeddedBroker(port=self.settings["embedded_port"]) as broker:
            log.warning("embedded Kafka broker listening on %s", broker.bootstrap_servers)
            yield broker.bootstrap_servers

    # -- several consumer processes ---------------------------------------------------

    def _supervise(self, config: WorkerConfig, count: int) -> None:
        """Fork ``count`` consumers, restart crashed ones, forward the stop to all of them."""
        model, first_port = self.model, self.settings["metrics_port"]

        def work(slot: int, stop: threading.Event) -> None:
            metrics = AdapterMetrics("kafka", model.name)
            with metrics_server(metrics, first_port and first_port + slot):
                KafkaWorker(child_model(model), config, stop, metrics).run()

        supervise(work, count, self._stop, "consumer")
