"""The zones' state schemas under Alembic (`core.migrations`): hospital (`eds_local`), warehouse (`omop`,
`eds_platform`), national (`eds_national`), on real PostgreSQL."""

from __future__ import annotations

import secrets
import threading

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from eds_network.core import omop
from eds_network.core.migrations import Migrations
from eds_network.local.migrations import MIGRATIONS as HOSPITAL
from eds_network.national.migrations import MIGRATIONS as NATIONAL
from eds_network.platform.migrations import MIGRATIONS as WAREHOUSE
from eds_network.platform.warehouse import expected_columns

pytestmark = pytest.mark.integration

ENVIRONMENTS = {"hospital": HOSPITAL, "warehouse": WAREHOUSE, "national": NATIONAL}


def _tables(dsn: str, schema: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))
        return {r[0] for r in rows}


def _columns(dsn: str, schema: str, table: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
            " ORDER BY ordinal_position",
            (schema, table),
        )
        return [r[0] for r in rows]


@pytest.mark.parametrize("name", sorted(ENVIRONMENTS))
def test_a_new_database_is_migrated_to_head_once(name, fresh_db, monkeypatch):
    env = ENVIRONMENTS[name]
    assert env.head is not None and env.current(fresh_db) is None
    env.ensure(fresh_db)
    assert env.current(fresh_db) == env.head
    assert "alembic_version" in _tables(fresh_db, env.schema)
    # At head, `ensure` reads the version and nothing else: no upgrade, no DDL.
    monkeypatch.setattr(Migrations, "upgrade", lambda *a, **k: pytest.fail("upgrade of a database at head"))
    env.ensure(fresh_db)


def test_concurrent_first_runs_serialise_on_the_advisory_lock(fresh_db):
    errors: list[BaseException] = []

    def run() -> None:
        try:
            HOSPITAL.upgrade(fresh_db)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT version_num FROM eds_local.alembic_version").fetchall() == [(HOSPITAL.head,)]


def test_the_warehouse_has_every_table_a_member_may_send_with_the_platform_columns(fresh_db):
    WAREHOUSE.ensure(fresh_db)
    omop_tables = _tables(fresh_db, "omop")
    assert set(omop.DEFAULT_TABLES) <= omop_tables
    assert {"visit_detail", "specimen", "device_exposure"} <= omop_tables
    assert not {"note", "note_nlp", "fact_relationship"} & omop_tables  # free text; nothing to merge rows on
    for t in omop_tables:
        cols = _columns(fresh_db, "omop", t)
        assert cols[: len(omop.table(t).column_names)] == omop.table(t).column_names, t
        assert set(expected_columns(t)) <= set(cols), t
        assert {"_site", "_batch_id", "_key_version"} <= set(cols), t
    assert "_transport_token" in _columns(fresh_db, "omop", "person")
    assert _tables(fresh_db, "eds_platform") == {
        "alembic_version", "ledger", "person_site", "rejected", "duplicate_event", "key_version", "manifest_state",
        "vocabulary_load", "change_log", "packaged", "person_digest",
        # the statistics the warehouse maintains (platform/stats.py)
        "table_stats", "touched_person", "event_person", "orphan_rows", "visit_ref", "touched_visit",
        "orphan_visit_rows",
    }  # fmt: skip
    # change tracking (incremental deliveries): every OMOP table has `_seq` and its two triggers
    for t in omop_tables:
        assert "_seq" in _columns(fresh_db, "omop", t), t


def test_a_warehouse_built_before_migrations_is_taken_over_as_it_is(fresh_db):
    """What the consolidation created at runtime before (an early ledger, no key versions) gets the columns
    added since, and keeps its rows."""
    with psycopg.connect(fresh_db) as conn:
        conn.execute(
            "CREATE SCHEMA eds_platform; CREATE SCHEMA omop;"
            "CREATE TABLE eds_platform.ledger (batch_id text NOT NULL, manifest_sha256 text NOT NULL,"
            " base_id text NOT NULL, data_interval_start timestamptz, rows jsonb NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (batch_id, manifest_sha256));"
            "INSERT INTO eds_platform.ledger (batch_id, manifest_sha256, base_id, rows) VALUES ('b1', 's', 'a', '{}');"
            "CREATE TABLE omop.death (person_id bigint NOT NULL, death_date date, _site integer NOT NULL,"
            " _batch_id text NOT NULL, PRIMARY KEY (person_id))"
        )
    WAREHOUSE.ensure(fresh_db)
    assert "replaced_at" in _columns(fresh_db, "eds_platform", "ledger")
    assert "_key_version" in _columns(fresh_db, "omop", "death")
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT batch_id FROM eds_platform.ledger").fetchall() == [("b1",)]


def test_the_national_database_gets_its_ledger_and_its_person_digest_registry(fresh_db):
    NATIONAL.ensure(fresh_db)
    assert _tables(fresh_db, "eds_national") == {"alembic_version", "applied", "person_digest"}
    assert {"since_seq", "upto_seq", "key_versions", "rows_deleted"} <= set(
        _columns(fresh_db, "eds_national", "applied")
    )


def test_a_zone_role_that_owns_its_schema_but_may_not_create_schemas_migrates_it(fresh_db):
    """The hospital zone's role owns `eds_local` (made by the grants) but has no CREATE on the source database:
    PostgreSQL refuses even `CREATE SCHEMA IF NOT EXISTS` of an existing schema to it, so the runner must not
    issue one."""
    role = f"eds_zone_{secrets.token_hex(4)}"
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'zone'").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE SCHEMA eds_local AUTHORIZATION {}").format(sql.Identifier(role)))
    try:
        zone_dsn = make_conninfo(fresh_db, user=role, password="zone")
        with psycopg.connect(zone_dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE SCHEMA IF NOT EXISTS eds_local")  # what the runner must never do
        HOSPITAL.ensure(zone_dsn)
        assert HOSPITAL.current(zone_dsn) == HOSPITAL.head
        assert {"quarantine", "published_state", "level1_pseudonym"} <= _tables(fresh_db, "eds_local")
    finally:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
