"""Fault injection: crash or break a step at a deterministic point (`EDS_FAULT`, see `eds_network.core.faults`), rerun,
and compare with a clean run: per-table row counts and content hashes identical, no duplicate, no incomplete
multipart upload, catalogue consistent with what exists.

Step-level on the real embedded PostgreSQL and S3 (fast); the worker kill runs the step in a child process
that dies at the injection point (`os._exit`, as under SIGKILL).
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from eds_network import catalogue
from eds_network.core import exchange, faults, omop
from eds_network.core.config import load_network
from eds_network.core.crypto import Key
from eds_network.core.errors import AlreadyDelivered, SourceError, TransferError
from eds_network.core.storage import S3Endpoint, list_keys, object_exists, read_json, sha256_file
from eds_network.local import extract, publish
from eds_network.national import landing, transfer
from eds_network.platform import consolidate, warehouse
from eds_network.platform import package as packaging

pytestmark = [pytest.mark.integration]

DAY1 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
DAY2 = DAY1 + dt.timedelta(days=1)
NET = load_network().resized("hosp_c", 30).resized("hosp_b", 30)
BASE = NET.base("hosp_c")
PLATFORM = NET.platform(BASE.platform)


@pytest.fixture(autouse=True)
def _no_fault_left(monkeypatch):
    faults.reset()
    yield
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.reset()


def _ep(stack) -> S3Endpoint:
    return S3Endpoint(stack.s3_endpoint, *stack.s3_login)


def _warehouse_state(dsn: str) -> dict[str, tuple[int, int, str]]:
    """Per OMOP table: rows, distinct keys, md5 of the OMOP columns ordered by key."""
    out = {}
    with psycopg.connect(dsn) as conn:
        for t in omop.DEFAULT_TABLES:
            if not conn.execute("SELECT to_regclass(%s)", (f"omop.{t}",)).fetchone()[0]:
                continue
            key = sql.Identifier(warehouse.conflict_key(t))
            cols = sql.SQL(", ").join(map(sql.Identifier, omop.table(t).column_names))
            out[t] = conn.execute(
                sql.SQL(
                    "SELECT count(*), count(DISTINCT {key}), md5(coalesce(string_agg(ROW({cols})::text, "
                    "E'\\n' ORDER BY {key}), '')) FROM omop.{t}"
                ).format(key=key, cols=cols, t=sql.Identifier(t))
            ).fetchone()
    return out


def _consolidate(stack, wh: str, prefix: str) -> consolidate.Consolidation:
    ep = _ep(stack)
    return consolidate.consolidate(PLATFORM, PLATFORM.intake.bucket, prefix, consolidate.PlatformResources(wh, ep, ep))


@pytest.fixture(scope="module")
def clean(stack, world):
    """The reference: the world's good batches consolidated into a fresh warehouse."""
    wh = world["empty"]()
    c = _consolidate(stack, wh, world["prefix"])
    assert not c.rejected and len(c.applied) == 2
    return _warehouse_state(wh)


def _local_run(stack, world, prefix: str, dsn: str | None = None, base=BASE) -> publish.Published:
    res = stack.local_resources(NET, base.id, source_dsn=dsn or world["clone"](base.id), intake_prefix=prefix)
    refs = [extract.extract_table(base, t, DAY1, DAY2, res).ref() for t in base.tables]
    return publish.publish_batch(base, DAY1, DAY2, refs, res)


def _with_other_base(stack, world, prefix: str) -> None:
    """Publish hosp_b's good batch under `prefix` from its seeded template, so the platform sees both members as
    in the clean run. (A copy of the world's batch would list files outside its own prefix: the platform refuses
    such a manifest.)"""
    _local_run(stack, world, prefix, base=NET.base("hosp_b"))


def _no_incomplete_uploads(s3, bucket: str) -> None:
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# --------------------------------------------------------------------------------------------------
# Local level


