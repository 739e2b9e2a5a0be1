"""Mutualised level: consolidate members' manifested batches into the platform warehouse, link, package.

- Only manifested batches are read; every file is verified against the manifest SHA-256 before loading.
- A batch is loaded with COPY into staging tables and merged in ONE transaction (upsert on the namespaced
  keys), its tombstones applied, and recorded in a ledger (batch id + manifest SHA-256): applied once.
- A batch whose file or schema does not match its manifest is rejected with a clear error, left in intake,
  and the other batches still load.
- Ledger semantics: a batch id is applied once per manifest. A local rerun of an interval republishes the
  same batch id with new content (re-randomised sealed tokens, late corrections): the new version REPLACES
  the old one (its rows are removed before the new ones are merged, the old ledger entry is marked replaced),
  it never adds to it.
- Standardisation (`standardise`): each staged table is mapped to standard concepts and UCUM units before
  the merge, so it happens once per batch version.
- Duplicate events: the same event (person, concept, date, value) reported by two sites of one linked
  person is flagged in `eds_platform.duplicate_event`, never deleted.
- Arrivals: with a night end, each member is `arrived`, `late` (no batch reaching the night's end) or
  `rejected` (its batch for the night was refused).
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

from eds_network.core import faults, omop
from eds_network.core.config import LocalBase, Platform
from eds_network.core.copystream import stream_query
from eds_network.core.errors import IntegrityError
from eds_network.core.exchange import MANIFEST, SCHEMA_VERSION, TOKEN_COLUMN
from eds_network.core.storage import S3Endpoint, download, list_keys, put_json, sha256_file
from eds_network.platform import keyversions, standardise

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
    retired_key_versions: list[str] = field(default_factory=list)  # level-1 versions retired by this run
    standardisation: dict = field(default_factory=dict)  # {base: {table: {rows, unmapped_concepts, …}}}
    duplicates: dict = field(default_factory=dict)  # {base: {table: flagged rows}}
    arrivals: dict[str, dict] = field(default_factory=dict)  # {base: {status: arrived|late|rejected, night_end}}
    replaced: list[str] = field(default_factory=list)  # batch ids whose new version replaced the old one

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
        cols.append(sql.SQL("{} text").format(sql.Identifier(keyversions.KEY_VERSION_COLUMN)))
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
        ALTER TABLE eds_platform.ledger ADD COLUMN IF NOT EXISTS replaced_at timestamptz;
        ALTER TABLE eds_platform.person_site ADD COLUMN IF NOT EXISTS batch_id text;
        ALTER TABLE eds_platform.rejected ADD COLUMN IF NOT EXISTS base_id text;
        CREATE TABLE IF NOT EXISTS eds_platform.duplicate_event (
            table_name text NOT NULL, row_id bigint NOT NULL, duplicate_of bigint NOT NULL,
            person_id bigint NOT NULL, site_number integer NOT NULL, PRIMARY KEY (table_name, row_id));
    """)
    keyversions.ensure_registry(conn, tables)


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


def _remove_batch(conn: psycopg.Connection, manifest: dict, tables: list[str]) -> None:
    """Take out what an earlier version of this batch merged (rows a later batch overwrote are kept)."""
    bid, base = manifest["batch_id"], manifest["base"]
    for t in reversed(tables):
        if t != "person":
            conn.execute(sql.SQL("DELETE FROM omop.{} WHERE _batch_id = %s").format(sql.Identifier(t)), (bid,))
    conn.execute("DELETE FROM eds_platform.person_site WHERE base_id = %s AND batch_id = %s", (base, bid))


