"""The local level, step by step (no Airflow): incremental extraction, opposition, publish, row accounting.

Each test seeds a small generated hospital (hosp_c resized to 40 patients) into a database of its own, runs
`extract.extract_table` + `publish.publish_batch` under an intake prefix of its own, reads back what arrived
(manifest + Parquet files in the intake bucket) and, for downstream effects, runs `consolidate.consolidate`
into a fresh warehouse. The night test covers the same steps through Airflow.
"""

from __future__ import annotations

import datetime as dt
import io
import uuid

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from eds_network.core import omop
from eds_network.core.config import LocalBase, Network, load_network
from eds_network.core.crypto import Key
from eds_network.core.errors import SourceError
from eds_network.core.exchange import TOKEN_COLUMN
from eds_network.core.storage import S3Endpoint, list_keys, read_json
from eds_network.dev import seed
from eds_network.local import extract, publish
from eds_network.platform import consolidate, warehouse

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("synthea_zip")]

UTC = dt.UTC
DAY1 = dt.datetime(2025, 3, 1, tzinfo=UTC)
DAY2 = DAY1 + dt.timedelta(days=1)
DAY3 = DAY2 + dt.timedelta(days=1)
DAY4 = DAY3 + dt.timedelta(days=1)
BASE_ID = "hosp_c"
PATIENTS = 40


# --------------------------------------------------------------------------------------------------
# Wiring


def _network(patients: int = PATIENTS) -> Network:
    """The demo network, with hosp_c (generated) resized."""
    return load_network().resized(BASE_ID, patients)


@pytest.fixture(scope="module")
def net() -> Network:
    return _network()


@pytest.fixture
def base(net) -> LocalBase:
    return net.base(BASE_ID)


def _endpoint(stack) -> S3Endpoint:
    return S3Endpoint(stack.s3_endpoint, *stack.s3_login)


def _resources(stack, net: Network, dsn: str, prefix: str) -> extract.LocalResources:
    return stack.local_resources(net, BASE_ID, source_dsn=dsn, intake_prefix=prefix)


def _prefix() -> str:
    return f"test-local-{uuid.uuid4().hex[:10]}/"


@pytest.fixture
def source(new_db, net) -> str:
    """hosp_c seeded with every row stamped during day 1."""
    dsn = new_db()
    seed.seed_base(dsn, net, BASE_ID, (DAY1, DAY2))
    return dsn


def _run(base: LocalBase, start, end, res, tables=None) -> tuple[dict[str, dict], publish.Published]:
    refs = {t: extract.extract_table(base, t, start, end, res).ref() for t in tables or base.tables}
    return refs, publish.publish_batch(base, start, end, list(refs.values()), res)


def _consolidate(stack, net: Network, wh_dsn: str, prefix: str) -> consolidate.Consolidation:
    p = net.platform(net.base(BASE_ID).platform)
    ep = _endpoint(stack)
    c = consolidate.consolidate(p, p.intake.bucket, prefix, consolidate.PlatformResources(wh_dsn, ep, ep))
    assert not c.rejected, c.rejected
    return c


def _manifest(res: extract.LocalResources, published: publish.Published) -> dict:
    return read_json(res.intake.client(), res.intake_bucket, published.manifest_key)


def _parquet(res: extract.LocalResources, key: str) -> pa.Table:
    body = res.intake.client().get_object(Bucket=res.intake_bucket, Key=key)["Body"].read()
    return pq.read_table(io.BytesIO(body))


def _arrived(res: extract.LocalResources, published: publish.Published) -> tuple[dict, dict]:
    """What a consumer of the intake sees: per table, the data file and the tombstones (from the manifest)."""
    manifest = _manifest(res, published)
    data, tombs = {}, {}
    for t, entry in manifest["tables"].items():
        data[t] = _parquet(res, entry["key"])
        if entry["tombstones_key"]:
            tombs[t] = _parquet(res, entry["tombstones_key"])
    return data, tombs


