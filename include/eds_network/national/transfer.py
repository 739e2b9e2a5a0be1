"""National level: re-pseudonymise a platform delivery with the national key, transfer it to the HDH landing zone.

- The endpoint must be TLS (https); plain http only for an explicitly allowed loopback endpoint (embedded stack).
- Every object is uploaded with SHA-256 checksums computed while sending (`core.uploads`: multipart above 8 MiB,
  one checksum per part, checked by the store on arrival), encryption at rest requested (SSE-KMS with a key id
  when configured, else SSE-S3) and checked on the stored object; a file already present with the right SHA-256
  is not sent again, so a retry resumes.
- Every object is verified before the manifest is written: size, encryption and the store's own checksum of what
  it keeps, against the one computed while sending (one HEAD, no read-back); an object the store reports no
  checksum for (a store without checksums, an object left by an earlier attempt) is read back and hashed. The
  HDH's receipt reads every object once more, in the HDH zone. The manifest is written last with a
  conditional write (If-None-Match: *): a delivery is published exactly once even if two runs race; the loser
  gets `AlreadyDelivered`.
- A failed or interrupted attempt leaves no incomplete multipart upload behind once the delivery is published
  (and the landing bucket carries a lifecycle rule aborting stale ones); an object that fails verification
  (checksum, size, encryption) is deleted so that a retry sends it again.
- Milestone gating: a platform delivery leaves only when every member base has `contract_signed` and
  `preparation` in the catalogue (the caller passes the milestones); otherwise it is skipped, the warning and
  the result naming each blocking base and the milestones it lacks (`gate_message`).
- National linkage: per platform pair, the number of persons sharing a level-2 pseudonym, in a summary object.
- The landing zone never receives an identity value, a level-1 pseudonym or a transport token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from eds_network.core import digests, faults, rowids, zones
from eds_network.core.config import NationalTarget, Platform
from eds_network.core.crypto import Key
from eds_network.core.errors import IntegrityError, TransferError
from eds_network.core.exchange import MANIFEST, SCHEMA_VERSION, TOKEN_COLUMN
from eds_network.core.signing import verify_document
from eds_network.core.storage import (
    HashingWriter,
    S3Endpoint,
    download,
    object_exists,
    read_json,
)
from eds_network.core.uploads import upload_checksummed
from eds_network.national.landing import encrypted, verify_upload
from eds_network.national.level2 import level2_files, national_person_digests, national_person_ids
from eds_network.national.migrations import MIGRATIONS

log = logging.getLogger(__name__)

# 8 parts in flight: with 4, two bench runs of 2026-12-04 gave 1.13x and 1.14x `upload_file` (whose default is 10
# threads); with 8, 1.02x in the run BENCHMARKS.md reports (item 5).
MULTIPART = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=8)
# A base's data leaves for the national level only once these catalogue milestones are reached.
REQUIRED_MILESTONES = ("contract_signed", "preparation")
LIFECYCLE_RULE_ID = "eds-abort-incomplete-multipart"
ABORT_INCOMPLETE_AFTER_DAYS = 1
FORBIDDEN_COLUMNS = frozenset(
    {
        TOKEN_COLUMN,
        "_site",
        "_batch_id",
        "person_source_value",
        "nir",
        "ipp",
        "last_name",
        "first_name",
        "birth_date",
        "address",
        "postcode",
        "email",
        "phone",
    }
)


@dataclass(frozen=True)
class NationalResources:
    outbox: S3Endpoint
    landing: S3Endpoint
    national_key: Key
    box_private_key: bytes = field(repr=False)
    box_key_version: str
    sse_kms_key_id: str | None = None
    # The trust store (zone -> Ed25519 public key): platforms' package manifests are verified against it. None
    # only in step-level tests of unsigned packages; the Airflow adapter always sets it.
    trust: Mapping[str, bytes] | None = None
    # The national database holding the person-digest registry (`eds_national.person_digest`): every level-2 id
    # is recorded beside its full digest under uniqueness constraints, so a 63-bit collision across deliveries
    # and platforms is refused. None only in step-level tests; the Airflow adapter always sets it.
    registry_dsn: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Delivery:
    platform: str
    delivery_id: str
    status: str  # delivered | already_delivered | nothing_to_deliver | skipped
    manifest_key: str | None
    files: list[dict]
    rows: dict[str, int]
    key_versions: dict[str, str]
    source_delivery: str = ""
    skipped: dict[str, list[str]] = field(default_factory=dict)  # base -> missing milestones (status skipped)
    reused: int = 0  # files already in the landing zone from an interrupted attempt: not sent again

    def ref(self) -> dict:
        return asdict(self)


def _sse_args(res: NationalResources) -> dict:
    if res.sse_kms_key_id:
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": res.sse_kms_key_id}
    return {"ServerSideEncryption": "AES256"}


def landing_prefix(target: NationalTarget, delivery_id: str) -> str:
    return f"{target.landing_zone.prefix}deliveries/{delivery_id}/"


def delivery_gate(members: Iterable[str], milestones: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Bases that may not be delivered yet, with the milestones they miss (empty: the delivery may leave)."""
    blocked: dict[str, list[str]] = {}
    for base in members:
        reached = set(milestones.get(base, ()))
        missing = [m for m in REQUIRED_MILESTONES if m not in reached]
        if missing:
            blocked[base] = missing
    return blocked


