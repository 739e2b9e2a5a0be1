"""Package the warehouse for the national level: one Parquet file per table + a manifest (written last) in the
platform outbox, named by the ledger state it holds."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from eds_network.core import omop, zones
from eds_network.core.config import Platform
from eds_network.core.copystream import stream_query
from eds_network.core.exchange import MANIFEST, SCHEMA_VERSION
from eds_network.core.signing import sign_document
from eds_network.core.storage import put_json, sha256_file
from eds_network.platform import keyversions
from eds_network.platform.warehouse import (
    PlatformResources,
    conflict_key,
    ensure_warehouse,
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
    tables = platform_tables(platform)
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
                cols = expected_columns(t)
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
    manifest = {
        "kind": "eds-network/platform-delivery",
        "platform": platform.id,
        "delivery_id": delivery_id,
        "schema_version": SCHEMA_VERSION,
        "key_versions": key_versions,
        "tables": files,
        "members": [b.id for b in platform.members],
        "packaged_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    if res.signing_key is not None:  # the national zone verifies it against the trust store
        manifest = sign_document(manifest, res.signing_key, zones.platform(platform.id))
    put_json(s3, bucket, manifest_key, manifest)
    put_json(s3, bucket, f"{prefix}_latest.json", {"delivery_id": delivery_id, "manifest_key": manifest_key})
    log.info(
        "%s: delivery %s packaged: %s",
        platform.id,
        delivery_id,
        ", ".join(f"{t}={f['rows']}" for t, f in files.items()),
    )
    return Package(platform.id, delivery_id, manifest_key, files)
