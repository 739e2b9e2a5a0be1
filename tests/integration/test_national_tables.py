"""National Iceberg tables (`national/tables.py`) on the embedded PostgreSQL (SQL catalog) and S3 endpoint (moto).

Each test lands deliveries (level-2 Parquet files + manifest, as the transfer step writes them) under its own
landing prefix, applies them, and reads the tables back with a second engine as the HDH would: DuckDB's
`read_parquet` over the data files the Iceberg manifests list (DuckDB's iceberg extension downloads from the
internet, which the test machine cannot reach), and pyiceberg scans.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import threading
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eds_network.core.config import load_network
from eds_network.core.exchange import MANIFEST
from eds_network.core.storage import S3Endpoint
from eds_network.national import tables
from eds_network.national.transfer import landing_prefix

pytestmark = pytest.mark.integration

NETWORK = load_network()
T0 = dt.datetime(2026, 3, 1, 2, 0, tzinfo=dt.UTC)


@pytest.fixture
def hdh(stack, fresh_db):
    """A landing zone under its own prefix and a fresh HDH database (catalog + ledger)."""
    zone = NETWORK.national.landing_zone.model_copy(update={"prefix": f"t-{uuid.uuid4().hex[:8]}/"})
    target = NETWORK.national.model_copy(update={"landing_zone": zone})
    res = tables.NationalTables(fresh_db, S3Endpoint(stack.s3_endpoint, "eds-local", "eds-local-secret"))
    return target, res


def _person(ids: list[int]) -> pa.Table:
    return pa.table(
        {
            "person_id": pa.array(ids, pa.int64()),
            "gender_concept_id": pa.array([8507] * len(ids), pa.int64()),
            "year_of_birth": pa.array([1970 + i % 40 for i in range(len(ids))], pa.int64()),
        }
    )


def _visits(person_ids: list[int], start: int = 1) -> pa.Table:
    n = len(person_ids)
    return pa.table(
        {
            "visit_occurrence_id": pa.array(range(start, start + n), pa.int64()),
            "person_id": pa.array(person_ids, pa.int64()),
            "visit_concept_id": pa.array([9201] * n, pa.int64()),
            "visit_start_date": pa.array([dt.date(2025, 1, 1)] * n, pa.date32()),
            "visit_start_datetime": pa.array([dt.datetime(2025, 1, 1, 8)] * n, pa.timestamp("us")),
        }
    )


def land(target, res, platform: str, data: dict[str, pa.Table], at: dt.datetime) -> str:
    """Write a delivery to the landing zone as the transfer step does; returns its id."""
    s3 = res.landing.client()
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
        "key_versions": {"national": "v1", "national_box": "v1"},
        "files": files,
        "delivered_at": at.isoformat(),
    }
    s3.put_object(Bucket=bucket, Key=prefix + MANIFEST, Body=json.dumps(doc).encode())
    return delivery_id


def duckdb_counts(target, res, table: str, tmp_path: Path) -> dict[str, int]:
    """Rows per platform read by DuckDB from the data files the table's current Iceberg snapshot lists."""
    tbl = res.catalog(target).load_table((tables.NAMESPACE, table))
    s3 = res.landing.client()
    paths = []
    for i, task in enumerate(tbl.scan().plan_files()):
        assert not task.delete_files
        bucket, key = task.file.file_path.removeprefix("s3://").split("/", 1)
        local = tmp_path / f"{table}-{i}.parquet"
        s3.download_file(bucket, key, str(local))
        paths.append(str(local))
    if not paths:
        return {}
    con = duckdb.connect()
    rows = con.execute("SELECT _platform, count(*) FROM read_parquet(?) GROUP BY 1 ORDER BY 1", [paths]).fetchall()
    return dict(rows)


def snapshot_count(target, res, table: str) -> int:
    return len(res.catalog(target).load_table((tables.NAMESPACE, table)).metadata.snapshots)


