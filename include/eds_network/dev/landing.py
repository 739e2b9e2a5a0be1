"""Deliveries written straight into the HDH landing zone, as the transfer step leaves them (Parquet files + the
national manifest, written last): national-table tests and benches feed the apply step with chosen rows."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import uuid
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from eds_network.core.exchange import MANIFEST
from eds_network.national.transfer import landing_prefix


def land_delivery(
    target,
    landing,
    platform: str,
    data: Mapping[str, pa.Table],
    *,
    at: dt.datetime | None = None,
    key_versions: Mapping[str, str] | None = None,
) -> str:
    """Write one delivery of `platform` (table -> rows) to `target`'s landing zone through the `landing` endpoint;
    returns its delivery id."""
    s3 = landing.client()
    bucket = target.landing_zone.bucket
    delivery_id = f"{platform}__{uuid.uuid4().hex[:16]}"
    prefix = landing_prefix(target, delivery_id)
    files = []
    for t, tbl in data.items():
        buf = io.BytesIO()
        pq.write_table(tbl, buf)
        body = buf.getvalue()
        key = f"{prefix}{t}.parquet"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        files.append(
            {"table": t, "key": key, "sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body), "rows": len(tbl)}
        )
    doc = {
        "kind": "eds-network/national-delivery",
        "delivery_id": delivery_id,
        "platform": platform,
        "key_versions": dict(key_versions or {"national": "v1", "national_box": "v1"}),
        "files": files,
        "delivered_at": (at or dt.datetime.now(dt.UTC)).isoformat(),
    }
    s3.put_object(Bucket=bucket, Key=prefix + MANIFEST, Body=json.dumps(doc).encode())
    return delivery_id
