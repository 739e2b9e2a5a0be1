"""National linkage: per platform pair, how many persons share a national pseudonym in their current deliveries."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from eds_network.core.config import NationalTarget
from eds_network.core.errors import IntegrityError, TransferError
from eds_network.core.storage import S3Endpoint, download, object_exists, put_json, read_json
from eds_network.national.landing import encrypted

log = logging.getLogger(__name__)

LINKAGE = "linkage/"


def national_linkage(
    target: NationalTarget, landing: S3Endpoint, deliveries: Iterable[dict], *, sse_kms_key_id: str | None = None
) -> dict:
    """Per platform pair, how many persons share a level-2 pseudonym in the platforms' current deliveries.

    Reads only the `person_id` column of each delivered person file (checked against its manifest SHA-256) and
    writes a summary object next to the deliveries, named by the deliveries it covers (written once; none when
    fewer than two platforms are delivered). Returns the summary (counts and references only)."""
    landing.require_tls(allow_loopback_http=target.allow_plain_http_loopback, what="HDH landing zone")
    s3 = landing.client()
    bucket = target.landing_zone.bucket
    ids: dict[str, np.ndarray] = {}
    used: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="eds-linkage-") as tmp:
        for d in deliveries:
            if d.get("status") not in ("delivered", "already_delivered") or not d.get("manifest_key"):
                continue
            manifest = read_json(s3, bucket, d["manifest_key"])
            person = next((f for f in manifest["files"] if f["table"] == "person"), None)
            if person is None:
                raise IntegrityError(f"delivery {manifest['delivery_id']} has no person file", table="person")
            path = Path(tmp) / f"{manifest['platform']}.parquet"
            sha, _ = download(s3, bucket, person["key"], path)
            if sha != person["sha256"]:
                raise IntegrityError(f"{person['key']} does not match its manifest", table="person")
            col = pq.read_table(path, columns=["person_id"]).column("person_id").combine_chunks().drop_null()
            ids[manifest["platform"]] = np.unique(col.to_numpy(zero_copy_only=False))
            used[manifest["platform"]] = manifest["delivery_id"]
            path.unlink()
    platforms = sorted(ids)
    pairs = [
        {
            "platforms": [a, b],
            "deliveries": [used[a], used[b]],
            "shared_persons": int(np.intersect1d(ids[a], ids[b], assume_unique=True).size),
        }
        for i, a in enumerate(platforms)
        for b in platforms[i + 1 :]
    ]
    digest = hashlib.sha256("|".join(f"{p}:{used[p]}" for p in platforms).encode()).hexdigest()
    key = f"{target.landing_zone.prefix}{LINKAGE}{digest[:16]}.json"
    doc = {
        "kind": "eds-network/national-linkage",
        "deliveries": used,
        "persons": {p: int(ids[p].size) for p in platforms},
        "pairs": pairs,
        "computed_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    if len(platforms) < 2:  # nothing to link (a single platform delivered, or others skipped): no object
        key = None
    elif object_exists(s3, bucket, key) is None:
        sse = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": sse_kms_key_id} if sse_kms_key_id else {}
        put_json(s3, bucket, key, doc, **(sse or {"ServerSideEncryption": "AES256"}))
        if not encrypted(object_exists(s3, bucket, key)):
            s3.delete_object(Bucket=bucket, Key=key)
            raise TransferError(f"the landing zone did not apply encryption at rest to {key}")
    log.info("national linkage over %d platforms: %s", len(platforms), pairs)
    return {"summary_key": key, **doc}
