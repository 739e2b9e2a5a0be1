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
from eds_network.core.storage import S3Endpoint, list_keys, read_json
from eds_network.national import ack, receipt, tables, transfer
from eds_network.platform import consolidate, warehouse
from eds_network.platform import package as packaging
from eds_network.platform.keyversions import TransportRotationInProgress
from tests.integration.test_national_tables import avro_payload

pytestmark = [pytest.mark.integration]

NET = load_network().resized("hosp_c", 30).resized("hosp_b", 30)
PLATFORM = NET.platform(NET.base("hosp_c").platform)


def _ep(stack) -> S3Endpoint:
    return S3Endpoint(stack.s3_endpoint, *stack.s3_login)


def _national(stack, registry_dsn: str | None = None) -> transfer.NationalResources:
    keys = stack.keys(NET)
    box = keys[NET.national.box_key_connection_id]
    nk = keys[NET.national.key_connection_id]
    return transfer.NationalResources(
        outbox=_ep(stack),
        landing=_ep(stack),
        national_key=Key.from_secret("n", nk["password"], nk["extra"]["version"]),
        box_private_key=base64.b64decode(box["password"]),
        box_key_version=box["extra"]["version"],
        registry_dsn=registry_dsn,
    )


class Net:
    """One platform warehouse, its outbox, the landing zone and the HDH tables, all of this test's own."""

    def __init__(self, stack, world, hdh_dsn: str, intake_prefix: str | None = None):
        self.stack = stack
        self.wh = world["empty"]()
        ep = _ep(stack)
        # the session's shared batches (never purged: other tests consolidate them too), or a test's own intake
        self.intake_prefix = intake_prefix or world["prefix"]
        c = self.consolidate()
        assert not c.rejected and len(c.applied) == 2
        tag = uuid.uuid4().hex[:8]
        self.platform = PLATFORM.model_copy(
            update={"outbox": PLATFORM.outbox.model_copy(update={"prefix": f"t-inc-{tag}/"})}
        )
        zone = NET.national.landing_zone.model_copy(update={"prefix": f"t-inc-{tag}/"})
        self.target = NET.national.model_copy(update={"landing_zone": zone})
        self.res = tables.NationalTables(hdh_dsn, ep)
        self.pres = consolidate.PlatformResources(self.wh, ep, ep)

    def consolidate(self) -> consolidate.Consolidation:
        ep = _ep(self.stack)
        private = self.intake_prefix.startswith("t-erase-")
        return consolidate.consolidate(
            PLATFORM,
            PLATFORM.intake.bucket,
            self.intake_prefix,
            consolidate.PlatformResources(self.wh, ep, ep),
            purge_tombstones=private,
        )

    def night(self, **kw) -> tuple[packaging.Package, transfer.Delivery, tables.Applied]:
        """Package → transfer → receipt → apply → acknowledgement, as the platform and national DAGs do."""
        pkg = packaging.package(self.platform, self.pres, {}, **kw)
        d = transfer.transfer_platform(self.platform, self.target, _national(self.stack, self.res.dsn))
        if d.status == "delivered":
            assert receipt.receipt(self.target, self.res.landing, d.delivery_id)["status"] == "accepted"
        applied = tables.apply_delivery(self.target, self.res, d.delivery_id)
        ack.acknowledge(self.platform, _ep(self.stack), self.res.dsn, applied.ref())
        if applied.status == "applied":
            ack.purge_applied_deletes(self.platform, _ep(self.stack), d.source_delivery)
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
    rec_pkg, _, rec = net.night(reconcile=True)
    assert rec.status == "reconciled" and not rec.repaired

    # A retried delivery and a replayed older one: no-ops, same snapshots.
    snaps = {t: len(net.res.catalog(net.target).load_table(("omop", t)).metadata.snapshots) for t in touched}
    assert tables.apply_delivery(net.target, net.res, d2.delivery_id).status == "already_applied"
    assert tables.apply_delivery(net.target, net.res, d1.delivery_id).status == "already_applied"
    assert {t: len(net.res.catalog(net.target).load_table(("omop", t)).metadata.snapshots) for t in touched} == snaps
    assert net.national_counts(tmp_path) == after

    # Nothing changed: the next night packages nothing new (the acknowledged delivery stays the latest) and
    # commits nothing.
    s3 = net.pres.outbox.client()
    ob = net.platform.outbox
    outbox_before = sorted(list_keys(s3, ob.bucket, ob.prefix))
    pkg3, d3, a3 = net.night()
    assert pkg3.kind == "unchanged" and pkg3.files == {} and pkg3.delivery_id == rec_pkg.delivery_id
    assert d3.source_delivery == rec_pkg.delivery_id and d3.status == "already_delivered"
    assert a3.status == "already_applied"
    assert sorted(list_keys(s3, ob.bucket, ob.prefix)) == outbox_before
    assert {t: len(net.res.catalog(net.target).load_table(("omop", t)).metadata.snapshots) for t in touched} == snaps


