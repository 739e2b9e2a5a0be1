"""National Iceberg tables (`national/tables.py`) on the embedded PostgreSQL (SQL catalog) and S3 endpoint (moto).

Each test lands deliveries (level-2 Parquet files + manifest, as the transfer step writes them) under its own
landing prefix, applies them, and reads the tables back with a second engine as the HDH would: DuckDB's
`read_parquet` over the data files the Iceberg manifests list (DuckDB's iceberg extension downloads from the
internet, which the test machine cannot reach), and pyiceberg scans.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.parquet as pq
import pytest

from eds_network.core.config import load_network
from eds_network.core.storage import S3Endpoint
from eds_network.dev.landing import land_delivery
from eds_network.national import tables

pytestmark = pytest.mark.integration

NETWORK = load_network()
T0 = dt.datetime(2026, 3, 1, 2, 0, tzinfo=dt.UTC)


@pytest.fixture
def hdh(stack, fresh_db):
    """A landing zone under its own prefix and a fresh HDH database (catalog + ledger)."""
    zone = NETWORK.national.landing_zone.model_copy(update={"prefix": f"t-{uuid.uuid4().hex[:8]}/"})
    target = NETWORK.national.model_copy(update={"landing_zone": zone})
    res = tables.NationalTables(fresh_db, S3Endpoint(stack.s3_endpoint, *stack.s3_login))
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
    return land_delivery(target, res.landing, platform, data, at=at)


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

    pinned = tbl.metadata.current_snapshot_id  # what a project extracted today

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
    # Time travel: the pinned snapshot still reads what the project saw, by pyiceberg and in the CLI listing.
    then = res.catalog(target).load_table(("omop", "person")).scan(snapshot_id=pinned).to_arrow()
    assert sorted(then.filter(pa.compute.equal(then["_platform"], "pa"))["person_id"].to_pylist()) == [1, 2, 3, 4, 5]
    assert {d["table"]: d["rows"] for d in tables.describe(target, res, snapshot_id=pinned)} == {
        "person": {"pa": 5, "pb": 3}
    }


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


OBJECTOR = 7_305_419_882_651_117_003  # a level-2 pseudonym no other object of the stack holds


def _zigzag(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos


def avro_payload(data: bytes) -> bytes:
    """An Avro container file's blocks, decompressed (deflate or gzip), concatenated: what a reader sees."""
    import zlib

    sync = data[-16:]
    out = b""
    for chunk in data.split(sync)[1:]:
        if len(chunk) < 2:
            continue
        _, pos = _zigzag(chunk, 0)
        size, pos = _zigzag(chunk, pos)
        block = chunk[pos : pos + size]
        for wbits in (-15, 47):
            try:
                out += zlib.decompress(block, wbits)
                break
            except zlib.error:
                continue
        else:
            out += block
    return out


def objects_holding(s3, value: int, own_prefix: str) -> list[str]:
    """Every object of every bucket holding `value`: Parquet decoded (every integer column), Avro blocks
    decompressed, everything else as raw bytes (8-byte little/big endian, decimal text).

    A Parquet object that does not decode is one another test of the session corrupted on purpose (a tampered or
    truncated batch): its raw bytes are still searched, and none may lie under `own_prefix`, this test's own."""
    needles = (value.to_bytes(8, "little", signed=True), value.to_bytes(8, "big", signed=True), str(value).encode())
    hits = []
    for bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                if body[:4] == b"PAR1":
                    try:
                        t = pq.read_table(io.BytesIO(body))
                    except pa.ArrowInvalid:
                        assert own_prefix not in obj["Key"], f"{bucket}/{obj['Key']}: unreadable Parquet"
                        t = pa.table({})
                    found = any(pa.types.is_integer(c.type) and value in set(c.to_pylist()) for c in t.itercolumns())
                elif body[:4] == b"Obj\x01":
                    found = any(n in avro_payload(body) for n in needles)
                else:
                    found = False
                if found or any(n in body for n in needles):
                    hits.append(f"{bucket}/{obj['Key']}")
    return hits


