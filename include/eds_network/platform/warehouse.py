"""The platform warehouse: its resources, tables (OMOP CDM 5.4 plus `_site`, `_batch_id`, `_key_version`)
and bookkeeping schema `eds_platform` (ledger, person_site, rejected batches, duplicate events)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from eds_network.core import digests, omop
from eds_network.core.config import Platform
from eds_network.core.exchange import TOKEN_COLUMN
from eds_network.core.storage import S3Endpoint
from eds_network.platform import changes, keyversions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlatformResources:
    warehouse_dsn: str = field(repr=False)
    intake: S3Endpoint
    outbox: S3Endpoint
    # The platform's current level-1 key version: a batch pseudonymised with another version would not link.
    level1_key_version: str | None = None
    # The trust store (zone -> Ed25519 public key): members' manifests are verified against it. None only in
    # step-level tests that publish unsigned batches; the Airflow adapter always sets it.
    trust: Mapping[str, bytes] | None = None
    # The platform zone's own Ed25519 signing key: its package manifests are signed with it.
    signing_key: bytes | None = field(default=None, repr=False)


def platform_tables(platform: Platform) -> list[str]:
    wanted = {t for b in platform.members for t in b.tables}
    return [t for t in omop.DEFAULT_TABLES if t in wanted] + sorted(wanted - set(omop.DEFAULT_TABLES))


def conflict_key(table: str) -> str:
    return omop.table(table).primary_key or "person_id"


def ensure_warehouse(conn: psycopg.Connection, tables: list[str]) -> None:
    conn.execute("CREATE SCHEMA IF NOT EXISTS omop; CREATE SCHEMA IF NOT EXISTS eds_platform")
    for t in tables:
        spec = omop.table(t)
        cols = [
            sql.SQL("{} {}{}").format(
                sql.Identifier(c.name),
                sql.SQL(c.sql_type),
                sql.SQL(" NOT NULL" if c.name == conflict_key(t) else ""),
            )
            for c in spec.columns
        ]
        cols.append(sql.SQL("_site integer NOT NULL"))
        cols.append(sql.SQL("_batch_id text NOT NULL"))
        cols.append(sql.SQL("{} text").format(sql.Identifier(keyversions.KEY_VERSION_COLUMN)))
        if t == "person":
            cols.append(sql.SQL("{} text").format(sql.Identifier(TOKEN_COLUMN)))
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS omop.{} ({}, PRIMARY KEY ({}))").format(
                sql.Identifier(t), sql.SQL(", ").join(cols), sql.Identifier(conflict_key(t))
            )
        )
        if spec.has("person_id") and t != "person":
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON omop.{} (person_id)").format(
                    sql.Identifier(f"{t}_person_idx"), sql.Identifier(t)
                )
            )
    conn.execute("""
        CREATE TABLE IF NOT EXISTS eds_platform.ledger (
            batch_id text NOT NULL, manifest_sha256 text NOT NULL, base_id text NOT NULL,
            data_interval_start timestamptz, rows jsonb NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (batch_id, manifest_sha256));
        CREATE TABLE IF NOT EXISTS eds_platform.person_site (
            person_id bigint NOT NULL, base_id text NOT NULL, site_number integer NOT NULL,
            PRIMARY KEY (person_id, base_id));
        CREATE TABLE IF NOT EXISTS eds_platform.rejected (
            batch_id text NOT NULL, manifest_sha256 text NOT NULL, reason text NOT NULL,
            rejected_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (batch_id, manifest_sha256));
        ALTER TABLE eds_platform.ledger ADD COLUMN IF NOT EXISTS replaced_at timestamptz;
        ALTER TABLE eds_platform.person_site ADD COLUMN IF NOT EXISTS batch_id text;
        ALTER TABLE eds_platform.rejected ADD COLUMN IF NOT EXISTS base_id text;
        CREATE TABLE IF NOT EXISTS eds_platform.duplicate_event (
            table_name text NOT NULL, row_id bigint NOT NULL, duplicate_of bigint NOT NULL,
            person_id bigint NOT NULL, site_number integer NOT NULL, PRIMARY KEY (table_name, row_id));
    """)
    keyversions.ensure_registry(conn, tables)
    changes.ensure_tracking(conn, {t: conflict_key(t) for t in tables})
    digests.ensure_registry(conn, "eds_platform")


def expected_columns(table: str) -> list[str]:
    cols = omop.table(table).column_names
    return [*cols, TOKEN_COLUMN] if table == "person" else cols


def published_columns(table: str) -> list[str]:
    """The columns of a member's file: the warehouse's, plus (person) the digest beside each 63-bit id, which is
    checked and kept in `eds_platform.person_digest`, never in `omop.person`."""
    cols = expected_columns(table)
    return [*cols, digests.DIGEST_COLUMN] if table == "person" else cols
