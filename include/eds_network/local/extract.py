"""Local level, one table: extract the interval's changes, check, pseudonymise, stage in the platform intake.

The table is streamed: `COPY (SELECT …) TO STDOUT (FORMAT csv)` is parsed by pyarrow's streaming CSV reader
into record batches (`local.source`), each batch goes through the steps of `_TableRun.process` (opposition
registry, quality checks, unpublishable rows, identities, level-1 pseudonymisation) and is appended as a
Parquet row group. Memory stays bounded by the batch size whatever the table size.

Row accounting per table: extracted = published + quarantined + excluded_objection.
Quarantined rows never leave the hospital: they are recorded in the source database (`local.quarantine`).
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eds_network import quality
from eds_network.core import digests, faults, omop
from eds_network.core.config import LocalBase
from eds_network.core.copystream import prefetch
from eds_network.core.errors import AccountingError, EdsError, QualityError, SourceError, db_error_is_transient
from eds_network.core.exchange import TOKEN_COLUMN
from eds_network.core.storage import sha256_file
from eds_network.core.timing import PhaseTimer
from eds_network.local import keystate
from eds_network.local.migrations import MIGRATIONS
from eds_network.local.pseudonymise import (
    DEFAULT_TEXT_ALLOW_LIST,
    Detector,
    PersonMap,
    level1_batch,
    policy_fingerprint,
)
from eds_network.local.quarantine import record_quarantine, reset_quarantine
from eds_network.local.resources import LocalResources
from eds_network.local.rules import any_mask, death_before_birth, unpublishable_rows
from eds_network.local.snapshot import snapshot_deleted, snapshot_record
from eds_network.local.source import (
    check_interval,
    check_source_table,
    connection_lost_is_a_source_error,
    fetch_identities,
    objectors,
    quality_reference,
    stream_rows,
    with_base,
)
from eds_network.local.tombstones import tombstones

log = logging.getLogger(__name__)

__all__ = ["LocalResources", "TableBatch", "batch_id", "extract_table"]

PREFETCH_BATCHES = 1
PENDING_WRITES = 1
# Staged intake files are read once by the platform: snappy (faster to write than zstd; BENCHMARKS.md).
# Long-lived outputs (outbox, landing zone) stay zstd.
STAGING_COMPRESSION = "snappy"
PROGRESS_EVERY_S = 5.0
# Lower bound of a full extraction (re-keying run): every row changed before the end of the interval.
FULL_EXTRACTION_START = dt.datetime(1, 1, 2, tzinfo=dt.UTC)


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
    # pseudonymise, parquet, upload…), measured by the step itself. `timings` is wall time of the step's thread;
    # `cpu_timings` the CPU time of that thread in each phase (without the time it waits for the GIL or for the
    # reader, parser and writer threads).
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


@dataclass
class _Staged:
    """The files one table run uploaded to the intake."""

    key: str
    sha256: str
    bytes: int
    tombstones: int
    tombstones_key: str | None = None
    tombstones_sha256: str | None = None


class _TableRun:
    """One table of one base for one interval: the lookups, counters and results its batches share."""

    def __init__(self, base: LocalBase, table: str, start, end, res: LocalResources, overrides, on_checks):
        self.base, self.table, self.start, self.end, self.res = base, table, start, end, res
        self.on_checks = on_checks
        self.bid = batch_id(base.id, start, end)
        self.overrides = {k: quality.Override(**v) for k, v in (overrides or {}).items()}
        self.extracted = self.published = self.quarantined = self.excluded = self.read_bytes = 0
        self.batch_fatal: list[str] = []
        self.warnings: list[str] = []
        self.checks: dict[str, dict] = {}
        self.table_checks = quality.TableChecks(base.id, table, sample_rows=None if on_checks else 0)
        self.timer = PhaseTimer()
        self.now = dt.datetime.now(dt.UTC)

    def prepare(self, aux: psycopg.Connection) -> None:
        """Read what every batch needs: the source's columns, objectors, known persons, the quality reference,
        the pseudonymisation policy (a new key version or policy means a full re-extraction)."""
        base, table = self.base, self.table
        try:
            self.columns = check_source_table(aux, base, table)
        except EdsError as exc:
            exc.base = exc.base or base.id
            raise
        self.change = base.change_column(table)
        self.objectors = pa.array(sorted(objectors(aux)), pa.int64())
        self.known_person_ids = pa.array([r[0] for r in aux.execute("SELECT person_id FROM omop.person")], pa.int64())
        self.reference = quality_reference(aux)
        policy = self.policy = base.pseudonymisation
        self.allow_text = DEFAULT_TEXT_ALLOW_LIST | frozenset(policy.text_allow_list)
        self.fingerprint = policy_fingerprint(
            self.res.level1_version,
            date_shift_days=policy.date_shift_days,
            keep_birth_month=policy.keep_birth_month,
            allow_text=self.allow_text,
            transport_version=self.res.transport_key.version,
            date_shift_version=self.res.date_shift_key.version if self.res.date_shift_key else None,
        )
        self.full = keystate.needs_full_extraction(aux, table, self.fingerprint, self.bid)
        if self.full:
            log.info("%s.%s: key version or policy changed since the last publication: full extraction", base.id, table)
        self.detector = identifier_detector(aux, base)
        self.persons = PersonMap(
            self.res.transport_key,
            self.res.national_public_key,
            site=base.finess or base.id,
            date_shift_days=policy.date_shift_days,
            date_shift_key=self.res.date_shift_key,
        )
        reset_quarantine(aux, self.bid, table)

    def _quarantine(self, aux, rows: pa.Table, reason: str) -> None:
        if rows.num_rows:
            record_quarantine(aux, self.bid, self.table, rows, reason)
            self.quarantined += rows.num_rows

    def _check(self, aux, batch: pa.Table) -> pa.Table:
        """Quality: row-level fatal violations quarantined; a batch-level fatal check stops the table."""
        qr = quality.check_batch(
            self.base.id,
            self.table,
            batch,
            known_person_ids=self.known_person_ids,
            reference=self.reference,
            overrides=self.overrides,
        )
        self.table_checks.add(qr, batch)
        for r in qr.results:
            key = f"{r.check_name}:{r.column or '-'}"
            agg = self.checks.setdefault(key, {"rows": 0, "violating_rows": 0, "severity": r.severity})
            agg["rows"] += r.rows
            agg["violating_rows"] += r.violating_rows
        self.warnings.extend(w for w in qr.warnings if w not in self.warnings)
        if qr.batch_fatal:
            self.batch_fatal.append(quality.fatal_message(qr))
        if not qr.quarantined_rows:
            return batch
        self._quarantine(aux, batch.filter(pc.invert(qr.keep_mask)), "row-level fatal check")
        return batch.filter(qr.keep_mask)

    def _unpublishable(self, aux, batch: pa.Table) -> pa.Table:
        """Rows no step downstream could carry (`local.rules`)."""
        rules = unpublishable_rows(batch, self.table, self.now)
        if self.table == "death" and batch.num_rows:
            rules += death_before_birth(aux, batch, rules)
        for reason, bad_mask in rules:
            self._quarantine(aux, batch.filter(bad_mask), reason)
        return batch.filter(pc.invert(any_mask(m for _, m in rules))) if rules else batch

    def _with_identity(self, aux, batch: pa.Table) -> pa.Table:
        """Persons with no identity row or no level-1 pseudonym yet cannot be pseudonymised: quarantined, not dropped."""
        if "person_id" not in batch.column_names or not batch.num_rows:
            return batch
        ids = pc.unique(batch.column("person_id")).to_pylist()
        fetch_identities(aux, self.persons, ids, self.res)
        known = pa.array([i for i in ids if i in self.persons], pa.int64())
        has = pc.is_in(batch.column("person_id"), value_set=known)
        nobody = batch.filter(pc.invert(has))
        if not nobody.num_rows:
            return batch
        self._quarantine(aux, nobody, "person has no identity row or no level-1 pseudonym yet")
        return batch.filter(has)

    def process(self, aux, rb: pa.RecordBatch) -> pa.Table:
        """One record batch through every step; returns its level-1 rows."""
        timer = self.timer
        timer.start("objection")
        batch = pa.Table.from_batches([rb])
        self.extracted += batch.num_rows
        self.read_bytes += rb.nbytes
        # Opposition registry: rows of objecting patients never leave the hospital.
        if "person_id" in batch.column_names and len(self.objectors):
            obj = pc.fill_null(pc.is_in(batch.column("person_id"), value_set=self.objectors), False)
            n_obj = int(pc.sum(obj).as_py() or 0)
            if n_obj:
                self.excluded += n_obj
                batch = batch.filter(pc.invert(obj))
        timer.start("quality")
        batch = self._unpublishable(aux, self._check(aux, batch))
        timer.start("identities")
        batch = self._with_identity(aux, batch)
        timer.start("pseudonymise")
        policy = self.policy
        return level1_batch(
            batch,
            self.table,
            self.persons,
            self.base.site_number,
            allow_text=self.allow_text,
            keep_birth_month=policy.keep_birth_month,
            detector=self.detector,
        )

    def write(self, stream_conn, aux, out_path: Path) -> None:
        """Stream the interval's rows into `out_path`: row groups are appended by a writer thread (pyarrow
        releases the GIL while encoding) while this thread checks and pseudonymises the next batch."""
        timer, table = self.timer, self.table
        extract_from = FULL_EXTRACTION_START if self.full else self.start
        rows = stream_rows(stream_conn, table, self.columns, extract_from, self.end, change_column=self.change)
        rows_iter = prefetch(with_base(rows, self.base.id), PREFETCH_BATCHES, f"eds-parse-{table}")
        write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"eds-parquet-{table}")
        pending: deque[Future] = deque()
        writer: pq.ParquetWriter | None = None
        last_log = t0 = time.monotonic()
        try:
            while True:
                with timer("stream"):
                    rb = next(rows_iter, None)
                if rb is None:
                    break
                out = self.process(aux, rb)
                timer.start("parquet")
                if writer is None:
                    writer = pq.ParquetWriter(out_path, out.schema, compression=STAGING_COMPRESSION)
                pending.append(write_pool.submit(writer.write_table, out))
                while len(pending) > PENDING_WRITES:
                    pending.popleft().result()
                self.published += out.num_rows
                timer.stop()
                faults.inject("extract.mid_copy")  # tests: a worker killed while the COPY streams
                if time.monotonic() - last_log > PROGRESS_EVERY_S:
                    rate = self.extracted / (time.monotonic() - t0)
                    mb = self.read_bytes / 1e6
                    log.info(
                        "%s.%s: %d rows extracted (%.0f MB), %.0f rows/s", self.base.id, table, self.extracted, mb, rate
                    )
                    last_log = time.monotonic()
            if writer is None:  # empty interval: an empty file keeps the manifest uniform
                writer = pq.ParquetWriter(out_path, _published_schema(table), compression=STAGING_COMPRESSION)
            with timer("parquet"):
                while pending:
                    pending.popleft().result()
                writer.close()
            writer = None
        finally:
            rows_iter.close()
            write_pool.shutdown(wait=True)
            if writer is not None:
                writer.close()

    def verify(self, aux) -> None:
        """Hold the whole table back on a fatal check; every row accounted for."""
        if self.on_checks is not None:
            self.on_checks(self.table_checks.finish(self.bid, docs=True))
        if self.batch_fatal:  # nothing of the table is published
            aux.execute(
                "INSERT INTO eds_local.quarantine (batch_id, table_name, reason) VALUES (%s, %s, %s)",
                (self.bid, self.table, "; ".join(self.batch_fatal)[:2000]),
            )
            raise QualityError("; ".join(self.batch_fatal), base=self.base.id, table=self.table)
        if self.extracted != self.published + self.quarantined + self.excluded:
            raise AccountingError(
                f"extracted {self.extracted} != published {self.published} + quarantined {self.quarantined} + "
                f"excluded_objection {self.excluded}",
                base=self.base.id,
                table=self.table,
            )

    def stage(self, stream_conn, aux, workdir: Path, out_path: Path) -> _Staged:
        """Tombstones, then both files uploaded to the intake under content-addressed keys."""
        base, table, res = self.base, self.table, self.res
        with self.timer("tombstones"):
            gone = snapshot_deleted(stream_conn, table, self.columns, self.start) if self.change is None else None
            tomb = tombstones(aux, base, table, self.persons, self.start, self.end, self.res, snapshot_deleted=gone)
        self.timer.start("upload")
        s3 = res.intake.client()
        sha = sha256_file(out_path)
        prefix = f"{res.intake_prefix}{base.id}/{self.bid}/{table}"
        staged = _Staged(f"{prefix}.{sha[:16]}.parquet", sha, out_path.stat().st_size, tomb.num_rows)
        s3.upload_file(str(out_path), res.intake_bucket, staged.key)
        if tomb.num_rows:
            tpath = workdir / f"{table}.tombstones.parquet"
            pq.write_table(tomb, tpath)
            staged.tombstones_sha256 = sha256_file(tpath)
            staged.tombstones_key = f"{prefix}.tombstones.{staged.tombstones_sha256[:16]}.parquet"
            s3.upload_file(str(tpath), res.intake_bucket, staged.tombstones_key)
        if self.change is None:  # committed with the stream's transaction when the connection block exits
            snapshot_record(stream_conn, table, self.columns, self.start, self.end)
        self.timer.stop()
        return staged

    def result(self, staged: _Staged, seconds: float) -> TableBatch:
        log.info(
            "%s.%s: extracted %d, published %d, quarantined %d, excluded (objection) %d, tombstones %d; "
            "%.1f MB in %.1fs (%.0f rows/s)",
            self.base.id,
            self.table,
            self.extracted,
            self.published,
            self.quarantined,
            self.excluded,
            staged.tombstones,
            staged.bytes / 1e6,
            seconds,
            self.extracted / seconds if seconds else 0,
        )
        return TableBatch(
            base=self.base.id,
            table=self.table,
            batch_id=self.bid,
            key=staged.key,
            sha256=staged.sha256,
            bytes=staged.bytes,
            extracted=self.extracted,
            published=self.published,
            quarantined=self.quarantined,
            excluded_objection=self.excluded,
            tombstones=staged.tombstones,
            tombstones_key=staged.tombstones_key,
            tombstones_sha256=staged.tombstones_sha256,
            warnings=tuple(self.warnings[:20]),
            quality=self.checks,
            full=self.full,
            fingerprint=self.fingerprint,
            timings={**self.timer.seconds, "total": round(seconds, 4)},
            cpu_timings=dict(self.timer.cpu),
        )


def _connect(res: LocalResources, base: LocalBase, table: str) -> tuple[psycopg.Connection, psycopg.Connection]:
    """The streaming connection (one transaction) and an autocommit one for lookups and the quarantine."""
    try:
        stream_conn = psycopg.connect(res.source_dsn, connect_timeout=10, application_name=f"eds-extract-{table}")
        aux = psycopg.connect(res.source_dsn, connect_timeout=10, autocommit=True)
        MIGRATIONS.ensure(res.source_dsn)  # the hospital's state (quarantine, snapshots, published state)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"source database unreachable: {first}", base=base.id, table=table, transient=db_error_is_transient(exc)
        ) from None
    return stream_conn, aux


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
    run = _TableRun(base, table, start, end, res, overrides, on_checks)
    t0 = time.monotonic()
    stream_conn, aux = _connect(res, base, table)
    with connection_lost_is_a_source_error(base.id, table), stream_conn, aux:
        if base.change_column(table) is None:  # snapshot: rows, deletions and new state see one snapshot
            stream_conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        run.prepare(aux)
        # tests: the source server restarts mid-task (its sessions are terminated)
        faults.inject("extract.source_lost", conn=aux, pid=stream_conn.info.backend_pid)
        workdir = Path(tempfile.mkdtemp(prefix=f"eds-{base.id}-{table}-"))
        out_path = workdir / f"{table}.parquet"
        try:
            run.write(stream_conn, aux, out_path)
            run.verify(aux)
            staged = run.stage(stream_conn, aux, workdir, out_path)
        finally:
            for p in workdir.glob("*"):
                p.unlink()
            workdir.rmdir()
    return run.result(staged, time.monotonic() - t0)


def identifier_detector(aux: psycopg.Connection, base: LocalBase) -> Detector:
    """The scrubber's view of this hospital: every surname of its identity table, its IPP formats."""
    names = [r[0] for r in aux.execute("SELECT DISTINCT last_name FROM identity.patient WHERE last_name IS NOT NULL")]
    return Detector(names, base.ipp_formats)


def _published_schema(table: str) -> pa.Schema:
    schema = omop.table(table).arrow_schema()
    if table == "person":
        schema = schema.append(pa.field(TOKEN_COLUMN, pa.string()))
        schema = schema.append(pa.field(digests.DIGEST_COLUMN, pa.string()))
    return pa.schema([pa.field(f.name, f.type) for f in schema])
