"""Package the warehouse for the national level: what changed since the delivery the HDH acknowledged (upserts
and deletes, `changes.py`), or the whole warehouse, as Parquet files + a manifest (written last) in the platform
outbox, named by the ledger state and the change range it holds."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from eds_network.core import omop, zones
from eds_network.core.config import Platform
from eds_network.core.copystream import stream_query
from eds_network.core.errors import IntegrityError
from eds_network.core.exchange import ACK, MANIFEST, SCHEMA_VERSION, TOKEN_COLUMN
from eds_network.core.signing import sign_document, verify_document
from eds_network.core.storage import list_keys, object_exists, put_json, read_json, sha256_file
from eds_network.platform import changes, keyversions
from eds_network.platform.migrations import MIGRATIONS
from eds_network.platform.warehouse import (
    PlatformResources,
    conflict_key,
    expected_columns,
    platform_tables,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Package:
    platform: str
    delivery_id: str
    manifest_key: str
    files: dict[str, dict]
    kind: str = "full"  # full | incremental | reconcile | unchanged (nothing since the acknowledged delivery)
    deletes: dict[str, dict] = field(default_factory=dict)

    def ref(self) -> dict:
        return {
            "platform": self.platform,
            "delivery_id": self.delivery_id,
            "manifest_key": self.manifest_key,
            "kind": self.kind,
            "rows": {t: f["rows"] for t, f in self.files.items()},
            "deleted": {t: f["rows"] for t, f in self.deletes.items()},
            "bytes": sum(f["bytes"] for f in [*self.files.values(), *self.deletes.values()]),
        }


def read_ack(s3, platform: Platform, trust: Mapping[str, bytes] | None) -> dict | None:
    """The HDH's signed acknowledgement in the outbox (None: none yet, or not verifiable: then a full delivery)."""
    key = f"{platform.outbox.prefix}{ACK}"
    if object_exists(s3, platform.outbox.bucket, key) is None:
        return None
    doc = read_json(s3, platform.outbox.bucket, key)
    if trust is not None:
        public = trust.get(zones.NATIONAL)
        try:
            if public is None:
                raise IntegrityError("no national public key in the trust store")
            verify_document(doc, public, what=f"platform {platform.id}: HDH acknowledgement")
        except IntegrityError as exc:
            log.warning("%s: %s; the next delivery is a full one", platform.id, exc)
            return None
    if doc.get("platform") != platform.id:
        log.warning("%s: the HDH acknowledgement names %r; ignored", platform.id, doc.get("platform"))
        return None
    return doc


def _export(conn, query: sql.Composable, cols: list[str], types: dict, path: Path, table: str) -> int:
    schema = pa.schema([pa.field(c, types[c]) for c in cols])
    n = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        for rb in stream_query(conn, query, cols, types, table=table):
            w.write_batch(rb.cast(schema) if rb.schema != schema else rb)
            n += rb.num_rows
    return n


def _changed(since: int | None, upto: int) -> sql.Composable:
    if since is None:
        return sql.SQL("")
    return sql.SQL(" WHERE {c} > {a} AND {c} <= {b}").format(
        c=sql.Identifier(changes.SEQ_COLUMN), a=sql.Literal(since), b=sql.Literal(upto)
    )


