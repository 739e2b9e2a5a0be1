"""Tables without a change column: a snapshot diffed by content hash against the last published state.

`eds_local.snapshot_state` (in the hospital's own database, like the quarantine) keeps, per table and row key,
the md5 of the row's OMOP columns with the interval end from which it holds (`since`) and the one at which it
was replaced or deleted (`until`). Extracting [start, end) publishes the rows whose hash differs from the state
valid at `start` and tombstones the keys gone since; the state update is written in the same REPEATABLE READ
transaction as the streamed rows, so what is recorded is exactly what was published. Rerunning an interval
first drops what that interval recorded (versions since = end, closures at end), so it is a no-op on the
result. Runs of one table must not overlap (the nightly DAG has max_active_runs = 1)."""

from __future__ import annotations

import datetime as dt

import psycopg
from psycopg import sql

from eds_network.core import omop


def snapshot_key(table: str) -> str:
    """The column identifying a row for snapshot diffs: the primary key, or person_id (death)."""
    return omop.table(table).primary_key or "person_id"


def _row_hash(table: str, columns: list[str], alias: str = "t") -> sql.Composable:
    return sql.SQL("md5(ROW({})::text)").format(
        sql.SQL(", ").join(sql.Identifier(alias, c) for c in columns),
    )


def _valid_at(start: dt.datetime, alias: str = "s") -> sql.Composable:
    a = sql.Identifier(alias)
    return sql.SQL("{a}.since <= {s} AND ({a}.until IS NULL OR {a}.until > {s})").format(a=a, s=sql.Literal(start))


def snapshot_filter(table: str, columns: list[str], start: dt.datetime) -> sql.Composable:
    """WHERE clause: rows new or changed since the state valid at `start`."""
    return sql.SQL(
        "NOT EXISTS (SELECT 1 FROM eds_local.snapshot_state s WHERE s.table_name = {tn} AND s.row_key = t.{k}"
        " AND s.row_hash = {h} AND {valid})"
    ).format(
        tn=sql.Literal(table),
        k=sql.Identifier(snapshot_key(table)),
        h=_row_hash(table, columns),
        valid=_valid_at(start),
    )


def snapshot_deleted(conn: psycopg.Connection, table: str, columns: list[str], start: dt.datetime) -> list[int]:
    """Keys in the state valid at `start` that the source no longer holds (same transaction as the stream)."""
    q = sql.SQL(
        "SELECT s.row_key FROM eds_local.snapshot_state s WHERE s.table_name = {tn} AND {valid}"
        " AND NOT EXISTS (SELECT 1 FROM omop.{t} t WHERE t.{k} = s.row_key) ORDER BY 1"
    ).format(
        tn=sql.Literal(table), valid=_valid_at(start), t=sql.Identifier(table), k=sql.Identifier(snapshot_key(table))
    )
    return [r[0] for r in conn.execute(q)]


def snapshot_record(
    conn: psycopg.Connection, table: str, columns: list[str], start: dt.datetime, end: dt.datetime
) -> None:
    """Move the table's state to `end` (same transaction and snapshot as the streamed rows)."""
    tn, e = sql.Literal(table), sql.Literal(end)
    k = sql.Identifier(snapshot_key(table))
    # A rerun of this interval: forget what it recorded.
    conn.execute(sql.SQL("DELETE FROM eds_local.snapshot_state WHERE table_name = {} AND since = {}").format(tn, e))
    conn.execute(
        sql.SQL("UPDATE eds_local.snapshot_state SET until = NULL WHERE table_name = {} AND until = {}").format(tn, e)
    )
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE _eds_cur ON COMMIT DROP AS SELECT t.{k} AS row_key, {h} AS row_hash FROM omop.{t} t"
        ).format(k=k, h=_row_hash(table, columns), t=sql.Identifier(table))
    )
    conn.execute(
        sql.SQL(
            "UPDATE eds_local.snapshot_state s SET until = {e} WHERE s.table_name = {tn} AND s.until IS NULL"
            " AND {valid} AND NOT EXISTS (SELECT 1 FROM _eds_cur c WHERE c.row_key = s.row_key"
            " AND c.row_hash = s.row_hash)"
        ).format(e=e, tn=tn, valid=_valid_at(start))
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO eds_local.snapshot_state (table_name, row_key, row_hash, since)"
            " SELECT {tn}, c.row_key, c.row_hash, {e} FROM _eds_cur c WHERE NOT EXISTS ("
            "SELECT 1 FROM eds_local.snapshot_state s WHERE s.table_name = {tn} AND s.row_key = c.row_key"
            " AND s.row_hash = c.row_hash AND {valid})"
        ).format(tn=tn, e=e, valid=_valid_at(start))
    )
