"""Incremental deliveries (issue 20): the platform packages what changed since the delivery the HDH acknowledged,
the HDH applies it as one commit per table touched, exactly once.

Step-level on the embedded PostgreSQL (warehouse, HDH catalog) and S3 (outbox, landing): the session's `world`
batches consolidated into a warehouse of their own, outbox and landing under prefixes of their own, a fresh HDH
database. The national tables are read back by pyiceberg scans and DuckDB over the data files they list.
"""

from __future__ import annotations

import base64
import threading
import uuid

import duckdb
import psycopg
import pytest
from psycopg import sql

from eds_network.core import omop
from eds_network.core.config import load_network
from eds_network.core.crypto import Key
from eds_network.core.storage import S3Endpoint
from eds_network.national import ack, receipt, tables, transfer
from eds_network.platform import consolidate, warehouse
from eds_network.platform import package as packaging

pytestmark = [pytest.mark.integration]

NET = load_network().resized("hosp_c", 30).resized("hosp_b", 30)
PLATFORM = NET.platform(NET.base("hosp_c").platform)


def _ep(stack) -> S3Endpoint:
    return S3Endpoint(stack.s3_endpoint, *stack.s3_login)


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


class Net:
    """One platform warehouse, its outbox, the landing zone and the HDH tables, all of this test's own."""

    def __init__(self, stack, world, hdh_dsn: str):
        self.stack = stack
        self.wh = world["empty"]()
        ep = _ep(stack)
        c = consolidate.consolidate(
            PLATFORM, PLATFORM.intake.bucket, world["prefix"], consolidate.PlatformResources(self.wh, ep, ep)
        )
        assert not c.rejected and len(c.applied) == 2
        tag = uuid.uuid4().hex[:8]
        self.platform = PLATFORM.model_copy(
            update={"outbox": PLATFORM.outbox.model_copy(update={"prefix": f"t-inc-{tag}/"})}
        )
        zone = NET.national.landing_zone.model_copy(update={"prefix": f"t-inc-{tag}/"})
        self.target = NET.national.model_copy(update={"landing_zone": zone})
        self.res = tables.NationalTables(hdh_dsn, ep)
        self.pres = consolidate.PlatformResources(self.wh, ep, ep)

    def night(self, **kw) -> tuple[packaging.Package, transfer.Delivery, tables.Applied]:
        """Package → transfer → receipt → apply → acknowledgement, as the platform and national DAGs do."""
        pkg = packaging.package(self.platform, self.pres, {}, **kw)
        d = transfer.transfer_platform(self.platform, self.target, _national(self.stack))
        if d.status == "delivered":
            assert receipt.receipt(self.target, self.res.landing, d.delivery_id)["status"] == "accepted"
        applied = tables.apply_delivery(self.target, self.res, d.delivery_id)
        ack.acknowledge(self.platform, _ep(self.stack), self.res.dsn, applied.ref())
        return pkg, d, applied

    def warehouse_counts(self) -> dict[str, int]:
        out = {}
        with psycopg.connect(self.wh) as conn:
            for t in warehouse.platform_tables(self.platform):
                n = conn.execute(sql.SQL("SELECT count(*) FROM omop.{}").format(sql.Identifier(t))).fetchone()[0]
                if n:
                    out[t] = n
        return out

    def national_counts(self, tmp_path) -> dict[str, int]:
        """Rows of this platform per national table, read by DuckDB from the files the current snapshots list."""
        catalog = self.res.catalog(self.target)
        s3 = self.res.landing.client()
        out = {}
        for name in tables.table_names(catalog):
            tbl = catalog.load_table((tables.NAMESPACE, name))
            paths = []
            for i, task in enumerate(tbl.scan().plan_files()):
                bucket, key = task.file.file_path.removeprefix("s3://").split("/", 1)
                local = tmp_path / f"{name}-{i}-{uuid.uuid4().hex[:6]}.parquet"
                s3.download_file(bucket, key, str(local))
                paths.append(str(local))
            if not paths:
                continue
            rows = (
                duckdb.connect()
                .execute("SELECT _platform, count(*) FROM read_parquet(?) GROUP BY 1", [paths])
                .fetchall()
            )
            n = dict(rows).get(self.platform.id, 0)
            assert tbl.scan(row_filter=f"_platform == '{self.platform.id}'").to_arrow().num_rows == n  # pyiceberg
            if n:
                out[name] = n
        return out

    def delivery_summaries(self, table: str, delivery_id: str) -> list[dict]:
        tbl = self.res.catalog(self.target).load_table((tables.NAMESPACE, table))
        return [
            {"operation": s.summary.operation.value, **s.summary.additional_properties}
            for s in tbl.metadata.snapshots
            if s.summary.additional_properties.get(tables.PROP_DELIVERY) == delivery_id
        ]


