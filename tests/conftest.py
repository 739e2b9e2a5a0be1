"""Shared fixtures: one real embedded stack (PostgreSQL + S3 endpoint + migrated Airflow DB) per test session.

`EDS_NO_STACK=1` (the fast lane, `make test-fast`) starts nothing: a test that asks for the stack is skipped.

The test stack has its own state folder (.eds-test/) and ports, so it never touches the demo's `.eds/`.
The ports lie below the kernel's ephemeral range (Linux: 32768-60999), where a client socket could hold them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("EDS_HOME", str(REPO / ".eds-test"))
os.environ.setdefault("EDS_PG_PORT", "26432")
os.environ.setdefault("EDS_S3_PORT", "26900")
os.environ.setdefault("EDS_API_PORT", "26080")


@pytest.fixture(scope="session")
def stack():
    from eds_network.core.config import load_network
    from eds_network.dev.stack import Stack

    if os.environ.get("EDS_NO_STACK"):
        pytest.skip("EDS_NO_STACK: this lane starts no data system")
    s = Stack.default()
    s.start(load_network())
    yield s
    if not os.environ.get("EDS_KEEP_STACK"):  # set it to share one running stack between pytest sessions
        s.stop()


@pytest.fixture
def new_db(stack):
    """Factory of new empty databases on the embedded PostgreSQL (sources, warehouses); all dropped afterwards."""
    names: list[str] = []

    def make() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        names.append(name)
        return stack.create_database(name)

    yield make
    import psycopg
    from psycopg import sql

    with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def fresh_db(new_db):
    """A new empty database on the embedded PostgreSQL; dropped afterwards."""
    return new_db()


@pytest.fixture(scope="module")
def synthea_zip():
    """The Synthea27Nj sample beside the checkout (../shared); tests that need it are skipped without it."""
    from eds_network.core.errors import SourceError
    from eds_network.dev import seed

    try:
        return seed.synthea_zip_path()
    except SourceError as exc:
        pytest.skip(str(exc))
