"""Local level, one table: extract the interval's changes, check, pseudonymise, stage in the platform intake.

The table is streamed: `COPY (SELECT …) TO STDOUT (FORMAT csv)` is parsed by pyarrow's streaming CSV reader
into record batches, each batch is checked, pseudonymised and appended as a Parquet row group. Memory stays
bounded by the batch size whatever the table size.

Row accounting per table: extracted = published + quarantined + excluded_objection.
Quarantined rows never leave the hospital: they are recorded in the source database (`eds_local.quarantine`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from psycopg import sql

from eds_network import quality
from eds_network.core import faults, omop
from eds_network.core.config import LocalBase
from eds_network.core.copystream import prefetch, stream_query
from eds_network.core.crypto import Key
from eds_network.core.errors import AccountingError, EdsError, QualityError, SourceError
from eds_network.core.exchange import TOKEN_COLUMN
from eds_network.core.storage import S3Endpoint, sha256_file
from eds_network.local import keystate, level1
from eds_network.local.pseudonymise import (
    DEFAULT_TEXT_ALLOW_LIST,
    PersonMap,
    level1_batch,
    namespace_ids,
    policy_fingerprint,
)

log = logging.getLogger(__name__)

PREFETCH_BATCHES = 1
PENDING_WRITES = 1
# Staged intake files are read once by the platform: snappy costs ~25 % less local time than zstd on 2 M rows
# (bench/bench_local.py: 6.7 s vs 9.1 s median) for larger files. Long-lived outputs (outbox, landing zone) stay zstd.
STAGING_COMPRESSION = "snappy"
PROGRESS_EVERY_S = 5.0
# Lower bound of a full extraction (re-keying run): every row changed before the end of the interval.
FULL_EXTRACTION_START = dt.datetime(1, 1, 2, tzinfo=dt.UTC)


@dataclass(frozen=True)
class LocalResources:
    """Everything a local task needs, resolved from Airflow connections by the DAG adapter."""

    source_dsn: str = field(repr=False)
    intake: S3Endpoint
    intake_bucket: str
    intake_prefix: str
    level1_version: str  # the key holder's version the hospital's pseudonym map was completed under
    transport_key: Key
    national_public_key: bytes
    national_key_version: str
    # Embedded stack and tests only: run the OPRF round trip in process for patients not evaluated yet (the
    # stack holds every zone's keys). In production the map is filled by the DAG's round trip, before extraction.
    level1_evaluate: Callable[[psycopg.Connection, list[int]], None] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TableBatch:
    base: str
    table: str
    batch_id: str
    key: str | None
    sha256: str | None
    bytes: int
    extracted: int
    published: int
    quarantined: int
    excluded_objection: int
    tombstones: int
    tombstones_key: str | None = None
    tombstones_sha256: str | None = None
    warnings: tuple[str, ...] = ()
    quality: dict = field(default_factory=dict)
    full: bool = False  # a full extraction (re-keying run), not the interval's changes: replaces the site's rows
    fingerprint: str | None = None  # key version and pseudonymisation policy the rows were produced under
    # Seconds spent per phase of the step (stream = waiting for the next parsed batch of the COPY, quality,
    # pseudonymise, parquet, upload…): measured by the step itself so that benches and logs report where the
    # time goes, not guesses. `timings` is wall time of the step's thread; `cpu_timings` the CPU time of that
    # thread in each phase (without the time it waits for the GIL or for the reader, parser and writer threads).
    timings: dict = field(default_factory=dict)
    cpu_timings: dict = field(default_factory=dict)

    def ref(self) -> dict:
        """What goes to XCom: references, counts and checksums only."""
        d = asdict(self)
        d["warnings"] = list(self.warnings)
        return d


def batch_id(base_id: str, start: dt.datetime, end: dt.datetime) -> str:
    f = "%Y%m%dT%H%MZ"
    return f"{base_id}__{start.astimezone(dt.UTC).strftime(f)}__{end.astimezone(dt.UTC).strftime(f)}"


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


# -- tables without a change column: snapshot, diffed by content hash against the last published state -----
#
# `eds_local.snapshot_state` (in the hospital's own database, like the quarantine) keeps, per table and row
# key, the md5 of the row's OMOP columns with the interval end from which it holds (`since`) and the one at
# which it was replaced or deleted (`until`). Extracting [start, end) publishes the rows whose hash differs
# from the state valid at `start` and tombstones the keys gone since; the state update is written in the same
# REPEATABLE READ transaction as the streamed rows, so what is recorded is exactly what was published.
# Rerunning an interval first drops what that interval recorded (versions since = end, closures at end), so it
# is a no-op on the result. Runs of one table must not overlap (the nightly DAG has max_active_runs = 1).


def snapshot_key(table: str) -> str:
    """The column identifying a row for snapshot diffs: the primary key, or person_id (death)."""
    return omop.table(table).primary_key or "person_id"


def _ensure_local_schema(conn: psycopg.Connection) -> None:
    conn.execute(
        "CREATE SCHEMA IF NOT EXISTS eds_local;"
        "CREATE TABLE IF NOT EXISTS eds_local.quarantine (batch_id text NOT NULL, table_name text NOT NULL,"
        " reason text NOT NULL, row_data jsonb, recorded_at timestamptz NOT NULL DEFAULT now());"
        "CREATE TABLE IF NOT EXISTS eds_local.snapshot_state (table_name text NOT NULL, row_key bigint NOT NULL,"
        " row_hash text NOT NULL, since timestamptz NOT NULL, until timestamptz);"
        "CREATE INDEX IF NOT EXISTS snapshot_state_key ON eds_local.snapshot_state (table_name, row_key)"
    )


def _row_hash(table: str, columns: list[str], alias: str = "t") -> sql.Composable:
    return sql.SQL("md5(ROW({})::text)").format(
        sql.SQL(", ").join(sql.Identifier(alias, c) for c in columns),
    )


def _valid_at(start: dt.datetime, alias: str = "s") -> sql.Composable:
    a = sql.Identifier(alias)
    return sql.SQL("{a}.since <= {s} AND ({a}.until IS NULL OR {a}.until > {s})").format(a=a, s=sql.Literal(start))


def _snapshot_filter(table: str, columns: list[str], start: dt.datetime) -> sql.Composable:
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


def _snapshot_deleted(conn: psycopg.Connection, table: str, columns: list[str], start: dt.datetime) -> list[int]:
    """Keys in the state valid at `start` that the source no longer holds (same transaction as the stream)."""
    q = sql.SQL(
        "SELECT s.row_key FROM eds_local.snapshot_state s WHERE s.table_name = {tn} AND {valid}"
        " AND NOT EXISTS (SELECT 1 FROM omop.{t} t WHERE t.{k} = s.row_key) ORDER BY 1"
    ).format(
        tn=sql.Literal(table), valid=_valid_at(start), t=sql.Identifier(table), k=sql.Identifier(snapshot_key(table))
    )
    return [r[0] for r in conn.execute(q)]


def _snapshot_record(
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
        where = _snapshot_filter(table, columns, start)
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


def _objectors(conn: psycopg.Connection) -> set[int]:
    """Every patient in the opposition registry at extraction time, whatever the interval.

    Not filtered by the interval: rerunning an interval that ended before an objection was recorded must not
    publish that patient's rows again after the objection's person tombstone removed them downstream. An
    objection applies to everything that leaves the hospital from the moment it is recorded.
    """
    rows = conn.execute("SELECT person_id FROM identity.opposition").fetchall()
    return {r[0] for r in rows}


def _fetch_identities(conn: psycopg.Connection, persons: PersonMap, ids: list[int], res: LocalResources) -> None:
    """Identities and level-1 pseudonyms (the hospital's map) of the patients not in `persons` yet."""
    missing = persons.missing(ids)
    if missing:
        if res.level1_evaluate is not None:
            res.level1_evaluate(conn, missing)
        level1.ensure_state(conn)
        cur = conn.execute(
            "SELECT p.person_id, p.nir, p.birth_date, p.sex, p.ipp, m.level1 FROM identity.patient p"
            " LEFT JOIN eds_local.level1_pseudonym m ON m.person_id = p.person_id AND m.key_version = %s"
            " WHERE p.person_id = ANY(%s)",
            (res.level1_version, missing),
        )
        persons.add(cur)


def _reset_quarantine(conn: psycopg.Connection, bid: str, table: str) -> None:
    """The hospital's own quarantine table, emptied of this batch's earlier rows for `table` (rerun)."""
    _ensure_local_schema(conn)
    conn.execute("DELETE FROM eds_local.quarantine WHERE batch_id = %s AND table_name = %s", (bid, table))


def _record_quarantine(conn: psycopg.Connection, bid: str, table: str, rows: pa.Table, reason: str) -> None:
    """Quarantined rows stay at the local level, in the hospital's own database."""
    with conn.cursor().copy("COPY eds_local.quarantine (batch_id, table_name, reason, row_data) FROM STDIN") as copy:
        for rec in rows.to_pylist():
            copy.write_row((bid, table, reason, json.dumps(rec, default=str)))


def _tombstones(
    conn,
    base: LocalBase,
    table: str,
    persons: PersonMap,
    start,
    end,
    res: LocalResources,
    snapshot_deleted: list[int] | None = None,
) -> pa.Table:
    """Rows to remove downstream: source deletions in the interval (the deletion log, or keys gone from a
    snapshot), and (person table) new objections."""
    kinds: list[str] = []
    ids: list[int] = []
    spec = omop.table(table)
    deleted: list[int] = []
    if snapshot_deleted is not None:
        deleted = snapshot_deleted
    elif conn.execute("SELECT to_regclass('omop._deleted')").fetchone()[0]:  # a source may keep no deletion log
        deleted = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT row_id FROM omop._deleted WHERE table_name = %s AND deleted_at >= %s "
                "AND deleted_at < %s",
                (table, start, end),
            )
        ]
    if deleted:
        local = pa.array(deleted, pa.int64())
        if spec.primary_key and spec.primary_key != "person_id":
            out = namespace_ids(local, base.site_number, table=table, column=spec.primary_key).to_pylist()
        else:  # keyed by person (death): map to the level-1 person id
            _fetch_identities(conn, persons, local.to_pylist(), res)
            known = [p for p in local.to_pylist() if p in persons]
            out = persons.map_ids(pa.array(known, pa.int64())).to_pylist()
        kinds += ["row"] * len(out)
        ids += out
    if table == "person":
        new = [
            r[0]
            for r in conn.execute(
                "SELECT person_id FROM identity.opposition WHERE recorded_at >= %s AND recorded_at < %s", (start, end)
            )
        ]
        if new:
            _fetch_identities(conn, persons, new, res)
            known = [p for p in new if p in persons]
            out = persons.map_ids(pa.array(known, pa.int64())).to_pylist()
            kinds += ["person"] * len(out)
            ids += out
    return pa.table({"kind": pa.array(kinds, pa.string()), "id": pa.array(ids, pa.int64())})


