"""Mutualised level: consolidate members' manifested batches into the platform warehouse, link, package.

- Only manifested batches are read; every file is verified against the manifest SHA-256 before loading.
- A batch is loaded with COPY into staging tables and merged in ONE transaction (upsert on the namespaced
  keys), its tombstones applied, and recorded in a ledger (batch id + manifest SHA-256): applied once.
- A batch whose file or schema does not match its manifest is rejected with a clear error, left in intake,
  and the other batches still load.
- Linkage: rows of the same patient from two sites carry the same level-1 person id, so they become one
  warehouse person; `eds_platform.person_site` records which sites saw each person (overlap statistics).
- Package: one Parquet file per table + a manifest in the platform outbox, emitted as the platform's Asset.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg import sql

from eds_network import faults, omop
from eds_network.config import Platform
from eds_network.errors import IntegrityError
from eds_network.extract import stream_query
from eds_network.pseudonymise import TOKEN_COLUMN
from eds_network.publish import MANIFEST, SCHEMA_VERSION
from eds_network.storage import S3Endpoint, download, list_keys, put_json, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlatformResources:
    warehouse_dsn: str = field(repr=False)
    intake: S3Endpoint
    outbox: S3Endpoint
    # The platform's current level-1 key version: a batch pseudonymised with another version would not link.
    level1_key_version: str | None = None


@dataclass(frozen=True)
class Consolidation:
    platform: str
    applied: list[str]
    skipped: int
    rejected: dict[str, str]
    rows: dict[str, dict[str, int]]
    linkage: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)
    key_versions: dict[str, list[str]] = field(default_factory=dict)  # from the members' manifests

    def ref(self) -> dict:
        return asdict(self)


def _tables(platform: Platform) -> list[str]:
    wanted = {t for b in platform.members for t in b.tables}
    return [t for t in omop.DEFAULT_TABLES if t in wanted] + sorted(wanted - set(omop.DEFAULT_TABLES))


def conflict_key(table: str) -> str:
    return omop.table(table).primary_key or "person_id"


def ensure_warehouse(conn: psycopg.Connection, tables: list[str]) -> None:
    conn.execute("CREATE SCHEMA IF NOT EXISTS omop; CREATE SCHEMA IF NOT EXISTS eds_platform")
    for t in tables:
        spec = omop.table(t)
        cols = [
            sql.SQL("{} {}{}").format(
                sql.Identifier(c.name),
                sql.SQL(c.sql_type),
                sql.SQL(" NOT NULL" if c.name == conflict_key(t) else ""),
            )
            for c in spec.columns
        ]
        cols.append(sql.SQL("_site integer NOT NULL"))
        cols.append(sql.SQL("_batch_id text NOT NULL"))
        if t == "person":
            cols.append(sql.SQL("{} text").format(sql.Identifier(TOKEN_COLUMN)))
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS omop.{} ({}, PRIMARY KEY ({}))").format(
                sql.Identifier(t), sql.SQL(", ").join(cols), sql.Identifier(conflict_key(t))
            )
        )
        if spec.has("person_id") and t != "person":
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON omop.{} (person_id)").format(
                    sql.Identifier(f"{t}_person_idx"), sql.Identifier(t)
                )
            )
    conn.execute("""
        CREATE TABLE IF NOT EXISTS eds_platform.ledger (
            batch_id text NOT NULL, manifest_sha256 text NOT NULL, base_id text NOT NULL,
            data_interval_start timestamptz, rows jsonb NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (batch_id, manifest_sha256));
        CREATE TABLE IF NOT EXISTS eds_platform.person_site (
            person_id bigint NOT NULL, base_id text NOT NULL, site_number integer NOT NULL,
            PRIMARY KEY (person_id, base_id));
        CREATE TABLE IF NOT EXISTS eds_platform.rejected (
            batch_id text NOT NULL, manifest_sha256 text NOT NULL, reason text NOT NULL,
            rejected_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (batch_id, manifest_sha256));
    """)


def _copy_parquet(conn: psycopg.Connection, path: Path, target: sql.Composable, columns: list[str]) -> int:
    """COPY a Parquet file into a table, row group by row group (CSV is the fastest COPY input from Arrow)."""
    pf = pq.ParquetFile(path)
    n = 0
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        target, sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with conn.cursor().copy(stmt) as copy:
        for rb in pf.iter_batches(batch_size=100_000, columns=columns):
            buf = io.BytesIO()
            pacsv.write_csv(rb, buf, write_options=pacsv.WriteOptions(include_header=False, quoting_style="needed"))
            copy.write(buf.getvalue())
            n += rb.num_rows
    return n


def _expected_columns(table: str) -> list[str]:
    cols = omop.table(table).column_names
    return [*cols, TOKEN_COLUMN] if table == "person" else cols


def _apply_batch(
    conn: psycopg.Connection, manifest: dict, files: dict[str, Path], tombs: dict[str, Path], tables: list[str]
) -> dict[str, int]:
    rows: dict[str, int] = {}
    site = int(manifest["site_number"])
    bid = manifest["batch_id"]
    for t in [t for t in tables if t in files]:
        cols = _expected_columns(t)
        stage = sql.Identifier(f"stage_{t}")
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM omop.{} WITH NO DATA").format(
                stage, sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(t)
            )
        )
        n = _copy_parquet(conn, files[t], stage, cols)
        key = conflict_key(t)
        updates = sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in [*cols, "_site", "_batch_id"] if c != key
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO omop.{t} ({cols}, _site, _batch_id) SELECT {cols}, %s, %s FROM {stage} "
                "ON CONFLICT ({key}) DO UPDATE SET {updates}"
            ).format(
                t=sql.Identifier(t),
                cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
                stage=stage,
                key=sql.Identifier(key),
                updates=updates,
            ),
            (site, bid),
        )
        if t == "person":
            conn.execute(
                sql.SQL(
                    "INSERT INTO eds_platform.person_site (person_id, base_id, site_number) "
                    "SELECT person_id, %s, %s FROM {} ON CONFLICT DO NOTHING"
                ).format(stage),
                (manifest["base"], site),
            )
        rows[t] = n
    # Tombstones: a person tombstone (objection) removes every row of that patient contributed by this site.
    for t, path in tombs.items():
        tomb = pq.read_table(path)
        kinds = tomb.column("kind").to_pylist()
        ids = tomb.column("id").to_pylist()
        persons = [i for k, i in zip(kinds, ids, strict=True) if k == "person"]
        row_ids = [i for k, i in zip(kinds, ids, strict=True) if k == "row"]
        if row_ids:
            conn.execute(
                sql.SQL("DELETE FROM omop.{} WHERE {} = ANY(%s)").format(
                    sql.Identifier(t), sql.Identifier(conflict_key(t))
                ),
                (row_ids,),
            )
        if persons:
            conn.execute(
                "DELETE FROM eds_platform.person_site WHERE person_id = ANY(%s) AND base_id = %s",
                (persons, manifest["base"]),
            )
            for other in [t for t in tables if t != "person"]:
                conn.execute(
                    sql.SQL("DELETE FROM omop.{} WHERE person_id = ANY(%s) AND _site = %s").format(
                        sql.Identifier(other)
                    ),
                    (persons, site),
                )
            # The person row goes when no other site still treats the patient.
            conn.execute(
                "DELETE FROM omop.person p WHERE p.person_id = ANY(%s) AND NOT EXISTS ("
                "SELECT 1 FROM eds_platform.person_site s WHERE s.person_id = p.person_id)",
                (persons,),
            )
        rows[f"{t}.tombstones"] = len(ids)
    return rows


def _verify_files(s3, bucket: str, manifest: dict, workdir: Path, tables: list[str]) -> tuple[dict, dict]:
    files: dict[str, Path] = {}
    tombs: dict[str, Path] = {}
    for t, entry in manifest["tables"].items():
        if t not in tables:
            raise IntegrityError("table not in the platform's scope", base=manifest["base"], table=t)
        for key_f, sha_f, dest in (("key", "sha256", files), ("tombstones_key", "tombstones_sha256", tombs)):
            key = entry.get(key_f)
            if not key:
                continue
            path = workdir / Path(key).name
            try:
                sha, _size = download(s3, bucket, key, path)
            except Exception:
                raise IntegrityError(
                    f"file {key} listed in the manifest is missing", base=manifest["base"], table=t
                ) from None
            if sha != entry[sha_f]:
                raise IntegrityError(
                    f"file {key} does not match the manifest SHA-256 (got {sha[:12]}…, expected {entry[sha_f][:12]}…)",
                    base=manifest["base"],
                    table=t,
                )
            if dest is files:
                got = pq.read_schema(path).names
                want = _expected_columns(t)
                if got != want:
                    missing = sorted(set(want) - set(got))
                    extra = sorted(set(got) - set(want))
                    raise IntegrityError(
                        f"file schema does not match OMOP 5.4 (missing {missing}, extra {extra})",
                        base=manifest["base"],
                        table=t,
                    )
            dest[t] = path
    return files, tombs


def consolidate(platform: Platform, intake_bucket: str, intake_prefix: str, res: PlatformResources) -> Consolidation:
    """Apply every new manifested batch of every member, in data-interval order."""
    t0 = time.monotonic()
    tables = _tables(platform)
    s3 = res.intake.client()
    manifests: list[tuple[dict, str]] = []
    for b in platform.members:
        for key in list_keys(s3, intake_bucket, f"{intake_prefix}{b.id}/"):
            if key.endswith("/" + MANIFEST):
                raw = s3.get_object(Bucket=intake_bucket, Key=key)["Body"].read()
                manifests.append((json.loads(raw), hashlib.sha256(raw).hexdigest()))
    manifests.sort(key=lambda m: (m[0]["data_interval"]["start"], m[0]["base"]))
    applied: list[str] = []
    rejected: dict[str, str] = {}
    rows: dict[str, dict[str, int]] = {}
    skipped = 0
    with psycopg.connect(res.warehouse_dsn) as conn:
        ensure_warehouse(conn, tables)
        conn.commit()
        for manifest, msha in manifests:
            bid = manifest["batch_id"]
            if conn.execute(
                "SELECT 1 FROM eds_platform.ledger WHERE batch_id = %s AND manifest_sha256 = %s", (bid, msha)
            ).fetchone():
                skipped += 1
                continue
            with tempfile.TemporaryDirectory(prefix="eds-consolidate-") as tmp:
                try:
                    if manifest.get("schema_version") != SCHEMA_VERSION:
                        raise IntegrityError(
                            f"schema version {manifest.get('schema_version')!r} is not {SCHEMA_VERSION!r}",
                            base=manifest.get("base"),
                        )
                    got_version = (manifest.get("key_versions") or {}).get("level1")
                    if res.level1_key_version and got_version != res.level1_key_version:
                        raise IntegrityError(
                            f"batch pseudonymised with level-1 key version {got_version!r}, the platform's key is "
                            f"{res.level1_key_version!r}: its pseudonyms would not link; rerun the interval",
                            base=manifest.get("base"),
                        )
                    files, tombs = _verify_files(s3, intake_bucket, manifest, Path(tmp), tables)
                    with conn.transaction():
                        r = _apply_batch(conn, manifest, files, tombs, tables)
                        faults.inject("consolidate.mid_merge", conn=conn)  # tests: warehouse lost mid-merge
                        conn.execute(
                            "INSERT INTO eds_platform.ledger (batch_id, manifest_sha256, base_id, "
                            "data_interval_start, rows) VALUES (%s, %s, %s, %s, %s)",
                            (bid, msha, manifest["base"], manifest["data_interval"]["start"], json.dumps(r)),
                        )
                    conn.commit()
                    applied.append(bid)
                    rows[bid] = r
                except (IntegrityError, psycopg.DataError, psycopg.IntegrityError) as exc:
                    # Our own verification, or the warehouse refusing a row: the batch stays in intake.
                    conn.rollback()
                    if not isinstance(exc, IntegrityError):
                        first = str(exc).splitlines()[0][:200]
                        exc = IntegrityError(f"warehouse refused the batch: {first}", base=manifest.get("base"))
                    log.error("%s: batch %s rejected, left in intake: %s", platform.id, bid, exc)
                    rejected[bid] = str(exc)
                    conn.execute(
                        "INSERT INTO eds_platform.rejected (batch_id, manifest_sha256, reason) "
                        "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                        (bid, msha, str(exc)),
                    )
                    conn.commit()
        linkage = linkage_stats(conn)
        checks = platform_checks(conn, tables)
    log.info(
        "%s: %d batches applied, %d already applied, %d rejected in %.1fs; %d persons, %d at 2+ sites",
        platform.id,
        len(applied),
        skipped,
        len(rejected),
        time.monotonic() - t0,
        linkage["persons"],
        linkage["persons_multi_site"],
    )
    versions: dict[str, set[str]] = {}
    for manifest, _ in manifests:
        for name, version in manifest.get("key_versions", {}).items():
            versions.setdefault(name, set()).add(version)
    key_versions = {name: sorted(v) for name, v in sorted(versions.items())}
    return Consolidation(platform.id, applied, skipped, rejected, rows, linkage, checks, key_versions)


def linkage_stats(conn: psycopg.Connection) -> dict:
    per_site = dict(
        conn.execute(
            "SELECT base_id, count(*) FROM eds_platform.person_site GROUP BY base_id ORDER BY base_id"
        ).fetchall()
    )
    overlap: dict[str, dict[str, int]] = {a: {} for a in per_site}
    for a, b, n in conn.execute(
        "SELECT a.base_id, b.base_id, count(*) FROM eds_platform.person_site a "
        "JOIN eds_platform.person_site b ON a.person_id = b.person_id AND a.base_id < b.base_id "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    ):
        overlap[a][b] = n
    persons = conn.execute("SELECT count(*) FROM omop.person").fetchone()[0]
    multi = conn.execute(
        "SELECT count(*) FROM (SELECT person_id FROM eds_platform.person_site GROUP BY 1 HAVING count(*) > 1) x"
    ).fetchone()[0]
    return {"persons": persons, "persons_per_site": per_site, "overlap": overlap, "persons_multi_site": multi}


def platform_checks(conn: psycopg.Connection, tables: list[str]) -> dict:
    """Cross-site checks on the consolidated warehouse: every event's person exists (DQD isForeignKey)."""
    out = {}
    for t in tables:
        if t == "person" or not omop.table(t).has("person_id"):
            continue
        total, orphans = conn.execute(
            sql.SQL(
                "SELECT count(*), count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM omop.person p "
                "WHERE p.person_id = e.person_id)) FROM omop.{} e"
            ).format(sql.Identifier(t))
        ).fetchone()
        out[f"isForeignKey:{t}.person_id"] = {"rows": total, "violating_rows": orphans, "passed": orphans == 0}
    return out


