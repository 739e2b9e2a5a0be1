"""What a bulk load counts of the rows it writes, as it writes them (issue 23): the groups `stats.recount`
would otherwise get from one more scan of the table just loaded (rows per person and per visit, rows per site,
unmapped concepts and unknown units).

Each batch the COPY sends is grouped by Arrow in the encoder thread, beside the CSV encoding (outside the GIL),
and the groups are folded together every `FOLD` batches, so memory follows the table's persons and visits, not
its rows. With a vocabulary, standardisation rewrites the concepts after the COPY: unmapped concepts and unknown
units are then counted by one aggregate over the loaded table, the only part that reads it again.
"""

from __future__ import annotations

import io

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql

from eds_network.platform import stats
from eds_network.platform.standardise import UNIT_TABLES, concept_columns

FOLD = 32  # batches grouped before their groups are folded into one table
UNIT_COLUMNS = ("unit_source_value", "unit_concept_id")


def _fold(parts: list[pa.Table], key: str) -> list[pa.Table]:
    """The groups of several batches as one table of (key, n), one row per key."""
    if len(parts) <= 1:
        return parts
    t = pa.concat_tables(parts).group_by(key).aggregate([("n", "sum")])
    return [t.rename_columns({"n_sum": "n"})]


class LoadCounts:
    """The groups of omop.<table>'s rows, counted from the batches a bulk load COPYs into it (the table held no
    row before: every row is the batch's, all of one site). `cols`: the columns the COPY writes."""

    def __init__(self, conn: psycopg.Connection, table: str, site: int, cols: list[str]) -> None:
        self.table, self.site = table, site
        have = stats.columns(conn, table)
        self.person = stats.has_person(table, have)
        self.refs = stats.visit_kind(table, have) == "refs"
        cc = concept_columns(table)
        self.concept = cc[0] if cc and cc[0] in have else None
        self.units = table in UNIT_TABLES and set(UNIT_COLUMNS) <= have
        # Counted by SQL after the load: with a vocabulary (standardisation changes them), or when a column they
        # read is not written by the COPY (its value is the table's default, not the batch's).
        unwritten = (self.concept and self.concept not in cols) or (self.units and not set(UNIT_COLUMNS) <= set(cols))
        self.in_sql = stats.has_vocabulary(conn) or bool(unwritten)
        # A key the COPY does not write: the loaded table is scanned instead (`covers` False).
        self.covers = not (self.person and "person_id" not in cols) and not (
            self.refs and "visit_occurrence_id" not in cols
        )
        self.rows = self.bad = self.unit = 0
        self._parts: dict[str, list[pa.Table]] = {"person_id": [], "visit_occurrence_id": []}

    def add(self, rb: pa.RecordBatch) -> None:
        """Count one batch the COPY sends."""
        self.rows += rb.num_rows
        t = pa.Table.from_batches([rb])
        for key, on in (("person_id", self.person), ("visit_occurrence_id", self.refs)):
            if on and key in t.column_names:
                parts = self._parts[key]
                parts.append(t.group_by(key).aggregate([([], "count_all")]).rename_columns({"count_all": "n"}))
                if len(parts) >= FOLD:
                    self._parts[key] = _fold(parts, key)
        if self.in_sql:
            return
        if self.concept:
            col = t.column(self.concept)
            self.bad += _true(pc.fill_null(pc.equal(col, 0), True))
        if self.units:
            unknown = pc.fill_null(pc.equal(t.column("unit_concept_id"), 0), True)
            self.unit += _true(pc.and_(pc.is_valid(t.column("unit_source_value")), unknown))

    def groups(self, conn: psycopg.Connection) -> None:
        """`eds_recount` as `stats.recount`'s scan fills it: kind 0 for the first grouping set (persons, else
        visits), 1 for the visits beside the persons, and one row of the site's totals (p and v NULL) carrying the
        unmapped concepts and unknown units (and the rows, for a table grouped by neither)."""
        if self.in_sql:
            self.bad, self.unit = _sql_counts(conn, self.table)
        conn.execute(
            "CREATE TEMP TABLE eds_recount (p bigint, v bigint, site integer, kind integer, n bigint, b bigint, "
            "u bigint) ON COMMIT DROP"
        )
        out: list[pa.Table] = []
        for key, on in (("person_id", self.person), ("visit_occurrence_id", self.refs)):
            if on:
                (g,) = _fold(self._parts[key], key) or [_empty(key)]
                kind = 1 if key == "visit_occurrence_id" and self.person else 0
                out.append(_rows(g, key, self.site, kind))
        grouped = self.person or self.refs
        total = pa.table({"n": pa.array([0 if grouped else self.rows], pa.int64())})
        out.append(_rows(total, None, self.site, 0, bad=self.bad, unit=self.unit))
        buf = io.BytesIO()
        pacsv.write_csv(pa.concat_tables(out), buf, pacsv.WriteOptions(include_header=False))
        with conn.cursor().copy("COPY eds_recount (p, v, site, kind, n, b, u) FROM STDIN (FORMAT csv)") as copy:
            copy.write(buf.getvalue())


def _true(mask: pa.ChunkedArray) -> int:
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


def _empty(key: str) -> pa.Table:
    return pa.table({key: pa.array([], pa.int64()), "n": pa.array([], pa.int64())})


def _rows(groups: pa.Table, key: str | None, site: int, kind: int, *, bad: int = 0, unit: int = 0) -> pa.Table:
    """Rows of `eds_recount` (p, v, site, kind, n, b, u) from (key, n) groups (no key: the totals' row)."""
    m = groups.num_rows
    ids = groups.column(key).cast(pa.int64()) if key else pa.nulls(m, pa.int64())
    none = pa.nulls(m, pa.int64())
    return pa.table(
        {
            "p": ids if key == "person_id" else none,
            "v": ids if key == "visit_occurrence_id" else none,
            "site": pa.array([site] * m, pa.int32()),
            "kind": pa.array([kind] * m, pa.int32()),
            "n": groups.column("n").cast(pa.int64()),
            "b": pa.array([bad] * m, pa.int64()),
            "u": pa.array([unit] * m, pa.int64()),
        }
    )


def _sql_counts(conn: psycopg.Connection, table: str) -> tuple[int, int]:
    """(unmapped concepts, unknown units) of omop.<table>, by one aggregate over its rows."""
    bad, unit = stats.conditions(table, stats.columns(conn, table), vocab=stats.has_vocabulary(conn))
    q = sql.SQL("SELECT count(*) FILTER (WHERE {}), count(*) FILTER (WHERE {}) FROM omop.{} r").format(
        bad, unit, sql.Identifier(table)
    )
    b, u = conn.execute(q).fetchone()
    return int(b), int(u)
