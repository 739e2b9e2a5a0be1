"""The mutualised level through Airflow (`airflow dags test`) on the real embedded stack, platform `idf`.

One story, in order (module-scoped state, each test builds on the previous ones):
night N   all three members publish; one event is planted at two sites for one shared patient
          -> each shared patient once, overlap = the generator's ground truth, concepts and units standardised
             and the unmapped rate in the catalogue, the planted event flagged (not deleted)
          -> rerunning consolidation changes nothing (row counts + content hashes)
          -> a local rerun of a member (re-randomised sealed tokens) replaces its batch, never adds to it
night N+1 only hosp_b and hosp_c publish, one byte of hosp_b's batch is changed in the intake; the platform
          runs at its deadline -> hosp_a late, hosp_b rejected with a clear error and left in intake,
          hosp_c consolidated; the catalogue says why
          then hosp_a publishes and the byte is restored -> both load, hosp_a recorded `arrived_late`
The module leaves the idf warehouse and intake empty, so the night tests start from a clean platform.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from eds_network import catalogue, cli
from eds_network.core import omop
from eds_network.core.config import load_network
from eds_network.core.exchange import TOKEN_COLUMN
from eds_network.core.storage import list_keys
from eds_network.dev import seed
from eds_network.local import extract
from eds_network.platform import linkage, warehouse

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.usefixtures("synthea_zip")]

NETWORK = load_network()
PLATFORM = NETWORK.platform("idf")
MEMBERS = [b.id for b in PLATFORM.members]
START, END = cli.demo_interval()
NEXT_END = END + dt.timedelta(days=1)
DEADLINE = NEXT_END + dt.timedelta(hours=6)  # 07:00 Europe/Paris: the platform's deadline


def _dags_test(stack, dag_id: str, logical: dt.datetime) -> None:
    res = stack.airflow("dags", "test", dag_id, logical.isoformat(), check=False, capture=True)
    out = res.stdout + res.stderr
    if res.returncode != 0 or "state=failed" in out:
        log = stack.logs / f"test_mutualised__{dag_id}.log"
        log.write_text(out)
        pytest.fail(f"{dag_id} failed at {logical.isoformat()}: see {log}")


def _dags_test_side_by_side(stack, dag_ids: list[str], logical: dt.datetime) -> None:
    """`_dags_test` of DAGs of one level at once, as the scheduler (and `cli.run_night`) runs them."""
    with ThreadPoolExecutor(max_workers=len(dag_ids)) as pool:
        list(pool.map(lambda d: _dags_test(stack, d, logical), dag_ids))


def _wh(stack) -> psycopg.Connection:
    return psycopg.connect(stack.dsn(f"wh_{PLATFORM.id}"))


def _snapshot(stack, *, without: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Per warehouse table: (rows, distinct keys, SHA-256 of the content in key order)."""
    out = {}
    with _wh(stack) as conn:
        for t in omop.DEFAULT_TABLES:
            cols = [c for c in warehouse.expected_columns(t) if c not in without]
            key = warehouse.conflict_key(t)
            h = hashlib.sha256()
            q = sql.SQL("COPY (SELECT {} FROM omop.{} ORDER BY {}) TO STDOUT").format(
                sql.SQL(", ").join(map(sql.Identifier, [*cols, "_site", "_batch_id"])),
                sql.Identifier(t),
                sql.Identifier(key),
            )
            with conn.cursor().copy(q) as cp:
                for chunk in cp:
                    h.update(chunk)
            n, d = conn.execute(
                sql.SQL("SELECT count(*), count(DISTINCT {}) FROM omop.{}").format(
                    sql.Identifier(key), sql.Identifier(t)
                )
            ).fetchone()
            out[t] = (n, d, h.hexdigest())
        out["duplicate_event"] = conn.execute(
            "SELECT count(*), coalesce(sum(row_id), 0) FROM eds_platform.duplicate_event"
        ).fetchone()
    return out


