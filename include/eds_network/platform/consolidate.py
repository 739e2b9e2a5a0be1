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
- A table that holds no row yet (a site's first delivery, a new platform) is loaded the fast way, still in the
  batch's transaction: indexes dropped, the file COPYed straight into it (frozen), indexes rebuilt (`merge`).
- Each run reports wall and CPU seconds per phase (`Consolidation.timings`, logged): the cost is visible.
- Standardisation (`standardise`): each staged table is mapped to standard concepts and UCUM units before
  the merge, so it happens once per batch version.
- Duplicate events: the same event (person, concept, date, value) reported by two sites of one linked
  person is flagged in `eds_platform.duplicate_event`, never deleted.
- Arrivals: with a night end, each member is `arrived`, `late` (no batch reaching the night's end) or
  `rejected` (its batch for the night was refused).
- Linkage: rows of the same patient from two sites carry the same level-1 person id, so they become one
  warehouse person; `eds_platform.person_site` records which sites saw each person (overlap statistics).
- Package (`package`): one Parquet file per table + a manifest in the platform outbox (the platform's Asset).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
import pyarrow.parquet as pq

from eds_network.core import faults
from eds_network.core.config import LocalBase, Platform
from eds_network.core.errors import IntegrityError
from eds_network.core.exchange import MANIFEST, SCHEMA_VERSION
from eds_network.core.storage import download, list_keys
from eds_network.core.timing import PhaseTimer
from eds_network.platform import keyversions, standardise, stats
from eds_network.platform import manifests as manifests_check
from eds_network.platform.linkage import linkage_stats
from eds_network.platform.merge import apply_batch
from eds_network.platform.migrations import MIGRATIONS
from eds_network.platform.warehouse import (
    PlatformResources,
    platform_tables,
    published_columns,
)

log = logging.getLogger(__name__)


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
    # Wall and CPU seconds (of this step's thread; the warehouse's own work shows as wall time) per phase:
    # manifests, download_verify, stage_copy, standardise, collision_check, upsert, tombstones, ledger,
    # key_versions, linkage_stats, platform_checks, duplicates, unmapped; `total` is the whole step.
    timings: dict[str, float] = field(default_factory=dict)
    cpu_timings: dict[str, float] = field(default_factory=dict)

    def ref(self) -> dict:
        return asdict(self)


def _purge_tombstones(s3, bucket: str, manifest: dict) -> int:
    """Once a batch is applied (its ledger row committed), its tombstone files go: they name objectors' and deleted
    rows' pseudonyms and have no use left (a rerun of the batch is skipped by the ledger before any file is read;
    the hospitals send their whole opposition registry again every night). Returns the objects deleted."""
    n = 0
    for entry in manifest["tables"].values():
        if entry.get("tombstones_key"):
            s3.delete_object(Bucket=bucket, Key=entry["tombstones_key"])
            n += 1
    return n


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
                want = published_columns(t)
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
    purge_tombstones: bool = False,
) -> Consolidation:
    """Apply every new manifested batch of every member, in data-interval order.

    `vocabulary`: the OMOP vocabulary archive to standardise with (loaded once into the warehouse);
    `night_end`: end of the night this run consolidates, to tell which members are late;
    `purge_tombstones`: delete each applied batch's tombstone files (the platform's DAG does: its intake feeds
    this warehouse only; step-level tests that consolidate one shared intake into many warehouses do not).
    """
    t0 = time.monotonic()
    tm = PhaseTimer()
    tm.start("manifests")
    tables = platform_tables(platform)
    s3 = res.intake.client()
    manifests, refused = _read_manifests(s3, platform, intake_bucket, intake_prefix, res)
    applied, replaced, skipped = [], [], 0  # batch ids
    rejected: dict[str, str] = {}
    rows: dict[str, dict[str, int]] = {}
    tm.start("ensure_warehouse")
    MIGRATIONS.ensure(res.warehouse_dsn)
    with psycopg.connect(res.warehouse_dsn) as conn:
        for base_id, bid, msha, why in refused:
            rejected[bid] = _record_rejection(conn, platform, bid, msha, base_id, why)
        if vocabulary is not None:
            _ensure_vocabulary(conn, vocabulary)
        for manifest, msha in manifests:
            bid = manifest["batch_id"]
            if _applied_before(conn, bid, msha):
                skipped += 1
                continue
            try:
                rows[bid], was_replaced = _apply(conn, s3, intake_bucket, manifest, msha, tables, res, vocabulary, tm)
            except (IntegrityError, psycopg.DataError, psycopg.IntegrityError) as exc:
                # Our own verification, or the warehouse refusing a row: the batch stays in intake.
                conn.rollback()
                if not isinstance(exc, IntegrityError):
                    first = str(exc).splitlines()[0][:200]
                    exc = IntegrityError(f"warehouse refused the batch: {first}", base=manifest.get("base"))
                rejected[bid] = _record_rejection(conn, platform, bid, msha, manifest.get("base"), str(exc))
                continue
            applied.append(bid)
            if was_replaced:
                replaced.append(bid)
            if purge_tombstones:
                rows[bid]["tombstones.purged"] = _purge_tombstones(s3, intake_bucket, manifest)
        retired, live, linkage, checks, duplicates, std = _after_batches(conn, platform, tables, tm)
    total = time.monotonic() - t0
    dupes = sum(n for per in duplicates.values() for n in per.values())
    log.info(
        "%s: %d batches applied (%d replacing an earlier version), %d already applied, %d rejected in %.1fs; "
        "%d persons, %d at 2+ sites, %d duplicate events flagged; phases (wall s / CPU s of this step): %s",
        *(platform.id, len(applied), len(replaced), skipped, len(rejected), total),
        *(linkage["persons"], linkage["persons_multi_site"], dupes),
        ", ".join(f"{p} {w:.2f}/{tm.cpu.get(p, 0.0):.2f}" for p, w in tm.seconds.items()),
    )
    return Consolidation(
        platform.id,
        applied,
        skipped,
        rejected,
        rows,
        linkage,
        checks,
        _key_versions([m for m, _ in manifests], live),
        retired_key_versions=retired,
        standardisation=std,
        duplicates=duplicates,
        arrivals=arrivals(platform, [m for m, _ in manifests], rejected, night_end) if night_end else {},
        replaced=replaced,
        timings={**tm.seconds, "total": round(total, 4)},
        cpu_timings=dict(tm.cpu),
    )


def _ensure_vocabulary(conn, vocabulary: Path) -> None:
    """The vocabulary loaded into the warehouse; a new one changes which concepts are standard, so what is
    unmapped is counted again from the rows."""
    if standardise.ensure_vocabulary(conn, vocabulary):
        stats.rebuild(conn)
        conn.commit()


def _after_batches(conn, platform: Platform, tables: list[str], tm: PhaseTimer) -> tuple:
    """Once the batches are merged, each phase timed: the level-1 key versions retired and those still live, the
    linkage statistics, then from what the batches touched (`stats.refresh`, never a scan of the warehouse): the
    platform checks, the duplicate events flagged and the codes left unmapped."""
    tm.start("key_versions")
    retired = keyversions.retire_unused(conn, tables)
    live = keyversions.live_versions(conn)
    conn.commit()
    tm.start("linkage_stats")
    linkage = linkage_stats(conn)
    checks, duplicates, std = stats.refresh(conn, platform, tables, tm)
    conn.commit()
    tm.stop()
    return retired, live, linkage, checks, duplicates, std


def _read_manifests(
    s3, platform: Platform, bucket: str, prefix: str, res: PlatformResources
) -> tuple[list[tuple[dict, str]], list[tuple[str, str, str, str]]]:
    """Every member's batch manifest in the intake, verified (signature, base, site, platform, prefix) before
    anything it lists is read: ([(manifest, sha256)] in data-interval order, [(base, batch, sha256, reason)])."""
    manifests: list[tuple[dict, str]] = []
    refused: list[tuple[str, str, str, str]] = []
    for b in platform.members:
        base_prefix = f"{prefix}{b.id}/"
        for key in list_keys(s3, bucket, base_prefix):
            if not key.endswith("/" + MANIFEST):
                continue
            raw = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            sha = hashlib.sha256(raw).hexdigest()
            try:
                doc = manifests_check.verify_batch_manifest(
                    raw, key, platform=platform, base=b, base_prefix=base_prefix, trust=res.trust
                )
            except IntegrityError as exc:
                refused.append((b.id, manifests_check.batch_of_key(key), sha, str(exc)))
                continue
            manifests.append((doc, sha))
    manifests.sort(key=lambda m: (m[0]["data_interval"]["start"], m[0]["base"]))
    return manifests, refused


def _record_rejection(conn, platform: Platform, bid: str, msha: str, base_id: str | None, why: str) -> str:
    """A refused batch, logged and recorded in `eds_platform.rejected` (committed); returns the reason."""
    reason = f"platform {platform.id}: batch {bid} rejected, left in intake: {why}"
    log.error("%s", reason)
    conn.execute(
        "INSERT INTO eds_platform.rejected (batch_id, manifest_sha256, reason, base_id) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (bid, msha, reason, base_id),
    )
    conn.commit()
    return reason


def _applied_before(conn, bid: str, msha: str) -> bool:
    """This very version of the batch is in the ledger (and not replaced since)."""
    return bool(
        conn.execute(
            "SELECT 1 FROM eds_platform.ledger WHERE batch_id = %s AND manifest_sha256 = %s AND replaced_at IS NULL",
            (bid, msha),
        ).fetchone()
    )


def _check_admissible(conn, manifest: dict, msha: str, res: PlatformResources) -> None:
    """Schema version, a level-1 key version that links with the warehouse's, not a replay (IntegrityError)."""
    base = manifest.get("base")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise IntegrityError(f"schema version {manifest.get('schema_version')!r} is not {SCHEMA_VERSION!r}", base=base)
    got_version = (manifest.get("key_versions") or {}).get("level1")
    keyversions.check_not_retired(conn, got_version, base or "?")
    if (
        res.level1_key_version
        and got_version != res.level1_key_version
        and got_version not in keyversions.live_versions(conn)
    ):
        raise IntegrityError(
            f"batch pseudonymised with level-1 key version {got_version!r}, neither the platform's "
            f"key ({res.level1_key_version!r}) nor a version being rotated out: its pseudonyms would "
            "not link; rerun the interval",
            base=base,
        )
    manifests_check.check_not_replayed(conn, manifest, msha)


def _apply(
    conn,
    s3,
    bucket: str,
    manifest: dict,
    msha: str,
    tables: list[str],
    res: PlatformResources,
    vocabulary,
    tm: PhaseTimer,
) -> tuple[dict[str, int], bool]:
    """One batch, verified then merged in one transaction with its ledger entry; a version of the same batch
    applied before (a local rerun) is replaced. Returns (rows per table, whether it replaced one); `tm` receives
    the time of each phase."""
    bid = manifest["batch_id"]
    with tempfile.TemporaryDirectory(prefix="eds-consolidate-") as tmp:
        _check_admissible(conn, manifest, msha, res)
        tm.start("download_verify")
        files, tombs = _verify_files(s3, bucket, manifest, Path(tmp), tables)
        tm.start("ledger")
        with conn.transaction():
            # Another version of this batch applied before (local rerun): this one replaces it.
            previous = conn.execute(
                "UPDATE eds_platform.ledger SET replaced_at = now() "
                "WHERE batch_id = %s AND replaced_at IS NULL RETURNING manifest_sha256",
                (bid,),
            ).fetchall()
            r = apply_batch(
                conn,
                manifest,
                files,
                tombs,
                tables,
                vocabulary=vocabulary is not None,
                replace=bool(previous),
                timer=tm,
            )
            tm.start("ledger")
            transport = (manifest.get("key_versions") or {}).get("transport")
            manifests_check.record_accepted(conn, manifest, msha)
            faults.inject("consolidate.mid_merge", conn=conn)  # tests: warehouse lost mid-merge
            conn.execute(
                "INSERT INTO eds_platform.ledger (batch_id, manifest_sha256, base_id, data_interval_start, rows,"
                " transport_version) VALUES (%s, %s, %s, %s, %s, %s)",
                (bid, msha, manifest["base"], manifest["data_interval"]["start"], json.dumps(r), transport),
            )
        conn.commit()
    tm.stop()
    return r, bool(previous)


def _key_versions(manifests: list[dict], live: list[str]) -> dict[str, list[str]]:
    """Key versions of the members' manifests; level 1: those the warehouse rows carry (not every one seen)."""
    versions: dict[str, set[str]] = {}
    for manifest in manifests:
        for name, version in manifest.get("key_versions", {}).items():
            versions.setdefault(name, set()).add(version)
    key_versions = {name: sorted(v) for name, v in sorted(versions.items())}
    if live:
        key_versions["level1"] = live
    return key_versions


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


def erasure_counts(rows: dict[str, dict[str, int]], pruned: dict[str, int] | None = None) -> dict[str, int]:
    """The night's objections at the platform, counts only: person tombstones received (the hospitals send their
    whole registry every night, so an objection counts each night it is sent), warehouse rows erased, and files
    purged (outbox packages and intake batches the HDH acknowledged). `rows` is `Consolidation.rows`
    ({batch: {table or table.kind: rows}})."""
    received = erased = purged = 0
    for per_table in rows.values():
        for k, n in per_table.items():
            if k == "person.tombstones":
                received += int(n)
            elif k.endswith(".erased"):
                erased += int(n)
            elif k == "tombstones.purged":
                purged += int(n)
    pruned = pruned or {}
    return {
        "objections_received": received,
        "rows_erased": erased,
        "files_purged": int(pruned.get("objects", 0)) + purged,
        "packages_purged": int(pruned.get("packages", 0)),
        "batches_purged": int(pruned.get("batches", 0)),
    }
