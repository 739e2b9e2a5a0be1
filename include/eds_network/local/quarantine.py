"""The hospital's own quarantine: rows that never leave it, kept in its database (`eds_local.quarantine`)."""

from __future__ import annotations

import json
import math
from decimal import Decimal

import psycopg
import pyarrow as pa

from eds_network.core.errors import EdsError


def reset_quarantine(conn: psycopg.Connection, bid: str, table: str) -> None:
    """The hospital's own quarantine table, emptied of this batch's earlier rows for `table` (rerun)."""
    conn.execute("DELETE FROM eds_local.quarantine WHERE batch_id = %s AND table_name = %s", (bid, table))


def _json_safe(value):
    """NaN and ±Infinity are not JSON (PostgreSQL would reject the row, and its error quote the value): they are
    kept as the strings 'NaN', 'Infinity', '-Infinity', at any depth (lists, structs, maps) and whatever their
    type (float, numpy float, Decimal). A NUL character, which jsonb refuses, is dropped."""
    if isinstance(value, float | Decimal) or type(value).__name__ in ("float32", "float64", "float16"):
        f = float(value)
        if not math.isfinite(f):
            return "NaN" if math.isnan(f) else ("Infinity" if f > 0 else "-Infinity")
        return value if isinstance(value, float) else (str(value) if isinstance(value, Decimal) else f)
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        # a map column comes as a list of (key, value) pairs
        return [_json_safe(v) for v in value]
    return value


def row_json(rec: dict) -> str:
    """One quarantined row as strict JSON (never NaN/Infinity literals, at any depth)."""
    return json.dumps(_json_safe(rec), default=str, allow_nan=False)


def record_quarantine(conn: psycopg.Connection, bid: str, table: str, rows: pa.Table, reason: str) -> None:
    """Quarantined rows stay at the local level, in the hospital's own database.

    If the database refuses a row anyway, the error raised names the batch and table and the SQLSTATE, never
    the server's message (whose CONTEXT line would quote the row)."""
    try:
        with conn.cursor().copy(
            "COPY eds_local.quarantine (batch_id, table_name, reason, row_data) FROM STDIN"
        ) as copy:
            for rec in rows.to_pylist():
                copy.write_row((bid, table, reason, row_json(rec)))
    except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as exc:
        raise EdsError(
            f"the hospital's quarantine refused a row of batch {bid} (SQLSTATE {exc.sqlstate}); the row is not quoted",
            table=table,
            column="row_data",
        ) from None