_KILL_CHILD = """
import datetime as dt, json, sys
from eds_network.local import extract
from eds_network.core.config import load_network
from eds_network.dev.stack import Stack
net = load_network().resized("hosp_c", 30).resized("hosp_b", 30)
dsn, prefix = sys.argv[1], sys.argv[2]
res = Stack.default().local_resources(net, "hosp_c", source_dsn=dsn, intake_prefix=prefix)
start = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
extract.extract_table(net.base("hosp_c"), "measurement", start, start + dt.timedelta(days=1), res)
print("not killed")
"""


def test_worker_killed_mid_copy_then_rerun_gives_the_clean_result(stack, world, clean):
    prefix = f"test-fault-{uuid.uuid4().hex[:8]}/"
    dsn = world["clone"](BASE.id)
    env = {**os.environ, faults.ENV: "extract.mid_copy:exit"}
    child = subprocess.run(
        [sys.executable, "-c", _KILL_CHILD, dsn, prefix], env=env, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 137, child.stderr[-2000:]
    s3 = stack.s3_client()
    assert list_keys(s3, PLATFORM.intake.bucket, prefix) == []  # nothing staged, nothing published
    _local_run(stack, world, prefix, dsn)
    _with_other_base(stack, world, prefix)
    wh = world["empty"]()
    c = _consolidate(stack, wh, prefix)
    assert not c.rejected
    assert _warehouse_state(wh) == clean


def test_source_restarted_mid_extract_is_a_source_error_and_rerun_gives_the_clean_result(
    stack, world, clean, monkeypatch
):
    prefix = f"test-fault-{uuid.uuid4().hex[:8]}/"
    dsn = world["clone"](BASE.id)
    res = stack.local_resources(NET, BASE.id, source_dsn=dsn, intake_prefix=prefix)
    monkeypatch.setenv(faults.ENV, "extract.source_lost:terminate")
    with pytest.raises(SourceError, match="source connection lost during extraction") as info:
        extract.extract_table(BASE, "measurement", DAY1, DAY2, res)
    assert f"base={BASE.id}" in str(info.value) and "table=measurement" in str(info.value)
    assert list_keys(stack.s3_client(), PLATFORM.intake.bucket, prefix) == []
    monkeypatch.delenv(faults.ENV)
    _local_run(stack, world, prefix, dsn)
    _with_other_base(stack, world, prefix)
    wh = world["empty"]()
    assert not _consolidate(stack, wh, prefix).rejected
    assert _warehouse_state(wh) == clean


def test_crash_after_files_uploaded_before_manifest_then_rerun(stack, world, clean, monkeypatch):
    prefix = f"test-fault-{uuid.uuid4().hex[:8]}/"
    dsn = world["clone"](BASE.id)
    monkeypatch.setenv(faults.ENV, "publish.after_upload_before_manifest")
    with pytest.raises(faults.InjectedFault):
        _local_run(stack, world, prefix, dsn)
    s3 = stack.s3_client()
    staged = list_keys(s3, PLATFORM.intake.bucket, prefix)
    assert staged and not [k for k in staged if k.endswith(exchange.MANIFEST)]
    # The platform reads manifested batches only: nothing is applied from the half-published batch.
    half = world["empty"]()
    assert _consolidate(stack, half, prefix).applied == []
    monkeypatch.delenv(faults.ENV)
    pub = _local_run(stack, world, prefix, dsn)
    assert pub.manifest_key in set(list_keys(s3, PLATFORM.intake.bucket, prefix))
    _with_other_base(stack, world, prefix)
    wh = world["empty"]()
    assert not _consolidate(stack, wh, prefix).rejected
    assert _warehouse_state(wh) == clean


def test_crash_after_manifest_before_catalogue_then_rerun_records_the_run_once(stack, world, clean, monkeypatch):
    prefix = f"test-fault-{uuid.uuid4().hex[:8]}/"
    dsn = world["clone"](BASE.id)
    cat = world["empty"]()
    catalogue.create_schema(cat)
    catalogue.register_network(cat, NET)
    monkeypatch.setenv(faults.ENV, "publish.after_manifest")
    with pytest.raises(faults.InjectedFault):
        _local_run(stack, world, prefix, dsn)
    assert catalogue.latest_runs(cat) == []  # the manifest exists, the catalogue does not know yet
    monkeypatch.delenv(faults.ENV)
    for _ in range(2):  # the rerun, and the same run triggered once more
        pub = _local_run(stack, world, prefix, dsn)
        catalogue.record_run(
            cat,
            level="local",
            scope_id=BASE.id,
            batch_id=pub.batch_id,
            status="success",
            tables=pub.ref()["rows"],
            interval=(DAY1, DAY2),
        )
    runs = [r for r in catalogue.latest_runs(cat) if r["scope_id"] == BASE.id]
    assert len(runs) == 1 and runs[0]["status"] == "success"
    with psycopg.connect(cat) as conn:
        assert conn.execute("SELECT count(*) FROM catalogue.run WHERE scope_id = %s", (BASE.id,)).fetchone()[0] == 1
    # Catalogue consistent with what exists: every table it records is in the manifest, with the same counts.
    manifest = read_json(stack.s3_client(), PLATFORM.intake.bucket, pub.manifest_key)
    for t, r in runs[0]["tables"].items():
        assert r["published"] == manifest["tables"][t]["published"], t
    _with_other_base(stack, world, prefix)
    wh = world["empty"]()
    c = _consolidate(stack, wh, prefix)
    assert not c.rejected
    assert _warehouse_state(wh) == clean


# --------------------------------------------------------------------------------------------------
# Mutualised level


def test_warehouse_session_lost_mid_merge_rolls_back_and_rerun_gives_the_clean_result(stack, world, clean, monkeypatch):
    wh = world["empty"]()
    monkeypatch.setenv(faults.ENV, "consolidate.mid_merge:terminate")
    with pytest.raises(psycopg.OperationalError):
        _consolidate(stack, wh, world["prefix"])
    with psycopg.connect(wh) as conn:
        assert conn.execute("SELECT count(*) FROM eds_platform.ledger").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM omop.person").fetchone()[0] == 0  # the merge rolled back
    monkeypatch.delenv(faults.ENV)
    c = _consolidate(stack, wh, world["prefix"])
    assert len(c.applied) == 2 and not c.rejected
    assert _warehouse_state(wh) == clean


def test_the_same_consolidation_run_twice_applies_each_batch_once(stack, world, clean):
    wh = world["empty"]()
    first = _consolidate(stack, wh, world["prefix"])
    second = _consolidate(stack, wh, world["prefix"])
    assert len(first.applied) == 2 and second.applied == [] and second.skipped == 2
    state = _warehouse_state(wh)
    assert state == clean
    assert all(n == distinct for n, distinct, _ in state.values())  # 0 duplicates


# --------------------------------------------------------------------------------------------------
# National level: uploads to the landing zone


def _national(stack) -> transfer.NationalResources:
    keys = stack.keys(NET)
    box = keys[NET.national.box_key_connection_id]
    nk = keys[NET.national.key_connection_id]
    return transfer.NationalResources(
        outbox=_ep(stack),
        landing=_ep(stack),
        national_key=Key.from_secret("n", nk["password"], nk["extra"]["version"]),
        box_private_key=base64.b64decode(box["password"]),
        box_key_version=box["extra"]["version"],
    )


def _big_file(tmp_path: Path, mib: int = 12) -> Path:
    path = tmp_path / "big.parquet"
    path.write_bytes(os.urandom(mib << 20))
    return path


@pytest.mark.parametrize(
    ("fault", "what"),
    [
        ("s3.UploadPart@2:unreachable", "S3 endpoint unreachable mid-multipart"),
        ("s3.CompleteMultipartUpload", "error on complete-multipart"),
    ],
    ids=["unreachable_mid_multipart", "error_on_complete_multipart"],
)
def test_failed_multipart_upload_leaves_no_incomplete_upload_and_a_retry_completes(
    stack, tmp_path, monkeypatch, fault, what
):
    s3 = stack.s3_client()
    bucket = NET.national.landing_zone.bucket
    key = f"test-fault-{uuid.uuid4().hex[:8]}/big.parquet"
    path = _big_file(tmp_path)
    sha = sha256_file(path)
    res = _national(stack)
    monkeypatch.setenv(faults.ENV, fault)
    with pytest.raises(TransferError, match=f"platform {PLATFORM.id}: upload of .* failed"):
        transfer._upload_once(s3, path, bucket, key, sha, res, PLATFORM.id)
    _no_incomplete_uploads(s3, bucket)
    assert object_exists(s3, bucket, key) is None
    monkeypatch.delenv(faults.ENV)
    transfer._upload_once(s3, path, bucket, key, sha, res, PLATFORM.id)
    f = {"key": key, "sha256": sha, "bytes": path.stat().st_size, "table": "x"}
    landing.verify_object(s3, bucket, f)  # SHA-256 read back, size, encryption at rest
    _no_incomplete_uploads(s3, bucket)
    s3.delete_object(Bucket=bucket, Key=key)


@pytest.fixture(scope="module")
def outbox_delivery(stack, world, clean):
    """A platform delivery packaged in an outbox prefix of its own, from the clean warehouse state."""
    wh = world["empty"]()
    _consolidate(stack, wh, world["prefix"])
    prefix = f"test-fault-outbox-{uuid.uuid4().hex[:8]}/"
    platform = PLATFORM.model_copy(update={"outbox": PLATFORM.outbox.model_copy(update={"prefix": prefix})})
    ep = _ep(stack)
    packaging.package(platform, consolidate.PlatformResources(wh, ep, ep), {})
    return platform


def _target(prefix: str):
    zone = NET.national.landing_zone.model_copy(update={"prefix": prefix})
    return NET.national.model_copy(update={"landing_zone": zone})


def _landing_state(s3, bucket: str, prefix: str) -> list[str]:
    return sorted(list_keys(s3, bucket, prefix))


def test_crash_after_landing_objects_before_manifest_then_rerun_delivers_once(stack, outbox_delivery, monkeypatch):
    target = _target(f"test-fault-lz-{uuid.uuid4().hex[:8]}/")
    s3 = stack.s3_client()
    bucket = target.landing_zone.bucket
    monkeypatch.setenv(faults.ENV, "transfer.before_manifest")
    with pytest.raises(faults.InjectedFault):
        transfer.transfer_platform(outbox_delivery, target, _national(stack))
    partial = _landing_state(s3, bucket, target.landing_zone.prefix)
    assert partial and not [k for k in partial if k.endswith(exchange.MANIFEST)]
    monkeypatch.delenv(faults.ENV)
    d = transfer.transfer_platform(outbox_delivery, target, _national(stack))
    assert d.status == "delivered"
    after = _landing_state(s3, bucket, target.landing_zone.prefix)
    assert set(after) == set(partial) | {d.manifest_key}  # the objects were resumed, not sent twice
    again = transfer.transfer_platform(outbox_delivery, target, _national(stack))
    assert again.status == "already_delivered" and again.delivery_id == d.delivery_id
    assert _landing_state(s3, bucket, target.landing_zone.prefix) == after
    _no_incomplete_uploads(s3, bucket)


def test_two_national_publishes_racing_deliver_exactly_once(stack, outbox_delivery):
    target = _target(f"test-fault-race-{uuid.uuid4().hex[:8]}/")
    results: list[object] = []

    def run():
        try:
            results.append(transfer.transfer_platform(outbox_delivery, target, _national(stack)).status)
        except AlreadyDelivered:
            results.append("lost the race")

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) in (["already_delivered", "delivered"], ["delivered", "lost the race"]), results
    s3 = stack.s3_client()
    keys = _landing_state(s3, target.landing_zone.bucket, target.landing_zone.prefix)
    assert len([k for k in keys if k.endswith(exchange.MANIFEST)]) == 1
    _no_incomplete_uploads(s3, target.landing_zone.bucket)
