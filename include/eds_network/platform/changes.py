"""Change tracking in the platform warehouse, for incremental deliveries to the national level (the sequence,
columns, triggers and tables are created by the warehouse migration `0002_change_tracking`).

- Every warehouse row carries `_seq`: a value of the warehouse-wide sequence `eds_platform.change_seq`, drawn
  when the row is inserted and again whenever an update really changes it (a `BEFORE UPDATE` trigger compares
  the whole row; for `person`, all but the sealed transport token, which every extraction seals anew: revision
  `0004_person_token_no_change`), whatever statement writes it: the merge, a tombstone, a re-keying run.
- Every deleted row leaves one entry in `eds_platform.change_log` (a statement-level `AFTER DELETE` trigger with
  a transition table): the table, its row id (for `person`: no id, only the person's sealed transport token,
  from which the national zone derives the level-2 pseudonym) and a sequence value. Never a level-1 person id.
- A delivery holds the changes in (`since`, `upto`]: rows with `since < _seq <= upto` (upserts) and change-log
  entries in that range (deletes). `since` is the watermark the HDH acknowledged (`ack.py`); the entries at or
  below it are pruned when the platform reads the acknowledgement, so an objector's tokens do not outlive
  the delivery that erased them.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

SEQ_COLUMN = "_seq"


def high_water(conn: psycopg.Connection, tables: list[str]) -> int:
    """The highest change sequence value the warehouse holds now (rows and change log): a delivery's `upto`."""
    parts = [sql.SQL("SELECT max(seq) FROM eds_platform.change_log")] + [
        sql.SQL("SELECT max({c}) FROM omop.{t}").format(c=sql.Identifier(SEQ_COLUMN), t=sql.Identifier(t))
        for t in tables
    ]
    q = sql.SQL("SELECT coalesce(max(m), 0) FROM ({}) AS x(m)").format(sql.SQL(" UNION ALL ").join(parts))
    return int(conn.execute(q).fetchone()[0])


def prune(conn: psycopg.Connection, upto: int) -> int:
    """Forget the deletions the HDH has acknowledged (at or below `upto`). Returns the entries removed."""
    return conn.execute("DELETE FROM eds_platform.change_log WHERE seq <= %s", (upto,)).rowcount


def reconcile_due(conn: psycopg.Connection, every_days: int) -> bool:
    """Whether the last full or reconciliation package is `every_days` old or more (none: due). 0: never due."""
    if every_days <= 0:
        return False
    last = conn.execute(
        "SELECT max(packaged_at) FROM eds_platform.packaged WHERE kind IN ('full', 'reconcile')"
    ).fetchone()[0]
    if last is None:
        return True
    return bool(conn.execute("SELECT now() - %s >= make_interval(days => %s)", (last, every_days)).fetchone()[0])


def record_package(
    conn: psycopg.Connection,
    delivery_id: str,
    kind: str,
    since: int | None,
    upto: int,
    transport_version: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO eds_platform.packaged (delivery_id, kind, since_seq, upto_seq, transport_version)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (delivery_id) DO NOTHING",
        (delivery_id, kind, since, upto, transport_version),
    )