@dataclass(frozen=True)
class Package:
    platform: str
    delivery_id: str
    manifest_key: str
    files: dict[str, dict]

    def ref(self) -> dict:
        return {
            "platform": self.platform,
            "delivery_id": self.delivery_id,
            "manifest_key": self.manifest_key,
            "rows": {t: f["rows"] for t, f in self.files.items()},
            "bytes": sum(f["bytes"] for f in self.files.values()),
        }


def package(platform: Platform, res: PlatformResources, key_versions: dict[str, list[str]]) -> Package:
    """Export the warehouse as one Parquet file per table + a manifest (written last) in the outbox."""
    tables = _tables(platform)
    s3 = res.outbox.client()
    bucket, prefix = platform.outbox.bucket, platform.outbox.prefix
    with psycopg.connect(res.warehouse_dsn) as conn:
        ensure_warehouse(conn, tables)
        state = conn.execute(
            "SELECT coalesce(string_agg(batch_id || ':' || manifest_sha256, ',' ORDER BY batch_id,"
            " manifest_sha256), '') FROM eds_platform.ledger"
        ).fetchone()[0]
        delivery_id = f"{platform.id}__{hashlib.sha256(state.encode()).hexdigest()[:16]}"
        files: dict[str, dict] = {}
        with tempfile.TemporaryDirectory(prefix="eds-package-") as tmp:
            for t in tables:
                cols = _expected_columns(t)
                spec = omop.table(t)
                types = {c: (spec.column(c).arrow_type if spec.has(c) else pa.string()) for c in cols}
                query = sql.SQL("SELECT {} FROM omop.{} ORDER BY {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(t), sql.Identifier(conflict_key(t))
                )
                path = Path(tmp) / f"{t}.parquet"
                schema = pa.schema([pa.field(c, types[c]) for c in cols])
                n = 0
                with pq.ParquetWriter(path, schema, compression="zstd") as w:
                    for rb in stream_query(conn, query, cols, types, table=t):
                        w.write_batch(rb.cast(schema) if rb.schema != schema else rb)
                        n += rb.num_rows
                sha = sha256_file(path)
                key = f"{prefix}{delivery_id}/{t}.{sha[:16]}.parquet"
                s3.upload_file(str(path), bucket, key)
                files[t] = {"key": key, "sha256": sha, "bytes": path.stat().st_size, "rows": n}
    manifest_key = f"{prefix}{delivery_id}/{MANIFEST}"
    put_json(
        s3,
        bucket,
        manifest_key,
        {
            "kind": "eds-network/platform-delivery",
            "platform": platform.id,
            "delivery_id": delivery_id,
            "schema_version": SCHEMA_VERSION,
            "key_versions": key_versions,
            "tables": files,
            "members": [b.id for b in platform.members],
            "packaged_at": dt.datetime.now(dt.UTC).isoformat(),
        },
    )
    put_json(s3, bucket, f"{prefix}_latest.json", {"delivery_id": delivery_id, "manifest_key": manifest_key})
    log.info(
        "%s: delivery %s packaged: %s",
        platform.id,
        delivery_id,
        ", ".join(f"{t}={f['rows']}" for t, f in files.items()),
    )
    return Package(platform.id, delivery_id, manifest_key, files)