def _shared_person(net) -> tuple[int, int]:
    """Local person ids at hosp_b and hosp_c of one patient both treat (valid NIR, no objection)."""
    idents = seed.plan_identities(net)
    pids = seed.planned_person_ids(net)
    objectors = seed.planned_objectors(net)
    at_c = {i.linkage_key: pids["hosp_c"][k] for k, i in enumerate(idents["hosp_c"]) if i.linkage_key}
    for k, ident in enumerate(idents["hosp_b"]):
        b_pid = pids["hosp_b"][k]
        if ident.linkage_key in at_c and b_pid not in objectors["hosp_b"]:
            return b_pid, at_c[ident.linkage_key]
    raise AssertionError("hosp_b and hosp_c share no patient")


def _reset_platform(stack) -> None:
    s3 = stack.s3_client()
    # Only the prefixes the platform's DAG reads and writes: other modules keep batches of their own under
    # prefixes of their own in the same buckets (the reliability suite's session-wide `world`), which a test
    # module running before them on the same xdist worker must not take away.
    areas = [(PLATFORM.intake.bucket, f"{PLATFORM.intake.prefix}{b}/") for b in MEMBERS]
    areas.append((PLATFORM.outbox.bucket, PLATFORM.outbox.prefix))
    for bucket, prefix in areas:
        for key in list_keys(s3, bucket, prefix):
            if bucket == PLATFORM.outbox.bucket and key.startswith("test-"):
                continue
            s3.delete_object(Bucket=bucket, Key=key)
    with psycopg.connect(stack.dsn("catalogue"), autocommit=True) as conn:  # arrivals of earlier sessions
        conn.execute("DELETE FROM catalogue.member_arrival WHERE platform_id = %s", (PLATFORM.id,))
    with psycopg.connect(stack.dsn(f"wh_{PLATFORM.id}"), autocommit=True) as conn:
        # Both schemas whole, the migrations' version table with them: the next step migrates them from scratch.
        conn.execute("DROP SCHEMA IF EXISTS omop CASCADE; DROP SCHEMA IF EXISTS eds_platform CASCADE")


@pytest.fixture(scope="module")
def night(stack):
    """Night N of the idf platform through Airflow, with one event planted at two sites."""
    _reset_platform(stack)
    for b in MEMBERS:
        seed.seed_base(stack.dsn(f"src_{b}"), NETWORK, b, (START, END))
    b_pid, c_pid = _shared_person(NETWORK)
    stamp = START + dt.timedelta(hours=3)
    cols = [c for c in omop.table("measurement").column_names if c not in ("measurement_id", "person_id")]
    with psycopg.connect(stack.dsn("src_hosp_b")) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT {} FROM omop.measurement WHERE person_id = %s AND measurement_concept_id <> 0 "
                "AND value_as_number IS NOT NULL ORDER BY measurement_id LIMIT 1"
            ).format(sql.SQL(", ").join(map(sql.Identifier, ["measurement_id", *cols]))),
            (b_pid,),
        ).fetchone()
    assert row is not None
    b_row, values = row[0], row[1:]
    with psycopg.connect(stack.dsn("src_hosp_c")) as conn:
        c_row = conn.execute("SELECT max(measurement_id) + 1 FROM omop.measurement").fetchone()[0]
        conn.execute(
            sql.SQL("INSERT INTO omop.measurement (measurement_id, person_id, {}, _updated_at) VALUES ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, cols)), sql.SQL(", ").join(sql.Placeholder() * (len(cols) + 3))
            ),
            (c_row, c_pid, *values, stamp),
        )
    res = stack.airflow("dags", "reserialize", check=False, capture=True)
    assert res.returncode == 0, res.stderr[-2000:]
    _dags_test_side_by_side(stack, [f"eds_local__{b}" for b in MEMBERS], END)
    _dags_test(stack, PLATFORM.dag_id, END)
    yield {"planted": ("hosp_b", b_row, "hosp_c", c_row)}
    _reset_platform(stack)