def extract_table(
    base: LocalBase,
    table: str,
    start: dt.datetime,
    end: dt.datetime,
    res: LocalResources,
    *,
    overrides: dict | None = None,
    on_checks: Callable[[quality.TableQuality], None] | None = None,
) -> TableBatch:
    """Extract, check, pseudonymise and stage one table of one base for [start, end).

    `on_checks` (e.g. `quality.catalogue_recorder(dsn)`) receives the table's DQD-style results, summed over
    its record batches, with GX Data Docs built on a bounded sample - also when a fatal check stops the table."""
    try:
        check_interval(base, start, end)
    except EdsError as exc:  # name the table too: the operator sees which mapped task refused
        exc.table = exc.table or table
        raise
    bid = batch_id(base.id, start, end)
    t0 = time.monotonic()
    try:
        stream_conn = psycopg.connect(res.source_dsn, connect_timeout=10, application_name=f"eds-extract-{table}")
        aux = psycopg.connect(res.source_dsn, connect_timeout=10, autocommit=True)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(f"source database unreachable: {first}", base=base.id, table=table) from None
    with _connection_lost_is_a_source_error(base.id, table), stream_conn, aux:
        try:
            columns = check_source_table(aux, base, table)
        except EdsError as exc:
            exc.base = exc.base or base.id
            raise
        change = base.change_column(table)
        if change is None:  # snapshot: the streamed rows, the deletions and the new state see one snapshot
            stream_conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        qoverrides = {k: quality.Override(**v) for k, v in (overrides or {}).items()}
        objectors = pa.array(sorted(_objectors(aux)), pa.int64())
        known_person_ids = pa.array([r[0] for r in aux.execute("SELECT person_id FROM omop.person")], pa.int64())
        reference = quality_reference(aux)
        # Pseudonymisation policy of the platform; a new key version or policy means a full re-extraction.
        policy = base.pseudonymisation
        allow_text = DEFAULT_TEXT_ALLOW_LIST | frozenset(policy.text_allow_list)
        fingerprint = policy_fingerprint(
            res.level1_version,
            date_shift_days=policy.date_shift_days,
            keep_birth_month=policy.keep_birth_month,
            allow_text=allow_text,
        )
        full = keystate.needs_full_extraction(aux, table, fingerprint, bid)
        if full:
            log.info("%s.%s: key version or policy changed since the last publication: full extraction", base.id, table)
        persons = PersonMap(
            res.transport_key,
            res.national_public_key,
            site=base.finess or base.id,
            date_shift_days=policy.date_shift_days,
        )
        _reset_quarantine(aux, bid, table)

        extracted = published = quarantined = excluded = read_bytes = 0
        batch_fatal: list[str] = []
        warnings: list[str] = []
        checks: dict[str, dict] = {}
        table_checks = quality.TableChecks(base.id, table, sample_rows=None if on_checks else 0)
        workdir = Path(tempfile.mkdtemp(prefix=f"eds-{base.id}-{table}-"))
        out_path = workdir / f"{table}.parquet"
        writer: pq.ParquetWriter | None = None
        last_log = time.monotonic()
        t_now = dt.datetime.now(dt.UTC)
        # tests: the source server restarts mid-task (its sessions are terminated)
        faults.inject("extract.source_lost", conn=aux, pid=stream_conn.info.backend_pid)
        timer = _PhaseTimer()
        # Parquet row groups are appended by a writer thread (pyarrow releases the GIL while encoding)
        # while this thread checks and pseudonymises the next batch.
        write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"eds-parquet-{table}")
        pending: deque[Future] = deque()
        extract_from = FULL_EXTRACTION_START if full else start
        rows_iter = prefetch(
            _with_base(stream_rows(stream_conn, table, columns, extract_from, end, change_column=change), base.id),
            PREFETCH_BATCHES,
            f"eds-parse-{table}",
        )
        try:
            while True:
                with timer("stream"):
                    rb = next(rows_iter, None)
                if rb is None:
                    break
                timer.start("objection")
                batch = pa.Table.from_batches([rb])
                n = batch.num_rows
                extracted += n
                read_bytes += rb.nbytes
                # 1. Opposition registry: rows of objecting patients never leave the hospital.
                if "person_id" in batch.column_names and len(objectors):
                    obj = pc.is_in(batch.column("person_id"), value_set=objectors)
                    obj = pc.fill_null(obj, False)
                    n_obj = int(pc.sum(obj).as_py() or 0)
                    if n_obj:
                        excluded += n_obj
                        batch = batch.filter(pc.invert(obj))
                # 2. Quality: row-level fatal violations quarantined, batch-level fatal stops the table.
                timer.start("quality")
                qr = quality.check_batch(
                    base.id, table, batch, known_person_ids=known_person_ids, reference=reference, overrides=qoverrides
                )
                table_checks.add(qr, batch)
                for r in qr.results:
                    agg = checks.setdefault(
                        f"{r.check_name}:{r.column or '-'}", {"rows": 0, "violating_rows": 0, "severity": r.severity}
                    )
                    agg["rows"] += r.rows
                    agg["violating_rows"] += r.violating_rows
                warnings.extend(w for w in qr.warnings if w not in warnings)
                if qr.batch_fatal:
                    batch_fatal.append(quality.fatal_message(qr))
                keep = qr.keep_mask
                bad = batch.filter(pc.invert(keep))
                if bad.num_rows:
                    _record_quarantine(aux, bid, table, bad, "row-level fatal check")
                    quarantined += bad.num_rows
                    batch = batch.filter(keep)
                # 2b. Rows no step downstream could carry: ids outside [0, 10**12), events starting in the
                # future (later than the extraction itself, plus a day for time zones).
                rules = _unpublishable_rows(batch, table, t_now)
                if table == "death" and batch.num_rows:
                    rules += _death_before_birth(aux, batch, rules)
                for reason, bad_mask in rules:
                    bad = batch.filter(bad_mask)
                    _record_quarantine(aux, bid, table, bad, reason)
                    quarantined += bad.num_rows
                if rules:
                    batch = batch.filter(pc.invert(_any(m for _, m in rules)))
                # 3. Persons with no identity row cannot be pseudonymised: quarantined, not dropped.
                timer.start("identities")
                if "person_id" in batch.column_names and batch.num_rows:
                    ids = pc.unique(batch.column("person_id")).to_pylist()
                    _fetch_identities(aux, persons, ids, res)
                    has = pc.is_in(
                        batch.column("person_id"), value_set=pa.array([i for i in ids if i in persons], pa.int64())
                    )
                    nobody = batch.filter(pc.invert(has))
                    if nobody.num_rows:
                        _record_quarantine(
                            aux, bid, table, nobody, "person has no identity row or no level-1 pseudonym yet"
                        )
                        quarantined += nobody.num_rows
                        batch = batch.filter(has)
                # 4. Pseudonymise and append a row group.
                timer.start("pseudonymise")
                out = level1_batch(
                    batch,
                    table,
                    persons,
                    base.site_number,
                    allow_text=allow_text,
                    keep_birth_month=policy.keep_birth_month,
                )
                timer.start("parquet")
                if writer is None:
                    writer = pq.ParquetWriter(out_path, out.schema, compression=STAGING_COMPRESSION)
                pending.append(write_pool.submit(writer.write_table, out))
                while len(pending) > PENDING_WRITES:
                    pending.popleft().result()
                published += out.num_rows
                timer.stop()
                faults.inject("extract.mid_copy")  # tests: a worker killed while the COPY streams
                if time.monotonic() - last_log > PROGRESS_EVERY_S:
                    el = time.monotonic() - t0
                    log.info(
                        "%s.%s: %d rows extracted (%.0f MB), %.0f rows/s",
                        base.id,
                        table,
                        extracted,
                        read_bytes / 1e6,
                        extracted / el,
                    )
                    last_log = time.monotonic()
            if writer is None:  # empty interval: an empty file keeps the manifest uniform
                writer = pq.ParquetWriter(out_path, _published_schema(table), compression=STAGING_COMPRESSION)
            with timer("parquet"):
                while pending:
                    pending.popleft().result()
                writer.close()
            writer = None
            if on_checks is not None:
                on_checks(table_checks.finish(bid, docs=True))

            if batch_fatal:
                # The whole table is held back at the local level; nothing of it is published.
                aux.execute(
                    "INSERT INTO eds_local.quarantine (batch_id, table_name, reason) VALUES (%s, %s, %s)",
                    (bid, table, "; ".join(batch_fatal)[:2000]),
                )
                raise QualityError("; ".join(batch_fatal), base=base.id, table=table)

            if extracted != published + quarantined + excluded:
                raise AccountingError(
                    f"extracted {extracted} != published {published} + quarantined {quarantined} + "
                    f"excluded_objection {excluded}",
                    base=base.id,
                    table=table,
                )
            with timer("tombstones"):
                gone = _snapshot_deleted(stream_conn, table, columns, start) if change is None else None
                tomb = _tombstones(aux, base, table, persons, start, end, res, snapshot_deleted=gone)
            timer.start("upload")
            s3 = res.intake.client()
            sha = sha256_file(out_path)
            key = f"{res.intake_prefix}{base.id}/{bid}/{table}.{sha[:16]}.parquet"
            s3.upload_file(str(out_path), res.intake_bucket, key)
            size = out_path.stat().st_size
            tkey = tsha = None
            if tomb.num_rows:
                tpath = workdir / f"{table}.tombstones.parquet"
                pq.write_table(tomb, tpath)
                tsha = sha256_file(tpath)
                tkey = f"{res.intake_prefix}{base.id}/{bid}/{table}.tombstones.{tsha[:16]}.parquet"
                s3.upload_file(str(tpath), res.intake_bucket, tkey)
            if change is None:  # committed with the stream's transaction when the block exits
                _snapshot_record(stream_conn, table, columns, start, end)
            timer.stop()
        finally:
            rows_iter.close()
            write_pool.shutdown(wait=True)
            if writer is not None:
                writer.close()
            for p in workdir.glob("*"):
                p.unlink()
            workdir.rmdir()
    el = time.monotonic() - t0
    log.info(
        "%s.%s: extracted %d, published %d, quarantined %d, excluded (objection) %d, tombstones %d; "
        "%.1f MB in %.1fs (%.0f rows/s)",
        base.id,
        table,
        extracted,
        published,
        quarantined,
        excluded,
        tomb.num_rows,
        size / 1e6,
        el,
        extracted / el if el else 0,
    )
    return TableBatch(
        base=base.id,
        table=table,
        batch_id=bid,
        key=key,
        sha256=sha,
        bytes=size,
        extracted=extracted,
        published=published,
        quarantined=quarantined,
        excluded_objection=excluded,
        tombstones=tomb.num_rows,
        tombstones_key=tkey,
        tombstones_sha256=tsha,
        warnings=tuple(warnings[:20]),
        quality=checks,
        full=full,
        fingerprint=fingerprint,
        timings={**timer.seconds, "total": round(el, 4)},
        cpu_timings=dict(timer.cpu),
    )


