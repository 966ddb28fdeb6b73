"""Dynamic batcher: a bounded request queue drained by worker threads into batched model calls.

Used by the http adapter (and anything else that needs one); it knows nothing about HTTP.

    batcher = DynamicBatcher(model, max_batch=32, max_delay_ms=2, max_queue=1024,
                             workers=1, timeout_ms=None, metrics=AdapterMetrics(...),
                             arrivals=None)
    batcher.start()
    future = batcher.submit({"x": rows})      # concurrent.futures.Future[dict[str, ndarray]]
    outputs = future.result()
    job = batcher.enqueue({"x": rows}, sink, waiter)   # sink(jobs) once per finished batch
    batcher.stop()                            # finish queued + in-flight work, join workers

Semantics
- ``submit``/``enqueue`` never block: they raise ``QueueFull`` (429) when ``max_queue``
  requests are waiting, and ``NotReady`` (503) once ``stop`` began. Inputs must be
  validated already (``common.check_inputs``); a request may hold any number of rows.
- A worker takes the oldest request, then keeps adding queued requests with the same
  non-batch shapes/dtypes while the batch has at most ``max_batch`` rows, waiting until
  ``max_delay_ms`` after the *oldest* request was enqueued (a request that already waited
  in the queue is not delayed further). A single request larger than ``max_batch`` runs
  alone, as model calls of ``max_batch`` rows each (so the model's working memory is that
  of a full batch, whatever the request's size). Only one worker collects at a time, so with ``workers=1`` requests pile up while
  the model runs and the next batch is as full as the load allows.
- ``arrivals`` (optional) is a callable giving how many requests the caller is still
  receiving (body being read, not yet submitted). When the queue is empty and it returns
  0, nothing is on its way, so the batch runs at once instead of waiting out
  ``max_delay_ms``: a lone client pays no batching delay, and under load batches are
  whatever queued up while the previous batch ran.
- Results are handed over once per batch, not once per request: after a model call the
  worker sets ``outputs`` or ``error`` on each ``Job`` and calls each distinct ``sink`` of
  the batch once with its finished jobs, in the worker thread. ``submit`` is ``enqueue``
  with a sink that resolves ``concurrent.futures.Future``\\ s; an event loop's sink hops to
  the loop once per batch (see the http adapter). A sink must not raise (it is logged).
- Cancelled requests (``job.cancel()``, or a cancelled ``submit`` future) whose batch has
  not started are skipped and never reach their sink; requests older than ``timeout_ms``
  when their batch starts get ``RequestTimeout`` (504).
- The model runs in the worker thread, never on an event loop. A model exception fails
  every request of that batch with ``AdapterError`` carrying the message.
- Metrics, if given: queue time per request, batch size and inference time per call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

import numpy as np

from .common import (
    AdapterError,
    AdapterMetrics,
    NotReady,
    QueueFull,
    RequestTimeout,
    ServableModel,
    batch_rows,
)

__all__ = ["DynamicBatcher", "Job", "Sink"]

log = logging.getLogger(__name__)
Outputs = dict[str, np.ndarray]


class Job:
    """One queued request; the worker sets ``outputs`` or ``error`` when its batch ran."""

    __slots__ = ("cancelled", "deadline", "enqueued", "error", "inputs", "key", "outputs",
                 "rows", "sink", "waiter")  # fmt: skip

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        sink: Sink,
        waiter: Any,
        enqueued: float,
        deadline: float | None,
    ) -> None:
        self.inputs = inputs
        self.rows, self.key = _rows_and_key(inputs)
        self.sink = sink
        self.waiter = waiter  # the submitter's handle (a Future, an asyncio future, ...)
        self.enqueued = enqueued
        self.deadline = deadline
        self.outputs: Outputs | None = None
        self.error: BaseException | None = None
        self.cancelled = False

    def cancel(self) -> None:
        """Skip this request if its batch has not started yet (any thread)."""
        self.cancelled = True


Sink = Callable[[list[Job]], None]


def _rows_and_key(inputs: Mapping[str, np.ndarray]) -> tuple[int, tuple[object, ...]]:
    """Rows of the batch dim, and what must agree for requests to share a batch:
    everything but the batch dim. BadInput when the inputs disagree on the rows."""
    rows = -1
    key = []
    for name in sorted(inputs):
        array = inputs[name]
        size = array.shape[0] if array.ndim else 1
        if size != rows and rows != -1:
            batch_rows(inputs)  # raises, naming every input's rows
        rows = size
        key.append((name, array.dtype, array.shape[1:]))
    return max(rows, 0), tuple(key)


def _resolve_futures(jobs: list[Job]) -> None:
    """The sink of ``submit``: each job's waiter is a ``concurrent.futures.Future``."""
    for job in jobs:
        future: Future[Outputs] = job.waiter
        if not future.set_running_or_notify_cancel():
            continue  # cancelled after its batch started: nobody waits for it
        if job.error is not None:
            future.set_exception(job.error)
        else:
            future.set_result(job.outputs)  # type: ignore[arg-type]


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
        # Submitters append to the queue without touching a lock a worker holds: on a busy
        # machine a worker can lose its CPU while holding one, and an event loop blocked
        # on that lock stalls for a whole time slice. Only a sleeping worker needs the
        # condition, and a submitter takes it only to wake one.
        self._queue: deque[Job] = deque()  # appended by submitters, popped by the collector
        self._submit_lock = threading.Lock()  # submitters (and stop) only, never a worker
        self._cond = threading.Condition()  # workers sleep on it
        self._collect_lock = threading.Lock()  # one worker collects at a time
        self._count_lock = threading.Lock()  # _busy, between workers
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._busy = 0
        self._idle = 0  # workers asleep (or about to be) waiting for a first request
        self._rows_in = 0  # rows ever enqueued (under _submit_lock)
        self._rows_out = 0  # rows ever taken (by the collecting worker)
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
        with self._submit_lock:  # no enqueue is half done: whatever got in gets run
            self._stopping = True
        with self._cond:
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
        future: Future[Outputs] = Future()
        job = self.enqueue(inputs, _resolve_futures, future, timeout_ms)
        future.add_done_callback(lambda done: job.cancel() if done.cancelled() else None)
        return future

    def enqueue(
        self,
        inputs: Mapping[str, np.ndarray],
        sink: Sink,
        waiter: Any = None,
        timeout_ms: float | None = None,
        *,
        wake: bool = True,
    ) -> Job:
        """Enqueue validated inputs; ``sink([job, ...])`` gets the job back once it ran.

        ``wake=False`` leaves the workers asleep: the caller promises to call ``wake()``
        soon, e.g. once after a burst of requests instead of once per request.
        """
        now = time.monotonic()
        timeout = timeout_ms / 1000.0 if timeout_ms else self.timeout
        job = Job(dict(inputs), sink, waiter, now, now + timeout if timeout else None)
        with self._submit_lock:
            if self._stopping or not self._threads:
                raise NotReady("server is not accepting requests (stopped)")
            if len(self._queue) >= self.max_queue:
                # A batch drains max_batch rows; guess how long until there is room.
                raise QueueFull(
                    f"queue full ({self.max_queue} requests waiting)",
                    retry_after=max(1.0, self.max_delay * 2),
                )
            self._queue.append(job)
            self._rows_in += job.rows
        if wake:
            self.wake()
        return job

    def wake(self) -> None:
        """Wake a worker if one has something to do (after ``enqueue(..., wake=False)``)."""
        # Whoever holds the condition is a worker that is awake (it looks at the queue
        # again before it sleeps) or a thread already waking one: never wait for it.
        if self._queue and self._wake_needed() and self._cond.acquire(blocking=False):
            try:
                self._cond.notify()
            finally:
                self._cond.release()

    # ------------------------------------------------------------------ workers

    def _work(self) -> None:
        while True:
            with self._collect_lock:
                batch = self._collect()
            if batch is None:
                return
            self._run(batch)
            del batch  # not held while idle: a large request's arrays are freed now

    def _wake_needed(self) -> bool:
        """Whether a submitter should wake a worker (read without a lock, see ``_collect``).

        Waking the collecting worker for every request while it waits for a batch to fill
        would cost a thread switch per request: the very overhead batching removes.
        """
        collecting = self._collecting_rows
        if collecting is None:
            return self._idle > 0  # a worker waits for a first request; else all are busy
        if collecting + self._rows_in - self._rows_out >= self.max_batch:
            return True
        return self.arrivals is not None and self.arrivals() == 0

    def _take(self) -> Job:
        job = self._queue.popleft()
        self._rows_out += job.rows
        return job

    def _collect(self) -> list[Job] | None:
        """Block for the oldest request, then gather compatible ones (see module doc).

        Before sleeping, a worker first says so (``_idle``, ``_collecting_rows``), then
        looks at the queue once more: a submitter either appended before that look, or it
        sees the announcement afterwards and wakes the worker (under the GIL, one of the
        two orders holds). Either way no request waits on a sleeping worker.
        """
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._idle += 1
                try:
                    if not self._queue and not self._stopping:
                        self._cond.wait()
                finally:
                    self._idle -= 1
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
                        if not self._queue:
                            self._cond.wait(remaining)
                    finally:
                        self._collecting_rows = None
                    continue
                head = self._queue[0]
                if head.key != first.key or rows + head.rows > self.max_batch:
                    break
                batch.append(self._take())
                rows += head.rows
        with self._count_lock:
            self._busy += len(batch)
        return batch

    def _run(self, batch: list[Job]) -> None:
        started = time.monotonic()
        live: list[Job] = []
        finished: list[Job] = []
        for job in batch:
            if job.cancelled:
                continue  # the caller gave up (e.g. its own timeout fired)
            if job.deadline is not None and started > job.deadline:
                waited = (started - job.enqueued) * 1000
                job.error = RequestTimeout(f"timed out after {waited:.0f} ms")
                finished.append(job)
                continue
            live.append(job)
            if self.metrics is not None:
                self.metrics.queue_time.observe(started - job.enqueued)
        try:
            if live:
                self._call_model(live)
                finished += live
        finally:
            self._deliver(finished)
            with self._count_lock:
                self._busy -= len(batch)

    def _call_model(self, live: list[Job]) -> None:
        """Run ``live`` as one model call; sets each job's ``outputs`` or ``error``."""
        try:
            if len(live) == 1:
                inputs = live[0].inputs
            else:
                inputs = {
                    name: np.concatenate([job.inputs[name] for job in live])
                    for name in live[0].inputs
                }
            t0 = time.perf_counter()
            rows = sum(job.rows for job in live)
            if rows > self.max_batch:
                outputs = self._run_in_pieces(inputs, rows)
            else:
                outputs = self.model.run(inputs)
            elapsed = time.perf_counter() - t0
            if len(live) == 1:
                live[0].outputs = dict(outputs)
            else:
                start = 0
                for job in live:
                    stop = start + job.rows
                    job.outputs = {name: arr[start:stop] for name, arr in outputs.items()}
                    start = stop
        except Exception as exc:  # the model failed: every request of this batch fails
            error = exc if isinstance(exc, AdapterError) else AdapterError(f"inference: {exc}")
            for job in live:
                job.outputs, job.error = None, error
            return
        if self.metrics is not None:
            self.metrics.observe_batch(sum(job.rows for job in live), elapsed, len(live))

    def _run_in_pieces(self, inputs: Mapping[str, np.ndarray], rows: int) -> Outputs:
        """``model.run(inputs)`` as calls of at most ``max_batch`` rows, written into one
        output array each: a request larger than ``max_batch`` costs the model (its
        workspace) no more memory than a full batch. Outputs without a leading batch
        dimension (the first piece tells) make it one call, as before."""
        step = self.max_batch
        first = self.model.run({name: array[:step] for name, array in inputs.items()})
        if any(array.ndim == 0 or array.shape[0] != step for array in first.values()):
            return dict(self.model.run(inputs))
        outputs = {name: np.empty((rows, *array.shape[1:]), array.dtype)
                   for name, array in first.items()}  # fmt: skip
        for name, array in first.items():
            outputs[name][:step] = array
        del first
        for start in range(step, rows, step):
            stop = min(start + step, rows)
            piece = self.model.run({name: array[start:stop] for name, array in inputs.items()})
            for name, array in piece.items():
                outputs[name][start:stop] = array
        return outputs

    @staticmethod
    def _deliver(finished: list[Job]) -> None:
        """Call each sink once with its jobs of this batch."""
        groups: dict[Sink, list[Job]] = {}
        for job in finished:
            groups.setdefault(job.sink, []).append(job)
        for sink, jobs in groups.items():
            try:
                sink(jobs)
            except Exception:  # a broken sink must not kill the worker
                log.exception("delivering %d batcher results failed", len(jobs))