def _ns(base_id: str, local_id: int) -> int:
    """A local row id as the platform receives it: the site's keyed permutation (core.rowids)."""
    from eds_network.core import rowids
    from eds_network.core.crypto import Key
    from eds_network.dev.stack import Stack

    base = NETWORK.base(base_id)
    t = Stack.default().keys(NETWORK)[NETWORK.transport_key_connection_id]
    transport = Key.from_secret(NETWORK.transport_key_connection_id, t["password"], t["extra"]["version"])
    key = rowids.level_key(transport.secret, f"level1|{base.finess or base.id}")
    return rowids.rekey(pa.array([local_id], pa.int64()), key, "level1-row")[0].as_py()


def test_shared_patients_are_one_person_and_overlap_is_the_ground_truth(night, stack):
    truth = seed.ground_truth(NETWORK)
    with _wh(stack) as conn:
        assert conn.execute("SELECT count(*) - count(DISTINCT person_id) FROM omop.person").fetchone()[0] == 0
        link = linkage.linkage_stats(conn)
        persons = conn.execute("SELECT count(*) FROM omop.person").fetchone()[0]
    for a in MEMBERS:
        for b in MEMBERS:
            if a < b:
                assert link["overlap"].get(a, {}).get(b, 0) == truth["overlap"][a][b], (a, b)
    assert truth["overlap"]["hosp_a"]["hosp_b"] > 0 and truth["overlap"]["hosp_b"]["hosp_c"] > 0
    keys = set().union(*(truth["bases"][b]["linkage_keys"] for b in MEMBERS))
    fallback = sum(len(truth["bases"][b]["fallback_person_ids"]) for b in MEMBERS)
    assert persons == len(keys) + fallback  # each shared patient exactly once
    for b in MEMBERS:
        assert link["persons_per_site"][b] == len(truth["bases"][b]["linkage_keys"]) + len(
            truth["bases"][b]["fallback_person_ids"]
        )
    runs = {(r["level"], r["scope_id"]): r for r in catalogue.latest_runs(stack.dsn("catalogue"))}
    assert runs[("mutualised", "idf")]["details"]["linkage"]["overlap"] == link["overlap"]
    assert runs[("mutualised", "idf")]["details"]["arrivals"] == dict.fromkeys(MEMBERS, "arrived")


def test_source_concepts_and_units_are_standardised_and_the_unmapped_rate_is_reported(night, stack):
    with _wh(stack) as conn:
        # Generated hospitals code some events with source codes only: every one with a 'Maps to' is mapped.
        left = conn.execute(
            "SELECT count(*) FROM omop.measurement m JOIN vocab.maps_to t ON t.source_concept_id = "
            "m.measurement_source_concept_id WHERE m.measurement_concept_id <> t.target_concept_id "
            "AND NOT EXISTS (SELECT 1 FROM vocab.standard_concept c WHERE c.concept_id = m.measurement_concept_id)"
        ).fetchone()[0]
        mapped = conn.execute(
            "SELECT count(*) FROM omop.measurement m JOIN vocab.maps_to t ON t.source_concept_id = "
            "m.measurement_source_concept_id WHERE m.measurement_source_concept_id <> m.measurement_concept_id "
            "AND m.measurement_concept_id = t.target_concept_id"
        ).fetchone()[0]
        units = dict(
            conn.execute(
                "SELECT unit_source_value, min(unit_concept_id) FROM omop.measurement "
                "WHERE unit_source_value IN ('mmHg', 'mg/dl', 'mm[Hg]') GROUP BY 1"
            ).fetchall()
        )
        per_site = {
            site: (n, bad)
            for site, n, bad in conn.execute(
                "SELECT _site, count(*), count(*) FILTER (WHERE measurement_concept_id = 0) "
                "FROM omop.measurement GROUP BY 1"
            )
        }
    assert left == 0
    assert mapped > 0
    assert units["mmHg"] == units["mm[Hg]"] == 8876 and units["mg/dl"] == 8840
    stats = {(s["base_id"], s["table_name"]): s for s in catalogue.platform_stats(stack.dsn("catalogue"), "idf")}
    for b in MEMBERS:
        n, bad = per_site[NETWORK.base(b).site_number]
        st = stats[(b, "measurement")]
        assert (st["rows"], st["unmapped_concepts"]) == (n, bad)
        assert st["unmapped_rate"] == pytest.approx(bad / n, abs=1e-6)
    # The generated hospitals carry unmappable local codes (about 2 %), the Synthea sample none.
    assert 0.005 < stats[("hosp_b", "measurement")]["unmapped_rate"] < 0.05
    assert stats[("hosp_a", "condition_occurrence")]["unmapped_rate"] == 0
    text = cli.summary(NETWORK)
    assert "standardisation at the platforms" in text
    line = next(x for x in text.splitlines() if x.split()[:3] == ["idf", "hosp_b", "measurement"])
    assert f"{stats[('hosp_b', 'measurement')]['unmapped_rate']:.2%}" in line


