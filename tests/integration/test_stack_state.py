"""A new state folder starts from empty databases, even where the cluster lives outside it (as root, see
`Stack.pg_root`): a fresh clone at the path of an old one must not find the old checkout's catalogue, warehouses
and ledgers. A real PostgreSQL of the test's own, on a port of its own."""

from __future__ import annotations

import shutil

import psycopg
import pytest

from eds_network.dev.postgres import port_free
from eds_network.dev.stack import Stack

pytestmark = [pytest.mark.integration]


def _free_port() -> int:
    return next(p for p in range(23100, 23400) if port_free(p))


def _databases(stack: Stack) -> set[str]:
    with psycopg.connect(stack.dsn("postgres")) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def test_a_new_state_folder_never_reuses_the_databases_an_old_one_left(tmp_path):
    root = tmp_path / "state"
    port = _free_port()
    old = Stack(root=root, pg_port=port, s3_port=port + 1, api_port=port + 2)
    try:
        old.start_postgres()
        old.create_database("left_by_the_old_checkout")
        old.stop_postgres()
        # The same state folder again: its own cluster, databases kept.
        old.start_postgres()
        assert "left_by_the_old_checkout" in _databases(old)
        old.stop_postgres()
        # A fresh clone at the same path: the state folder is new, the old cluster (wherever it lives) an orphan.
        shutil.rmtree(root)
        new = Stack(root=root, pg_port=port, s3_port=port + 1, api_port=port + 2)
        new.start_postgres()
        assert "left_by_the_old_checkout" not in _databases(new)
        assert {"postgres", "template1"} <= _databases(new)
    finally:
        Stack(root=root, pg_port=port, s3_port=port + 1, api_port=port + 2).stop_postgres()
        shutil.rmtree(old.pg_root, ignore_errors=True)