def _ns(base: LocalBase, local_ids) -> set[int]:
    """Row ids as published: the site's keyed permutation of the local ids (core.rowids)."""
    from eds_network.core import rowids
    from eds_network.dev.stack import Stack

    net = load_network()
    t = Stack.default().keys(net)[net.transport_key_connection_id]
    transport = Key.from_secret(net.transport_key_connection_id, t["password"], t["extra"]["version"])
    key = rowids.level_key(transport.secret, f"level1|{base.finess or base.id}")
    return set(rowids.rekey(pa.array(sorted(int(i) for i in local_ids), pa.int64()), key, "level1-row").to_pylist())


def _key_ids(table: pa.Table, name: str) -> set[int]:
    col = warehouse.conflict_key(name)
    return set(table.column(col).to_pylist())


def _person_map(res: extract.LocalResources, base: LocalBase, dsn: str, person_ids) -> dict[int, int]:
    """Local person id -> level-1 id, computed from the identities with the platform's key (the PRF the key
    holder evaluates obliviously), also for patients never evaluated (objectors)."""
    from eds_network.dev.level1 import KeyedPersonMap
    from eds_network.dev.stack import Stack

    net = load_network()
    platform = net.platform_of(base.id)
    secret = Stack.default().keys(net)[platform.key_connection_id]
    key = Key.from_secret(platform.key_connection_id, secret["password"], secret["extra"]["version"])
    assert key.version == res.level1_version
    pm = KeyedPersonMap(
        key, res.transport_key, res.national_public_key, site=base.finess or base.id, platform_id=platform.id
    )
    with psycopg.connect(dsn) as conn:
        pm.add(
            conn.execute(
                "SELECT person_id, nir, birth_date, sex, ipp FROM identity.patient WHERE person_id = ANY(%s)",
                (list(person_ids),),
            )
        )
    ids = list(person_ids)
    return dict(zip(ids, pm.map_ids(pa.array(ids, pa.int64())).to_pylist(), strict=True))


def _warehouse_state(dsn: str) -> dict[str, tuple[int, str]]:
    """Per OMOP table: row count and a hash of the OMOP columns ordered by primary key."""
    out = {}
    with psycopg.connect(dsn) as conn:
        for t in omop.DEFAULT_TABLES:
            cols = sql.SQL(", ").join(map(sql.Identifier, omop.table(t).column_names))
            out[t] = conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(ROW({cols})::text, E'\\n' ORDER BY {key}), '')) "
                    "FROM omop.{t}"
                ).format(cols=cols, key=sql.Identifier(warehouse.conflict_key(t)), t=sql.Identifier(t))
            ).fetchone()
    return out


def _source_ids(conn, table: str, where: str = "TRUE", params: tuple = ()) -> set[int]:
    key = warehouse.conflict_key(table)
    return {
        r[0]
        for r in conn.execute(
            sql.SQL("SELECT {} FROM omop.{} WHERE ").format(sql.Identifier(key), sql.Identifier(table))
            + sql.SQL(where),
            params,
        )
    }


def _objectors(conn) -> list[int]:
    return [r[0] for r in conn.execute("SELECT person_id FROM identity.opposition ORDER BY person_id")]


def _columns(table: str) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, omop.table(table).column_names))


# --------------------------------------------------------------------------------------------------
# 1. Incremental extraction


