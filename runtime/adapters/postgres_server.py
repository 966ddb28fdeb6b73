"""The embedded PostgreSQL server of the postgres adapter (and of its tests).

``EmbeddedPostgres`` runs a private PostgreSQL server in a directory, on a loopback port,
in its own process group, and stops the whole group on exit, so no server outlives the
``with`` block::

    with EmbeddedPostgres() as server:                  # a temporary directory
        conn = psycopg.connect(server.dsn)

The binaries come from, in order: the ``pgserver`` wheel (PostgreSQL 16 built for
manylinux, so ``pip install 'irkit[postgres]'`` is all a machine needs), ``pg_config
--bindir``, Debian's ``/usr/lib/postgresql/<version>/bin``, or ``initdb`` on ``PATH``.

The directory holds ``pgdata/`` (the cluster) and ``dsn`` (the connection string, mode
0600). The server listens on ``127.0.0.1`` only, with no Unix socket; the role ``irkit``
logs in with a random password (scram-sha-256) kept in the ``dsn`` file. A temporary
directory (``data_dir=None``) is removed on stop; a given ``data_dir`` keeps its data, and
a second ``EmbeddedPostgres`` on a directory whose server is already running attaches to
it (and leaves it running on stop).

PostgreSQL refuses to run as root. As root the server runs as the unprivileged ``nobody``
account: the data directory is given to it, and a copy of the wheel's binaries is made in
the temporary directory when ``nobody`` cannot reach the installed ones (a virtualenv
under ``/root``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from irkit.errors import IrkitError
from irkit.runtime.adapters.kafka_broker import free_port

log = logging.getLogger(__name__)

ROLE = "irkit"
DATABASE = "irkit"
_UNPRIVILEGED_USER = "nobody"


class PostgresServerError(IrkitError, RuntimeError):
    """The embedded PostgreSQL server could not be found, started or reached."""


def postgres_bin_dir() -> Path:
    """The directory of ``initdb`` and ``postgres``; see the module docstring for the order."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec("pgserver")  # located without importing it
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(Path(location) / "pginstall" / "bin")
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            candidates.append(Path(out))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted((p for p in debian.iterdir() if p.name.isdigit()),
                          key=lambda p: int(p.name), reverse=True)
        candidates += [p / "bin" for p in versions]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    raise PostgresServerError(
        "no PostgreSQL server binaries found: pip install 'irkit[postgres]' (the pgserver "
        "wheel), or install the postgresql package, or give dsn = 'postgresql://...' of a "
        "running server"
    )


