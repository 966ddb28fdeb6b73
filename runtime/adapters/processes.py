"""Worker processes of the queue adapters (kafka ``processes``, postgres ``workers``).

``supervise(work, count, stop, what)`` forks ``count`` children; child ``slot`` runs
``work(slot, stop_event)`` until SIGINT/SIGTERM sets its event. A child that dies
unexpectedly (even by SIGKILL) is restarted; more than ``MAX_RESTARTS_PER_MINUTE``
restarts within a minute make ``supervise`` fail, so a worker that always crashes (a
broken model, an unreachable service) does not spin. When ``stop`` is set every child gets
SIGTERM and ``supervise`` returns once all of them have finished their batch and exited.

``child_model(model)`` is the model a forked child should use: a native runtime's thread
pool does not survive ``fork``, so a ``CompiledModel`` is loaded again from its artifact
directory. ``metrics_server(metrics, port)`` serves an ``AdapterMetrics`` registry in
Prometheus text form for the duration of a ``with`` block (nothing when ``port`` is 0).
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from irkit.runtime.adapters.common import AdapterMetrics, ServableModel

__all__ = ["MAX_RESTARTS_PER_MINUTE", "child_model", "metrics_server", "supervise"]

log = logging.getLogger(__name__)

MAX_RESTARTS_PER_MINUTE = 5

Work = Callable[[int, threading.Event], None]


def child_model(model: ServableModel) -> ServableModel:
    """The model a forked worker uses: reloaded from its artifact when there is one.

    Duck-typed models (no ``path`` and ``manifest``) are used as they are.
    """
    path = getattr(model, "path", None)
    if path is None or not hasattr(model, "manifest"):
        return model
    from irkit.runtime.model import load

    return load(path, reject_nonfinite=getattr(model, "reject_nonfinite", True))


@contextmanager
def metrics_server(metrics: AdapterMetrics, port: int) -> Iterator[None]:
    """Serve ``metrics`` in Prometheus text form on ``port`` (nothing when it is 0)."""
    if not port:
        yield
        return
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, registry=metrics.registry)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def supervise(work: Work, count: int, stop: threading.Event, what: str) -> None:
    """Fork ``count`` workers, restart crashed ones, forward the stop to all of them.

    ``what`` names the workers in log lines ("consumer" logs "consumer process 1 started").
    """
    context = multiprocessing.get_context("fork")
    children: dict[int, multiprocessing.process.BaseProcess] = {}
    restarts: list[float] = []

    def start(slot: int) -> None:
        child = context.Process(target=_child_main, args=(work, slot, what),
                                name=f"irkit-{what}-{slot}", daemon=False)
        # What this process holds stays out of the child's garbage collector: a child
        # never destroys an inherited ONNX Runtime session, whose thread pool did not
        # survive the fork (its destructor would wait forever).
        gc.collect()
        gc.freeze()
        try:
            child.start()
        finally:
            gc.unfreeze()
        children[slot] = child
        log.info("%s process %d started (pid %s)", what, slot, child.pid)

    for slot in range(count):
        start(slot)
    stopping = False
    try:
        while children:
            if stop.is_set() and not stopping:
                stopping = True
                for child in children.values():
                    if child.pid is not None and child.exitcode is None:
                        os.kill(child.pid, signal.SIGTERM)
            sentinels = [child.sentinel for child in children.values()]
            multiprocessing.connection.wait(sentinels, timeout=0.2)
            for slot, child in list(children.items()):
                if child.exitcode is None:
                    continue
                del children[slot]
                child.join()
                if stopping or child.exitcode == 0:
                    continue
                now = time.monotonic()
                restarts[:] = [t for t in restarts if now - t < 60.0] + [now]
                if len(restarts) > MAX_RESTARTS_PER_MINUTE:
                    raise RuntimeError(
                        f"{what} process {slot} exited with status {child.exitcode}; "
                        f"more than {MAX_RESTARTS_PER_MINUTE} restarts within a minute"
                    )
                log.warning("%s process %d exited with status %s; restarting",
                            what, slot, child.exitcode)
                start(slot)
    finally:
        for child in children.values():  # only reached early on an error
            if child.exitcode is None and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)
            child.join()


def _child_main(work: Work, slot: int, what: str) -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    status = 0
    try:
        work(slot, stop)
    except BaseException:
        log.exception("%s process %d failed", what, slot)
        status = 1
    finally:
        logging.shutdown()
        # Skip the parent's atexit handlers and buffered state that fork copied.
        os._exit(status)
