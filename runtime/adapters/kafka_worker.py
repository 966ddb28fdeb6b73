"""One consumer of the Kafka adapter: poll, batch, run, produce, commit (one thread).

The loop, per micro-batch:

1. take what the consumer has prefetched, up to ``max_batch`` messages; when it has
   nothing, wait for the first message, then up to ``max_delay_ms`` for more;
2. decode every message (:mod:`kafka_codec`) and check it against the model signature
   (cached per distinct set of input names, dtypes and shapes); bad ones are dead-lettered;
3. run the good ones (:func:`grouping.run_grouped`): grouped by their non-batch shapes,
   concatenated in chunks of at most ``max_batch`` rows, one model call per chunk, outputs
   split back per request (a failing chunk is retried request by request);
4. produce the results and dead letters, each with a delivery callback of its batch;
5. commit, in batch order, the offsets of every batch whose messages are all acknowledged.

Rebalances: before partitions are revoked the producer is flushed and the acknowledged
batches committed, so a partition's next owner starts where this one stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from irkit.runtime.adapters.common import AdapterError, AdapterMetrics, ServableModel
from irkit.runtime.adapters.grouping import SignatureCheck, run_grouped
from irkit.runtime.adapters.kafka_codec import (
    Headers,
    Request,
    decode_request,
    encode_key,
    encode_result,
)

log = logging.getLogger("irkit.runtime.adapters.kafka")

ERROR_HEADER = "error"
OUTCOME_HEADER = "error-outcome"
ORIGINAL_TOPIC_HEADER = "original-topic"
ORIGINAL_PARTITION_HEADER = "original-partition"
ORIGINAL_OFFSET_HEADER = "original-offset"
_MAX_ERROR_CHARS = 2000
_IDLE_WAIT_S = 0.1  # how long an idle consumer waits per poll (and how fast it sees stop)


class DeliveryError(RuntimeError):
    """The broker did not acknowledge a result or dead letter; its offsets stay uncommitted."""


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a consumer process needs besides the model (picklable, fork-safe)."""

    bootstrap_servers: str
    input_topic: str
    output_topic: str
    dlq_topic: str
    group: str
    max_batch: int = 64
    max_delay_ms: float = 5.0
    max_inflight: int = 4
    session_timeout_ms: int = 6000
    kafka_config: dict[str, Any] = field(default_factory=dict)

    def with_servers(self, servers: str) -> WorkerConfig:
        return dataclasses.replace(self, bootstrap_servers=servers)

    def consumer_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": max(100, min(3000, self.session_timeout_ms // 3)),
            "queued.max.messages.kbytes": 16384,  # bounded prefetch per consumer
            **self.kafka_config,
        }

    def producer_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "enable.idempotence": True,  # acks=all, no duplicates from producer retries
            "linger.ms": 2,
            "queue.buffering.max.messages": 200000,
            **self.kafka_config,
        }


class _Batch:
    """The messages of one poll: their next offsets and outstanding delivery reports."""

    __slots__ = ("error", "offsets", "pending", "sealed")

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}
        self.pending = 0
        self.sealed = False  # every message of the batch has been produced
        self.error: KafkaError | None = None

    def delivered(self, error: KafkaError | None, _message: Message) -> None:
        self.pending -= 1
        if error is not None and self.error is None:
            self.error = error

    @property
    def done(self) -> bool:
        return self.sealed and self.pending == 0