def package(
    platform: Platform,
    res: PlatformResources,
    key_versions: dict[str, list[str]],
    *,
    full: bool | None = None,
    reconcile: bool | None = False,
) -> Package:
    """Package what changed since the delivery the HDH acknowledged (upserts + deletes), or the whole warehouse
    (`full`: no acknowledgement yet, the HDH asked for one, or the caller forces it; `reconcile`: a full package
    the HDH compares with its tables and applies only where they differ; None: when the platform's
    `reconcile_every_days` have passed since the last one). One Parquet file per table and kind + a manifest
    (written last) in the outbox."""
    tables = platform_tables(platform)
    s3 = res.outbox.client()
    bucket, prefix = platform.outbox.bucket, platform.outbox.prefix
    ack = read_ack(s3, platform, res.trust)
    MIGRATIONS.ensure(res.warehouse_dsn)
    kind, since, full, transport = _kind_of_package(platform, res, tables, ack, full, reconcile)
    with psycopg.connect(res.warehouse_dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one consistent state for every file
        conn.read_only = True
        upto = changes.high_water(conn, tables)
        latest_key = f"{prefix}_latest.json"
        if kind == "incremental" and upto <= since and object_exists(s3, bucket, latest_key):
            # Nothing changed since what the HDH holds: no new package; the latest one (which the HDH applied:
            # it holds changes up to `since`) stays the latest, so the transfer finds it in the landing zone and
            # the national tables are left as they are.
            latest = read_json(s3, bucket, latest_key)
            log.info(
                "%s: no change since package %s (change %s): nothing to package",
                platform.id,
                latest["delivery_id"],
                since,
            )
            return Package(platform.id, latest["delivery_id"], latest["manifest_key"], {}, kind="unchanged")
        state = conn.execute(
            "SELECT coalesce(string_agg(batch_id || ':' || manifest_sha256, ',' ORDER BY batch_id,"
            " manifest_sha256), '') FROM eds_platform.ledger"
        ).fetchone()[0]
        packaged_at = dt.datetime.now(dt.UTC).isoformat()
        # A reconciliation checks again even if nothing changed: it is named by its time too.
        name = f"{state}|{kind}|{since}|{upto}" + (f"|{packaged_at}" if kind == "reconcile" else "")
        delivery_id = f"{platform.id}__{hashlib.sha256(name.encode()).hexdigest()[:16]}"
        with tempfile.TemporaryDirectory(prefix="eds-package-") as tmp:
            out = _Outbox(s3, bucket, f"{prefix}{delivery_id}/", Path(tmp))
            files, deletes, extra = _export_tables(conn, out, tables, since, upto, full=full)
    manifest_key = f"{prefix}{delivery_id}/{MANIFEST}"
    manifest = {
        "kind": "eds-network/platform-delivery",
        "platform": platform.id,
        "delivery_id": delivery_id,
        "kind_of_delivery": kind,
        "since_seq": since,
        "upto_seq": upto,
        "schema_version": SCHEMA_VERSION,
        "key_versions": key_versions,
        "tables": files,
        "deletes": deletes,
        **extra,
        "members": [b.id for b in platform.members],
        "packaged_at": packaged_at,
    }
    if res.signing_key is not None:  # the national zone verifies it against the trust store
        manifest = sign_document(manifest, res.signing_key, zones.platform(platform.id))
    put_json(s3, bucket, manifest_key, manifest)
    with psycopg.connect(res.warehouse_dsn) as conn:
        changes.record_package(conn, delivery_id, kind, since, upto, transport)
    put_json(s3, bucket, f"{prefix}_latest.json", {"delivery_id": delivery_id, "manifest_key": manifest_key})
    log.info(
        "%s: %s delivery %s packaged (changes %s..%s): %s; deletes %s",
        *(platform.id, kind, delivery_id, since, upto),
        ", ".join(f"{t}={f['rows']}" for t, f in files.items()),
        ", ".join(f"{t}={f['rows']}" for t, f in deletes.items()) or "none",
    )
    return Package(platform.id, delivery_id, manifest_key, files, kind=kind, deletes=deletes)


def _kind_of_package(
    platform: Platform, res: PlatformResources, tables: list[str], ack: dict | None, full, reconcile
) -> tuple[str, int | None, bool, str | None]:
    """(kind, since, full, transport version): `full`, `reconcile` or `incremental` (changes after `since`, the
    acknowledged watermark; `full`: every table's file, even empty).
    The deletions the HDH acknowledged are pruned first: no objector's token outlives its erasure. A new transport
    key version makes the package full: every national person id changes with it (the HDH derives them from the
    tokens), so the HDH replaces the platform's partition instead of adding the new ids beside the old ones."""
    with psycopg.connect(res.warehouse_dsn) as conn:
        keyversions.require_single_version(conn, platform.id, tables, {b.site_number: b.id for b in platform.members})
        transport = keyversions.transport_version(conn, platform.id)
        before = keyversions.acknowledged_transport_version(conn, (ack or {}).get("upto_seq"))
        if full is None and transport is not None and before is not None and transport != before:
            log.info("%s: transport key version %s -> %s: a full delivery", platform.id, before, transport)
            full = True
        if ack is not None and ack.get("upto_seq") is not None:
            pruned = changes.prune(conn, int(ack["upto_seq"]))
            if pruned:
                log.info("%s: %d acknowledged deletions pruned from the change log", platform.id, pruned)
        if reconcile is None:
            reconcile = ack is not None and changes.reconcile_due(conn, platform.reconcile_every_days)
    if full is None:
        full = reconcile or ack is None or bool(ack.get("full_requested"))
    since = None if full else int(ack["upto_seq"])
    return ("reconcile" if reconcile else ("full" if full else "incremental")), since, full, transport


@dataclass(frozen=True)
class _Outbox:
    """Where one package's files go: local files in `tmp`, uploaded under `prefix` (content-addressed names)."""

    s3: object
    bucket: str
    prefix: str
    tmp: Path

    def put(self, path: Path, n: int, stem: str) -> dict:
        sha = sha256_file(path)
        key = f"{self.prefix}{stem}.{sha[:16]}.parquet"
        self.s3.upload_file(str(path), self.bucket, key)
        return {"key": key, "sha256": sha, "bytes": path.stat().st_size, "rows": n}


def _export_tables(conn, out: _Outbox, tables: list[str], since: int | None, upto: int, *, full: bool):
    """Each table's rows changed in (since, upto] (every row when `since` is None), its deletes, and the tokens of
    the unchanged persons the changed rows refer to: (files, deletes, {"persons": file} or {})."""
    files: dict[str, dict] = {}
    deletes: dict[str, dict] = {}
    with_person = []
    for t in tables:
        cols = expected_columns(t)
        spec = omop.table(t)
        types = {c: (spec.column(c).arrow_type if spec.has(c) else pa.string()) for c in cols}
        query = sql.SQL("SELECT {} FROM omop.{}{} ORDER BY {}").format(
            sql.SQL(", ").join(map(sql.Identifier, cols)),
            sql.Identifier(t),
            _changed(since, upto),
            sql.Identifier(conflict_key(t)),
        )
        path = out.tmp / f"{t}.parquet"
        n = _export(conn, query, cols, types, path, t)
        if full or n or t == "person":
            files[t] = out.put(path, n, t)
        if since is None:
            continue
        if spec.has("person_id") and t != "person" and n:
            with_person.append(t)
        deleted = _export_deletes(conn, out, t, since, upto)
        if deleted:
            deletes[t] = deleted
    extra = {"persons": _export_persons(conn, out, with_person, since, upto)} if with_person else {}
    return files, deletes, extra


def _export_deletes(conn, out: _Outbox, t: str, since: int, upto: int) -> dict | None:
    """The change log's deletions of `t` in (since, upto]: row ids, or for person the sealed tokens only."""
    col = TOKEN_COLUMN if t == "person" else "id"
    dq = sql.SQL(
        "SELECT {sel} FROM eds_platform.change_log WHERE table_name = {t} AND seq > {a} AND seq <= {b}"
    ).format(
        sel=sql.SQL("token") if t == "person" else sql.SQL("row_id"),
        t=sql.Literal(t),
        a=sql.Literal(since),
        b=sql.Literal(upto),
    )
    dpath = out.tmp / f"{t}.deletes.parquet"
    dn = _export(conn, dq, [col], {col: pa.string() if t == "person" else pa.int64()}, dpath, t)
    return out.put(dpath, dn, f"{t}.deletes") if dn else None


def _export_persons(conn, out: _Outbox, with_person: list[str], since: int, upto: int) -> dict:
    """The sealed tokens of the persons the changed rows refer to: the national zone needs them to derive the
    level-2 pseudonyms (the person rows themselves did not change)."""
    refs = sql.SQL(" UNION ").join(
        sql.SQL("SELECT person_id FROM omop.{}{}").format(sql.Identifier(t), _changed(since, upto)) for t in with_person
    )
    q = sql.SQL("SELECT person_id, {tok} FROM omop.person WHERE person_id IN ({refs})").format(
        tok=sql.Identifier(TOKEN_COLUMN), refs=refs
    )
    rpath = out.tmp / "persons.parquet"
    types = {"person_id": pa.int64(), TOKEN_COLUMN: pa.string()}
    rn = _export(conn, q, ["person_id", TOKEN_COLUMN], types, rpath, "person")
    return out.put(rpath, rn, "_persons")


def _delete_all(s3, bucket: str, prefix: str) -> int:
    keys = list_keys(s3, bucket, prefix)
    for k in keys:  # one DeleteObject each: what the zone's policy grants
        s3.delete_object(Bucket=bucket, Key=k)
    return len(keys)


def prune_delivered(platform: Platform, res: PlatformResources, *, intake_prefix: str | None = None) -> dict[str, int]:
    """Delete what the HDH has applied and acknowledged: the outbox packages up to the acknowledged one (not the
    one `_latest.json` points at) and the intake batches merged before it was packaged. An objector's rows then
    outlive their erasure in no file of the platform's buckets. Returns the counts of packages and batches (and
    objects) deleted."""
    s3 = res.outbox.client()
    ack = read_ack(s3, platform, res.trust)
    out = {"packages": 0, "batches": 0, "objects": 0}
    if ack is None or ack.get("upto_seq") is None:
        return out
    with psycopg.connect(res.warehouse_dsn) as conn:
        acked = conn.execute(
            "SELECT packaged_at FROM eds_platform.packaged WHERE upto_seq <= %s ORDER BY packaged_at DESC LIMIT 1",
            (int(ack["upto_seq"]),),
        ).fetchone()
        if acked is None:
            return out
        packages = [
            r[0]
            for r in conn.execute("SELECT delivery_id FROM eds_platform.packaged WHERE packaged_at <= %s", (acked[0],))
        ]
        batches = conn.execute(
            "SELECT DISTINCT base_id, batch_id FROM eds_platform.ledger WHERE applied_at <= %s", (acked[0],)
        ).fetchall()
    latest_key = f"{platform.outbox.prefix}_latest.json"
    latest = (
        read_json(s3, platform.outbox.bucket, latest_key)["delivery_id"]
        if object_exists(s3, platform.outbox.bucket, latest_key)
        else None
    )
    for d in packages:
        if d != latest:
            n = _delete_all(s3, platform.outbox.bucket, f"{platform.outbox.prefix}{d}/")
            out["packages"] += bool(n)
            out["objects"] += n
    intake = res.intake.client()
    root = platform.intake.prefix if intake_prefix is None else intake_prefix
    for base_id, batch_id in batches:
        n = _delete_all(intake, platform.intake.bucket, f"{root}{base_id}/{batch_id}/")
        out["batches"] += bool(n)
        out["objects"] += n
    if out["objects"]:
        log.info(
            "%s: %d packages and %d intake batches applied and acknowledged by the HDH deleted (%d objects)",
            platform.id,
            out["packages"],
            out["batches"],
            out["objects"],
        )
    return out
