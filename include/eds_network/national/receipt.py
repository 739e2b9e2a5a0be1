"""The landing zone's intake check of a delivery: files present, checksums, schema version, no identity column;
a receipt object next to the manifest."""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from eds_network.core import zones
from eds_network.core.config import NationalTarget
from eds_network.core.errors import IntegrityError, TransferError
from eds_network.core.exchange import MANIFEST, SCHEMA_VERSION
from eds_network.core.signing import sign_document
from eds_network.core.storage import S3Endpoint, download, object_exists, put_json, read_json
from eds_network.national.landing import check_digest, check_stored
from eds_network.national.transfer import FORBIDDEN_COLUMNS, landing_prefix

log = logging.getLogger(__name__)


def receipt(target: NationalTarget, landing: S3Endpoint, delivery_id: str, *, signing_key: bytes | None = None) -> dict:
    """The HDH zone's intake check of a delivery in its landing zone: every file the manifest lists is present,
    encrypted, has the manifest's SHA-256, size and row count and no identity column; the schema version is ours.
    The receipt, next to the manifest, is signed with the national zone's key (`signing_key`): the platform
    only reads it."""
    s3 = landing.client()
    bucket = target.landing_zone.bucket
    prefix = landing_prefix(target, delivery_id)
    manifest = read_json(s3, bucket, prefix + MANIFEST)
    problems: list[str] = []
    if manifest.get("schema_version") != SCHEMA_VERSION:
        problems.append("schema version")
    with tempfile.TemporaryDirectory(prefix="eds-receipt-") as tmp:
        for f in manifest["files"]:
            try:
                check_stored(object_exists(s3, bucket, f["key"]), f)
                path = Path(tmp) / "f.parquet"
                check_digest(f, *download(s3, bucket, f["key"], path))  # one read: hashed while downloaded
                rows = pq.read_metadata(path).num_rows
                if f.get("rows") is not None and rows != f["rows"]:
                    problems.append(f"{f['table']}: {rows} rows, the manifest says {f['rows']}")
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
    if signing_key is not None:
        doc = sign_document(doc, signing_key, zones.NATIONAL)
    put_json(s3, bucket, prefix + "_receipt.json", doc, ServerSideEncryption="AES256")
    return doc
