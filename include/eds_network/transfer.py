"""National level: re-pseudonymise a platform delivery with the national key, transfer it to the HDH landing zone.

- The endpoint must be TLS (https); plain http only for an explicitly allowed loopback endpoint (embedded stack).
- Every object is uploaded with boto3's transfer manager (multipart above 8 MiB), encryption at rest requested
  (SSE-KMS with a key id when configured, else SSE-S3) and checked on the stored object; a file already present
  with the right SHA-256 is not sent again, so a retry resumes.
- Every object is read back and hashed before the manifest is written. The manifest is written last with a
  conditional write (If-None-Match: *): a delivery is published exactly once even if two runs race; the loser
  gets `AlreadyDelivered`.
- The landing zone never receives an identity value, a level-1 pseudonym or a transport token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from eds_network import faults
from eds_network.config import NationalTarget, Platform
from eds_network.errors import AlreadyDelivered, IntegrityError, TransferError
from eds_network.pseudonymise import TOKEN_COLUMN, Key, national_person_ids, remap
from eds_network.publish import MANIFEST, SCHEMA_VERSION
from eds_network.storage import S3Endpoint, download, object_exists, put_json, read_json, sha256_file, sha256_object

log = logging.getLogger(__name__)

MULTIPART = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)
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


@dataclass(frozen=True)
class Delivery:
    platform: str
    delivery_id: str
    status: str  # delivered | already_delivered | nothing_to_deliver
    manifest_key: str | None
    files: list[dict]
    rows: dict[str, int]
    key_versions: dict[str, str]

    def ref(self) -> dict:
        return asdict(self)


def _sse_args(res: NationalResources) -> dict:
    if res.sse_kms_key_id:
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": res.sse_kms_key_id}
    return {"ServerSideEncryption": "AES256"}


def _landing_prefix(target: NationalTarget, delivery_id: str) -> str:
    return f"{target.landing_zone.prefix}deliveries/{delivery_id}/"


def transfer_platform(platform: Platform, target: NationalTarget, res: NationalResources) -> Delivery:
    res.landing.require_tls(allow_loopback_http=target.allow_plain_http_loopback, what="HDH landing zone")
    out_s3 = res.outbox.client()
    land = res.landing.client()
    latest = object_exists(out_s3, platform.outbox.bucket, f"{platform.outbox.prefix}_latest.json")
    if latest is None:
        return Delivery(platform.id, "", "nothing_to_deliver", None, [], {}, {})
    pointer = read_json(out_s3, platform.outbox.bucket, f"{platform.outbox.prefix}_latest.json")
    manifest = read_json(out_s3, platform.outbox.bucket, pointer["manifest_key"])
    source_delivery = manifest["delivery_id"]
    bucket = target.landing_zone.bucket
    key_versions = {"national": res.national_key.version, "national_box": res.box_key_version}
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise IntegrityError(f"delivery {source_delivery}: schema version {manifest.get('schema_version')!r}")
    t0 = time.monotonic()
    files: list[dict] = []
    rows: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="eds-national-") as tmp:
        local: dict[str, Path] = {}
        for t, entry in manifest["tables"].items():
            path = Path(tmp) / f"in-{t}.parquet"
            sha, _ = download(out_s3, platform.outbox.bucket, entry["key"], path)
            if sha != entry["sha256"]:
                raise IntegrityError(f"outbox file {entry['key']} does not match its manifest", table=t)
            local[t] = path
        # Level 2: open the sealed transport tokens, derive national ids; tokens never leave this step.
        person = pq.read_table(local["person"], columns=["person_id", TOKEN_COLUMN])
        mapping = national_person_ids(
            person.column(TOKEN_COLUMN).combine_chunks(),
            person.column("person_id").combine_chunks(),
            res.national_key,
            res.box_private_key,
        )
        del person
        for t, path in local.items():
            out = Path(tmp) / f"{t}.parquet"
            pf = pq.ParquetFile(path)
            cols = [c for c in pf.schema_arrow.names if c not in FORBIDDEN_COLUMNS]
            n = dropped = 0
            writer = None
            for rb in pf.iter_batches(batch_size=200_000, columns=cols):
                tbl = pa.Table.from_batches([rb])
                if "person_id" in tbl.column_names:
                    new, missing = remap(tbl.column("person_id").combine_chunks(), mapping)
                    tbl = tbl.set_column(tbl.column_names.index("person_id"), "person_id", new)
                    if missing:
                        tbl = tbl.filter(pc.is_valid(tbl.column("person_id")))
                        dropped += missing
                if writer is None:
                    writer = pq.ParquetWriter(out, tbl.schema, compression="zstd")
                writer.write_table(tbl)
                n += tbl.num_rows
            if writer is None:
                writer = pq.ParquetWriter(out, pa.schema([pf.schema_arrow.field(c) for c in cols]), compression="zstd")
            writer.close()
            if dropped:
                raise IntegrityError(
                    f"{dropped} rows refer to a person absent from the delivery", table=t, column="person_id"
                )
            sha = sha256_file(out)
            files.append({"table": t, "path": out, "sha256": sha, "bytes": out.stat().st_size, "rows": n})
            rows[t] = n
        # The national delivery is named by its content: the same data delivered again is the same delivery
        # (the platform's sealed tokens are re-randomised on every run, the level-2 output is not).
        digest = hashlib.sha256("|".join(f"{f['table']}:{f['sha256']}" for f in files).encode()).hexdigest()
        delivery_id = f"{platform.id}__{digest[:16]}"
        prefix = _landing_prefix(target, delivery_id)
        manifest_key = prefix + MANIFEST
        if object_exists(land, bucket, manifest_key):
            log.info("%s: delivery %s is already in the landing zone: nothing sent", platform.id, delivery_id)
            return Delivery(platform.id, delivery_id, "already_delivered", manifest_key, [], {}, key_versions)
        for f in files:
            f["key"] = f"{prefix}{f['table']}.{f['sha256'][:16]}.parquet"
            _upload_once(land, f.pop("path"), bucket, f["key"], f["sha256"], res)
    # Verify every object (size + SHA-256 read back + encryption) before the manifest.
    for f in files:
        verify_object(land, bucket, f)
    doc = {
        "kind": "eds-network/national-delivery",
        "delivery_id": delivery_id,
        "source_delivery": source_delivery,
        "platform": platform.id,
        "schema_version": SCHEMA_VERSION,
        "key_versions": key_versions,
        "files": files,
        "delivered_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    faults.inject("transfer.before_manifest")  # tests: objects delivered, manifest not written
    try:
        put_json(land, bucket, manifest_key, doc, IfNoneMatch="*", **_sse_args(res))
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
            raise AlreadyDelivered(f"delivery {delivery_id} was published by another run") from None
        raise
    log.info(
        "%s: delivery %s transferred: %d files, %.1f MB in %.1fs",
        platform.id,
        delivery_id,
        len(files),
        sum(f["bytes"] for f in files) / 1e6,
        time.monotonic() - t0,
    )
    return Delivery(platform.id, delivery_id, "delivered", manifest_key, files, rows, key_versions)


def _upload_once(s3, path: Path, bucket: str, key: str, sha: str, res: NationalResources) -> None:
    head = object_exists(s3, bucket, key)
    if head and head.get("Metadata", {}).get("sha256") == sha and head["ContentLength"] == path.stat().st_size:
        return  # already there from an interrupted attempt: resume, do not resend
    try:
        s3.upload_file(
            str(path), bucket, key, Config=MULTIPART, ExtraArgs={"Metadata": {"sha256": sha}, **_sse_args(res)}
        )
    except Exception as exc:
        _abort_multipart(s3, bucket, key)
        raise TransferError(f"upload of {key} failed: {type(exc).__name__}") from exc


def _abort_multipart(s3, bucket: str, key: str) -> None:
    try:
        for up in s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    except ClientError:
        log.warning("could not list/abort incomplete multipart uploads for %s", key)


def verify_object(s3, bucket: str, f: dict) -> None:
    head = object_exists(s3, bucket, f["key"])
    if head is None:
        raise IntegrityError(f"{f['key']} is missing from the landing zone", table=f.get("table"))
    if head.get("ServerSideEncryption") not in ("AES256", "aws:kms"):
        raise TransferError(f"{f['key']}: the landing zone did not apply encryption at rest", table=f.get("table"))
    sha, size = sha256_object(s3, bucket, f["key"])
    if sha != f["sha256"] or size != f["bytes"]:
        raise IntegrityError(f"{f['key']}: stored object does not match (sha256/size)", table=f.get("table"))


def receipt(target: NationalTarget, landing: S3Endpoint, delivery_id: str) -> dict:
    """Stands for the HDH intake: check a delivered manifest and write a receipt object next to it."""
    s3 = landing.client()
    bucket = target.landing_zone.bucket
    prefix = _landing_prefix(target, delivery_id)
    manifest = read_json(s3, bucket, prefix + MANIFEST)
    problems: list[str] = []
    if manifest.get("schema_version") != SCHEMA_VERSION:
        problems.append("schema version")
    with tempfile.TemporaryDirectory(prefix="eds-receipt-") as tmp:
        for f in manifest["files"]:
            try:
                verify_object(s3, bucket, f)
                path = Path(tmp) / "f.parquet"
                download(s3, bucket, f["key"], path)
                bad = sorted(set(pq.read_schema(path).names) & FORBIDDEN_COLUMNS)
                if bad:
                    problems.append(f"{f['table']}: forbidden columns {bad}")
            except (IntegrityError, TransferError) as exc:
                problems.append(str(exc))
    doc = {
        "delivery_id": delivery_id,
        "checked_at": dt.datetime.now(dt.UTC).isoformat(),
        "files": len(manifest["files"]),
        "bytes": sum(f["bytes"] for f in manifest["files"]),
        "status": "accepted" if not problems else "rejected",
        "problems": problems,
    }
    put_json(s3, bucket, prefix + "_receipt.json", doc, ServerSideEncryption="AES256")
    return doc
