"""The hospital's own quarantine: rows that never leave it, kept in its database (`eds_local.quarantine`)."""

from __future__ import annotations

import json
import math

import psycopg
import pyarrow as pa


def ensure_local_schema(conn: psycopg.Connection) -> None:
    conn.execute(
        "CREATE SCHEMA IF NOT EXISTS eds_local;"
        "CREATE TABLE IF NOT EXISTS eds_local.quarantine (batch_id text NOT NULL, table_name text NOT NULL,"
        " reason text NOT NULL, row_data jsonb, recorded_at timestamptz NOT NULL DEFAULT now());"
        "CREATE TABLE IF NOT EXISTS eds_local.snapshot_state (table_name text NOT NULL, row_key bigint NOT NULL,"
        " row_hash text NOT NULL, since timestamptz NOT NULL, until timestamptz);"
        "CREATE INDEX IF NOT EXISTS snapshot_state_key ON eds_local.snapshot_state (table_name, row_key)"
    )


def reset_quarantine(conn: psycopg.Connection, bid: str, table: str) -> None:
    """The hospital's own quarantine table, emptied of this batch's earlier rows for `table` (rerun)."""
    ensure_local_schema(conn)
    conn.execute("DELETE FROM eds_local.quarantine WHERE batch_id = %s AND table_name = %s", (bid, table))


def _json_safe(value):
    """NaN and ±Infinity are not JSON (PostgreSQL would reject the row, and its error quote the value): they are
    kept as the strings 'NaN', 'Infinity', '-Infinity'."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def row_json(rec: dict) -> str:
    """One quarantined row as strict JSON (never NaN/Infinity literals)."""
    return json.dumps({k: _json_safe(v) for k, v in rec.items()}, default=str, allow_nan=False)


def record_quarantine(conn: psycopg.Connection, bid: str, table: str, rows: pa.Table, reason: str) -> None:
    """Quarantined rows stay at the local level, in the hospital's own database."""
    with conn.cursor().copy("COPY eds_local.quarantine (batch_id, table_name, reason, row_data) FROM STDIN") as copy:
        for rec in rows.to_pylist():
            copy.write_row((bid, table, reason, row_json(rec)))