@pytest.fixture
def net(stack, world, fresh_db):
    return Net(stack, world, fresh_db)


def _ids(dsn: str, table: str, n: int) -> list[int]:
    key = sql.Identifier(warehouse.conflict_key(table))
    with psycopg.connect(dsn) as conn:
        return [
            r[0]
            for r in conn.execute(
                sql.SQL("SELECT {k} FROM omop.{t} ORDER BY {k} LIMIT %s").format(k=key, t=sql.Identifier(table)), (n,)
            )
        ]


def test_second_night_with_ten_changes_and_one_deletion_commits_eleven_rows_not_a_copy(net, tmp_path):
    pkg1, d1, a1 = net.night()
    assert pkg1.kind == "full" and a1.status == "applied"
    before = net.warehouse_counts()
    assert before and net.national_counts(tmp_path) == before  # exactly the platform's rows, per table

    # A night whose only changes: 10 measurements corrected, 1 condition deleted.
    changed = _ids(net.wh, "measurement", 10)
    gone = _ids(net.wh, "condition_occurrence", 1)
    with psycopg.connect(net.wh) as conn:
        conn.execute(
            "UPDATE omop.measurement SET value_as_number = coalesce(value_as_number, 0) + 1"
            " WHERE measurement_id = ANY(%s)",
            (changed,),
        )
        conn.execute("DELETE FROM omop.condition_occurrence WHERE condition_occurrence_id = ANY(%s)", (gone,))
    pkg2, d2, a2 = net.night()
    assert pkg2.kind == "incremental"
    assert {t: r for t, r in pkg2.ref()["rows"].items() if r} == {"measurement": 10}
    assert pkg2.ref()["deleted"] == {"condition_occurrence": 1}
    assert {t: r for t, r in d2.rows.items() if r} == {"measurement": 10, "condition_occurrence.deleted": 1}
    assert a2.status == "applied" and a2.rows_removed == 1
    touched = {t for t, v in a2.tables.items() if v["status"] == "applied"}
    assert touched == {"measurement", "condition_occurrence"}  # one commit per table touched, none elsewhere
    m = net.delivery_summaries("measurement", d2.delivery_id)
    appended = sum(int(s.get("added-records", 0)) for s in m if s["operation"] == "append")
    assert appended == 10
    assert (
        sum(int(s.get("deleted-records", 0)) for s in m)
        - sum(int(s.get("added-records", 0)) for s in m if s["operation"] != "append")
        == 10
    )  # the 10 old versions out (copy-on-write: the rest of their data files rewritten as is)
    c = net.delivery_summaries("condition_occurrence", d2.delivery_id)
    assert sum(int(s.get("deleted-records", 0)) for s in c) - sum(int(s.get("added-records", 0)) for s in c) == 1
    after = net.warehouse_counts()
    assert after["condition_occurrence"] == before["condition_occurrence"] - 1
    assert net.national_counts(tmp_path) == after
    # the national rows hold the corrected values: same content hash as a full delivery would give
    rec = net.night(reconcile=True)[2]
    assert rec.status == "reconciled" and not rec.repaired

    # A retried delivery and a replayed older one: no-ops, same snapshots.
    snaps = {t: len(net.res.catalog(net.target).load_table(("omop", t)).metadata.snapshots) for t in touched}
    assert tables.apply_delivery(net.target, net.res, d2.delivery_id).status == "already_applied"
    assert tables.apply_delivery(net.target, net.res, d1.delivery_id).status == "already_applied"
    assert {t: len(net.res.catalog(net.target).load_table(("omop", t)).metadata.snapshots) for t in touched} == snaps
    assert net.national_counts(tmp_path) == after

    # Nothing changed: the next night delivers nothing new and commits nothing.
    pkg3, d3, a3 = net.night()
    assert pkg3.kind == "incremental" and sum(pkg3.ref()["rows"].values()) == 0
    assert {v["status"] for v in a3.tables.values()} <= {"unchanged", "already_applied"}