def gate_message(platform_id: str, source_delivery: str, blocked: Mapping[str, Iterable[str]]) -> str:
    """What the gate says when it holds a delivery back: every blocking base with the milestones it lacks, and how
    to unblock it."""
    lacks = "; ".join(f"base {b} lacks {', '.join(m)}" for b, m in sorted(blocked.items()))
    return (
        f"platform {platform_id}: delivery {source_delivery} not sent (milestone gate): {lacks}. Record the "
        "milestone on the operator page (EDS network > Held-back deliveries) or with `eds milestone set BASE "
        "MILESTONE --evidence TEXT`; the next national run delivers."
    )


def ensure_abort_lifecycle(s3, bucket: str, days: int = ABORT_INCOMPLETE_AFTER_DAYS) -> bool:
    """Make sure the landing bucket aborts incomplete multipart uploads older than `days` (idempotent; other
    rules are kept). Returns False, with a warning, when the endpoint does not let us set it."""
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("NoSuchLifecycleConfiguration", "NoSuchLifecycle"):
            log.warning(
                "landing bucket %s: cannot read its lifecycle rules (%s)", bucket, exc.response["Error"]["Code"]
            )
            return False
        rules = []
    if any(r.get("AbortIncompleteMultipartUpload") and r.get("Status") == "Enabled" for r in rules):
        return True
    rules = [r for r in rules if r.get("ID") != LIFECYCLE_RULE_ID] + [
        {
            "ID": LIFECYCLE_RULE_ID,
            "Filter": {"Prefix": ""},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": days},
        }
    ]
    try:
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    except ClientError as exc:
        log.warning(
            "landing bucket %s: cannot set the rule aborting stale multipart uploads (%s); ask the landing zone's"
            " operator to add it",
            bucket,
            exc.response["Error"]["Code"],
        )
        return False
    return True


class _PublishedMeanwhile(Exception):  # noqa: N818 (a signal inside this module, never raised out of it)
    """This very delivery is in the landing zone already (a retry, or a concurrent run that finished first)."""


