"""The warehouse: one table per OMOP CDM 5.4 table a member base may put in scope, generated from the packaged
OMOP schema (`core/data/omop54_fields.csv`, fixed for CDM 5.4) plus the platform's columns (`_site`, `_batch_id`,
`_key_version`, and `_transport_token` on person), and the bookkeeping schema `eds_platform`: ledger of applied
batches, person_site, rejected batches, duplicate events, key versions, manifest state, vocabulary load.

Written with IF NOT EXISTS (and ADD COLUMN IF NOT EXISTS for the columns added over time) so that a warehouse
whose tables the consolidation created before these migrations existed is taken over as it is. Clinical tables
without a primary key and without person_id (episode_event, fact_relationship) have nothing to merge rows on:
the platform does not carry them.

Revision ID: 0001_warehouse
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op
from psycopg import sql

from eds_network.core import omop

revision = "0001_warehouse"
down_revision = None
branch_labels = None
depends_on = None

PLATFORM_COLUMNS = "_site integer NOT NULL, _batch_id text NOT NULL, _key_version text"


def _tables() -> list[str]:
    scope = [*omop.DEFAULT_TABLES, *sorted(omop.CLINICAL_TABLES - set(omop.DEFAULT_TABLES))]
    return [t for t in scope if omop.table(t).primary_key or omop.table(t).has("person_id")]


def _create(table: str) -> list[sql.Composable]:
    spec = omop.table(table)
    key = spec.primary_key or "person_id"
    cols = [
        sql.SQL("{} {}{}").format(
            sql.Identifier(c.name), sql.SQL(c.sql_type), sql.SQL(" NOT NULL" if c.name == key else "")
        )
        for c in spec.columns
    ]
    cols.append(sql.SQL(PLATFORM_COLUMNS))
    if table == "person":
        cols.append(sql.SQL("_transport_token text"))
    out = [
        sql.SQL("CREATE TABLE IF NOT EXISTS omop.{} ({}, PRIMARY KEY ({}))").format(
            sql.Identifier(table), sql.SQL(", ").join(cols), sql.Identifier(key)
        ),
        # a warehouse of before key versions
        sql.SQL("ALTER TABLE omop.{} ADD COLUMN IF NOT EXISTS _key_version text").format(sql.Identifier(table)),
    ]
    if spec.has("person_id") and table != "person":
        out.append(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON omop.{} (person_id)").format(
                sql.Identifier(f"{table}_person_idx"), sql.Identifier(table)
            )
        )
    return out


BOOKKEEPING = """
    CREATE TABLE IF NOT EXISTS eds_platform.ledger (
        batch_id text NOT NULL, manifest_sha256 text NOT NULL, base_id text NOT NULL,
        data_interval_start timestamptz, rows jsonb NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),
        replaced_at timestamptz, PRIMARY KEY (batch_id, manifest_sha256));
    CREATE TABLE IF NOT EXISTS eds_platform.person_site (
        person_id bigint NOT NULL, base_id text NOT NULL, site_number integer NOT NULL, batch_id text,
        PRIMARY KEY (person_id, base_id));
    CREATE TABLE IF NOT EXISTS eds_platform.rejected (
        batch_id text NOT NULL, manifest_sha256 text NOT NULL, reason text NOT NULL,
        rejected_at timestamptz NOT NULL DEFAULT now(), base_id text, PRIMARY KEY (batch_id, manifest_sha256));
    ALTER TABLE eds_platform.ledger ADD COLUMN IF NOT EXISTS replaced_at timestamptz;
    ALTER TABLE eds_platform.person_site ADD COLUMN IF NOT EXISTS batch_id text;
    ALTER TABLE eds_platform.rejected ADD COLUMN IF NOT EXISTS base_id text;
    CREATE TABLE IF NOT EXISTS eds_platform.duplicate_event (
        table_name text NOT NULL, row_id bigint NOT NULL, duplicate_of bigint NOT NULL,
        person_id bigint NOT NULL, site_number integer NOT NULL, PRIMARY KEY (table_name, row_id));
    CREATE TABLE IF NOT EXISTS eds_platform.key_version (
        version text PRIMARY KEY, seq bigint GENERATED ALWAYS AS IDENTITY,
        first_applied_at timestamptz NOT NULL DEFAULT clock_timestamp(), retired_at timestamptz);
    CREATE TABLE IF NOT EXISTS eds_platform.manifest_state (
        base_id text NOT NULL, batch_id text NOT NULL, published_at timestamptz NOT NULL,
        manifest_sha256 text NOT NULL, accepted_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (base_id, batch_id));
    CREATE TABLE IF NOT EXISTS eds_platform.vocabulary_load (
        archive_sha256 text PRIMARY KEY, archive text NOT NULL, rows jsonb NOT NULL,
        loaded_at timestamptz NOT NULL DEFAULT now());
"""


def upgrade() -> None:
    if op.get_bind().exec_driver_sql("SELECT to_regnamespace('omop')").scalar() is None:
        op.execute("CREATE SCHEMA omop")
    raw = op.get_bind().connection.driver_connection  # psycopg: compose identifiers with psycopg.sql
    for t in _tables():
        for stmt in _create(t):
            op.execute(stmt.as_string(raw))
    op.execute(BOOKKEEPING)


def downgrade() -> None:
    for t in (
        "vocabulary_load",
        "manifest_state",
        "key_version",
        "duplicate_event",
        "rejected",
        "person_site",
        "ledger",
    ):
        op.execute(f"DROP TABLE IF EXISTS eds_platform.{t}")
    for t in reversed(_tables()):
        op.execute(f'DROP TABLE IF EXISTS omop."{t}"')