def test_racing_incremental_applies_commit_once_and_a_gap_asks_for_a_full_delivery(net, tmp_path):
    net.night()
    changed = _ids(net.wh, "measurement", 5)
    with psycopg.connect(net.wh) as conn:
        conn.execute(
            "UPDATE omop.measurement SET value_as_number = coalesce(value_as_number, 0) + 7"
            " WHERE measurement_id = ANY(%s)",
            (changed,),
        )
    packaging.package(net.platform, net.pres, {})
    d = transfer.transfer_platform(net.platform, net.target, _national(net.stack))
    results, errors = [], []

    def run():
        try:
            results.append(tables.apply_delivery(net.target, net.res, d.delivery_id))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    m = net.delivery_summaries("measurement", d.delivery_id)
    assert sum(int(s.get("added-records", 0)) for s in m if s["operation"] == "append") == 5  # one clean apply
    assert net.national_counts(tmp_path) == net.warehouse_counts()
    ack.acknowledge(net.platform, _ep(net.stack), net.res.dsn, results[0].ref())

    # An incremental delivery that starts beyond what the HDH holds (a lost delivery) is refused, and the
    # acknowledgement asks for a full one, which the next night sends.
    with psycopg.connect(net.wh) as conn:
        conn.execute("SELECT nextval('eds_platform.change_seq') FROM generate_series(1, 5)")
        conn.execute(
            "UPDATE omop.measurement SET value_as_number = value_as_number + 1 WHERE measurement_id = %s", (changed[0],)
        )
    s3 = _ep(net.stack).client()
    key = f"{net.platform.outbox.prefix}_ack.json"
    doc = packaging.read_ack(s3, net.platform, None)
    lost = {**doc, "upto_seq": doc["upto_seq"] + 3}
    from eds_network.core.storage import put_json

    put_json(s3, net.platform.outbox.bucket, key, lost)
    _, _, refused = net.night()
    assert refused.status == "gap"
    assert packaging.read_ack(s3, net.platform, None)["full_requested"] is True
    pkg, _, applied = net.night()
    assert pkg.kind == "full" and applied.status == "applied"
    assert net.national_counts(tmp_path) == net.warehouse_counts()
    assert omop.table("measurement").primary_key == "measurement_id"


def test_weekly_reconciliation_detects_a_corrupted_national_table_and_repairs_it(net, tmp_path):
    net.night()
    catalog = net.res.catalog(net.target)
    victim = _ids(net.wh, "measurement", 1)
    # The HDH's copy loses rows behind the platform's back (a bad manual fix): one row of measurement deleted.
    tbl = catalog.load_table(("omop", "measurement"))
    national_ids = tbl.scan(row_filter=f"_platform == '{net.platform.id}'", selected_fields=("measurement_id",))
    one = national_ids.to_arrow().column("measurement_id")[0].as_py()
    tbl.delete(f"measurement_id == {one}")
    assert net.national_counts(tmp_path)["measurement"] == net.warehouse_counts()["measurement"] - 1

    # Not due yet: a week has not passed since the full delivery; back-dated, the next package reconciles.
    with psycopg.connect(net.wh) as conn:
        from eds_network.platform import changes

        assert not changes.reconcile_due(conn, net.platform.reconcile_every_days)
        conn.execute("UPDATE eds_platform.packaged SET packaged_at = packaged_at - interval '8 days'")
        assert changes.reconcile_due(conn, net.platform.reconcile_every_days)
    pkg, _, applied = net.night(full=None, reconcile=None)
    assert pkg.kind == "reconcile"
    assert applied.repaired == ["measurement"]  # the others agree: not written
    assert {t for t, v in applied.tables.items() if v["status"] == "applied"} == {"measurement"}
    assert net.national_counts(tmp_path) == net.warehouse_counts()
    # and the next reconciliation finds nothing to repair
    assert net.night(reconcile=True)[2].status == "reconciled"
    assert victim  # the warehouse kept its rows throughout