def test_three_intervals_extract_exactly_their_changes_and_add_up_to_one_full_extraction(
    stack, net, base, source, new_db
):
    prefix = _prefix()
    res = _resources(stack, net, source, prefix)
    with psycopg.connect(source, autocommit=True) as conn:
        objectors = _objectors(conn)
        assert objectors, "the seed registers objectors"
        nonobj = "person_id <> ALL(%s)"

        # Day 1: the seeded rows, every table, objectors' rows excluded.
        refs1, pub1 = _run(base, DAY1, DAY2, res)
        data1, tombs1 = _arrived(res, pub1)
        assert not tombs1
        for t in base.tables:
            expected = _source_ids(conn, t, nonobj, (objectors,))
            assert expected, t
            key_ids = _key_ids(data1[t], t)
            if warehouse.conflict_key(t) == "person_id":
                assert len(key_ids) == len(expected), t  # level-1 person ids
            else:
                assert key_ids == _ns(base, expected), t
            assert refs1[t]["extracted"] == len(_source_ids(conn, t)), t

        # Day 2: inserts (5 measurement rows, copied from a non-objector), updates (3 measurement rows,
        # 1 person), all stamped explicitly in day 2 (the trigger would use clock_timestamp()).
        pid = conn.execute(
            "SELECT min(person_id) FROM omop.measurement WHERE person_id <> ALL(%s)", (objectors,)
        ).fetchone()[0]
        mcols = [c for c in omop.table("measurement").column_names if c != "measurement_id"]
        src_ids = sorted(_source_ids(conn, "measurement", "person_id = %s", (pid,)))[:5]
        updated = set(sorted(_source_ids(conn, "measurement", nonobj, (objectors,)))[-3:])
        conn.execute(
            sql.SQL(
                "INSERT INTO omop.measurement (measurement_id, {cols}, _updated_at) "
                "SELECT measurement_id + 50000000, {cols}, %s FROM omop.measurement WHERE measurement_id = ANY(%s)"
            ).format(cols=sql.SQL(", ").join(map(sql.Identifier, mcols))),
            (DAY2 + dt.timedelta(hours=2), src_ids),
        )
        inserted = {i + 50_000_000 for i in src_ids}
        conn.execute(
            "UPDATE omop.measurement SET value_as_number = coalesce(value_as_number, 0) + 1, _updated_at = %s "
            "WHERE measurement_id = ANY(%s)",
            (DAY2 + dt.timedelta(hours=5), list(updated)),
        )
        conn.execute(
            "UPDATE omop.person SET race_concept_id = 8527, _updated_at = %s WHERE person_id = %s",
            (DAY2 + dt.timedelta(hours=7), pid),
        )
        refs2, pub2 = _run(base, DAY2, DAY3, res)
        data2, tombs2 = _arrived(res, pub2)
        assert not tombs2
        assert _key_ids(data2["measurement"], "measurement") == _ns(base, inserted | updated)
        assert refs2["measurement"]["extracted"] == 8
        assert data2["person"].num_rows == 1 and data2["person"].column("race_concept_id").to_pylist() == [8527]
        assert data2["person"].column("person_id").to_pylist() == [_person_map(res, base, source, [pid])[pid]]
        for t in set(base.tables) - {"measurement", "person"}:
            assert refs2[t]["extracted"] == 0 and data2[t].num_rows == 0, t

        # Day 3: deletes (2 seeded rows, 1 inserted on day 2) and an update of a row inserted on day 2.
        deleted_seeded = set(sorted(_source_ids(conn, "measurement", nonobj, (objectors,)))[:2])
        deleted_new = {min(inserted)}
        conn.execute(
            "DELETE FROM omop.measurement WHERE measurement_id = ANY(%s)", (list(deleted_seeded | deleted_new),)
        )
        conn.execute("UPDATE omop._deleted SET deleted_at = %s", (DAY3 + dt.timedelta(hours=1),))
        updated3 = {max(inserted)}
        conn.execute(
            "UPDATE omop.measurement SET value_as_number = 42, _updated_at = %s WHERE measurement_id = ANY(%s)",
            (DAY3 + dt.timedelta(hours=3), list(updated3)),
        )
        refs3, pub3 = _run(base, DAY3, DAY4, res)
        data3, tombs3 = _arrived(res, pub3)
        assert _key_ids(data3["measurement"], "measurement") == _ns(base, updated3)
        assert set(tombs3) == {"measurement"}
        assert tombs3["measurement"].column("kind").to_pylist() == ["row"] * 3
        assert set(tombs3["measurement"].column("id").to_pylist()) == _ns(base, deleted_seeded | deleted_new)
        assert refs3["measurement"]["tombstones"] == 3
        for t in set(base.tables) - {"measurement"}:
            assert refs3[t]["extracted"] == 0, t

    # The three batches consolidated == one full extraction of the three days consolidated.
    wh_incr = new_db()
    c = _consolidate(stack, net, wh_incr, prefix)
    assert c.applied == [pub1.batch_id, pub2.batch_id, pub3.batch_id]
    full_prefix = _prefix()
    _run(base, DAY1, DAY4, _resources(stack, net, source, full_prefix))
    wh_full = new_db()
    _consolidate(stack, net, wh_full, full_prefix)
    incr, full = _warehouse_state(wh_incr), _warehouse_state(wh_full)
    assert incr == full
    with psycopg.connect(wh_incr) as w:
        values = dict(
            w.execute(
                "SELECT measurement_id, value_as_number FROM omop.measurement WHERE measurement_id = ANY(%s)",
                (list(_ns(base, inserted | deleted_seeded)),),
            ).fetchall()
        )
    assert set(values) == _ns(base, inserted - deleted_new)  # deletions applied, inserts arrived
    assert values[next(iter(_ns(base, [max(inserted)])))] == 42  # the day-3 update won