def _reachable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether user ``uid`` can traverse every directory above ``path`` (and ``path``)."""
    for directory in [path, *path.parents]:
        info = directory.stat()
        if info.st_uid == uid:
            bit = stat.S_IXUSR
        elif info.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


def _copy_for(bin_dir: Path, uid: int, gid: int) -> Path:
    """``bin_dir`` itself, or a world-readable copy of its installation when ``uid`` cannot
    reach it (the copy lives in the temporary directory and is reused)."""
    if _reachable_by(bin_dir, uid, gid):
        return bin_dir
    install = bin_dir.parent  # .../pgserver/pginstall: bin, lib, share
    package = install.parent
    # The wheel's binaries find their bundled libraries through RPATH
    # $ORIGIN/../../../pgserver.libs: the copy keeps that layout.
    libs = package.parent / f"{package.name}.libs"
    tag = hashlib.sha256(f"{install}:{(bin_dir / 'postgres').stat().st_mtime_ns}".encode())
    target = Path(tempfile.gettempdir()) / f"irkit-postgres-bin-{tag.hexdigest()[:12]}"
    copied_bin = target / package.name / install.name / "bin"
    if not (copied_bin / "postgres").is_file():
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        for part in ("bin", "lib", "share"):
            if (install / part).is_dir():
                shutil.copytree(install / part, staging / package.name / install.name / part,
                                symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        for root, _dirs, files in os.walk(staging):
            os.chmod(root, 0o755)
            for name in files:
                path = Path(root) / name
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | 0o444)
        try:
            staging.rename(target)
        except OSError:  # another process made it first
            shutil.rmtree(staging, ignore_errors=True)
    return copied_bin


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As PostgreSQL binds: a port in TIME_WAIT (the last run's) is free for it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class EmbeddedPostgres:
    """A private PostgreSQL server on ``127.0.0.1:port``; see the module docstring."""

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, port: int = 0,
                 host: str = "127.0.0.1", start_timeout_s: float = 60.0) -> None:
        self.host = host
        self.requested_port = port
        self.port = port
        self.start_timeout_s = start_timeout_s
        self._given_dir = Path(data_dir).expanduser().absolute() if data_dir else None
        self.root: Path | None = None
        self.dsn = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._attached = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- start ------------------------------------------------------------------------

    def start(self) -> EmbeddedPostgres:
        """Start (or attach to) the server and wait until it accepts connections."""
        if self.dsn:
            return self
        if self._given_dir is None:
            self.root = Path(tempfile.mkdtemp(prefix="irkit-postgres-"))
            self.root.chmod(0o755)
        else:
            self.root = self._given_dir
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            if self._attach():
                return self
            self._start_server()
        except BaseException:
            self.stop()
            raise
        log.info("embedded PostgreSQL (pid %s) on %s:%d, data in %s", self.pid,
                 self.host, self.port, self.root)
        return self

    def _attach(self) -> bool:
        """Use the server already running on this directory, if there is one."""
        assert self.root is not None
        pid_file, dsn_file = self.root / "pgdata" / "postmaster.pid", self.root / "dsn"
        if not (pid_file.is_file() and dsn_file.is_file()):
            return False
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError, PermissionError):
            return False
        dsn = dsn_file.read_text().strip()
        if not self._accepts(dsn):
            return False
        self.dsn, self._attached = dsn, True
        log.info("attached to the embedded PostgreSQL (pid %d) in %s", pid, self.root)
        return True

    def _start_server(self) -> None:
        assert self.root is not None
        uid, gid, user = self._server_identity()
        bin_dir = postgres_bin_dir()
        if uid != os.geteuid():
            bin_dir = _copy_for(bin_dir, uid, gid)
            if not _reachable_by(self.root, uid, gid):
                raise PostgresServerError(
                    f"PostgreSQL cannot run as root, and user {user!r} cannot reach the data "
                    f"directory {self.root}: choose a data_dir outside root-only directories"
                )
        pgdata = self.root / "pgdata"
        dsn_file = self.root / "dsn"
        if not (pgdata / "PG_VERSION").is_file() or not dsn_file.is_file():
            password = self._initdb(bin_dir, pgdata, uid, gid)
        else:
            password = _password_of(dsn_file.read_text())
        self.port = self.requested_port or self._previous_port(dsn_file) or free_port(self.host)
        self.dsn = (f"postgresql://{ROLE}:{password}@{self.host}:{self.port}/{DATABASE}"
                    "?connect_timeout=10")
        command = [str(bin_dir / "postgres"), "-D", str(pgdata),
                   "-c", f"listen_addresses={self.host}", "-c", f"port={self.port}",
                   "-c", "unix_socket_directories=", "-c", "max_connections=200"]
        self._log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 (closed in stop())
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends all of it
            user=uid if uid != os.geteuid() else None,
            group=gid if uid != os.geteuid() else None,
            extra_groups=[] if uid != os.geteuid() else None,
            env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"},
        )
        self._wait_until_ready(f"{self.dsn[: self.dsn.rindex('/')]}/postgres")
        self._create_database()
        old_umask = os.umask(0o077)
        try:
            dsn_file.write_text(self.dsn + "\n")
        finally:
            os.umask(old_umask)

    def _server_identity(self) -> tuple[int, int, str]:
        if os.geteuid() != 0:
            return os.geteuid(), os.getegid(), pwd.getpwuid(os.geteuid()).pw_name
        try:
            entry = pwd.getpwnam(_UNPRIVILEGED_USER)
        except KeyError:
            raise PostgresServerError(
                f"PostgreSQL cannot run as root and there is no {_UNPRIVILEGED_USER!r} "
                "account to run it as: run irkit as an unprivileged user"
            ) from None
        return entry.pw_uid, entry.pw_gid, entry.pw_name

    def _initdb(self, bin_dir: Path, pgdata: Path, uid: int, gid: int) -> str:
        password = secrets.token_urlsafe(18)
        if pgdata.exists():  # a half-made cluster from an interrupted start
            shutil.rmtree(pgdata)
        pgdata.mkdir(mode=0o700)
        pwfile = self.root / "initdb.pw"  # type: ignore[operator]
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        os.chown(pwfile, uid, gid)
        os.chown(pgdata, uid, gid)
        privileged = uid != os.geteuid()
        try:
            done = subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", ROLE, "-E", "UTF8",
                 "--no-locale", "--auth-host=scram-sha-256", "--auth-local=reject",
                 f"--pwfile={pwfile}", "--no-instructions"],
                capture_output=True, text=True, timeout=120,
                user=uid if privileged else None, group=gid if privileged else None,
                extra_groups=[] if privileged else None,
                env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"},
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise PostgresServerError(
                f"initdb failed in {pgdata} (status {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-2000:]}"
            )
        return password

    def _previous_port(self, dsn_file: Path) -> int:
        """The port of the last run on this directory, if it is free (stable DSNs)."""
        if not dsn_file.is_file():
            return 0
        with contextlib.suppress(ValueError, IndexError):
            port = int(dsn_file.read_text().split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            if _port_is_free(self.host, port):
                return port
        return 0

    def _accepts(self, dsn: str) -> bool:
        import psycopg

        try:
            psycopg.connect(dsn, connect_timeout=2).close()
        except psycopg.Error:
            return False
        return True

    def _wait_until_ready(self, dsn: str) -> None:
        import psycopg

        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._process.poll() is not None:
                raise PostgresServerError(
                    f"PostgreSQL exited with status {self._process.returncode} while "
                    f"starting on {self.host}:{self.port}: {self._output_tail()}"
                )
            try:
                psycopg.connect(dsn, connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PostgresServerError(
                        f"PostgreSQL did not accept connections on {self.host}:{self.port} "
                        f"within {self.start_timeout_s:g} s ({exc}): {self._output_tail()}"
                    ) from None
                time.sleep(0.05)

    def _create_database(self) -> None:
        import psycopg
        from psycopg import sql

        admin = f"{self.dsn[: self.dsn.rindex('/')]}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (DATABASE,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))

    def _output_tail(self, limit: int = 2000) -> str:
        if self.root is None or not (self.root / "postgres.log").is_file():
            return "(no output)"
        text = (self.root / "postgres.log").read_text(errors="replace").strip()
        return text[-limit:] or "(no output)"

    # -- stop -------------------------------------------------------------------------

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (fast shutdown: SIGINT, then SIGKILL of its process group)."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(process.pid, signal.SIGINT)  # fast shutdown: clients disconnected
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout_s)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._given_dir is None and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        self.dsn = ""
        self._attached = False

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _password_of(dsn: str) -> str:
    """The password of a ``postgresql://role:password@host:port/db`` DSN."""
    credentials = dsn.split("://", 1)[1].split("@", 1)[0]
    return credentials.split(":", 1)[1]
