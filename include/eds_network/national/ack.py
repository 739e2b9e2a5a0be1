"""The HDH's acknowledgement to a platform: what its national tables hold of that platform, signed.

Written by the national zone into the platform's outbox (`<outbox prefix>_ack.json`, the only object the national
zone writes there; the only ones it deletes are the deletes files of a delivery it applied, `purge_applied_deletes`) after each apply: the platform's newest delivery applied, the change sequence it holds up to
(`upto_seq`, the watermark the platform's next incremental delivery starts from) and `full_requested` when the HDH
needs a full delivery (a gap in the changes, changed key versions). No ack, or one that does not verify: the
platform delivers in full.
"""

from __future__ import annotations

import datetime as dt

import psycopg

from eds_network.core import zones
from eds_network.core.config import Platform
from eds_network.core.exchange import ACK
from eds_network.core.signing import sign_document
from eds_network.core.storage import S3Endpoint, list_keys, put_json

FULL_NEEDED = ("gap", "needs_full")


def acknowledge(
    platform: Platform, outbox: S3Endpoint, dsn: str, applied: dict, *, signing_key: bytes | None = None
) -> dict:
    """Write the platform's acknowledgement from the apply ledger (and this apply's outcome). Returns it."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT delivery_id, upto_seq, kind FROM eds_national.applied WHERE platform = %s"
            " ORDER BY delivered_at DESC LIMIT 1",
            (platform.id,),
        ).fetchone()
    doc = {
        "kind": "eds-network/hdh-acknowledgement",
        "platform": platform.id,
        "delivery_id": row[0] if row else None,
        "upto_seq": row[1] if row else None,
        "full_requested": row is None or row[1] is None or applied.get("status") in FULL_NEEDED,
        "reason": applied.get("detail", "") if applied.get("status") in FULL_NEEDED else "",
        "acknowledged_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    if signing_key is not None:
        doc = sign_document(doc, signing_key, zones.NATIONAL)
    put_json(outbox.client(), platform.outbox.bucket, f"{platform.outbox.prefix}{ACK}", doc)
    return doc


def purge_applied_deletes(platform: Platform, outbox: S3Endpoint, source_delivery: str) -> int:
    """Delete the deletes files (`<table>.deletes.<sha>.parquet`: keys and sealed tokens of erased rows, an
    objector's among them) of the platform's package `source_delivery` (its outbox name; the landing zone names
    the delivery by its content) the national tables applied, from the platform's outbox, the same night:
    they were copied to the landing zone and applied, and serve nothing more. The rest of the package stays until
    the platform prunes it (`platform.package.prune_delivered`). Returns the objects deleted."""
    s3 = outbox.client()
    prefix = f"{platform.outbox.prefix}{source_delivery}/"
    doomed = [k for k in list_keys(s3, platform.outbox.bucket, prefix) if ".deletes." in k[len(prefix) :]]
    for k in doomed:  # one DeleteObject each: what the zone's policy grants
        s3.delete_object(Bucket=platform.outbox.bucket, Key=k)
    return len(doomed)
