"""The HDH's national tables in Apache Iceberg: one table per OMOP table holding every platform.

- Catalog: pyiceberg's SQL catalog (name `hdh`) in the HDH zone's PostgreSQL, namespace `omop`.
- Data and metadata files: the landing bucket, under `<landing prefix>iceberg/` (pyiceberg's S3 FileIO on the
  landing zone's endpoint and credentials, path-style addressing).
- Schema: the OMOP CDM 5.4 columns of the table (`core/omop.py`) + `_platform` (required), identity-partitioned
  on `_platform`: a platform's delivery replaces its partition only. Level-2 pseudonyms only (what the transfer
  step delivers to the landing zone).
- Each delivery is applied as ONE catalog commit per table (a transaction: delete the platform's partition, then
  append the delivery's rows in bounded chunks) whose snapshot summaries carry `eds.delivery_id`,
  `eds.platform`, `eds.manifest_sha256`, `eds.key_versions` and `eds.delivered_at`. The commit is the only
  visible change: a crash before it leaves the table as it was (data files already written are orphans, removed by
  the table maintenance).
- Exactly once: before applying, the table's snapshot summaries and the ledger `eds_national.applied` (in the same
  PostgreSQL, kept when snapshots are expired) are checked; a delivery already applied, or older than the last one
  applied for its platform, is a no-op. Two racing applies: the catalog's compare-and-swap on the metadata
  location lets one commit; the loser reloads, finds the delivery and does nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    TableAlreadyExistsError,
    ValidationException,
)
from pyiceberg.expressions import EqualTo
from pyiceberg.io.pyarrow import _dataframe_to_data_files  # pinned pyiceberg 0.12: see _rewrite_without
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.table import Table as IcebergTable
from pyiceberg.transforms import IdentityTransform

from eds_network.core import omop
from eds_network.core.config import NationalTarget
from eds_network.core.errors import IntegrityError
from eds_network.core.exchange import MANIFEST
from eds_network.core.storage import download
from eds_network.national import reconcile
from eds_network.national.catalog import (  # noqa: F401 (the national tables' entry points, read here by callers)
    CA_BUNDLE_PROPERTY,
    CATALOG_NAME,
    NAMESPACE,
    CaBundleFileIO,
    NationalTables,
    sqlalchemy_url,
    warehouse_location,
)
from eds_network.national.migrations import MIGRATIONS
from eds_network.national.schema import PLATFORM_COLUMN, arrow_schema, iceberg_schema
from eds_network.national.transfer import FORBIDDEN_COLUMNS, landing_prefix

log = logging.getLogger(__name__)

CHUNK_ROWS = 500_000  # rows per append inside the one commit: bounded memory
COMMIT_ATTEMPTS = 3
PROP_DELIVERY = "eds.delivery_id"
PROP_PLATFORM = "eds.platform"
PROP_MANIFEST = "eds.manifest_sha256"
PROP_KEYS = "eds.key_versions"
PROP_DELIVERED_AT = "eds.delivered_at"
PROP_KIND = "eds.kind"


def ensure_table(catalog: SqlCatalog, table: str) -> IcebergTable:
    """Open (or create) the national table of one OMOP table, identity-partitioned on `_platform`."""
    try:
        catalog.create_namespace(NAMESPACE)
    except NamespaceAlreadyExistsError:
        pass
    ident = (NAMESPACE, table)
    if catalog.table_exists(ident):
        return catalog.load_table(ident)
    schema = iceberg_schema(table)
    spec = PartitionSpec(
        PartitionField(source_id=1, field_id=1000, transform=IdentityTransform(), name=PLATFORM_COLUMN)
    )
    try:
        return catalog.create_table(
            ident,
            schema=schema,
            partition_spec=spec,
            properties={"write.parquet.compression-codec": "zstd", "format-version": "2"},
        )
    except TableAlreadyExistsError:  # a concurrent apply created it
        return catalog.load_table(ident)


@dataclass
class Applied:
    delivery_id: str
    platform: str
    status: str  # applied | already_applied | superseded | gap | needs_full | reconciled
    tables: dict[str, dict] = field(default_factory=dict)  # table -> {status, rows, deleted, snapshot_id}
    kind: str = "full"
    persons_removed: int = 0
    rows_removed: int = 0
    repaired: list[str] = field(default_factory=list)  # reconciliation: tables that differed, replaced
    detail: str = ""

    def ref(self) -> dict:
        return {
            "delivery_id": self.delivery_id,
            "platform": self.platform,
            "status": self.status,
            "kind": self.kind,
            "tables": self.tables,
            "persons_removed": self.persons_removed,
            "rows_removed": self.rows_removed,
            "repaired": self.repaired,
            "detail": self.detail,
        }


def _ledger(dsn: str, delivery_id: str, platform: str) -> tuple[set[str], dict | None]:
    """Tables the ledger has for this delivery, and the platform's newest other delivery applied (delivered_at,
    upto_seq, key_versions), if any."""
    with psycopg.connect(dsn) as conn:
        done = {
            r[0]
            for r in conn.execute("SELECT table_name FROM eds_national.applied WHERE delivery_id = %s", (delivery_id,))
        }
        row = conn.execute(
            "SELECT delivered_at, upto_seq, key_versions FROM eds_national.applied WHERE platform = %s"
            " AND delivery_id <> %s ORDER BY delivered_at DESC LIMIT 1",
            (platform, delivery_id),
        ).fetchone()
    newest = None if row is None else {"delivered_at": row[0], "upto_seq": row[1], "key_versions": row[2]}
    return done, newest


def _record(dsn: str, rows: list[tuple]) -> None:
    with psycopg.connect(dsn) as conn:
        conn.cursor().executemany(
            "INSERT INTO eds_national.applied (delivery_id, table_name, platform, kind, manifest_sha256, delivered_at,"
            " snapshot_id, rows_written, rows_deleted, since_seq, upto_seq, key_versions)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            rows,
        )


def applied_snapshot(tbl: IcebergTable, delivery_id: str) -> int | None:
    """The snapshot that applied `delivery_id` to this table (still in its history), if any."""
    for snap in tbl.metadata.snapshots:
        if snap.summary is not None and snap.summary.additional_properties.get(PROP_DELIVERY) == delivery_id:
            return snap.snapshot_id
    return None


def _platform_persons(catalog: SqlCatalog, platform: str) -> set[int]:
    """The person ids the national person table holds for a platform now (before an apply)."""
    if not catalog.table_exists((NAMESPACE, "person")):
        return set()
    tbl = catalog.load_table((NAMESPACE, "person"))
    scan = tbl.scan(row_filter=EqualTo(PLATFORM_COLUMN, platform), selected_fields=("person_id",))
    return set(scan.to_arrow().column("person_id").to_pylist())


def _chunks(path: Path, table: str, platform: str) -> Iterator[pa.Table]:
    """The delivery file's rows as the national table's Arrow schema, in chunks of about CHUNK_ROWS."""
    schema = arrow_schema(table)
    pf = pq.ParquetFile(path)
    bad = sorted(set(pf.schema_arrow.names) & FORBIDDEN_COLUMNS)
    if bad:
        raise IntegrityError(f"delivery file carries forbidden columns {bad}", table=table)
    unknown = sorted(set(pf.schema_arrow.names) - set(schema.names))
    if unknown:
        raise IntegrityError(f"delivery file has columns outside OMOP 5.4: {unknown}", table=table)
    for rb in pf.iter_batches(batch_size=CHUNK_ROWS):
        n = rb.num_rows
        cols = []
        for f in schema:
            if f.name == PLATFORM_COLUMN:
                cols.append(pa.array([platform] * n, pa.string()))
            elif f.name in rb.schema.names:
                cols.append(rb.column(f.name).cast(f.type))
            else:
                cols.append(pa.nulls(n, f.type))
        yield pa.Table.from_arrays(cols, schema=schema)


def _commit_table(
    catalog: SqlCatalog, table: str, path: Path, props: dict[str, str], platform: str
) -> tuple[str, int, int | None]:
    """Replace the platform's partition of one table by the delivery's rows, in one commit. Returns (status, rows,
    snapshot id). A lost race is retried after a reload; a delivery found applied meanwhile is a no-op."""
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        tbl = ensure_table(catalog, table)
        snap = applied_snapshot(tbl, props[PROP_DELIVERY])
        if snap is not None:
            return "already_applied", 0, snap
        n = 0
        try:
            with tbl.transaction() as tx:
                with warnings.catch_warnings():  # the platform's first delivery: nothing to delete
                    warnings.filterwarnings("ignore", "Delete operation did not match any records")
                    tx.delete(EqualTo(PLATFORM_COLUMN, platform), snapshot_properties=props)
                for chunk in _chunks(path, table, platform):
                    tx.append(chunk, snapshot_properties=props)
                    n += chunk.num_rows
        except (CommitFailedException, ValidationException):
            log.info("national table %s: commit lost to a concurrent writer (attempt %d); reloading", table, attempt)
            continue
        tbl = catalog.load_table((NAMESPACE, table))
        return "applied", n, tbl.metadata.current_snapshot_id
    raise IntegrityError(f"could not commit after {COMMIT_ATTEMPTS} attempts (concurrent writers)", table=table)


def _commit_changes(
    catalog: SqlCatalog,
    table: str,
    rows: Path | None,
    deletes: Path | None,
    props: dict[str, str],
    platform: str,
) -> tuple[str, int, int, int | None]:
    """Apply an incremental delivery's changes to one table in one commit: delete the platform's rows whose key
    is upserted or deleted, append the upserted rows. Returns (status, rows appended, keys deleted, snapshot)."""
    key = omop.table(table).primary_key or "person_id"
    keys: list[int] = []
    if rows is not None:
        keys += pq.read_table(rows, columns=[key]).column(key).to_pylist()
    n_deleted = 0
    if deletes is not None:
        gone = pq.read_table(deletes, columns=["id"]).column("id").to_pylist()
        n_deleted = len(gone)
        keys += gone
    if not keys:
        return "unchanged", 0, 0, None
    doomed = pa.array(sorted(set(keys)), pa.int64())
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        tbl = ensure_table(catalog, table)
        snap = applied_snapshot(tbl, props[PROP_DELIVERY])
        if snap is not None:
            return "already_applied", 0, 0, snap
        n = 0
        try:
            with tbl.transaction() as tx:
                _rewrite_without(tx, tbl, table, platform, key, doomed, props)
                if rows is not None:
                    for chunk in _chunks(rows, table, platform):
                        tx.append(chunk, snapshot_properties=props)
                        n += chunk.num_rows
                if n == 0:  # deletes only: an empty append on top, so no current manifest lists a deleted entry
                    tx.append(arrow_schema(table).empty_table(), snapshot_properties=props)
        except (CommitFailedException, ValidationException):
            log.info("national table %s: commit lost to a concurrent writer (attempt %d); reloading", table, attempt)
            continue
        tbl = catalog.load_table((NAMESPACE, table))
        return "applied", n, n_deleted, tbl.metadata.current_snapshot_id
    raise IntegrityError(f"could not commit after {COMMIT_ATTEMPTS} attempts (concurrent writers)", table=table)


def _rewrite_without(tx, tbl: IcebergTable, table: str, platform: str, key: str, doomed: pa.Array, props) -> int:
    """Copy-on-write delete in `tx` of the platform's rows whose `key` is in `doomed`: only the data files holding
    one are rewritten (found by each file's key column alone; a row-filter delete reads every file in full, its
    statistics cannot prune an IN list of many keys). Returns the data files rewritten."""
    hits = []
    for task in tbl.scan(row_filter=EqualTo(PLATFORM_COLUMN, platform)).plan_files():
        if task.delete_files:  # never written by this module: a copy-on-write table has none
            raise IntegrityError("unexpected delete files in a national table", table=table)
        with tbl.io.new_input(task.file.file_path).open() as f:
            held = pq.read_table(f, columns=[key]).column(key)
        if pc.any(pc.is_in(held, value_set=doomed)).as_py():
            hits.append(task.file)
    if not hits:
        return 0
    schema = arrow_schema(table)
    commit_uuid, counter = uuid.uuid4(), itertools.count(0)
    with tx.update_snapshot(snapshot_properties=props).overwrite(commit_uuid=commit_uuid) as ow:
        for data_file in hits:
            with tbl.io.new_input(data_file.file_path).open() as f:
                kept = pq.read_table(f).select(schema.names)
            kept = kept.filter(pc.invert(pc.is_in(kept.column(key), value_set=doomed))).cast(schema)
            ow.delete_data_file(data_file)
            if kept.num_rows:
                # pyiceberg's writer, as its own delete uses it: rewritten files belong to the overwrite snapshot
                for new in _dataframe_to_data_files(
                    table_metadata=tx.table_metadata, df=kept, io=tbl.io, write_uuid=commit_uuid, counter=counter
                ):
                    ow.append_data_file(new)
    return len(hits)


def _manifest_props(body: bytes, manifest: dict, delivery_id: str) -> dict[str, str]:
    return {
        PROP_DELIVERY: delivery_id,
        PROP_PLATFORM: manifest["platform"],
        PROP_MANIFEST: hashlib.sha256(body).hexdigest(),
        PROP_KEYS: json.dumps(manifest.get("key_versions", {}), sort_keys=True),
        PROP_DELIVERED_AT: manifest["delivered_at"],
        PROP_KIND: manifest.get("kind_of_delivery", "full"),
    }


def _refusal(manifest: dict, newest: dict | None, props: dict[str, str], done: set[str]) -> tuple[str, str] | None:
    """Why this delivery may not be applied now (status, detail), or None."""
    if done or newest is None:
        return None
    delivered_at = dt.datetime.fromisoformat(manifest["delivered_at"])
    if newest["delivered_at"] > delivered_at:
        return "superseded", "older than the last delivery applied"
    if props[PROP_KIND] != "incremental":
        return None
    since = manifest.get("since_seq")
    if newest["upto_seq"] is None or since is None or since > newest["upto_seq"]:
        return "gap", f"starts after change {since}, the HDH holds up to {newest['upto_seq']}: a full delivery is due"
    if newest["key_versions"] is not None and newest["key_versions"] != props[PROP_KEYS]:
        return "needs_full", "key versions changed since the last delivery applied: a full delivery is due"
    return None


def platform_rows(catalog: SqlCatalog, table: str, platform: str) -> pa.Table:
    """The national table's rows of one platform now (the reconciliation's HDH side)."""
    if not catalog.table_exists((NAMESPACE, table)):
        return arrow_schema(table).empty_table()
    tbl = catalog.load_table((NAMESPACE, table))
    return tbl.scan(row_filter=EqualTo(PLATFORM_COLUMN, platform)).to_arrow().cast(arrow_schema(table))


def _matches(catalog: SqlCatalog, table: str, path: Path, platform: str) -> bool:
    """Whether the national table holds exactly the delivered rows of the platform (row count + content hash)."""
    key = omop.table(table).primary_key or "person_id"
    ours = reconcile.digest(pa.concat_tables(list(_chunks(path, table, platform))), key)
    theirs = reconcile.digest(platform_rows(catalog, table, platform), key)
    if ours != theirs:
        log.warning(
            "%s: national table %s: %d rows (hash %s) vs %d delivered (hash %s)",
            platform,
            table,
            theirs[0],
            theirs[1][:12],
            ours[0],
            ours[1][:12],
        )
    return ours == theirs


def apply_delivery(target: NationalTarget, res: NationalTables, delivery_id: str) -> Applied:
    """Apply one landed delivery to the national tables, exactly once: a full one replaces its platform's
    partition, an incremental one its changed and deleted rows, a reconciliation only the tables that differ."""
    s3 = res.landing.client()
    bucket = target.landing_zone.bucket
    prefix = landing_prefix(target, delivery_id)
    body = s3.get_object(Bucket=bucket, Key=prefix + MANIFEST)["Body"].read()
    manifest = json.loads(body)
    platform = manifest["platform"]
    delivered_at = dt.datetime.fromisoformat(manifest["delivered_at"])
    props = _manifest_props(body, manifest, delivery_id)
    kind = props[PROP_KIND]
    MIGRATIONS.ensure(res.dsn)  # the ledger (eds_national.applied)
    done, newest = _ledger(res.dsn, delivery_id, platform)
    out = Applied(delivery_id, platform, "applied", kind=kind)
    refused = _refusal(manifest, newest, props, done)
    if refused is not None:
        out.status, out.detail = refused
        log.warning("%s: delivery %s not applied: %s", platform, delivery_id, out.detail)
        return out
    catalog = res.catalog(target)
    by_table: dict[str, dict[str, dict]] = {}
    for f in manifest["files"]:
        by_table.setdefault(f["table"], {})[f.get("role", "rows")] = f
    ledger_rows = []
    with tempfile.TemporaryDirectory(prefix="eds-iceberg-") as tmp:

        def fetch(f: dict, name: str) -> Path:
            path = Path(tmp) / f"{name}.parquet"
            sha, _ = download(s3, bucket, f["key"], path)
            if sha != f["sha256"]:
                raise IntegrityError(f"landing file {f['key']} does not match its manifest", table=f["table"])
            return path

        for t, parts in by_table.items():
            if t in done:
                out.tables[t] = {"status": "already_applied", "rows": 0}
                continue
            rows_f = parts.get("rows")
            status, n, n_del, snap = _apply_table(catalog, t, parts, fetch, kind, props, out)
            if status == "applied" and rows_f and n != rows_f["rows"]:
                raise IntegrityError(f"applied {n} rows, the manifest says {rows_f['rows']}", table=t)
            out.tables[t] = {"status": status, "rows": n, "deleted": n_del, "snapshot_id": snap}
            since, upto = manifest.get("since_seq"), manifest.get("upto_seq")
            ledger_rows.append(
                (delivery_id, t, platform, kind, props[PROP_MANIFEST], delivered_at, snap, n, n_del, since, upto)
                + (props[PROP_KEYS],)
            )
            for p in Path(tmp).iterdir():
                p.unlink()
    _record(res.dsn, ledger_rows)
    statuses = {v["status"] for v in out.tables.values()}
    if statuses and statuses <= {"already_applied"}:
        out.status = "already_applied"
    elif kind == "reconcile" and "applied" not in statuses:
        out.status = "reconciled"
    log.info(
        "%s: %s delivery %s %s to the national tables: %s",
        platform,
        kind,
        delivery_id,
        out.status,
        ", ".join(f"{t}={v['rows']}" for t, v in out.tables.items()),
    )
    return out


def _apply_table(catalog: SqlCatalog, t: str, parts: dict, fetch, kind: str, props: dict, out: Applied):
    """One table of a delivery as one commit: an incremental one's changed and deleted rows; a full one's whole
    platform partition; a reconciliation's only where the table differs. Returns (status, rows, deleted,
    snapshot id); persons removed and tables repaired are counted in `out`."""
    platform = out.platform
    rows_f, del_f = parts.get("rows"), parts.get("deletes")
    path = fetch(rows_f, t) if rows_f else None
    if kind == "incremental":
        dpath = fetch(del_f, f"{t}.deletes") if del_f else None
        status, n, n_del, snap = _commit_changes(catalog, t, path, dpath, props, platform)
        if t == "person":
            out.persons_removed += n_del
        out.rows_removed += n_del
        return status, n, n_del, snap
    if kind == "reconcile" and _matches(catalog, t, path, platform):
        return "reconciled", 0, 0, None
    before = _platform_persons(catalog, platform) if t == "person" else None
    status, n, snap = _commit_table(catalog, t, path, props, platform)
    if before is not None and status == "applied":
        # persons of the platform's previous state absent from this full delivery (objections)
        now = set(pq.read_table(path, columns=["person_id"]).column("person_id").to_pylist())
        out.persons_removed = len(before - now)
    if status == "applied" and kind == "reconcile":
        log.warning("%s: national table %s differed from the platform: repaired", platform, t)
        out.repaired.append(t)
    return status, n, 0, snap


def table_names(catalog: SqlCatalog) -> list[str]:
    try:
        return sorted(ident[-1] for ident in catalog.list_tables(NAMESPACE))
    except Exception:  # no namespace yet: no table
        return []


def rows_per_platform(tbl: IcebergTable, snapshot_id: int | None = None) -> dict[str, int]:
    """Row counts per platform from the manifests (no data file read): exact, the tables carry no delete files."""
    counts: dict[str, int] = {}
    for task in tbl.scan(snapshot_id=snapshot_id).plan_files():
        if task.delete_files:
            raise IntegrityError("unexpected delete files: counts need a scan", table=tbl.name()[-1])
        p = task.file.partition[0]
        counts[p] = counts.get(p, 0) + task.file.record_count
    return dict(sorted(counts.items()))


def describe(target: NationalTarget, res: NationalTables, *, snapshot_id: int | None = None) -> list[dict]:
    """Per table: its current snapshot (or `snapshot_id`, for the tables that have it: time travel), rows per
    platform as of that snapshot, and every snapshot (id, time, operation, delivery, platform)."""
    catalog = res.catalog(target)
    out = []
    for name in table_names(catalog):
        tbl = catalog.load_table((NAMESPACE, name))
        if snapshot_id is not None and tbl.metadata.snapshot_by_id(snapshot_id) is None:
            continue
        snaps = []
        for s in tbl.metadata.snapshots:
            extra = s.summary.additional_properties if s.summary is not None else {}
            snaps.append(
                {
                    "snapshot_id": s.snapshot_id,
                    "at": dt.datetime.fromtimestamp(s.timestamp_ms / 1000, dt.UTC).isoformat(timespec="seconds"),
                    "operation": s.summary.operation.value if s.summary is not None else "",
                    "delivery_id": extra.get(PROP_DELIVERY, ""),
                    "platform": extra.get(PROP_PLATFORM, ""),
                }
            )
        pinned = snapshot_id if snapshot_id is not None else tbl.metadata.current_snapshot_id
        out.append(
            {
                "table": name,
                "snapshot_id": pinned,
                "rows": rows_per_platform(tbl, pinned) if pinned is not None else {},
                "snapshots": snaps,
            }
        )
    return out
