"""The extraction's COPY reader (`copystream.stream_query`) against real PostgreSQL: rows read from libpq's buffer
in blocks of whole rows, each block parsed on its own, and the COPY's final result checked."""

from __future__ import annotations

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from eds_network.core import copystream

TYPES = {"id": pa.int64(), "note": pa.string()}
# Text that would break a reader cutting blocks anywhere but at row ends: separators, quotes, new lines.
ROWS = "SELECT x AS id, CASE WHEN x % 3 = 0 THEN 'a,b \"c\"' || chr(10) || 'line ' || x ELSE 'n' || x END AS note"


def _stream(dsn: str, query: str) -> list[pa.RecordBatch]:
    with psycopg.connect(dsn) as conn:
        return list(copystream.stream_query(conn, sql.SQL(query), list(TYPES), TYPES, table="t"))


def test_blocks_of_whole_rows_give_every_row_once_with_embedded_separators(fresh_db, monkeypatch):
    monkeypatch.setattr(copystream, "COPY_BLOCK", 256)  # hundreds of blocks, boundaries everywhere
    batches = _stream(fresh_db, f"{ROWS} FROM generate_series(1, 5000) x")
    assert len(batches) > 100
    table = pa.Table.from_batches(batches)
    assert table["id"].to_pylist() == list(range(1, 5001))
    notes = table["note"].to_pylist()
    assert notes[2] == 'a,b "c"\nline 3' and notes[3] == "n4"


def test_an_empty_result_gives_no_batch(fresh_db):
    assert _stream(fresh_db, f"{ROWS} FROM generate_series(1, 0) x") == []


def test_a_server_error_after_rows_were_sent_is_raised_and_leaves_the_connection_usable(fresh_db, monkeypatch):
    monkeypatch.setattr(copystream, "COPY_BLOCK", 1024)
    # Rows 1..199,999 stream out before row 200,000 divides by zero: the error comes as the COPY's result.
    query = sql.SQL("SELECT x AS id, (1 / (200000 - x))::text AS note FROM generate_series(1, 300000) x")
    with psycopg.connect(fresh_db) as conn:
        seen = 0
        with pytest.raises(psycopg.errors.DivisionByZero):
            for batch in copystream.stream_query(conn, query, list(TYPES), TYPES, table="t"):
                seen += batch.num_rows
        assert seen > 0  # rows did arrive before the error
        conn.rollback()  # psycopg's view of the connection matches libpq's after the direct reads
        assert conn.execute("SELECT 1").fetchone() == (1,)