def test_an_event_reported_by_two_sites_is_flagged_not_deleted(night, stack):
    b_base, b_row, c_base, c_row = night["planted"]
    with _wh(stack) as conn:
        flagged = conn.execute(
            "SELECT duplicate_of, site_number FROM eds_platform.duplicate_event "
            "WHERE table_name = 'measurement' AND row_id = %s",
            (_ns(c_base, c_row),),
        ).fetchone()
        both = conn.execute(
            "SELECT count(*) FROM omop.measurement WHERE measurement_id = ANY(%s)",
            ([_ns(b_base, b_row), _ns(c_base, c_row)],),
        ).fetchone()[0]
        per_base = dict(
            conn.execute(
                "SELECT site_number, count(*) FROM eds_platform.duplicate_event WHERE table_name = 'measurement' "
                "GROUP BY 1"
            ).fetchall()
        )
    assert flagged == (_ns(b_base, b_row), NETWORK.base(c_base).site_number)
    assert both == 2
    stats = {(s["base_id"], s["table_name"]): s for s in catalogue.platform_stats(stack.dsn("catalogue"), "idf")}
    assert stats[(c_base, "measurement")]["duplicate_events"] == per_base[NETWORK.base(c_base).site_number] >= 1


def test_rerunning_consolidation_changes_nothing(night, stack):
    before = _snapshot(stack)
    with _wh(stack) as conn:
        ledger = conn.execute("SELECT count(*) FROM eds_platform.ledger").fetchone()[0]
    _dags_test(stack, PLATFORM.dag_id, END)
    assert _snapshot(stack) == before
    with _wh(stack) as conn:
        assert conn.execute("SELECT count(*) FROM eds_platform.ledger").fetchone()[0] == ledger


def test_a_local_rerun_replaces_its_batch_and_never_duplicates_it(night, stack):
    before = _snapshot(stack, without=(TOKEN_COLUMN,))
    _dags_test(stack, "eds_local__hosp_b", END)  # same interval: same batch id, new sealed tokens
    _dags_test(stack, PLATFORM.dag_id, END)
    assert _snapshot(stack, without=(TOKEN_COLUMN,)) == before
    with _wh(stack) as conn:
        versions = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE replaced_at IS NULL) FROM eds_platform.ledger "
            "WHERE base_id = 'hosp_b'"
        ).fetchone()
    assert versions == (2, 1)
    runs = {(r["level"], r["scope_id"]): r for r in catalogue.latest_runs(stack.dsn("catalogue"))}
    assert len(runs[("mutualised", "idf")]["details"]["replaced"]) == 1


