"""Fixtures of the postgres adapter tests: one real embedded PostgreSQL per session.

The server is the adapter's own embedded one (the ``pgserver`` wheel's binaries, or the
system's), started once on a loopback port and stopped at the end of the session. Every
test gets a queue of its own (fresh table names), so tests do not see each other's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

pytest.importorskip("psycopg")

from pg_testing import Queue

from irkit.runtime.adapters.postgres_schema import Tables
from irkit.runtime.adapters.postgres_server import EmbeddedPostgres


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres() as server:
        yield server


@pytest.fixture
def queue(pg_server: EmbeddedPostgres) -> Queue:
    name = f"q{uuid.uuid4().hex[:10]}"
    return Queue(pg_server.dsn, Tables(f"{name}_requests", f"{name}_results"))
