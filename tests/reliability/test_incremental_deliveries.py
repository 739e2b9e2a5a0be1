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
