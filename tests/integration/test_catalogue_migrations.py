"""The catalogue schema is managed by Alembic: the migrations create exactly the SQLAlchemy metadata.

A table, column or index added to `catalogue.metadata` without its migration makes
`test_migrations_create_exactly_the_metadata` fail, naming what is missing.
"""

from __future__ import annotations

import threading

import psycopg
import pytest
from alembic import command
from sqlalchemy import Column, MetaData, String, Table, text

from eds_network import catalogue

pytestmark = pytest.mark.integration


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {
            r[0]
            for r in conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'catalogue'")
        }


def test_migrations_create_exactly_the_metadata(fresh_db):
    assert catalogue.upgrade(fresh_db) == catalogue.head_revision()
    diff = catalogue.schema_diff(fresh_db)
    assert diff == [], f"catalogue.metadata differs from the migrated database; add a migration for: {diff}"
    assert _tables(fresh_db) == {t.name for t in catalogue.metadata.sorted_tables} | {"alembic_version"}
    with psycopg.connect(fresh_db) as conn:
        trig = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'catalogue.audit'::regclass AND NOT tgisinternal"
        ).fetchall()
    assert trig == [("audit_append_only",)]


def test_a_table_without_a_migration_is_reported(fresh_db):
    catalogue.upgrade(fresh_db)
    ahead = MetaData(schema=catalogue.SCHEMA)
    for t in catalogue.metadata.sorted_tables:
        t.to_metadata(ahead)
    Table("quality_result", ahead, Column("id", String(64), primary_key=True))
    diff = catalogue.schema_diff(fresh_db, ahead)
    assert [d[0] for d in diff] == ["add_table"]
    assert diff[0][1].name == "quality_result"


def test_create_schema_is_idempotent_and_concurrent_safe(fresh_db):
    errors: list[BaseException] = []

    def run():
        try:
            catalogue.create_schema(fresh_db)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    catalogue.create_schema(fresh_db)
    assert catalogue.current_revision(fresh_db) == catalogue.head_revision()
    with catalogue.engine(fresh_db).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM catalogue.alembic_version")).scalar_one() == 1


def test_a_catalogue_built_before_migrations_is_stamped_then_upgraded(fresh_db):
    # the pre-Alembic way: create_all, no version table; a row in it must survive
    with catalogue.engine(fresh_db).begin() as conn:
        conn.execute(text("CREATE SCHEMA catalogue"))
        # what create_all built before migrations: the tables of the baseline revision
        baseline = {"platform", "base", "milestone", "run", "run_table", "delivery", "audit"}
        catalogue.metadata.create_all(conn, tables=[t for t in catalogue.metadata.sorted_tables if t.name in baseline])
        conn.execute(catalogue.platform_t.insert().values(id="idf", label="IdF", kind="regional"))
    assert catalogue.current_revision(fresh_db) is None
    assert catalogue.upgrade(fresh_db) == catalogue.head_revision()
    assert catalogue.count(fresh_db, catalogue.platform_t) == 1
    assert catalogue.schema_diff(fresh_db) == []
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM catalogue.alembic_version").fetchone() == (1,)


def test_downgrade_to_base_then_upgrade_again(fresh_db):
    catalogue.upgrade(fresh_db)
    with catalogue.engine(fresh_db).begin() as conn:
        command.downgrade(catalogue.alembic_config(conn), "base")
    assert _tables(fresh_db) <= {"alembic_version"}
    catalogue.upgrade(fresh_db)
    assert catalogue.schema_diff(fresh_db) == []