def transfer_platform(
    platform: Platform,
    target: NationalTarget,
    res: NationalResources,
    *,
    milestones: Mapping[str, Iterable[str]] | None = None,
) -> Delivery:
    """Deliver the platform's latest packaged delivery to the landing zone, exactly once.

    `milestones` (base id -> milestones reached, from the catalogue) gates the delivery: when given, the delivery
    leaves only if every member base has REQUIRED_MILESTONES, else the result has status `skipped` and the reasons.
    """
    res.landing.require_tls(allow_loopback_http=target.allow_plain_http_loopback, what="HDH landing zone")
    out_s3, land = res.outbox.client(), res.landing.client()
    manifest = _latest_package(out_s3, platform)
    if manifest is None:
        return Delivery(platform.id, "", "nothing_to_deliver", None, [], {}, {})
    source = manifest["delivery_id"]
    key_versions = {"national": res.national_key.version, "national_box": res.box_key_version}
    _check_package(platform, manifest, res)
    members = manifest.get("members") or [b.id for b in platform.members]
    blocked = delivery_gate(members, milestones) if milestones is not None else {}
    if blocked:
        log.warning("%s", gate_message(platform.id, source, blocked))
        return Delivery(platform.id, "", "skipped", None, [], {}, key_versions, source_delivery=source, skipped=blocked)
    bucket = target.landing_zone.bucket
    ensure_abort_lifecycle(land, bucket)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="eds-national-") as tmp:
        files = _level2_delivery(out_s3, platform, manifest, Path(tmp), res)
        delivery_id = f"{platform.id}__{_content_digest(manifest, files)[:16]}"
        delivery = dict(
            platform=platform.id, delivery_id=delivery_id, key_versions=key_versions, source_delivery=source
        )
        prefix = landing_prefix(target, delivery_id)
        manifest_key = prefix + MANIFEST
        try:
            if object_exists(land, bucket, manifest_key):
                raise _PublishedMeanwhile("manifest present")
            checksums = _upload_files(land, bucket, manifest_key, prefix, files, res, platform.id)
            reused = sum(c is None for c in checksums.values())
            _verify_files(land, bucket, manifest_key, files, platform.id, checksums)
            doc = {
                "kind": "eds-network/national-delivery",
                "delivery_id": delivery_id,
                "source_delivery": source,
                "platform": platform.id,
                "schema_version": SCHEMA_VERSION,
                "key_versions": key_versions,
                "kind_of_delivery": manifest.get("kind_of_delivery", "full"),
                "since_seq": manifest.get("since_seq"),
                "upto_seq": manifest.get("upto_seq"),
                "files": files,
                "delivered_at": dt.datetime.now(dt.UTC).isoformat(),
            }
            _write_manifest(land, bucket, manifest_key, doc, res, platform.id)
        except _PublishedMeanwhile as exc:
            log.info("%s: delivery %s is already in the landing zone (%s): nothing sent", platform.id, delivery_id, exc)
            abort_incomplete_uploads(land, bucket, prefix)
            return Delivery(**delivery, status="already_delivered", manifest_key=manifest_key, files=[], rows={})
    # Leftovers of interrupted attempts (or of a concurrent run) are useless now that the delivery is published.
    aborted = abort_incomplete_uploads(land, bucket, prefix)
    size_mb, seconds = sum(f["bytes"] for f in files) / 1e6, time.monotonic() - t0
    log.info(
        "%s: delivery %s transferred: %d files (%d already there), %.1f MB in %.1fs; %d stale uploads aborted",
        *(platform.id, delivery_id, len(files), reused, size_mb, seconds, aborted),
    )
    rows = {f["table"] + (".deleted" if f.get("role") == "deletes" else ""): f["rows"] for f in files}
    return Delivery(**delivery, status="delivered", manifest_key=manifest_key, files=files, rows=rows, reused=reused)


def _latest_package(out_s3, platform: Platform) -> dict | None:
    """The manifest of the platform's latest package (`_latest.json` in its outbox), None when it has none."""
    pointer_key = f"{platform.outbox.prefix}_latest.json"
    if object_exists(out_s3, platform.outbox.bucket, pointer_key) is None:
        return None
    pointer = read_json(out_s3, platform.outbox.bucket, pointer_key)
    return read_json(out_s3, platform.outbox.bucket, pointer["manifest_key"])


def _check_package(platform: Platform, manifest: dict, res: NationalResources) -> None:
    """Schema version, the platform's signature, and one transport key version (IntegrityError otherwise)."""
    source = manifest["delivery_id"]
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise IntegrityError(f"delivery {source}: schema version {manifest.get('schema_version')!r}")
    check_package_manifest(platform, manifest, res.trust)
    transport = (manifest.get("key_versions") or {}).get("transport") or []
    if isinstance(transport, list) and len(transport) > 1:
        raise IntegrityError(
            f"delivery {source}: tokens under several transport key versions {transport} (a rotation in "
            "progress): the national linkage would split patients; deliver once every member is re-keyed"
        )