def _zigzag(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos


def _avro_payload(data: bytes, zlib) -> bytes:
    """An Avro container file's blocks, decompressed, concatenated (as in test_national_tables)."""
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


def _holding(s3, bucket: str, prefix: str, values: set[int]) -> list[str]:
    """Objects under `prefix` holding one of `values`: Parquet decoded (integer columns), Avro blocks
    decompressed, the rest as bytes (8-byte little/big endian, decimal text)."""
    import io
    import zlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    needles = [n for v in values for n in (v.to_bytes(8, "little", signed=True), str(v).encode())]
    hits = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            found = any(n in body for n in needles)
            if body[:4] == b"PAR1":
                t = pq.read_table(io.BytesIO(body))
                found |= any(pa.types.is_integer(c.type) and values & set(c.to_pylist()) for c in t.itercolumns())
            elif body[:4] == b"Obj\x01":  # Iceberg manifests: deflate blocks (bounds hold little-endian values)
                found |= any(n in _avro_payload(body, zlib) for n in needles)
            if found:
                hits.append(obj["Key"])
    return hits


def test_an_objector_leaves_no_row_in_the_warehouse_nor_national_tables_nor_any_outbox_or_landing_object(net, tmp_path):
    from eds_network.national import maintenance
    from eds_network.national.level2 import national_person_ids
    from eds_network.platform import merge

    net.night()
    # The patient with the most rows, present at every level before (non-vacuous).
    with psycopg.connect(net.wh) as conn:
        l1, token = conn.execute(
            "SELECT p.person_id, p._transport_token FROM omop.person p JOIN omop.measurement m USING (person_id)"
            " GROUP BY 1, 2 ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
    nr = _national(net.stack)
    l2 = national_person_ids(pa_array([token]), pa_array([l1]), nr.national_key, nr.box_private_key)[l1]
    catalog = net.res.catalog(net.target)
    before = {
        t: catalog.load_table(("omop", t)).scan(row_filter=f"person_id == {l2}").to_arrow().num_rows
        for t in tables.table_names(catalog)
        if "person_id" in catalog.load_table(("omop", t)).schema().column_names
    }
    assert before["person"] == 1 and before["measurement"] > 0
    s3 = _ep(net.stack).client()
    lz, ob = net.target.landing_zone, net.platform.outbox
    assert _holding(s3, lz.bucket, lz.prefix, {l2}) and _holding(s3, ob.bucket, ob.prefix, {l1})

    # The objection reaches the warehouse (a person tombstone: every row, whatever site, and the person row).
    with psycopg.connect(net.wh) as conn:
        erased = merge.erase_persons(conn, [l1], warehouse.platform_tables(net.platform))
    assert erased >= before["measurement"] + 1
    pkg, d, applied = net.night()
    assert pkg.kind == "incremental" and applied.persons_removed == 1
    assert applied.rows_removed == sum(before.values())
    # The night's upkeep and the platform's pruning of what the HDH acknowledged.
    maintenance.purge(net.target, net.res, tables.table_names(catalog))
    maintenance.purge_superseded_deliveries(net.target, net.res)
    pruned = packaging.prune_delivered(net.platform, net.pres, intake_prefix=f"none-{uuid.uuid4().hex[:6]}/")
    assert pruned["packages"] >= 1
    with psycopg.connect(net.wh) as conn:  # the next package prunes the acknowledged deletions
        packaging.package(net.platform, net.pres, {})
        assert conn.execute("SELECT count(*) FROM eds_platform.change_log").fetchone()[0] == 0
        for t in warehouse.platform_tables(net.platform):
            if "person_id" in omop.table(t).column_names:
                q = sql.SQL("SELECT count(*) FROM omop.{} WHERE person_id = %s").format(sql.Identifier(t))
                assert conn.execute(q, (l1,)).fetchone()[0] == 0, t
    for t in before:
        assert catalog.load_table(("omop", t)).scan(row_filter=f"person_id == {l2}").to_arrow().num_rows == 0, t
    assert _holding(s3, lz.bucket, lz.prefix, {l2}) == []
    assert _holding(s3, ob.bucket, ob.prefix, {l1}) == []
    assert net.national_counts(tmp_path) == net.warehouse_counts()


def pa_array(values):
    import pyarrow as pa

    return pa.array(values)