# --------------------------------------------------------------------------------------------------
# 2. Rerun


def test_rerunning_an_interval_is_a_no_op_on_the_result(stack, net, base, source, new_db):
    prefix = _prefix()
    res = _resources(stack, net, source, prefix)
    s3 = res.intake.client()
    _, first = _run(base, DAY1, DAY2, res)
    m1 = _manifest(res, first)
    batch_prefix = first.manifest_key.rsplit("/", 1)[0] + "/"
    objects1 = sorted(list_keys(s3, res.intake_bucket, batch_prefix))
    wh = new_db()
    _consolidate(stack, net, wh, prefix)
    state1 = _warehouse_state(wh)
    person1 = _parquet(res, m1["tables"]["person"]["key"])

    _, again = _run(base, DAY1, DAY2, res)
    m2 = _manifest(res, again)
    assert again.manifest_key == first.manifest_key
    counts = ("extracted", "published", "quarantined", "excluded_objection", "tombstones")
    for t in base.tables:
        e1, e2 = m1["tables"][t], m2["tables"][t]
        assert {k: e1[k] for k in counts} == {k: e2[k] for k in counts}, t
        if t == "person":
            # The sealed transport token is a randomised box (see pseudonymise): the person file differs
            # byte-wise on every run, its OMOP content does not.
            person2 = _parquet(res, e2["key"])
            assert person2.drop_columns([TOKEN_COLUMN]).equals(person1.drop_columns([TOKEN_COLUMN]))
        else:
            assert (e1["key"], e1["sha256"], e1["bytes"]) == (e2["key"], e2["sha256"], e2["bytes"]), t
    objects2 = sorted(list_keys(s3, res.intake_bucket, batch_prefix))
    listed = {first.manifest_key} | {e["key"] for e in m2["tables"].values()}
    assert set(objects2) == listed  # the replaced person file is gone: no extra object
    assert len(objects2) == len(objects1)

    _consolidate(stack, net, wh, prefix)
    assert _warehouse_state(wh) == state1


def _without_change_column(conn, table: str) -> None:
    """Make a source table hold neither change column nor deletion log."""
    conn.execute(f"DROP TRIGGER {table}_touch_updated_at ON omop.{table}")
    conn.execute(f"DROP TRIGGER {table}_record_delete ON omop.{table}")
    conn.execute(f"ALTER TABLE omop.{table} DROP COLUMN {omop.CHANGE_COLUMN} CASCADE")