def _level2_delivery(out_s3, platform: Platform, manifest: dict, tmp: Path, res: NationalResources) -> list[dict]:
    """The package's files, checked against its manifest, rewritten under level-2 ids into `tmp`: the rows of each
    table, then the deletes (level-2 keys of the rows the HDH must remove). One entry per file."""

    def fetch(entry: dict, name: str, table: str) -> Path:
        path = tmp / f"in-{name}.parquet"
        sha, _ = download(out_s3, platform.outbox.bucket, entry["key"], path)
        if sha != entry["sha256"]:
            raise IntegrityError(f"outbox file {entry['key']} does not match its manifest", table=table)
        return path

    local = {t: fetch(e, t, t) for t, e in manifest["tables"].items()}
    gone = {t: fetch(e, f"{t}.deletes", t) for t, e in (manifest.get("deletes") or {}).items()}
    if "person" not in local:
        raise IntegrityError(f"delivery {manifest['delivery_id']} has no person file", table="person")
    # An incremental delivery also lists the tokens of the unchanged persons its changed rows refer to.
    refs = [pq.read_table(local["person"], columns=["person_id", TOKEN_COLUMN])]
    if manifest.get("persons"):
        refs.append(pq.read_table(fetch(manifest["persons"], "_persons", "person")))
    person = pa.concat_tables([r.cast(refs[0].schema) for r in refs])
    with_digests = national_person_digests(
        person.column(TOKEN_COLUMN).combine_chunks(),
        person.column("person_id").combine_chunks(),
        res.national_key,
        res.box_private_key,
    )
    del person, refs
    if res.registry_dsn is not None:  # checked before anything is sent: a collision refuses the delivery
        register_national_digests(res.registry_dsn, with_digests.values(), platform.id)
    mapping = {pid: nid for pid, (nid, _) in with_digests.items()}
    del with_digests
    files = level2_files(local, mapping, tmp, res.national_key, drop=FORBIDDEN_COLUMNS)
    row_key = rowids.level_key(res.national_key.secret, "national")
    for t, path in gone.items():
        out = tmp / f"{t}.deletes.parquet"
        ids = _level2_deletes(pq.read_table(path), t, row_key, res)
        with HashingWriter(out) as sink:
            pq.write_table(pa.table({"id": ids}), sink, compression="zstd")
        size, sha = sink.size, sink.sha256
        files.append({"table": t, "role": "deletes", "path": out, "sha256": sha, "bytes": size, "rows": len(ids)})
    return files


def _content_digest(manifest: dict, files: list[dict]) -> str:
    """The national delivery is named by its content: the same data delivered again is the same delivery (the
    platform's sealed tokens are re-randomised on every run, the level-2 output is not); each reconciliation is
    checked, even of unchanged data."""
    kind = manifest.get("kind_of_delivery", "full")
    since, upto = manifest.get("since_seq"), manifest.get("upto_seq")
    if kind == "reconcile":
        upto = f"{upto}@{manifest.get('packaged_at')}"
    name = "|".join(f"{f['table']}:{f.get('role', 'rows')}:{f['sha256']}" for f in files)
    return hashlib.sha256(f"{kind}|{since}|{upto}|{name}".encode()).hexdigest()


def _upload_files(
    land, bucket: str, manifest_key: str, prefix: str, files: list[dict], res, platform: str
) -> dict[str, str | None]:
    """Upload each file once (content-addressed keys: one already there is not sent again). Returns, per key,
    the checksum the store must report (None: the file was there already). Each file's local `path` is replaced
    by its `key`."""
    sent: dict[str, str | None] = {}
    for f in files:
        stem = f"{f['table']}.deletes" if f.get("role") == "deletes" else f["table"]
        f["key"] = f"{prefix}{stem}.{f['sha256'][:16]}.parquet"
        try:
            sent[f["key"]] = _upload_once(land, f.pop("path"), bucket, f["key"], f["sha256"], res, platform)
        except TransferError:
            if object_exists(land, bucket, manifest_key):
                raise _PublishedMeanwhile("published by a concurrent run") from None
            raise
    return sent


def _verify_files(
    land, bucket: str, manifest_key: str, files: list[dict], platform: str, checksums: Mapping[str, str | None]
) -> None:
    """Every object verified (size, encryption, the store's checksum or a read-back: `verify_upload`) before the
    manifest. A stored object that is not ours must not stay (a retry sends it again); nor may any object of
    this attempt stored unencrypted."""
    for f in files:
        try:
            verify_upload(land, bucket, f, checksums.get(f["key"]), platform=platform)
        except (IntegrityError, TransferError):
            if object_exists(land, bucket, manifest_key):
                raise _PublishedMeanwhile("published by a concurrent run") from None
            land.delete_object(Bucket=bucket, Key=f["key"])
            for g in files:
                head = object_exists(land, bucket, g["key"])
                if head is not None and not encrypted(head):
                    land.delete_object(Bucket=bucket, Key=g["key"])
            raise