def _apply_batch(
    conn: psycopg.Connection,
    manifest: dict,
    files: dict[str, Path],
    tombs: dict[str, Path],
    tables: list[str],
    *,
    vocabulary: bool = False,
    replace: bool = False,
) -> dict[str, int]:
    rows: dict[str, int] = {}
    site = int(manifest["site_number"])
    bid = manifest["batch_id"]
    version = manifest.get("key_versions", {}).get("level1")
    replaced = False
    if replace:
        _remove_batch(conn, manifest, tables)
    for t in [t for t in tables if t in files]:
        cols = _expected_columns(t)
        stage = sql.Identifier(f"stage_{t}")
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM omop.{} WITH NO DATA").format(
                stage, sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(t)
            )
        )
        n = _copy_parquet(conn, files[t], stage, cols)
        if manifest["tables"][t].get("full"):
            # Re-keying run (key rotation / policy change): this file is the site's whole table.
            _replace_site_rows(conn, t, stage, site, manifest["base"])
            replaced = True
        if vocabulary:
            std = standardise.standardise_stage(conn, t, stage)
            if std.mapped:
                rows[f"{t}.mapped_concepts"] = std.mapped
            if std.units:
                rows[f"{t}.units_normalised"] = std.units
        key = conflict_key(t)
        meta = ["_site", "_batch_id", keyversions.KEY_VERSION_COLUMN]
        updates = sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in [*cols, *meta] if c != key
        )
        # A person row is held by the lowest site number that treats the patient (its later versions update
        # it; other sites' copies do not), so the warehouse does not depend on the order batches arrive in.
        only = sql.SQL(" WHERE omop.person._site >= EXCLUDED._site") if t == "person" else sql.SQL("")
        conn.execute(
            sql.SQL(
                "INSERT INTO omop.{t} ({cols}, {meta}) SELECT {cols}, %s, %s, %s FROM {stage} "
                "ON CONFLICT ({key}) DO UPDATE SET {updates}{only}"
            ).format(
                t=sql.Identifier(t),
                cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
                meta=sql.SQL(", ").join(map(sql.Identifier, meta)),
                stage=stage,
                key=sql.Identifier(key),
                updates=updates,
                only=only,
            ),
            (site, bid, version),
        )
        if t == "person":
            conn.execute(
                sql.SQL(
                    "INSERT INTO eds_platform.person_site (person_id, base_id, site_number, batch_id) "
                    "SELECT person_id, %s, %s, %s FROM {} "
                    "ON CONFLICT (person_id, base_id) DO UPDATE SET batch_id = EXCLUDED.batch_id"
                ).format(stage),
                (manifest["base"], site, bid),
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
    if replaced:
        # Persons no site refers to any more (their old level-1 pseudonym after a re-keying run) go.
        conn.execute(
            "DELETE FROM omop.person p WHERE NOT EXISTS ("
            "SELECT 1 FROM eds_platform.person_site s WHERE s.person_id = p.person_id)"
        )
    keyversions.register_version(conn, version)
    if replace:
        # Persons the new version no longer carries and no other site treats: gone with their last site.
        conn.execute(
            "DELETE FROM omop.person p WHERE p._batch_id = %s AND NOT EXISTS ("
            "SELECT 1 FROM eds_platform.person_site s WHERE s.person_id = p.person_id)",
            (bid,),
        )
    return rows


def _replace_site_rows(conn: psycopg.Connection, table: str, stage: sql.Identifier, site: int, base_id: str) -> None:
    """A full extraction replaces what this site contributed to `table`: its rows (event ids are namespaced by
    site, so `_site` tells them apart) or, for `person` (shared between sites), its membership in person_site."""
    if table == "person":
        conn.execute(
            sql.SQL(
                "DELETE FROM eds_platform.person_site WHERE base_id = %s AND person_id NOT IN "
                "(SELECT person_id FROM {})"
            ).format(stage),
            (base_id,),
        )
    else:
        conn.execute(sql.SQL("DELETE FROM omop.{} WHERE _site = %s").format(sql.Identifier(table)), (site,))


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


def consolidate(
    platform: Platform,
    intake_bucket: str,
    intake_prefix: str,
    res: PlatformResources,
    *,
    vocabulary: Path | None = None,
    night_end: dt.datetime | None = None,
) -> Consolidation:
    """Apply every new manifested batch of every member, in data-interval order.

    `vocabulary`: the OMOP vocabulary archive to standardise with (loaded once into the warehouse);
    `night_end`: end of the night this run consolidates, to tell which members are late.
    """
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
    replaced: list[str] = []
    rejected: dict[str, str] = {}
    rows: dict[str, dict[str, int]] = {}
    skipped = 0
    with psycopg.connect(res.warehouse_dsn) as conn:
        ensure_warehouse(conn, tables)
        conn.commit()
        if vocabulary is not None:
            standardise.ensure_vocabulary(conn, vocabulary)
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
                    keyversions.check_not_retired(
                        conn, manifest.get("key_versions", {}).get("level1"), manifest.get("base", "?")
                    )
                    got_version = (manifest.get("key_versions") or {}).get("level1")
                    if (
                        res.level1_key_version
                        and got_version != res.level1_key_version
                        and got_version not in keyversions.live_versions(conn)
                    ):
                        raise IntegrityError(
                            f"batch pseudonymised with level-1 key version {got_version!r}, neither the platform's "
                            f"key ({res.level1_key_version!r}) nor a version being rotated out: its pseudonyms would "
                            "not link; rerun the interval",
                            base=manifest.get("base"),
                        )
                    files, tombs = _verify_files(s3, intake_bucket, manifest, Path(tmp), tables)
                    with conn.transaction():
                        # Another version of this batch applied before (local rerun): this one replaces it.
                        previous = conn.execute(
                            "UPDATE eds_platform.ledger SET replaced_at = now() "
                            "WHERE batch_id = %s AND replaced_at IS NULL RETURNING manifest_sha256",
                            (bid,),
                        ).fetchall()
                        r = _apply_batch(
                            conn,
                            manifest,
                            files,
                            tombs,
                            tables,
                            vocabulary=vocabulary is not None,
                            replace=bool(previous),
                        )
                        faults.inject("consolidate.mid_merge", conn=conn)  # tests: warehouse lost mid-merge
                        conn.execute(
                            "INSERT INTO eds_platform.ledger (batch_id, manifest_sha256, base_id, "
                            "data_interval_start, rows) VALUES (%s, %s, %s, %s, %s)",
                            (bid, msha, manifest["base"], manifest["data_interval"]["start"], json.dumps(r)),
                        )
                    conn.commit()
                    applied.append(bid)
                    if previous:
                        replaced.append(bid)
                    rows[bid] = r
                except (IntegrityError, psycopg.DataError, psycopg.IntegrityError) as exc:
                    # Our own verification, or the warehouse refusing a row: the batch stays in intake.
                    conn.rollback()
                    if not isinstance(exc, IntegrityError):
                        first = str(exc).splitlines()[0][:200]
                        exc = IntegrityError(f"warehouse refused the batch: {first}", base=manifest.get("base"))
                    reason = f"platform {platform.id}: batch {bid} rejected, left in intake: {exc}"
                    log.error("%s", reason)
                    rejected[bid] = reason
                    conn.execute(
                        "INSERT INTO eds_platform.rejected (batch_id, manifest_sha256, reason, base_id) "
                        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        (bid, msha, reason, manifest.get("base")),
                    )
                    conn.commit()
        retired = keyversions.retire_unused(conn, tables)
        live = keyversions.live_versions(conn)
        conn.commit()
        linkage = linkage_stats(conn)
        checks = platform_checks(conn, tables)
        duplicates = flag_duplicates(conn, platform, tables)
        std = standardise.unmapped(conn, platform, tables)
    log.info(
        "%s: %d batches applied (%d replacing an earlier version), %d already applied, %d rejected in %.1fs; "
        "%d persons, %d at 2+ sites, %d duplicate events flagged",
        platform.id,
        len(applied),
        len(replaced),
        skipped,
        len(rejected),
        time.monotonic() - t0,
        linkage["persons"],
        linkage["persons_multi_site"],
        sum(n for per in duplicates.values() for n in per.values()),
    )
    versions: dict[str, set[str]] = {}
    for manifest, _ in manifests:
        for name, version in manifest.get("key_versions", {}).items():
            versions.setdefault(name, set()).add(version)
    key_versions = {name: sorted(v) for name, v in sorted(versions.items())}
    if live:  # the level-1 versions the warehouse rows carry, not every version ever seen in the intake
        key_versions["level1"] = live
    return Consolidation(
        platform.id,
        applied,
        skipped,
        rejected,
        rows,
        linkage,
        checks,
        key_versions,
        retired_key_versions=retired,
        standardisation=std,
        duplicates=duplicates,
        arrivals=arrivals(platform, [m for m, _ in manifests], rejected, night_end) if night_end else {},
        replaced=replaced,
    )


def night_end_of(base: LocalBase, when: dt.datetime) -> dt.datetime:
    """End of the member's latest night at `when`: its schedule's last fire time at or before `when`."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    local = when.astimezone(ZoneInfo(base.timezone))
    it = croniter(base.schedule, local + dt.timedelta(seconds=1))
    return it.get_prev(dt.datetime)


def arrivals(platform: Platform, manifests: list[dict], rejected: dict[str, str], when: dt.datetime) -> dict[str, dict]:
    """Per member, for its latest night at `when`: `arrived` when a batch of it reaches the night's end,
    `rejected` when every such batch was refused (the reason is in `rejected`), `late` when none (yet)."""
    out: dict[str, dict] = {}
    for b in platform.members:
        end = night_end_of(b, when)
        mine = [
            m
            for m in manifests
            if m.get("base") == b.id and dt.datetime.fromisoformat(m["data_interval"]["end"]) >= end
        ]
        if not mine:
            status = "late"
        elif all(m["batch_id"] in rejected for m in mine):
            status = "rejected"
        else:
            status = "arrived"
        reason = next((rejected[m["batch_id"]] for m in mine if m["batch_id"] in rejected), None)
        out[b.id] = {"status": status, "night_end": end.isoformat(), "reason": reason}
    return out


# Per event table: the columns that make two sites' rows the same event (besides person_id).
_EVENT_IDENTITY: dict[str, tuple[str, ...]] = {
    "condition_occurrence": ("condition_concept_id", "condition_start_date"),
    "drug_exposure": ("drug_concept_id", "drug_exposure_start_date", "quantity"),
    "procedure_occurrence": ("procedure_concept_id", "procedure_date"),
    "device_exposure": ("device_concept_id", "device_exposure_start_date"),
    "measurement": ("measurement_concept_id", "measurement_date", "value_as_number", "value_as_concept_id"),
    "observation": ("observation_concept_id", "observation_date", "value_as_number", "value_as_string"),
    "specimen": ("specimen_concept_id", "specimen_date"),
}


def flag_duplicates(conn: psycopg.Connection, platform: Platform, tables: list[str]) -> dict[str, dict[str, int]]:
    """Flag events a second site reported for the same linked person (same concept, date, value).

    The first site's row (lowest site number, then lowest id) is the reference; rows of the other sites are
    recorded in eds_platform.duplicate_event with the row they duplicate. Nothing is deleted. Recomputed as
    a whole in one transaction, so the result does not depend on how often consolidation ran.
    Returns {base: {table: flagged rows}}.
    """
    bases = {b.site_number: b.id for b in platform.members}
    out: dict[str, dict[str, int]] = {b.id: {} for b in platform.members}
    with conn.transaction():
        conn.execute("DELETE FROM eds_platform.duplicate_event")
        for t in tables:
            cols = _EVENT_IDENTITY.get(t)
            spec = omop.table(t)
            if not cols or not all(spec.has(c) for c in cols):
                continue
            key = sql.Identifier(conflict_key(t))
            part = sql.SQL(", ").join(map(sql.Identifier, ("person_id", *cols)))
            conn.execute(
                sql.SQL(
                    "INSERT INTO eds_platform.duplicate_event (table_name, row_id, duplicate_of, person_id, site_number) "
                    "SELECT %s, id, first_id, person_id, _site FROM ("
                    " SELECT {key} AS id, person_id, _site, first_value({key}) OVER w AS first_id,"
                    " first_value(_site) OVER w AS first_site FROM omop.{t}"
                    " WINDOW w AS (PARTITION BY {part} ORDER BY _site, {key})) x "
                    "WHERE _site <> first_site"
                ).format(key=key, part=part, t=sql.Identifier(t)),
                (t,),
            )
        for t, site, n in conn.execute(
            "SELECT table_name, site_number, count(*) FROM eds_platform.duplicate_event GROUP BY 1, 2 ORDER BY 1, 2"
        ):
            if site in bases:
                out[bases[site]][t] = n
    return out


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
        keyversions.require_single_version(conn, platform.id, tables, {b.site_number: b.id for b in platform.members})
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