class KafkaWorker:
    """Consume ``config.input_topic`` until ``stop`` is set; see the module docstring."""

    def __init__(
        self,
        model: ServableModel,
        config: WorkerConfig,
        stop: threading.Event,
        metrics: AdapterMetrics | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.stop = stop
        self.metrics = metrics if metrics is not None else AdapterMetrics("kafka", model.name)
        self._inflight: deque[_Batch] = deque()
        self._check = SignatureCheck(model)
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self.counts = {"messages": 0, "results": 0, "dead_letters": 0, "commits": 0}

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        config = self.config
        self._producer = Producer(config.producer_config())
        self._consumer = Consumer(config.consumer_config())
        self._consumer.subscribe(
            [config.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info("consumer (pid %d) of %s in group %s started", os.getpid(),
                 config.input_topic, config.group)
        failed = True
        try:
            while not self.stop.is_set():
                messages = self._poll()
                if messages:
                    self._handle(messages)
                self._producer.poll(0)
                self._commit_acknowledged()
                while len(self._inflight) > config.max_inflight:
                    self._producer.poll(0.05)
                    self._commit_acknowledged()
            failed = False
        finally:
            try:
                self._producer.flush()
                self._commit_acknowledged()
            except DeliveryError:
                if not failed:
                    raise
                log.exception("while stopping after an error")
            finally:
                try:
                    self._consumer.close()  # leave the group: partitions move at once
                finally:
                    # librdkafka's client lives as long as the object: one a finished worker
                    # kept (a traceback holds the worker) would reconnect, and log, once
                    # the broker is gone.
                    self._producer = None
                    self._consumer = None
            log.info("consumer (pid %d) of %s stopped: %s", os.getpid(), config.input_topic,
                     self.counts)

    def _poll(self) -> list[Message]:
        assert self._consumer is not None
        want = self.config.max_batch
        messages = self._consumer.consume(want, 0)  # whatever is prefetched already
        if not messages:
            messages = self._consumer.consume(1, _IDLE_WAIT_S)
            if not messages:
                return []
        delay_s = self.config.max_delay_ms / 1000.0
        if len(messages) < want and delay_s > 0:
            messages.extend(self._consumer.consume(want - len(messages), delay_s))
        return messages

    def _handle(self, messages: list[Message]) -> None:
        batch = _Batch()
        self._inflight.append(batch)
        decoded: list[tuple[Message, Request]] = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                log.warning("consumer error: %s", error)
                continue
            self.counts["messages"] += 1
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            assert topic is not None and partition is not None and offset is not None
            batch.offsets[(topic, partition)] = offset + 1
            try:
                request = decode_request(message.value(), message.key(), message.headers(),
                                         f"{topic}/{partition}/{offset}")
                self._check(request.inputs)
            except AdapterError as exc:
                self._dead_letter(batch, message, exc)
                continue
            except Exception as exc:  # a payload nobody foresaw must not stop the stream
                log.exception("unexpected error decoding %s/%s/%s", topic, partition, offset)
                self._dead_letter(batch, message, AdapterError(f"{type(exc).__name__}: {exc}"))
                continue
            decoded.append((message, request))
        outcomes = run_grouped(self.model, [request.inputs for _, request in decoded],
                               self.config.max_batch, self.metrics)
        now_ms = time.time() * 1000.0
        produced = self.counts["results"]
        for (message, request), outcome in zip(decoded, outcomes):
            if isinstance(outcome, AdapterError):
                self._dead_letter(batch, message, outcome)
            else:
                self._produce_result(batch, message, request, outcome, now_ms)
        self.metrics.count("ok", self.counts["results"] - produced)
        batch.sealed = True

    # -- producing ------------------------------------------------------------------------

    def _produce_result(
        self, batch: _Batch, message: Message, request: Request,
        outputs: Mapping[str, np.ndarray], now_ms: float,
    ) -> None:
        try:
            value, headers = encode_result(request, outputs, self.model.name)
            self._produce(batch, self.config.output_topic, value,
                          encode_key(request.request_id), headers)
        except AdapterError as exc:  # e.g. an unknown output asked for
            self._dead_letter(batch, message, exc)
            return
        except KafkaException as exc:  # refused before sending, e.g. a result too large
            self._dead_letter(batch, message, AdapterError(f"result not produced: {exc}"))
            return
        self.counts["results"] += 1
        kind, timestamp_ms = message.timestamp()
        if kind != 0 and timestamp_ms > 0:  # 0: TIMESTAMP_NOT_AVAILABLE
            self.metrics.latency.observe(max(0.0, now_ms - timestamp_ms) / 1000.0)

    def _dead_letter(self, batch: _Batch, message: Message, exc: AdapterError) -> None:
        text = (str(exc) or type(exc).__name__)[:_MAX_ERROR_CHARS]
        headers: Headers = list(message.headers() or [])
        headers += [
            (ERROR_HEADER, text.encode()),
            (OUTCOME_HEADER, exc.outcome.encode()),
            (ORIGINAL_TOPIC_HEADER, (message.topic() or "").encode()),
            (ORIGINAL_PARTITION_HEADER, str(message.partition()).encode()),
            (ORIGINAL_OFFSET_HEADER, str(message.offset()).encode()),
        ]
        self._produce(batch, self.config.dlq_topic, message.value(), message.key(), headers)
        self.counts["dead_letters"] += 1
        self.metrics.count(exc.outcome)
        log.debug("dead letter %s/%s/%s: %s", message.topic(), message.partition(),
                  message.offset(), text)

    def _produce(
        self, batch: _Batch, topic: str, value: bytes | None, key: bytes | None,
        headers: Headers,
    ) -> None:
        assert self._producer is not None
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers,
                                       on_delivery=batch.delivered)
                batch.pending += 1
                return
            except BufferError:  # the producer queue is full: wait for acknowledgements
                self._producer.poll(0.05)

    # -- committing -------------------------------------------------------------------------

    def _commit_acknowledged(self) -> None:
        """Commit the offsets of the acknowledged batches at the front of the queue."""
        offsets: dict[tuple[str, int], int] = {}
        failed: _Batch | None = None
        while self._inflight and self._inflight[0].done:
            batch = self._inflight[0]
            if batch.error is not None:
                failed = batch
                break
            self._inflight.popleft()
            offsets.update(batch.offsets)  # later batches carry later offsets
        if offsets:
            self._commit(offsets)
        if failed is not None:
            raise DeliveryError(
                f"the broker did not acknowledge a message produced for {self.config.input_topic}"
                f": {failed.error}; its offsets are not committed"
            )

    def _commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        assert self._consumer is not None
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self._consumer.commit(offsets=partitions, asynchronous=False)
            self.counts["commits"] += 1
        except KafkaException as exc:
            # Typically a rebalance: the next owner re-reads these requests (at least once).
            log.warning("offset commit failed, requests may be processed again: %s", exc)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("consumer (pid %d) assigned partitions %s", os.getpid(),
                 sorted(p.partition for p in partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._producer is not None
        self._producer.flush()
        self._commit_acknowledged()
        log.info("consumer (pid %d) revoked partitions %s", os.getpid(),
                 sorted(p.partition for p in partitions))

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The partitions already belong to someone else: committing is no longer possible.
        assert self._producer is not None
        self._producer.flush()
        self._inflight.clear()
        log.warning("partitions lost: %s", [(p.topic, p.partition) for p in partitions])