def _write_manifest(land, bucket: str, manifest_key: str, doc: dict, res, platform: str) -> None:
    """The manifest, last, by a conditional write (If-None-Match: *): published exactly once, encrypted at rest."""
    faults.inject("transfer.before_manifest")  # tests: objects delivered, manifest not written
    body = json.dumps(doc, indent=2, sort_keys=True).encode()
    try:
        put = land.put_object(
            Bucket=bucket,
            Key=manifest_key,
            Body=body,
            ContentType="application/json",
            IfNoneMatch="*",
            **_sse_args(res),
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
            raise _PublishedMeanwhile("conditional write lost to a concurrent run") from None
        raise
    if put.get("ServerSideEncryption") not in ("AES256", "aws:kms"):
        land.delete_object(Bucket=bucket, Key=manifest_key)
        raise TransferError(
            f"platform {platform}: the landing zone did not apply encryption at rest to {manifest_key}; "
            "delivery withdrawn"
        )


def _level2_deletes(tbl: pa.Table, table: str, row_key: bytes, res: NationalResources) -> pa.Array:
    """The level-2 keys of deleted rows: row ids through the national permutation; persons (sealed tokens only,
    the platform keeps no level-1 id of a deleted person) through the national pseudonym."""
    if table == "person":
        sealed = tbl.column(TOKEN_COLUMN).combine_chunks()
        mapping = national_person_ids(
            sealed, pa.array(range(len(sealed)), pa.int64()), res.national_key, res.box_private_key
        )
        return pa.array([mapping[i] for i in range(len(sealed))], pa.int64())
    return rowids.rekey(tbl.column("id").combine_chunks(), row_key, "national-row")


REGISTRY_SCHEMA = "eds_national"


def register_national_digests(dsn: str, pairs: Iterable[tuple[int, bytes]], platform: str) -> int:
    """Record (level-2 id, digest) pairs under the registry's uniqueness constraints, before anything is sent: a
    collision with any earlier delivery of any platform refuses the delivery (IntegrityError), never merges."""
    import psycopg

    MIGRATIONS.ensure(dsn)  # the registry (eds_national.person_digest, revision 0003)
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('eds_national.person_digest'))")
        return digests.register_pairs(conn, REGISTRY_SCHEMA, pairs, zone=f"national (platform {platform})")


def _upload_once(s3, path: Path, bucket: str, key: str, sha: str, res: NationalResources, platform: str) -> str | None:
    """Upload unless the very same bytes are already there (encrypted). Returns the checksum the store must
    report for what was sent (`core.uploads`), None when nothing was sent."""
    head = object_exists(s3, bucket, key)
    if (
        head
        and head.get("Metadata", {}).get("sha256") == sha
        and head["ContentLength"] == path.stat().st_size
        and encrypted(head)
    ):
        return None  # already there from an interrupted attempt: resume, do not resend
    try:
        return upload_checksummed(
            *(s3, path, bucket, key),
            threshold=MULTIPART.multipart_threshold,
            part_size=MULTIPART.multipart_chunksize,
            concurrency=MULTIPART.max_concurrency,
            extra={"Metadata": {"sha256": sha}, **_sse_args(res)},
        )
    except Exception as exc:
        _abort_multipart(s3, bucket, key)
        raise TransferError(f"platform {platform}: upload of {key} failed: {type(exc).__name__}") from exc


def _abort_multipart(s3, bucket: str, key: str) -> None:
    try:
        for up in s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []):
            if up["Key"] == key:
                s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    except (ClientError, BotoCoreError):
        log.warning("could not list/abort incomplete multipart uploads for %s", key)


def abort_incomplete_uploads(s3, bucket: str, prefix: str) -> int:
    """Abort every incomplete multipart upload under `prefix`. Returns how many were aborted."""
    n = 0
    try:
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
            for up in page.get("Uploads", []):
                s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
                n += 1
    except (ClientError, BotoCoreError) as exc:
        log.warning("could not abort incomplete multipart uploads under %s: %s", prefix, type(exc).__name__)
    return n


def check_package_manifest(platform: Platform, manifest: dict, trust: Mapping[str, bytes] | None) -> None:
    """The platform's package manifest, signed by that platform's key (the trust store's, never the one it claims)
    and naming that platform; else IntegrityError. `trust` None: step-level tests of unsigned packages only."""
    if trust is None:
        return
    what = f"platform {platform.id}: delivery {manifest.get('delivery_id')} manifest"
    public = trust.get(zones.platform(platform.id))
    if public is None:
        raise IntegrityError(f"{what}: no public key for {zones.platform(platform.id)} in the trust store")
    verify_document(manifest, public, what=what)
    if manifest.get("platform") != platform.id:
        raise IntegrityError(f"{what}: names platform {manifest.get('platform')!r}")