def test_an_objector_leaves_no_row_in_any_table_nor_any_object_after_the_night(hdh, tmp_path):
    from eds_network.national import maintenance

    target, res = hdh
    s3 = res.landing.client()
    first = land(
        target,
        res,
        "pa",
        {"person": _person([1, 2, OBJECTOR]), "visit_occurrence": _visits([1, OBJECTOR, OBJECTOR])},
        T0,
    )
    other = land(target, res, "pb", {"person": _person([9]), "visit_occurrence": _visits([9], start=50)}, T0)
    tables.apply_delivery(target, res, first)
    tables.apply_delivery(target, res, other)
    # Non-vacuous: the objector's rows were there, and the scan finds them in the landing and Iceberg files.
    tbl = res.catalog(target).load_table(("omop", "visit_occurrence"))
    assert tbl.scan(row_filter=f"person_id == {OBJECTOR}").to_arrow().num_rows == 2
    before = objects_holding(s3, OBJECTOR, target.landing_zone.prefix)
    assert any("/iceberg/" in h for h in before) and any("/deliveries/" in h for h in before)

    # The next night: the platform's full delivery no longer holds the objector.
    second = land(
        target, res, "pa", {"person": _person([1, 2]), "visit_occurrence": _visits([1])}, T0 + dt.timedelta(1)
    )
    out = tables.apply_delivery(target, res, second)
    assert out.persons_removed == 1
    catalog = res.catalog(target)
    purged = maintenance.purge(target, res, tables.table_names(catalog))
    assert purged["person"]["snapshots_expired"] >= 2 and purged["person"]["files_deleted"] > 0
    assert maintenance.purge_superseded_deliveries(target, res) == 2  # first's two data files; pb's stay
    assert maintenance.sweep(target, res) == {"person": 0, "visit_occurrence": 0}

    assert objects_holding(s3, OBJECTOR, target.landing_zone.prefix) == []
    assert duckdb_counts(target, res, "person", tmp_path) == {"pa": 2, "pb": 1}
    assert duckdb_counts(target, res, "visit_occurrence", tmp_path) == {"pa": 1, "pb": 1}


def test_explicit_erasure_and_a_crashed_apply_leave_no_row_and_no_orphan(hdh, tmp_path):
    from eds_network.national import maintenance

    objector = OBJECTOR + 1  # its own value: this test keeps the current delivery's landing files

    target, res = hdh
    s3 = res.landing.client()
    d = land(target, res, "pa", {"person": _person([1, objector]), "visit_occurrence": _visits([objector])}, T0)
    tables.apply_delivery(target, res, d)
    # A crash between data files and commit: files written, no commit. Nothing visible changes.
    tbl = res.catalog(target).load_table(("omop", "person"))
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    orphans = list(
        _dataframe_to_data_files(
            table_metadata=tbl.metadata,
            write_uuid=uuid.uuid4(),
            df=pa.Table.from_pylist([{"_platform": "pa", "person_id": 99}], schema=tables.arrow_schema("person")),
            io=tbl.io,
        )
    )
    assert orphans and duckdb_counts(target, res, "person", tmp_path) == {"pa": 2}
    erased = maintenance.erase_persons(target, res, [objector])
    assert erased == {"person": 1, "visit_occurrence": 1}
    maintenance.purge(target, res, erased)
    assert maintenance.sweep(target, res) == {"person": 0, "visit_occurrence": 0}
    keys = {
        k
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=target.landing_zone.bucket)
        for k in [o["Key"] for o in page.get("Contents", [])]
    }
    assert not any(o.file_path.split("/", 3)[-1] in keys for o in orphans)
    assert [h for h in objects_holding(s3, objector, target.landing_zone.prefix) if "/iceberg/" in h] == []
    assert duckdb_counts(target, res, "person", tmp_path) == {"pa": 1}