def test_at_the_deadline_a_missing_member_is_late_a_tampered_batch_rejected_the_rest_loaded(night, stack):
    stamp = END + dt.timedelta(hours=2)
    changed = {}
    for b in ("hosp_b", "hosp_c"):
        with psycopg.connect(stack.dsn(f"src_{b}")) as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT measurement_id FROM omop.measurement WHERE value_as_number IS NOT NULL "
                    "AND person_id NOT IN (SELECT person_id FROM identity.opposition) ORDER BY measurement_id LIMIT 5"
                )
            ]
            conn.execute(
                "UPDATE omop.measurement SET value_as_number = value_as_number + 1, _updated_at = %s "
                "WHERE measurement_id = ANY(%s)",
                (stamp, ids),
            )
            changed[b] = ids
    _dags_test_side_by_side(stack, ["eds_local__hosp_b", "eds_local__hosp_c"], NEXT_END)
    # One byte changed in hosp_b's measurement file of the night, in the intake.
    s3 = stack.s3_client()
    bucket = PLATFORM.intake.bucket
    prefix = f"{PLATFORM.intake.prefix}hosp_b/{extract.batch_id('hosp_b', END, NEXT_END)}"
    target = next(k for k in list_keys(s3, bucket, prefix + "/") if k.split("/")[-1].startswith("measurement."))
    original = s3.get_object(Bucket=bucket, Key=target)["Body"].read()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    s3.put_object(Bucket=bucket, Key=target, Body=bytes(tampered))

    _dags_test(stack, PLATFORM.dag_id, DEADLINE)

    dsn = stack.dsn("catalogue")
    arrivals = {a["base_id"]: a for a in catalogue.arrivals(dsn, "idf") if a["night_end"] == NEXT_END}
    assert {b: a["status"] for b, a in arrivals.items()} == {
        "hosp_a": "late",
        "hosp_b": "rejected",
        "hosp_c": "arrived",
    }
    reason = arrivals["hosp_b"]["reason"]
    for part in ("platform idf", "base=hosp_b", "table=measurement", target, "SHA-256", "left in intake"):
        assert part in reason, part
    run = {(r["level"], r["scope_id"]): r for r in catalogue.latest_runs(dsn)}[("mutualised", "idf")]
    assert run["status"] == "partial"
    assert list(run["details"]["rejected"].values()) == [reason]
    # Left in intake, as it arrived; the other member's night is in the warehouse.
    assert s3.get_object(Bucket=bucket, Key=target)["Body"].read() == bytes(tampered)
    with _wh(stack) as conn:
        got = dict(
            conn.execute(
                "SELECT measurement_id, _batch_id FROM omop.measurement WHERE measurement_id = ANY(%s)",
                ([_ns(b, i) for b in ("hosp_b", "hosp_c") for i in changed[b]],),
            ).fetchall()
        )
        rejected = conn.execute("SELECT base_id, reason FROM eds_platform.rejected").fetchall()
    assert all(got[_ns("hosp_c", i)] == extract.batch_id("hosp_c", END, NEXT_END) for i in changed["hosp_c"])
    assert all(got[_ns("hosp_b", i)] == extract.batch_id("hosp_b", START, END) for i in changed["hosp_b"])
    assert rejected == [("hosp_b", reason)]

    # The late member publishes, the intake object is repaired: the next run loads both.
    s3.put_object(Bucket=bucket, Key=target, Body=original)
    _dags_test(stack, "eds_local__hosp_a", NEXT_END)
    _dags_test(stack, PLATFORM.dag_id, DEADLINE)
    arrivals = {a["base_id"]: a["status"] for a in catalogue.arrivals(dsn, "idf") if a["night_end"] == NEXT_END}
    assert arrivals == {"hosp_a": "arrived_late", "hosp_b": "arrived", "hosp_c": "arrived"}
    with _wh(stack) as conn:
        got = dict(
            conn.execute(
                "SELECT measurement_id, _batch_id FROM omop.measurement WHERE measurement_id = ANY(%s)",
                ([_ns("hosp_b", i) for i in changed["hosp_b"]],),
            ).fetchall()
        )
    assert set(got.values()) == {extract.batch_id("hosp_b", END, NEXT_END)} and len(got) == 5


def test_the_statistics_the_warehouse_maintains_equal_a_count_from_its_rows(night, stack):
    """After the nights above (bulk loads of empty tables, upserts, a replaced batch, a rejected one, a late
    member), the counts, orphan rows and duplicate events the triggers and the nights' refreshes kept (stats.py)
    are those a count of the whole warehouse gives; and they are not empty (the planted duplicate is there)."""
    from eds_network.platform import statscheck

    with _wh(stack) as conn:
        got, want = statscheck.maintained(conn), statscheck.from_scratch(conn)
    assert got == want
    planted = night["planted"]
    assert ("measurement", _ns(planted[2], planted[3])) in got["duplicates"]
    assert sum(r for (t, _), (r, _, _) in got["table_stats"].items() if t == "measurement") > 1000
    assert any(bad for (_, _), (_, bad, _) in got["table_stats"].items())
