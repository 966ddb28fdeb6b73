"""The embedded PostgreSQL server: starts from the installed binaries, stops completely,
keeps a data directory's data, and lets a second user of the directory attach."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from irkit.runtime.adapters.postgres_server import (
    EmbeddedPostgres,
    PostgresServerError,
    postgres_bin_dir,
)

pytestmark = pytest.mark.service


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A directory the server's account can reach (pytest's tmp_path is root-only as root)."""
    path = Path(tempfile.mkdtemp(prefix="irkit-pg-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_binaries_are_found() -> None:
    bin_dir = postgres_bin_dir()
    assert (bin_dir / "initdb").is_file() and (bin_dir / "postgres").is_file()


def test_a_temporary_server_serves_and_leaves_nothing_behind() -> None:
    with EmbeddedPostgres() as server:
        pid, root = server.pid, server.root
        assert pid is not None and root is not None
        with psycopg.connect(server.dsn) as conn:
            row = conn.execute("SELECT current_user, current_database(), "
                               "current_setting('listen_addresses')").fetchone()
        assert row == ("irkit", "irkit", "127.0.0.1")
        assert stat.S_IMODE((root / "dsn").stat().st_mode) == 0o600
        assert (root / "dsn").read_text().strip() == server.dsn
        password = server.dsn.split("://", 1)[1].split("@")[0].split(":")[1]
        assert len(password) >= 20
        wrong = server.dsn.replace(password, "wrong")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(wrong)
    assert _gone(pid) and not root.exists()


def test_a_data_dir_keeps_its_data_and_a_second_user_attaches(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir).start()
    try:
        with psycopg.connect(first.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        with EmbeddedPostgres(data_dir) as second:  # the server is running: attach
            assert second.pid is None and second.dsn == first.dsn
        with psycopg.connect(first.dsn) as conn:  # still up after the second one stopped
            assert conn.execute("SELECT v FROM kept").fetchone() == (42,)
        pid, dsn = first.pid, first.dsn
    finally:
        first.stop()
    assert pid is not None and _gone(pid) and data_dir.exists()
    with EmbeddedPostgres(data_dir) as again:
        assert again.pid is not None and again.pid != pid
        assert again.dsn == dsn  # same password, and the same port while it is free
        with psycopg.connect(again.dsn) as conn:
            assert conn.execute("SELECT v FROM kept").fetchone() == (42,)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_as_root_an_unreachable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    tmp_path.chmod(0o700)
    with pytest.raises(PostgresServerError, match="cannot reach the data directory"):
        EmbeddedPostgres(private / "pg").start()


def test_a_worker_reconnects_after_the_server_restarts(
    data_dir: Path, digits_model: Any
) -> None:
    import numpy as np
    from pg_testing import Queue, serving

    from irkit.runtime.adapters.postgres_schema import Tables, fetch_result, submit_binary

    server = EmbeddedPostgres(data_dir).start()
    try:
        queue = Queue(server.dsn, Tables())
        x = np.random.default_rng(9).standard_normal((2, 64)).astype(np.float32)
        with serving(digits_model, queue, poll_interval_ms=100) as adapter:
            server.stop()  # fast shutdown: the worker's connections are cut
            time.sleep(0.5)
            server.start()  # same directory, same DSN
            with psycopg.connect(server.dsn, autocommit=True) as conn:
                request_id = submit_binary(conn, [{"x": x[:1]}])[0]
                deadline = time.monotonic() + 30
                while (got := fetch_result(conn, request_id)) is None:
                    assert time.monotonic() < deadline, "the worker did not come back"
                    time.sleep(0.05)
            assert adapter.ready.is_set()
        np.testing.assert_allclose(got["logits"], digits_model.run({"x": x[:1]})["logits"],
                                   atol=1e-5)
    finally:
        server.stop()
