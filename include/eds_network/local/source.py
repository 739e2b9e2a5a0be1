"""The hospital's source database as the extraction reads it: its tables checked against OMOP 5.4, the interval's rows streamed, the opposition registry, identities, and the lookups of the cross-table quality checks."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

import psycopg
import pyarrow as pa
from psycopg import sql

from eds_network import quality
from eds_network.core import omop
from eds_network.core.config import LocalBase
from eds_network.core.copystream import stream_query
from eds_network.core.errors import EdsError, SourceError, db_error_is_transient
from eds_network.local.pseudonymise import (
    PersonMap,
)
from eds_network.local.resources import LocalResources
from eds_network.local.snapshot import snapshot_filter, snapshot_key


def check_interval(base: LocalBase, start: dt.datetime, end: dt.datetime) -> None:
    now = dt.datetime.now(dt.UTC)
    if end <= start:
        raise SourceError(f"empty data interval [{start}, {end})", base=base.id)
    if end > now:
        raise SourceError(f"data interval ends in the future ({end.isoformat()}): refusing to extract", base=base.id)


def check_source_table(conn: psycopg.Connection, base: LocalBase, table: str) -> list[str]:
    """The source table exists, has every OMOP 5.4 column with a compatible type, and the change column."""
    spec = omop.table(table)
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'omop' AND table_name = %s",
        (table,),
    ).fetchall()
    if not rows:
        raise SourceError("table not found in the source schema 'omop'", base=base.id, table=table)
    types = dict(rows)
    compatible = {
        "bigint": {"bigint", "integer", "smallint"},
        "double precision": {"double precision", "real", "numeric", "bigint", "integer"},
        "date": {"date"},
        "timestamp": {"timestamp without time zone", "timestamp with time zone"},
    }
    for c in spec.columns:
        if c.name not in types:
            raise SourceError("column missing in the source", base=base.id, table=table, column=c.name)
        want = c.sql_type
        ok = compatible.get(want, {"character varying", "text", "character"})
        if types[c.name] not in ok:
            raise SourceError(
                f"source type {types[c.name]!r} does not match OMOP 5.4 {c.datatype!r}",
                base=base.id,
                table=table,
                column=c.name,
            )
    change = base.change_column(table)
    if change is None:
        if snapshot_key(table) not in types:
            raise SourceError(
                "no key column to diff snapshots on", base=base.id, table=table, column=snapshot_key(table)
            )
    elif change not in types:
        raise SourceError(
            "change column missing: cannot extract incrementally (set change_columns."
            f"{table}: null in the configuration to snapshot and diff this table instead)",
            base=base.id,
            table=table,
            column=change,
        )
    elif types[change] not in ("timestamp with time zone", "timestamp without time zone"):
        raise SourceError(
            f"change column must be a timestamp, not {types[change]!r}", base=base.id, table=table, column=change
        )
    return spec.column_names


def stream_rows(
    conn: psycopg.Connection,
    table: str,
    columns: list[str],
    start,
    end,
    *,
    change_column: str | None = omop.CHANGE_COLUMN,
) -> Iterator[pa.RecordBatch]:
    """The interval's rows: changed in [start, end) by the change column, or, without one, differing from the
    snapshot state valid at `start`."""
    if change_column is None:
        where = snapshot_filter(table, columns, start)
    else:
        where = sql.SQL("t.{chg} >= {s} AND t.{chg} < {e}").format(
            chg=sql.Identifier(change_column), s=sql.Literal(start), e=sql.Literal(end)
        )
    query = sql.SQL("SELECT {cols} FROM omop.{t} t WHERE {where}").format(
        cols=sql.SQL(", ").join(sql.Identifier("t", c) for c in columns),
        t=sql.Identifier(table),
        where=where,
    )
    types = {c: omop.table(table).column(c).arrow_type for c in columns}
    yield from stream_query(conn, query, columns, types, table=table)


def objectors(conn: psycopg.Connection) -> set[int]:
    """Every patient in the opposition registry at extraction time, whatever the interval.

    Not filtered by the interval: rerunning an interval that ended before an objection was recorded must not
    publish that patient's rows again after the objection's person tombstone removed them downstream. An
    objection applies to everything that leaves the hospital from the moment it is recorded.
    """
    rows = conn.execute("SELECT person_id FROM identity.opposition").fetchall()
    return {r[0] for r in rows}


def fetch_identities(conn: psycopg.Connection, persons: PersonMap, ids: list[int], res: LocalResources) -> None:
    """Identities and level-1 pseudonyms (the hospital's map) of the patients not in `persons` yet."""
    missing = persons.missing(ids)
    if missing:
        if res.level1_evaluate is not None:
            res.level1_evaluate(conn, missing)
        cur = conn.execute(
            "SELECT p.person_id, p.nir, p.birth_date, p.sex, p.ipp, m.level1 FROM identity.patient p"
            " LEFT JOIN eds_local.level1_pseudonym m ON m.person_id = p.person_id AND m.key_version = %s"
            " WHERE p.person_id = ANY(%s)",
            (res.level1_version, missing),
        )
        persons.add(cur)


@contextlib.contextmanager
def connection_lost_is_a_source_error(base_id: str, table: str) -> Iterator[None]:
    """The source server going away mid-task (restart, failover) is a SourceError naming base and table."""
    try:
        yield
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"source connection lost during extraction: {first[:200]}",
            base=base_id,
            table=table,
            transient=db_error_is_transient(exc),
        ) from None


REFERENCE_COLUMNS = {  # (schema, table): columns read for the cross-table checks
    ("omop", "person"): (
        "person_id",
        "year_of_birth",
        "month_of_birth",
        "day_of_birth",
        "birth_datetime",
        "gender_concept_id",
    ),
    ("omop", "death"): ("person_id", "death_date"),
    ("vocab", "concept"): ("concept_id", "domain_id", "concept_class_id", "standard_concept", "invalid_reason"),
}


def quality_reference(conn: psycopg.Connection) -> quality.Reference:
    """PERSON (birth, gender) and DEATH rows of the source, and its vocabulary (`vocab.concept`) when it has one,
    for the cross-table checks (plausibleAfterBirth / BeforeDeath / DuringLife, plausibleGender, isForeignKey,
    fkDomain, fkClass and isStandardValidConcept on concept columns): streamed once per task, kept in memory
    (one row per patient or concept), never written anywhere. A missing table leaves its checks not applicable."""
    found: dict[str, pa.Table | None] = {}
    for (schema_name, table), wanted in REFERENCE_COLUMNS.items():
        have = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                (schema_name, table),
            )
        }
        cols = [c for c in wanted if c in have]
        if wanted[0] not in cols or len(cols) < 2:
            found[table] = None
            continue
        spec = omop.table(table)
        schema = pa.schema([pa.field(c, spec.column(c).arrow_type) for c in cols])
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(schema_name, table)
        )
        batches = list(stream_query(conn, query, cols, dict(zip(cols, schema.types, strict=True)), table=table))
        found[table] = pa.Table.from_batches(batches, schema=schema) if batches else schema.empty_table()
    return quality.Reference(person=found["person"], death=found["death"], concept=found["concept"])


def with_base(batches: Iterator[pa.RecordBatch], base_id: str) -> Iterator[pa.RecordBatch]:
    """Errors raised while streaming (stream_query knows the table, not the base) name the base too."""
    try:
        yield from batches
    except EdsError as exc:
        exc.base = exc.base or base_id
        raise