def _local_night(stack, b: str, source_dsn: str, intake_prefix: str, start, tables_run=None):
    """One hospital's real local step for the day from `start` (every table, or `tables_run`): extract + publish
    into `intake_prefix`. Returns the base's resources and its published batch."""
    import datetime as dt

    from eds_network.local import extract, publish

    base, end = NET.base(b), start + dt.timedelta(days=1)
    res = stack.local_resources(NET, b, source_dsn=source_dsn, intake_prefix=intake_prefix)
    refs = [extract.extract_table(base, t, start, end, res).ref() for t in (tables_run or base.tables)]
    return res, publish.publish_batch(base, start, end, refs, res)


def test_rerunning_every_sites_night_changes_no_row_and_delivers_nothing(stack, world, fresh_db, tmp_path):
    """Both hospitals rerun the same interval (their person files differ: the transport tokens are sealed anew;
    they share patients, so rows keyed by the patient — person, death — come from either site): the warehouse's
    change sequence does not move, and the next package is the acknowledged one, unchanged."""
    import datetime as dt

    from eds_network.platform import changes

    day1 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    iprefix = f"t-rerun-{uuid.uuid4().hex[:8]}/"
    src = {b: world["clone"](b) for b in ("hosp_c", "hosp_b")}
    # Two patients treated at both hospitals died: each site records the death (a row keyed by the patient).
    nirs = {}
    for b, dsn in src.items():
        with psycopg.connect(dsn) as conn:
            nirs[b] = dict(conn.execute("SELECT nir, person_id FROM identity.patient WHERE nir IS NOT NULL"))
    both = sorted(set(nirs["hosp_c"]) & set(nirs["hosp_b"]))[:2]
    assert len(both) == 2, "the small world's hospitals share patients"
    for b, dsn in src.items():
        with psycopg.connect(dsn) as conn:
            for nir in both:
                pid = nirs[b][nir]
                conn.execute("DELETE FROM omop.death WHERE person_id = %s", (pid,))
                conn.execute(
                    "INSERT INTO omop.death (person_id, death_date, death_type_concept_id, _updated_at)"
                    " VALUES (%s, DATE '2025-02-28', 32817, %s)",
                    (pid, day1 + dt.timedelta(hours=2)),
                )

    def local_night(b: str):
        return _local_night(stack, b, src[b], iprefix, day1)[1]

    first = {b: local_night(b) for b in ("hosp_c", "hosp_b")}
    net = Net(stack, world, fresh_db, intake_prefix=iprefix)
    pkg1, _, a1 = net.night()
    assert pkg1.kind == "full" and a1.status == "applied"
    with psycopg.connect(net.wh) as conn:
        mark = changes.high_water(conn, warehouse.platform_tables(net.platform))
        shared = conn.execute(
            "SELECT count(*) FROM (SELECT person_id FROM eds_platform.person_site GROUP BY 1 HAVING count(*) > 1) s"
        ).fetchone()[0]
        deaths = conn.execute(
            "SELECT count(*) FROM omop.death d JOIN eds_platform.person_site s USING (person_id)"
            " GROUP BY d.person_id HAVING count(*) > 1"
        ).fetchall()
    assert shared > 0 and len(deaths) == 2  # rows of patients of both sites: either site could take them over

    # The rerun, in the other order: new manifests (re-sealed tokens), the same rows.
    again = {b: local_night(b) for b in ("hosp_b", "hosp_c")}
    assert {b: p.batch_id for b, p in again.items()} == {b: p.batch_id for b, p in first.items()}
    c = net.consolidate()
    assert not c.rejected and len(c.applied) == 2  # two new versions of the same batches, merged again
    with psycopg.connect(net.wh) as conn:
        assert changes.high_water(conn, warehouse.platform_tables(net.platform)) == mark
    pkg2, d2, a2 = net.night()
    assert pkg2.kind == "unchanged" and pkg2.delivery_id == pkg1.delivery_id
    assert d2.status == "already_delivered" and a2.status == "already_applied"


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


