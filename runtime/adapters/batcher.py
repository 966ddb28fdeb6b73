"""Dynamic batcher: a bounded request queue drained by worker threads into batched model calls.

Used by the http adapter and the kafka adapter; it knows nothing about either.

    batcher = DynamicBatcher(model, max_batch=32, max_delay_ms=2, max_queue=1024,
                             workers=1, timeout_ms=None, metrics=AdapterMetrics(...),
                             arrivals=None)
    batcher.start()
    future = batcher.submit({"x": rows})      # concurrent.futures.Future[dict[str, ndarray]]
    outputs = future.result()                 # or: await asyncio.wrap_future(future)
    batcher.stop()                            # finish queued + in-flight work, join workers

Semantics
- ``submit`` never blocks: it raises ``QueueFull`` (429) when ``max_queue`` requests are
  waiting, and ``NotReady`` (503) once ``stop`` began. Inputs must be validated already
  (``common.check_inputs``); a request may hold any number of rows.
- A worker takes the oldest request, then keeps adding queued requests with the same
  non-batch shapes/dtypes while the batch has at most ``max_batch`` rows, waiting until
  ``max_delay_ms`` after the *oldest* request was enqueued (a request that already waited
  in the queue is not delayed further). A single request larger than ``max_batch`` runs
  alone. Only one worker collects at a time, so with ``workers=1`` requests pile up while
  the model runs and the next batch is as full as the load allows.
- ``arrivals`` (optional) is a callable giving how many requests the caller is still
  receiving (body being read, not yet submitted). When the queue is empty and it returns
  0, nothing is on its way, so the batch runs at once instead of waiting out
  ``max_delay_ms``: a lone client pays no batching delay, and under load batches are
  whatever queued up while the previous batch ran.
- Requests whose future was cancelled (the client gave up) are skipped; requests older
  than ``timeout_ms`` when their batch starts fail with ``RequestTimeout`` (504).
- The model runs in the worker thread, never on an event loop. A model exception fails
  every request of that batch with ``AdapterError`` carrying the message.
- Metrics, if given: queue time per request, batch size and inference time per call.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from .common import (
    AdapterError,
    AdapterMetrics,
    NotReady,
    QueueFull,
    RequestTimeout,
    ServableModel,
    batch_rows,
    concat_requests,
    split_outputs,
)

__all__ = ["DynamicBatcher"]

Outputs = dict[str, np.ndarray]


@dataclass
class _Request:
    inputs: dict[str, np.ndarray]
    rows: int
    key: tuple[object, ...]
    enqueued: float
    deadline: float | None
    future: Future[Outputs] = field(default_factory=Future)


def _shape_key(inputs: Mapping[str, np.ndarray]) -> tuple[object, ...]:
    """Requests can share a batch only when everything but the batch dim agrees."""
    return tuple((name, arr.dtype.str, arr.shape[1:]) for name, arr in sorted(inputs.items()))


class DynamicBatcher:
    """Queue of requests, batched along axis 0 and run by ``workers`` threads."""

    def __init__(
        self,
        model: ServableModel,
        *,
        max_batch: int = 32,
        max_delay_ms: float = 2.0,
        max_queue: int = 1024,
        workers: int = 1,
        timeout_ms: float | None = None,
        metrics: AdapterMetrics | None = None,
        arrivals: Callable[[], int] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or workers < 1:
            raise ValueError("max_batch, max_queue and workers must be >= 1")
        self.model = model
        self.max_batch = max_batch
        self.max_delay = max(0.0, max_delay_ms) / 1000.0
        self.max_queue = max_queue
        self.workers = workers
        self.timeout = timeout_ms / 1000.0 if timeout_ms else None
        self.metrics = metrics
        self.arrivals = arrivals
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._collect_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._busy = 0
        self._queued_rows = 0
        # rows of the batch being collected while its worker waits for more; None otherwise
        self._collecting_rows: int | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the worker threads (idempotent)."""
        if self._threads:
            return
        self._stopping = False
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"irkit-batcher-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish queued and in-flight batches, join the workers."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    @property
    def queue_depth(self) -> int:
        """Requests waiting (not yet in a batch)."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Requests waiting or being run."""
        return len(self._queue) + self._busy

    # ------------------------------------------------------------------- submit

    def submit(
        self, inputs: Mapping[str, np.ndarray], timeout_ms: float | None = None
    ) -> Future[Outputs]:
        """Enqueue validated inputs; the future resolves to this request's outputs."""
        now = time.monotonic()
        timeout = timeout_ms / 1000.0 if timeout_ms else self.timeout
        request = _Request(
            inputs=dict(inputs),
            rows=batch_rows(inputs),
            key=_shape_key(inputs),
            enqueued=now,
            deadline=now + timeout if timeout else None,
        )
        with self._cond:
            if self._stopping or not self._threads:
                raise NotReady("server is not accepting requests (stopped)")
            if len(self._queue) >= self.max_queue:
                # A batch drains max_batch rows; guess how long until there is room.
                raise QueueFull(
                    f"queue full ({self.max_queue} requests waiting)",
                    retry_after=max(1.0, self.max_delay * 2),
                )
            self._queue.append(request)
            self._queued_rows += request.rows
            if self._wake_needed():
                self._cond.notify()
        return request.future

    # ------------------------------------------------------------------ workers

    def _work(self) -> None:
        while True:
            with self._collect_lock:
                batch = self._collect()
            if batch is None:
                return
            self._run(batch)

    def _wake_needed(self) -> bool:
        """Wake the collecting worker only when it has something to do (lock held).

        Waking it for every request while it waits for a batch to fill would cost a
        thread switch per request: the very overhead batching is meant to remove.
        """
        if self._collecting_rows is None:
            return True  # waiting for the first request
        if self._collecting_rows + self._queued_rows >= self.max_batch:
            return True
        return self.arrivals is not None and self.arrivals() == 0

    def _take(self) -> _Request:
        request = self._queue.popleft()
        self._queued_rows -= request.rows
        return request

    def _collect(self) -> list[_Request] | None:
        """Block for the oldest request, then gather compatible ones (see module doc)."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._take()
            batch, rows = [first], first.rows
            flush_at = first.enqueued + self.max_delay
            while rows < self.max_batch:
                if not self._queue:
                    remaining = flush_at - time.monotonic()
                    idle = self.arrivals is not None and self.arrivals() == 0
                    if remaining <= 0 or self._stopping or idle:
                        break
                    self._collecting_rows = rows
                    try:
                        self._cond.wait(remaining)
                    finally:
                        self._collecting_rows = None
                    continue
                head = self._queue[0]
                if head.key != first.key or rows + head.rows > self.max_batch:
                    break
                batch.append(self._take())
                rows += head.rows
            self._busy += len(batch)
            return batch

    def _run(self, batch: list[_Request]) -> None:
        started = time.monotonic()
        live: list[_Request] = []
        for request in batch:
            if not request.future.set_running_or_notify_cancel():
                continue  # the caller gave up (e.g. its own timeout fired)
            if request.deadline is not None and started > request.deadline:
                waited = (started - request.enqueued) * 1000
                request.future.set_exception(RequestTimeout(f"timed out after {waited:.0f} ms"))
                continue
            live.append(request)
            if self.metrics is not None:
                self.metrics.queue_time.observe(started - request.enqueued)
        try:
            if live:
                self._call_model(live)
        finally:
            with self._cond:
                self._busy -= len(batch)

    def _call_model(self, live: list[_Request]) -> None:
        try:
            inputs, sizes = concat_requests([r.inputs for r in live])
            t0 = time.perf_counter()
            outputs = self.model.run(inputs)
            elapsed = time.perf_counter() - t0
            parts = split_outputs(outputs, sizes)
        except Exception as exc:  # the model failed: every request of this batch fails
            error = exc if isinstance(exc, AdapterError) else AdapterError(f"inference: {exc}")
            for request in live:
                request.future.set_exception(error)
            return
        if self.metrics is not None:
            self.metrics.observe_batch(sum(sizes), elapsed)
        for request, part in zip(live, parts):
            request.future.set_result(part)