def test_apply_full_deliveries_counts_per_platform_and_replay_is_a_no_op(hdh, tmp_path):
    target, res = hdh
    a1 = land(target, res, "pa", {"person": _person([1, 2, 3, 4, 5]), "visit_occurrence": _visits([1, 1, 2])}, T0)
    b1 = land(target, res, "pb", {"person": _person([7, 8, 9]), "visit_occurrence": _visits([7])}, T0)
    assert tables.apply_delivery(target, res, a1).status == "applied"
    assert tables.apply_delivery(target, res, b1).status == "applied"
    assert duckdb_counts(target, res, "person", tmp_path) == {"pa": 5, "pb": 3}
    assert duckdb_counts(target, res, "visit_occurrence", tmp_path) == {"pa": 3, "pb": 1}
    tbl = res.catalog(target).load_table(("omop", "person"))
    current = tbl.metadata.snapshot_by_id(tbl.metadata.current_snapshot_id)
    props = current.summary.additional_properties
    assert props["eds.delivery_id"] == b1 and props["eds.platform"] == "pb"
    assert len(props["eds.manifest_sha256"]) == 64 and json.loads(props["eds.key_versions"])["national"] == "v1"
    # pyiceberg's own scan agrees, column values included
    assert sorted(tbl.scan(row_filter="_platform == 'pa'").to_arrow().column("person_id").to_pylist()) == [
        1,
        2,
        3,
        4,
        5,
    ]

    # A retried / replayed delivery changes nothing: same snapshots, same rows.
    before = {t: snapshot_count(target, res, t) for t in ("person", "visit_occurrence")}
    assert tables.apply_delivery(target, res, a1).status == "already_applied"
    assert {t: snapshot_count(target, res, t) for t in before} == before

    # The next full delivery of pa replaces pa's partition only; replaying the older one afterwards is a no-op.
    a2 = land(target, res, "pa", {"person": _person([1, 2, 3]), "visit_occurrence": _visits([3])}, T0 + dt.timedelta(1))
    assert tables.apply_delivery(target, res, a2).status == "applied"
    assert duckdb_counts(target, res, "person", tmp_path) == {"pa": 3, "pb": 3}
    assert duckdb_counts(target, res, "visit_occurrence", tmp_path) == {"pa": 1, "pb": 1}
    before = {t: snapshot_count(target, res, t) for t in ("person", "visit_occurrence")}
    assert tables.apply_delivery(target, res, a1).status == "already_applied"
    assert {t: snapshot_count(target, res, t) for t in before} == before
    # An older delivery never applied, arriving after a newer one, does not roll the platform back.
    late = land(target, res, "pa", {"person": _person([1])}, T0 - dt.timedelta(1))
    assert tables.apply_delivery(target, res, late).status == "superseded"
    assert duckdb_counts(target, res, "person", tmp_path) == {"pa": 3, "pb": 3}

    # The listing the CLI prints: rows per platform and the snapshots with their deliveries.
    desc = {d["table"]: d for d in tables.describe(target, res)}
    assert desc["person"]["rows"] == {"pa": 3, "pb": 3}
    assert {s["delivery_id"] for s in desc["person"]["snapshots"]} == {a1, b1, a2}


def test_racing_applies_of_one_delivery_commit_once(hdh, tmp_path):
    target, res = hdh
    d = land(target, res, "pa", {"person": _person(list(range(1, 51)))}, T0)
    tables.ensure_table(res.catalog(target), "person")  # both racers find the table
    results, errors = [], []

    def run():
        try:
            results.append(tables.apply_delivery(target, res, d))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert duckdb_counts(target, res, "person", tmp_path) == {"pa": 50}
    tbl = res.catalog(target).load_table(("omop", "person"))
    appends = [s for s in tbl.metadata.snapshots if s.summary.operation.value == "append"]
    assert len(appends) == 1  # one clean apply, not two