def test_a_table_without_change_column_is_snapshotted_and_diffed_by_content_hash(stack, net, base, source, new_db):
    """observation_period configured with no change column (and the column dropped from the source): each
    interval publishes exactly the rows inserted or changed since the last one and tombstones the deleted."""
    table = "observation_period"
    snap = base.model_copy(update={"change_columns": {table: None}})
    assert snap.change_column(table) is None and snap.change_column("measurement") == omop.CHANGE_COLUMN
    prefix = _prefix()
    res = _resources(stack, net, source, prefix)
    nonobj = "person_id <> ALL(%s)"
    with psycopg.connect(source, autocommit=True) as conn:
        _without_change_column(conn, table)
        objectors = _objectors(conn)
        all_ids = sorted(_source_ids(conn, table, nonobj, (objectors,)))

        refs1, pub1 = _run(snap, DAY1, DAY2, res, tables=["person", table])
        data1, tombs1 = _arrived(res, pub1)
        assert _key_ids(data1[table], table) == _ns(base, all_ids) and not tombs1

        # Day 2: one insert, one update, one delete; nothing else changes.
        new_id = max(all_ids) + 1000
        conn.execute(
            f"INSERT INTO omop.{table} SELECT %s, person_id, observation_period_start_date, "
            f"observation_period_end_date, period_type_concept_id FROM omop.{table} WHERE {table}_id = %s",
            (new_id, all_ids[0]),
        )
        conn.execute(
            f"UPDATE omop.{table} SET observation_period_end_date = observation_period_end_date + 1 "
            f"WHERE {table}_id = %s",
            (all_ids[1],),
        )
        conn.execute(f"DELETE FROM omop.{table} WHERE {table}_id = %s", (all_ids[2],))
        refs2, pub2 = _run(snap, DAY2, DAY3, res, tables=["person", table])
        data2, tombs2 = _arrived(res, pub2)
        assert _key_ids(data2[table], table) == _ns(base, [new_id, all_ids[1]])
        assert refs2[table]["extracted"] == 2
        assert tombs2[table].to_pylist() == [{"kind": "row", "id": next(iter(_ns(base, [all_ids[2]])))}]

        # Rerunning day 2 gives the same batch; day 3 without a change publishes nothing.
        refs2b, pub2b = _run(snap, DAY2, DAY3, res, tables=["person", table])
        assert pub2b.manifest_key == pub2.manifest_key
        assert {k: refs2b[table][k] for k in ("extracted", "tombstones", "sha256")} == {
            k: refs2[table][k] for k in ("extracted", "tombstones", "sha256")
        }
        refs3, _ = _run(snap, DAY3, DAY4, res, tables=["person", table])
        assert refs3[table]["extracted"] == 0 and refs3[table]["tombstones"] == 0

    # The batches consolidated hold the same rows as one full extraction of the table.
    wh_incr = new_db()
    _consolidate(stack, net, wh_incr, prefix)
    full_prefix = _prefix()
    full_src = new_db()
    seed.seed_base(full_src, net, BASE_ID, (DAY1, DAY2))
    with psycopg.connect(source) as a, psycopg.connect(full_src, autocommit=True) as b:
        cols = ", ".join(omop.table(table).column_names)
        rows = a.execute(f"SELECT {cols} FROM omop.{table}").fetchall()
        _without_change_column(b, table)
        b.execute(f"DELETE FROM omop.{table}")
        with b.cursor().copy(f"COPY omop.{table} ({cols}) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
    _run(snap, DAY1, DAY4, _resources(stack, net, full_src, full_prefix), tables=["person", table])
    wh_full = new_db()
    _consolidate(stack, net, wh_full, full_prefix)
    assert _warehouse_state(wh_incr)[table] == _warehouse_state(wh_full)[table]


# --------------------------------------------------------------------------------------------------
# 3. Opposition registry


def test_patient_objecting_after_a_delivery_has_no_row_left_in_the_warehouse(stack, net, base, source, new_db):
    prefix = _prefix()
    res = _resources(stack, net, source, prefix)
    _run(base, DAY1, DAY2, res)
    wh = new_db()
    _consolidate(stack, net, wh, prefix)
    with psycopg.connect(source, autocommit=True) as conn:
        objectors = _objectors(conn)
        # A delivered patient with rows in several tables.
        pid, late = [
            r[0]
            for r in conn.execute(
                "SELECT person_id FROM omop.measurement WHERE person_id <> ALL(%s) "
                "GROUP BY person_id ORDER BY count(*) DESC, person_id LIMIT 2",
                (objectors,),
            )
        ]
        ids = _person_map(res, base, source, [pid, late])
        l1, l1_late = ids[pid], ids[late]

    def rows_of_patient(who: int | None = None) -> dict[str, int]:
        who = l1 if who is None else who
        with psycopg.connect(wh) as w:
            out = {
                t: w.execute(
                    sql.SQL("SELECT count(*) FROM omop.{} WHERE person_id = %s").format(sql.Identifier(t)), (who,)
                ).fetchone()[0]
                for t in base.tables
            }
            out["person_site"] = w.execute(
                "SELECT count(*) FROM eds_platform.person_site WHERE person_id = %s", (who,)
            ).fetchone()[0]
            return out

    before = rows_of_patient()
    assert before["person"] == 1 and before["measurement"] > 0 and before["person_site"] == 1
    before_late = rows_of_patient(l1_late)  # non-vacuous: the back-dated objector's rows are there too
    assert before_late["person"] == 1 and before_late["measurement"] > 0
    persons_before = _warehouse_state(wh)["person"][0]

    with psycopg.connect(source, autocommit=True) as conn:
        # The patient objects on day 2; one of their rows also changes that day.
        conn.execute(
            "INSERT INTO identity.opposition (person_id, recorded_at, channel) VALUES (%s, %s, 'courrier')",
            (pid, DAY2 + dt.timedelta(hours=9)),
        )
        # A back-dated entry (a letter received on day 1, typed in on day 2 with its date of receipt; the same as an
        # objection whose night's person task failed): it falls in no interval still to run, yet is honoured.
        conn.execute(
            "INSERT INTO identity.opposition (person_id, recorded_at, channel) VALUES (%s, %s, 'courrier')",
            (late, DAY1 + dt.timedelta(hours=3)),
        )
        conn.execute(
            "UPDATE omop.measurement SET value_as_number = 1, _updated_at = %s WHERE measurement_id = "
            "(SELECT min(measurement_id) FROM omop.measurement WHERE person_id = %s)",
            (DAY2 + dt.timedelta(hours=10), pid),
        )
    refs2, pub2 = _run(base, DAY2, DAY3, res)
    data2, tombs2 = _arrived(res, pub2)
    # the whole registry every night (a back-dated entry, a failed night are caught up), the new objector included
    assert {"kind": "person", "id": l1} in tombs2["person"].to_pylist()
    assert {"kind": "person", "id": l1_late} in tombs2["person"].to_pylist()
    assert set(tombs2["person"].column("kind").to_pylist()) == {"person"}
    assert refs2["measurement"]["excluded_objection"] == 1 and refs2["measurement"]["published"] == 0
    assert l1 not in data2["measurement"].column("person_id").to_pylist()
    _consolidate(stack, net, wh, prefix)
    assert rows_of_patient() == dict.fromkeys([*base.tables, "person_site"], 0)
    assert rows_of_patient(l1_late) == dict.fromkeys([*base.tables, "person_site"], 0)
    assert _warehouse_state(wh)["person"][0] == persons_before - 2

    # Rerunning the interval delivered before the objection does not bring the patient back.
    refs1, pub1 = _run(base, DAY1, DAY2, res)
    data1, _ = _arrived(res, pub1)
    assert l1 not in data1["person"].column("person_id").to_pylist()
    assert refs1["measurement"]["excluded_objection"] >= before["measurement"]
    _consolidate(stack, net, wh, prefix)
    assert rows_of_patient() == dict.fromkeys([*base.tables, "person_site"], 0)


# --------------------------------------------------------------------------------------------------
# 4. Row accounting


def test_row_accounting_holds_for_every_table_and_objectors_are_excluded_never_published(stack, net, base, source):
    res = _resources(stack, net, source, _prefix())
    refs, pub = _run(base, DAY1, DAY2, res)
    manifest = _manifest(res, pub)
    data, _ = _arrived(res, pub)
    assert manifest["failed_tables"] == []
    with psycopg.connect(source) as conn:
        objectors = _objectors(conn)
        l1_objectors = set(_person_map(res, base, source, objectors).values())
        for t in base.tables:
            r, entry = refs[t], manifest["tables"][t]
            assert r["extracted"] == r["published"] + r["quarantined"] + r["excluded_objection"], t
            for k in ("extracted", "published", "quarantined", "excluded_objection"):
                assert entry[k] == r[k] == pub.ref()["rows"][t][k], (t, k)
            assert r["extracted"] == len(_source_ids(conn, t)), t
            objector_rows = conn.execute(
                sql.SQL("SELECT count(*) FROM omop.{} WHERE person_id = ANY(%s)").format(sql.Identifier(t)),
                (objectors,),
            ).fetchone()[0]
            assert r["excluded_objection"] == objector_rows, t
            assert data[t].num_rows == r["published"], t
            assert not (set(data[t].column("person_id").to_pylist()) & l1_objectors), t
    assert refs["person"]["excluded_objection"] == len(objectors)
    assert sum(r["excluded_objection"] for r in refs.values()) > len(objectors)


# --------------------------------------------------------------------------------------------------
# 5. Bad inputs


def _patient_values(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT nir, ipp, last_name, first_name, birth_date::text FROM identity.patient")
        return [v for row in rows for v in row if v and len(v) > 3]


def test_bad_inputs_give_a_clear_error_naming_base_table_column_and_other_tables_still_extract(
    stack, net, base, source
):
    res = _resources(stack, net, source, _prefix())
    with psycopg.connect(source, autocommit=True) as conn:
        nir = conn.execute("SELECT nir FROM identity.patient WHERE nir IS NOT NULL LIMIT 1").fetchone()[0]
        conn.execute("DROP TABLE omop.observation")
        conn.execute("ALTER TABLE omop.drug_exposure DROP COLUMN route_concept_id")
        # A bigint column turned text, holding a patient identifier.
        conn.execute("ALTER TABLE omop.procedure_occurrence ALTER COLUMN procedure_concept_id TYPE text")
        conn.execute(
            "UPDATE omop.procedure_occurrence SET procedure_concept_id = %s, _updated_at = %s WHERE "
            "procedure_occurrence_id = (SELECT min(procedure_occurrence_id) FROM omop.procedure_occurrence)",
            (nir, DAY1 + dt.timedelta(hours=1)),
        )
        # A type the schema check accepts but whose values do not convert (zoned timestamps).
        conn.execute(
            "ALTER TABLE omop.measurement ALTER COLUMN measurement_datetime TYPE timestamptz "
            "USING measurement_datetime AT TIME ZONE 'UTC'"
        )
        a_datetime = conn.execute(
            "SELECT measurement_datetime::text FROM omop.measurement WHERE measurement_datetime IS NOT NULL LIMIT 1"
        ).fetchone()[0]
    secrets = [*_patient_values(source), a_datetime, a_datetime[:19], stack.pg_password]

    def fails(table: str, column: str | None, *, start=DAY1, end=DAY2, r=res) -> SourceError:
        with pytest.raises(SourceError) as info:
            extract.extract_table(base, table, start, end, r)
        msg = str(info.value)
        assert f"base={base.id}" in msg and f"table={table}" in msg, msg
        if column:
            assert f"column={column}" in msg, msg
        leaked = [s for s in secrets if s in msg]
        assert not leaked, msg
        return info.value

    assert "not found" in str(fails("observation", None))
    assert "missing" in str(fails("drug_exposure", "route_concept_id"))
    assert "does not match" in str(fails("procedure_occurrence", "procedure_concept_id"))
    assert "does not fit" in str(fails("measurement", "measurement_datetime"))
    future = dt.datetime.now(UTC) + dt.timedelta(days=1)
    assert "future" in str(fails("person", None, start=future - dt.timedelta(days=1), end=future))
    unreachable = _resources(stack, net, source.replace(f":{stack.pg_port}/", ":1/"), res.intake_prefix)
    assert "unreachable" in str(fails("person", None, r=unreachable))

    # The other tables still extract, and the batch is published with the failed tables listed.
    refs = []
    for t in base.tables:
        try:
            refs.append(extract.extract_table(base, t, DAY1, DAY2, res).ref())
        except SourceError:
            refs.append(None)
    ok = {r["table"] for r in refs if r}
    assert ok == {"person", "observation_period", "visit_occurrence", "condition_occurrence", "death"}
    pub = publish.publish_batch(base, DAY1, DAY2, refs, res)
    assert pub.failed_tables == sorted(["observation", "drug_exposure", "procedure_occurrence", "measurement"])
    assert set(_manifest(res, pub)["tables"]) == ok


# --------------------------------------------------------------------------------------------------
# 6. Quarantine


def test_rows_failing_a_row_level_fatal_check_are_quarantined_in_the_source_not_published(stack, net, base, source):
    res = _resources(stack, net, source, _prefix())
    with psycopg.connect(source, autocommit=True) as conn:
        mcols = [c for c in omop.table("measurement").column_names if c not in ("measurement_id", "person_id")]
        cols = sql.SQL(", ").join(map(sql.Identifier, mcols))
        conn.execute("ALTER TABLE omop.measurement ALTER COLUMN person_id DROP NOT NULL")
        # One row without a person (required, not the primary key), one whose person is not in PERSON.
        for new_id, person in ((90_000_001, None), (90_000_002, 999_999)):
            conn.execute(
                sql.SQL(
                    "INSERT INTO omop.measurement (measurement_id, person_id, {cols}, _updated_at) "
                    "SELECT %s, %s, {cols}, %s FROM omop.measurement ORDER BY measurement_id LIMIT 1"
                ).format(cols=cols),
                (new_id, person, DAY1 + dt.timedelta(hours=3)),
            )
        total = len(_source_ids(conn, "measurement"))
    refs, pub = _run(base, DAY1, DAY2, res)
    r = refs["measurement"]
    assert r["quarantined"] == 2
    assert r["extracted"] == total == r["published"] + r["quarantined"] + r["excluded_objection"]
    assert r["published"] > 0
    data, _ = _arrived(res, pub)
    published_ids = _key_ids(data["measurement"], "measurement")
    assert not (published_ids & _ns(base, [90_000_001, 90_000_002]))
    assert len(published_ids) == r["published"]
    with psycopg.connect(source) as conn:
        rows = conn.execute(
            "SELECT batch_id, table_name, reason, (row_data->>'measurement_id')::bigint FROM eds_local.quarantine "
            "ORDER BY 4"
        ).fetchall()
    assert [(b, t, i) for b, t, _, i in rows] == [
        (pub.batch_id, "measurement", 90_000_001),
        (pub.batch_id, "measurement", 90_000_002),
    ]
    assert all(reason == "row-level fatal check" for _, _, reason, _ in rows)
    for t in set(base.tables) - {"measurement"}:
        assert refs[t]["quarantined"] == 0, t

    # A rerun replaces the interval's quarantine records instead of adding to them.
    extract.extract_table(base, "measurement", DAY1, DAY2, res)
    with psycopg.connect(source) as conn:
        assert conn.execute("SELECT count(*) FROM eds_local.quarantine").fetchone()[0] == 2
