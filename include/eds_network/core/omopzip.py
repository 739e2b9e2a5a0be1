"""OMOP CSV archives (Athena vocabulary downloads, sample data sets): read a table of a zip, COPY Arrow into PostgreSQL.

`load_vocabulary(conn, zip_path, schema)` loads CONCEPT, CONCEPT_RELATIONSHIP (and VOCABULARY, DOMAIN when
present) into a schema: used by the platform to standardise, and by the demo seed for the hospitals' checks.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql

from eds_network.core import omop
from eds_network.core.errors import SourceError

log = logging.getLogger(__name__)

SQL_TYPE = re.compile(r"^(bigint|double precision|date|timestamp|text|varchar\(\d+\))$")


def zip_member(zf: zipfile.ZipFile, table: str) -> str | None:
    want = f"{table.upper()}.CSV"
    for info in zf.infolist():
        name = info.filename
        base = name.rsplit("/", 1)[-1]
        if info.is_dir() or name.startswith("__MACOSX/") or base.startswith("._"):
            continue
        if base.upper() == want:
            return name
    return None


def read_zip_csv(zip_path: Path, table: str, *, typed: bool, tdef: omop.Table | None = None) -> pa.Table | None:
    """One CSV of the zip as an Arrow table (columns also in the OMOP schema; empty -> null), or None."""
    tdef = tdef or omop.table(table)
    with zipfile.ZipFile(zip_path) as zf:
        member = zip_member(zf, table)
        if member is None:
            return None
        data = zf.read(member)
    header = data.split(b"\n", 1)[0].decode("utf-8-sig").strip().split(",")
    header = [h.strip().strip('"').lower() for h in header]
    cols = [c for c in header if tdef.has(c)]
    types = {c: (tdef.column(c).arrow_type if typed else pa.string()) for c in cols}
    return pacsv.read_csv(
        pa.BufferReader(data),
        read_options=pacsv.ReadOptions(column_names=header, skip_rows=1, encoding="utf8"),
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            include_columns=cols,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )


def csv_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return sink.getvalue()


def copy_stmt(schema: str, table: str, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
        sql.Identifier(schema, table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )


def copy_tables(cur: psycopg.Cursor, schema: str, table: str, chunks: Iterator[pa.Table]) -> int:
    """COPY a stream of Arrow tables (same columns) into schema.table; returns the row count."""
    n = 0
    first = next(chunks, None)
    if first is None:
        return 0
    columns = first.column_names
    with cur.copy(copy_stmt(schema, table, columns)) as cp:
        chunk: pa.Table | None = first
        while chunk is not None:
            if chunk.num_rows:
                cp.write(csv_bytes(chunk.select(columns)))
                n += chunk.num_rows
            chunk = next(chunks, None)
    return n


VOCABULARY_TABLES = ("concept", "concept_relationship", "vocabulary", "domain")


VOCABULARY_INDEXES = {
    "concept": ("concept_id",),
    "concept_relationship": ("concept_id_1", "relationship_id"),
    "vocabulary": ("vocabulary_id",),
    "domain": ("domain_id",),
}


def load_vocabulary(conn: psycopg.Connection, zip_path: Path, schema: str = "vocab") -> dict[str, int]:
    """Load CONCEPT, CONCEPT_RELATIONSHIP (and VOCABULARY, DOMAIN if present) from the zip into `schema`.

    Idempotent: each table is dropped and recreated (the schema itself is kept). Does not commit.
    Returns rows per table.
    """
    zip_path = Path(zip_path)
    counts: dict[str, int] = {}
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        for name in VOCABULARY_TABLES:
            tdef = omop.table(name)
            data = read_zip_csv(zip_path, name, typed=False, tdef=tdef)
            if data is None:
                if name in ("concept", "concept_relationship"):
                    raise SourceError(f"{zip_path}: {name.upper()}.csv not found", table=name)
                continue
            qname = sql.Identifier(schema, name)
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(qname))
            cols = [
                sql.SQL("{} {}{}").format(
                    sql.Identifier(c.name), sql.SQL(c.sql_type), sql.SQL(" NOT NULL" if c.required else "")
                )
                for c in tdef.columns
                if SQL_TYPE.match(c.sql_type)
            ]
            cur.execute(sql.SQL("CREATE TABLE {} ({})").format(qname, sql.SQL(", ").join(cols)))
            counts[name] = copy_tables(cur, schema, name, iter([data]))
            idx_cols = VOCABULARY_INDEXES[name]
            cur.execute(
                sql.SQL("CREATE INDEX {} ON {} ({})").format(
                    sql.Identifier(f"{name}_{'_'.join(idx_cols)}_idx"),
                    qname,
                    sql.SQL(", ").join(map(sql.Identifier, idx_cols)),
                )
            )
            cur.execute(sql.SQL("ANALYZE {}").format(qname))
            log.info("vocabulary %s.%s: %d rows", schema, name, counts[name])
    return counts
