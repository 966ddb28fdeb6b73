"""HTTP on every core: ``serve http { processes = N }``.

``serve_http_processes(build, processes, host, port)`` forks ``processes`` server
processes (``processes.supervise``: a child that dies is restarted, SIGINT/SIGTERM drains
every child and returns). Each child calls ``build()`` itself, so it loads its own models
and runs its own batchers (a native runtime's threads do not survive ``fork``), and
listens on the same port with ``SO_REUSEPORT``: the kernel spreads new connections over
the children. The parent holds a bound (not listening) socket on the port for the whole
run, so port 0 picks one free port for all of them and a restarted child gets it back.

``/metrics`` on any child answers for all of them: each child writes its registry's
exposition to ``<dir>/<slot>.prom`` (at most 1 s old; the answering child's own is
fresh) and the answer merges every child's samples with a ``process="<slot>"`` label, so
``sum without (process) (...)`` is the server's total. A restarted child's counters start
again from zero (a counter reset, which ``rate()`` handles).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from .processes import supervise

__all__ = ["SharedMetrics", "reserve_port", "serve_http_processes"]

log = logging.getLogger(__name__)

Build = Callable[[], Sequence[Any]]  # -> frontends over one repository (one of them http)


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening SO_REUSEPORT socket: holds ``port`` (0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"http: cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


class SharedMetrics:
    """One child's view of every child's metrics (see the module docstring)."""

    def __init__(self, directory: Path, slot: int, registry: CollectorRegistry) -> None:
        self.directory = directory
        self.slot = slot
        self.registry = registry
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="irkit-metrics", daemon=True)

    def start(self) -> None:
        self.write()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(OSError):
                self.write()

    def write(self) -> None:
        path = self.directory / f"{self.slot}.prom"
        tmp = self.directory / f".{self.slot}.prom.{os.getpid()}"
        tmp.write_bytes(generate_latest(self.registry))
        os.replace(tmp, path)

    def render(self) -> bytes:
        """Every child's samples, each with its ``process`` label, as one exposition."""
        self.write()
        families: dict[str, Metric] = {}
        for path in sorted(self.directory.glob("*.prom"), key=lambda p: int(p.stem)):
            try:
                text = path.read_text(encoding="utf-8")
            except OSError:  # a child being replaced
                continue
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for sample in family.samples:
                    merged.samples.append(Sample(
                        sample.name, {**sample.labels, "process": path.stem}, sample.value,
                        sample.timestamp, sample.exemplar,
                    ))  # fmt: skip

        class _Collector:
            def collect(self) -> Iterator[Metric]:
                yield from families.values()

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector())  # type: ignore[arg-type]
        return generate_latest(registry)


def serve_http_processes(
    build: Build, processes: int, host: str, port: int,
    on_port: Callable[[int], None] | None = None,
) -> None:  # fmt: skip
    """Serve ``build()``'s frontends in ``processes`` children on one port (module doc).

    ``on_port(port)`` is called once the port is known (before the children start).
    """
    from .frontend import serve_frontends

    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    holder = reserve_port(host, port)
    port = holder.getsockname()[1]
    directory = Path(tempfile.mkdtemp(prefix="irkit-http-metrics-"))
    if on_port is not None:
        on_port(port)
    log.info("http: %d processes on %s:%d", processes, host, port)

    def work(slot: int, stop: threading.Event) -> None:
        frontends = build()
        shared: SharedMetrics | None = None
        for frontend in frontends:
            if frontend.name == "http":
                frontend.port, frontend.reuse_port, frontend.processes = port, True, 1
                shared = SharedMetrics(directory, slot, frontend.repository.registry)
                frontend.shared_metrics = shared
        if shared is None:
            raise ValueError("serve_http_processes: build() gave no http frontend")
        shared.start()
        try:  # both return after SIGTERM's drain
            if len(frontends) == 1 and frontends[0].owns_repository:
                frontends[0].serve()
            else:
                serve_frontends(frontends)
        finally:
            shared.stop()

    stop = threading.Event()
    try:
        from .common import stop_on_signals

        with stop_on_signals(lambda signum: stop.set()):
            supervise(work, processes, stop, "http")
    finally:
        holder.close()
        shutil.rmtree(directory, ignore_errors=True)