class _PhaseTimer:
    """Wall and thread-CPU seconds per named phase of a step: `start(name)` closes the running phase and
    opens `name`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._name: str | None = None
        self._t = self._c = 0.0

    def start(self, name: str) -> None:
        self.stop()
        self._name, self._t, self._c = name, time.perf_counter(), time.thread_time()

    def stop(self) -> None:
        if self._name is not None:
            el, cpu = time.perf_counter() - self._t, time.thread_time() - self._c
            self.seconds[self._name] = round(self.seconds.get(self._name, 0.0) + el, 4)
            self.cpu[self._name] = round(self.cpu.get(self._name, 0.0) + cpu, 4)
            self._name = None

    def __call__(self, name: str) -> _PhaseTimer:
        self.start(name)
        return self

    def __enter__(self) -> _PhaseTimer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def _connection_lost_is_a_source_error(base_id: str, table: str) -> Iterator[None]:
    """The source server going away mid-task (restart, failover) is a SourceError naming base and table."""
    try:
        yield
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"source connection lost during extraction: {first[:200]}", base=base_id, table=table
        ) from None


def _event_start_columns(table: str) -> list[str]:
    """Columns dating when the recorded event started (OMOP naming): `<x>_start_date(time)`, `<x>_date(time)` of
    the event tables, `death_date`. End dates may legitimately lie ahead (an ongoing prescription)."""
    stem = table.replace("_occurrence", "").replace("_exposure", "")
    names = omop.table(table).column_names
    return [
        c
        for c in names
        if c.endswith(("_start_date", "_start_datetime")) or c in (f"{stem}_date", f"{stem}_datetime", "death_date")
    ]


def _unpublishable_rows(batch: pa.Table, table: str, now: dt.datetime) -> list[tuple[str, pa.Array]]:
    """(reason naming the column, mask) for each rule a row breaks; masks are disjoint and never null.

    One min/max pass per column; a mask is only built for a column whose range breaks the rule (rare)."""
    from eds_network.local.pseudonymise import ID_NAMESPACE

    if not batch.num_rows:
        return []
    spec = omop.table(table)
    rules: list[tuple[str, pa.Array]] = []
    for name in batch.column_names:
        c = spec.column(name) if spec.has(name) else None
        if c is not None and c.is_id and name != "person_id":
            col = batch.column(name)
            lo, hi = pc.min_max(col).values()
            if lo.is_valid and (lo.as_py() < 0 or hi.as_py() >= ID_NAMESPACE):
                mask = pc.or_(pc.less(col, 0), pc.greater_equal(col, ID_NAMESPACE))
                rules.append((f"{name}: id outside [0, {ID_NAMESPACE})", mask))
    limit = (now.astimezone(dt.UTC) + dt.timedelta(days=1)).replace(tzinfo=None)
    for name in _event_start_columns(table):
        if name in batch.column_names:
            col = batch.column(name)
            bound = pa.scalar(limit.date() if pa.types.is_date(col.type) else limit, col.type)
            latest = pc.max(col)
            if latest.is_valid and latest.as_py() > bound.as_py():
                rules.append((f"{name}: event in the future", pc.greater(col, bound)))
    out: list[tuple[str, pa.Array]] = []
    taken = None
    for reason, mask in rules:
        mask = pc.fill_null(mask, False)
        if taken is not None:
            mask = pc.and_(mask, pc.invert(taken))
        if pc.any(mask).as_py():
            out.append((reason, mask))
            taken = mask if taken is None else pc.or_(taken, mask)
    return out


def _death_before_birth(conn: psycopg.Connection, batch: pa.Table, rules: list) -> list[tuple[str, pa.Array]]:
    """DEATH rows dated before the person's year of birth (impossible, not merely implausible): quarantined."""
    ids = pc.unique(batch.column("person_id")).to_pylist()
    births = conn.execute(
        "SELECT person_id, year_of_birth FROM omop.person WHERE person_id = ANY(%s) AND year_of_birth IS NOT NULL",
        (ids,),
    ).fetchall()
    if not births:
        return []
    known = pa.array([p for p, _ in births], pa.int64())
    years = pa.array([int(y) for _, y in births], pa.int64())
    pos = pc.index_in(batch.column("person_id"), value_set=known)
    birth_year = pc.take(years, pos)
    death_year = pc.year(batch.column("death_date"))
    mask = pc.fill_null(pc.less(death_year, birth_year), False)
    if rules:
        mask = pc.and_(mask, pc.invert(_any(m for _, m in rules)))
    return [("death_date: before the year of birth", mask)] if pc.any(mask).as_py() else []


def _any(masks) -> pa.Array:
    out = None
    for m in masks:
        out = m if out is None else pc.or_(out, m)
    return out


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


def _with_base(batches: Iterator[pa.RecordBatch], base_id: str) -> Iterator[pa.RecordBatch]:
    """Errors raised while streaming (stream_query knows the table, not the base) name the base too."""
    try:
        yield from batches
    except EdsError as exc:
        exc.base = exc.base or base_id
        raise


def _published_schema(table: str) -> pa.Schema:
    schema = omop.table(table).arrow_schema()
    if table == "person":
        schema = schema.append(pa.field(TOKEN_COLUMN, pa.string()))
    return pa.schema([pa.field(f.name, f.type) for f in schema])