def _holds(body: bytes, values: set[int], texts: set[str]) -> bool:
    """Whether an object's bytes hold one of `values` (8-byte little/big endian, decimal text; Parquet integer
    columns decoded; Iceberg's Avro manifests decompressed, their bounds being little-endian values) or `texts`."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    needles = [
        *(n for v in values for n in (v.to_bytes(8, "little", signed=True), v.to_bytes(8, "big", signed=True))),
        *(str(v).encode() for v in values),
        *(t.encode() for t in texts),
    ]
    if any(n in body for n in needles):
        return True
    if body[:4] == b"PAR1":
        t = pq.read_table(io.BytesIO(body))
        for c in t.itercolumns():
            if pa.types.is_integer(c.type) and values & set(c.to_pylist()):
                return True
            if (pa.types.is_string(c.type) or pa.types.is_large_string(c.type)) and texts & set(c.to_pylist()):
                return True
    elif body[:4] == b"Obj\x01":
        return any(n in avro_payload(body) for n in needles)
    return False


def _holding(s3, bucket: str, prefix: str, values: set[int], texts: set[str] = frozenset()) -> list[str]:
    hits = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if _holds(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read(), values, texts):
                hits.append(obj["Key"])
    return hits


def _every_object_holding(s3, since, prefixes: list[tuple[str, str]], values: set[int], texts: set[str]):
    """Scan every object of every bucket of the endpoint that this test wrote (modified since it began, or under
    one of its prefixes); objects older than the test belong to other tests. Returns (objects scanned, hits)."""
    scanned, hits = 0, []
    for b in s3.list_buckets()["Buckets"]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
            for obj in page.get("Contents", []):
                mine = any(b["Name"] == pb and obj["Key"].startswith(pp) for pb, pp in prefixes)
                if not mine and obj["LastModified"] < since:
                    continue
                scanned += 1
                if _holds(s3.get_object(Bucket=b["Name"], Key=obj["Key"])["Body"].read(), values, texts):
                    hits.append(f"{b['Name']}/{obj['Key']}")
    return scanned, hits


def _rows_holding(dsn: str, values: set[int], texts: set[str], blobs: set[bytes]) -> dict[str, int]:
    """Every base table of every schema of the database (but the system's): rows where an integer column equals
    one of `values`, a text column one of `texts` (or a json column mentions one), a bytea column one of `blobs`."""
    out = {}
    with psycopg.connect(dsn) as conn:
        cols = conn.execute(
            "SELECT c.table_schema, c.table_name, c.column_name, c.data_type FROM information_schema.columns c "
            "JOIN information_schema.tables t USING (table_schema, table_name) WHERE t.table_type = 'BASE TABLE' "
            "AND c.table_schema NOT IN ('pg_catalog', 'information_schema') AND c.table_schema NOT LIKE 'pg_%'"
        ).fetchall()
        by_table: dict[tuple[str, str], list[sql.Composable]] = {}
        for schema, table, col, typ in cols:
            c = sql.Identifier(col)
            if typ in ("bigint", "integer", "smallint", "numeric") and values:
                cond = sql.SQL("{} = ANY({})").format(c, sql.Literal(sorted(values)))
            elif typ in ("text", "character varying") and texts:
                cond = sql.SQL("{} = ANY({})").format(c, sql.Literal(sorted(texts)))
            elif typ in ("json", "jsonb"):
                needles = [str(v) for v in values] + sorted(texts)
                cond = sql.SQL("{}::text LIKE ANY({})").format(c, sql.Literal([f"%{n}%" for n in needles]))
            elif typ == "bytea" and blobs:
                cond = sql.SQL("{} = ANY({})").format(c, sql.Literal(sorted(blobs)))
            else:
                continue
            by_table.setdefault((schema, table), []).append(cond)
        for (schema, table), conds in by_table.items():
            q = sql.SQL("SELECT count(*) FROM {}.{} WHERE {}").format(
                sql.Identifier(schema), sql.Identifier(table), sql.SQL(" OR ").join(conds)
            )
            n = conn.execute(q).fetchone()[0]
            if n:
                out[f"{schema}.{table}"] = n
    return out


def _level1(stack, base_id: str, res, dsn: str, pids: list[int]) -> dict[int, int]:
    """Local person id -> level-1 id, from the identities with the platform's key (as the key holder computes it)."""
    import pyarrow as pa

    from eds_network.dev.level1 import KeyedPersonMap

    platform = NET.platform_of(base_id)
    secret = stack.keys(NET)[platform.key_connection_id]
    key = Key.from_secret(platform.key_connection_id, secret["password"], secret["extra"]["version"])
    base = NET.base(base_id)
    pm = KeyedPersonMap(
        key, res.transport_key, res.national_public_key, site=base.finess or base.id, platform_id=platform.id
    )
    with psycopg.connect(dsn) as conn:
        pm.add(
            conn.execute(
                "SELECT person_id, nir, birth_date, sex, ipp FROM identity.patient WHERE person_id = ANY(%s)", (pids,)
            )
        )
    return dict(zip(pids, pm.map_ids(pa.array(pids, pa.int64())).to_pylist(), strict=True))


def test_objectors_back_dated_or_missed_by_a_failed_person_task_leave_no_row_in_any_table_nor_any_object(
    stack, world, fresh_db, tmp_path
):
    """Issue 20's acceptance: three objectors of hosp_c (one back-dated into a night already run, one recorded on
    a night whose person task failed, one recorded the night of the next successful run); after that night not one
    row of them in any table of the warehouse or HDH databases, nor in any object the network wrote (intake,
    outbox, landing, Iceberg data and metadata files), scanned object by object; all of them were there before."""
    import datetime as dt
    import time

    from eds_network.national import maintenance
    from eds_network.national.level2 import national_person_ids

    time.sleep(1.1)  # objects of earlier tests are older than `since`
    since = dt.datetime.now(dt.UTC)
    day1 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    day = dt.timedelta(days=1)
    iprefix = f"t-erase-{uuid.uuid4().hex[:8]}/"
    src = {b: world["clone"](b) for b in ("hosp_c", "hosp_b")}

    def local_night(b: str, start, tables_run=None):
        return _local_night(stack, b, src[b], iprefix, start, tables_run)

    res_c, _ = local_night("hosp_c", day1)
    local_night("hosp_b", day1)
    net = Net(stack, world, fresh_db, intake_prefix=iprefix)
    net.night()

    # Three patients of hosp_c with measurements, not objecting yet.
    with psycopg.connect(src["hosp_c"]) as conn:
        pids = [
            r[0]
            for r in conn.execute(
                "SELECT person_id FROM omop.measurement WHERE person_id NOT IN "
                "(SELECT person_id FROM identity.opposition) GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 3"
            )
        ]
    l1s = _level1(stack, "hosp_c", res_c, src["hosp_c"], pids)
    l1 = set(l1s.values())
    with psycopg.connect(net.wh) as conn:
        found = conn.execute(
            "SELECT p.person_id, p._transport_token FROM omop.person p WHERE p.person_id = ANY(%s)", (sorted(l1),)
        ).fetchall()
        blobs1 = {
            bytes(r[0])
            for r in conn.execute(
                "SELECT digest FROM eds_platform.person_digest WHERE person_id = ANY(%s)", (sorted(l1),)
            )
        }
    assert len(found) == 3, "the three patients are in the warehouse before they object"
    tokens = {t for _, t in found}
    nr = _national(stack)
    l2 = set(
        national_person_ids(
            pa_array([t for _, t in found]), pa_array([p for p, _ in found]), nr.national_key, nr.box_private_key
        ).values()
    )
    values = l1 | l2
    lz, ob = net.target.landing_zone, net.platform.outbox
    prefixes = [(PLATFORM.intake.bucket, iprefix), (ob.bucket, ob.prefix), (lz.bucket, lz.prefix)]
    s3 = _ep(stack).client()
    # non-vacuous: their rows are in both databases and in objects of every kind before
    assert _rows_holding(net.wh, values, tokens, blobs1).get("omop.measurement", 0) > 0
    assert _rows_holding(net.res.dsn, values, tokens, set()), "the HDH database holds them before"
    catalog = net.res.catalog(net.target)
    assert (
        catalog.load_table(("omop", "measurement"))
        .scan(row_filter=f"person_id in ({','.join(map(str, l2))})")
        .to_arrow()
        .num_rows
    )
    _, before = _every_object_holding(s3, since, prefixes, values, tokens)
    assert any(h.startswith(f"{PLATFORM.intake.bucket}/{iprefix}") for h in before)
    assert any(h.startswith(f"{ob.bucket}/{ob.prefix}") for h in before)
    assert any(h.startswith(f"{lz.bucket}/{lz.prefix}iceberg/") and "/data/" in h for h in before)

    backdated, failed_night, today = pids
    with psycopg.connect(src["hosp_c"], autocommit=True) as conn:
        for pid, at in (
            (backdated, day1 + dt.timedelta(hours=3)),  # typed in after night 1 with its date of receipt
            (failed_night, day1 + day + dt.timedelta(hours=9)),  # night 2's person task fails
        ):
            conn.execute(
                "INSERT INTO identity.opposition (person_id, recorded_at, channel) VALUES (%s, %s, 'courrier')",
                (pid, at),
            )
    # Night 2: hosp_c's person task fails (every other table runs): no person tombstone goes out.
    local_night("hosp_c", day1 + day, [t for t in NET.base("hosp_c").tables if t != "person"])
    assert not net.consolidate().rejected
    net.night()
    with psycopg.connect(src["hosp_c"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO identity.opposition (person_id, recorded_at, channel) VALUES (%s, %s, 'courrier')",
            (today, day1 + 2 * day + dt.timedelta(hours=9)),
        )
    # Night 3, successful: the whole registry goes out; the platform erases; the HDH applies and purges.
    local_night("hosp_c", day1 + 2 * day)
    c = net.consolidate()
    assert not c.rejected
    assert consolidate.erasure_counts(c.rows)["rows_erased"] > 0
    pkg, d, applied = net.night()
    assert pkg.kind == "incremental" and applied.persons_removed == 3
    maintenance.purge(net.target, net.res, tables.table_names(catalog))
    maintenance.sweep(net.target, net.res)
    maintenance.purge_superseded_deliveries(net.target, net.res)
    assert maintenance.forget_digests(net.target, net.res) == 3
    # The platform's first task after the HDH's acknowledgement (the next package): the change log's acknowledged
    # deletions, then the outbox packages and intake batches the HDH applied and acknowledged, go.
    packaging.package(net.platform, net.pres, {})
    pruned = packaging.prune_delivered(net.platform, net.pres, intake_prefix=iprefix)
    assert pruned["packages"] >= 1 and pruned["batches"] >= 2

    assert _rows_holding(net.wh, values, tokens, blobs1) == {}
    assert _rows_holding(net.res.dsn, values, tokens, set()) == {}
    scanned, after = _every_object_holding(s3, since, prefixes, values, tokens)
    assert scanned > 10 and after == [], after
    for t in tables.table_names(catalog):
        tbl = catalog.load_table(("omop", t))
        if "person_id" in tbl.schema().column_names:
            flt = f"person_id in ({','.join(map(str, l2))})"
            assert tbl.scan(row_filter=flt).to_arrow().num_rows == 0, t
    assert net.national_counts(tmp_path) == net.warehouse_counts()


def pa_array(values):
    import pyarrow as pa

    return pa.array(values)


def test_rotating_the_transport_key_keeps_every_count_and_changes_every_id_down_to_the_national_tables(
    stack, world, fresh_db, tmp_path
):
    """The network's transport key rotated (new secret, version v1 -> v2) between two nights of both hospitals:
    each re-extracts in full, the platform replaces its rows, the HDH applies the delivery. Counts stay the same at
    the platform and in the national tables; every warehouse row id and every national id changes."""
    import dataclasses
    import datetime as dt
    import secrets

    from eds_network.local import extract, publish

    day1 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    iprefix = f"t-transport-{uuid.uuid4().hex[:8]}/"
    src = {b: world["clone"](b) for b in ("hosp_c", "hosp_b")}
    old = stack.local_resources(NET, "hosp_c", source_dsn=src["hosp_c"], intake_prefix=iprefix).transport_key
    assert old.version == "v1"
    new = Key(secrets.token_bytes(32), "v2", old.name)

    def local_night(b: str, start, key: Key | None = None):
        base = NET.base(b)
        res = stack.local_resources(NET, b, source_dsn=src[b], intake_prefix=iprefix)
        if key is not None:
            res = dataclasses.replace(res, transport_key=key)
        refs = [extract.extract_table(base, t, start, start + dt.timedelta(days=1), res).ref() for t in base.tables]
        return publish.publish_batch(base, start, start + dt.timedelta(days=1), refs, res)

    for b in src:
        local_night(b, day1)
    net = Net(stack, world, fresh_db, intake_prefix=iprefix)
    _, _, a1 = net.night()
    assert a1.status == "applied"
    wh1, nat1 = net.warehouse_counts(), net.national_counts(tmp_path)
    catalog = net.res.catalog(net.target)

    def national_ids(table: str) -> set[int]:
        key = "person_id" if warehouse.conflict_key(table) == "person_id" else warehouse.conflict_key(table)
        rows = tables.platform_rows(catalog, table, net.platform.id)
        return set(rows.column(key).to_pylist())

    def warehouse_ids(table: str) -> set[int]:
        return set(_ids(net.wh, table, 10**9))

    touched = ["person", "visit_occurrence", "condition_occurrence", "measurement"]
    before = {t: (warehouse_ids(t), national_ids(t)) for t in touched}

    # hosp_c re-keys first (a full extraction under v2): the platform holds its package while hosp_b is on v1
    pub = local_night("hosp_c", day1 + dt.timedelta(days=1), new)
    manifest = read_json(_ep(stack).client(), NET.platform("idf").intake.bucket, pub.manifest_key)
    assert all(e["full"] for e in manifest["tables"].values()) and manifest["key_versions"]["transport"] == "v2"
    assert not net.consolidate().rejected
    with pytest.raises(TransportRotationInProgress, match=r"v1 -> v2.*hosp_b"):
        net.night()
    local_night("hosp_b", day1 + dt.timedelta(days=1), new)
    assert not net.consolidate().rejected
    pkg2, _, a2 = net.night()
    assert pkg2.kind == "full" and a2.status == "applied", (pkg2.kind, a2)  # the HDH replaces the partition
    assert net.warehouse_counts() == wh1
    assert net.national_counts(tmp_path) == nat1
    for t in touched:
        (wh_before, nat_before), wh_after, nat_after = before[t], warehouse_ids(t), national_ids(t)
        assert len(wh_after) == len(wh_before) and len(nat_after) == len(nat_before), t
        if t != "person":  # level-1 person ids come from the key holder's OPRF: the transport key does not key them
            assert not wh_before & wh_after, t
        assert not nat_before & nat_after, t
    pkg3, _, _ = net.night()  # the HDH acknowledged the full package: the next night is incremental again
    assert pkg3.kind == "unchanged"
