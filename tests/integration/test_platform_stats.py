"""The warehouse's statistics are kept up to date by the warehouse itself (`platform/stats.py`), on the real
embedded PostgreSQL: whatever writes the rows (INSERT, an upsert, UPDATE, DELETE, a person erased or arriving
late), the maintained counts, orphan rows and duplicate events equal a count from the rows, and a night's
refresh looks only at the persons it touched."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eds_network.core.timing import PhaseTimer
from eds_network.platform import loadcounts, merge, stats, statscheck
from eds_network.platform.migrations import MIGRATIONS
from eds_network.platform.warehouse import expected_columns

pytestmark = pytest.mark.integration

STANDARD = (3000, 3001)  # the standard concepts of this test's vocabulary
PLATFORM = SimpleNamespace(  # what the statistics read of a platform: its id, its members' ids and site numbers
    id="p", members=[SimpleNamespace(id="a", site_number=1), SimpleNamespace(id="b", site_number=2)]
)
TABLES = ["person", "measurement", "condition_occurrence"]


def _measure(conn, rows) -> None:
    """(id, person, concept, site, unit source, unit concept) rows into omop.measurement, one statement."""
    conn.cursor().executemany(
        "INSERT INTO omop.measurement (measurement_id, person_id, measurement_concept_id, measurement_date, "
        "value_as_number, unit_source_value, unit_concept_id, _site, _batch_id) "
        "VALUES (%s, %s, %s, DATE '2026-11-30', 1.0, %s, %s, %s, 'b1')",
        [(i, p, c, us, uc, s) for i, p, c, s, us, uc in rows],
    )


def _refresh(conn):
    out = stats.refresh(conn, PLATFORM, TABLES, PhaseTimer())
    conn.commit()
    return out


def _agree(conn) -> dict:
    got, want = statscheck.maintained(conn), statscheck.from_scratch(conn)
    assert got == want
    return got


@pytest.fixture
def warehouse(fresh_db):
    MIGRATIONS.ensure(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        conn.execute("CREATE SCHEMA vocab; CREATE TABLE vocab.standard_concept (concept_id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO vocab.standard_concept VALUES (%s), (%s)", STANDARD)
        for pid, site in ((1, 1), (2, 1), (3, 2)):
            conn.execute(
                "INSERT INTO omop.person (person_id, gender_concept_id, year_of_birth, _site, _batch_id) "
                "VALUES (%s, 8507, 1970, %s, 'b1')",
                (pid, site),
            )
        # person 2 is treated at both sites
        conn.execute(
            "INSERT INTO eds_platform.person_site (person_id, base_id, site_number) VALUES "
            "(1, 'a', 1), (2, 'a', 1), (2, 'b', 2), (3, 'b', 2)"
        )
        conn.commit()
        yield conn


def test_every_kind_of_write_keeps_the_statistics_equal_to_a_count_from_the_rows(warehouse):
    conn = warehouse
    _measure(
        conn,
        [
            (10, 1, 3000, 1, "mg/dL", 8840),
            (11, 1, 0, 1, "mg/dL", 0),  # unmapped concept, unknown unit
            (12, 2, 3001, 1, None, None),
            (13, 2, 3001, 2, None, None),  # the same event as 12, from the second site: a duplicate
            (14, 3, 999, 2, None, None),  # a concept that is not standard: unmapped
            (15, 99, 3000, 2, None, None),  # person 99 is not in the warehouse: an orphan row
        ],
    )
    conn.commit()
    checks, dups, std = _refresh(conn)
    seen = _agree(conn)
    assert checks["isForeignKey:measurement.person_id"] == {"rows": 6, "violating_rows": 1, "passed": False}
    assert dups == {"a": {}, "b": {"measurement": 1}}
    assert std["a"]["measurement"] == {
        "rows": 3,
        "unmapped_concepts": 1,
        "unmapped_rate": 0.333333,
        "unmapped_units": 1,
    }
    assert std["b"]["measurement"]["unmapped_concepts"] == 1
    assert seen["duplicates"] == {("measurement", 13): (12, 2, 2)}

    # an upsert that maps a concept and a unit, an UPDATE that breaks one, a DELETE of the duplicated event's
    # reference, a late person that resolves the orphan, and an erased person whose rows stay behind
    conn.execute(
        "INSERT INTO omop.measurement (measurement_id, person_id, measurement_concept_id, measurement_date, "
        "unit_source_value, unit_concept_id, _site, _batch_id) VALUES "
        "(11, 1, 3000, DATE '2026-11-30', 'mg/dL', 8840, 1, 'b2'), (16, 3, 3000, DATE '2026-11-29', NULL, NULL, 2, 'b2') "
        "ON CONFLICT (measurement_id) DO UPDATE SET measurement_concept_id = EXCLUDED.measurement_concept_id, "
        "unit_concept_id = EXCLUDED.unit_concept_id"
    )
    conn.execute("UPDATE omop.measurement SET measurement_concept_id = 0 WHERE measurement_id = 10")
    conn.execute("DELETE FROM omop.measurement WHERE measurement_id = 12")
    conn.execute(
        "INSERT INTO omop.person (person_id, gender_concept_id, year_of_birth, _site, _batch_id) "
        "VALUES (99, 8532, 1980, 2, 'b2')"
    )
    conn.execute("DELETE FROM omop.person WHERE person_id = 3")
    conn.commit()
    assert statscheck.maintained(conn) != statscheck.from_scratch(conn)  # the night's refresh has not run yet
    checks, dups, std = _refresh(conn)
    _agree(conn)
    # person 3's two rows are orphans now, person 99's row no longer is; 13 duplicates nothing any more
    assert checks["isForeignKey:measurement.person_id"] == {"rows": 6, "violating_rows": 2, "passed": False}
    assert dups == {"a": {}, "b": {}}
    assert std["a"]["measurement"] == {"rows": 2, "unmapped_concepts": 1, "unmapped_rate": 0.5, "unmapped_units": 0}

    # a night that touched no one reads the counts and scans nothing
    assert conn.execute("SELECT count(*) FROM eds_platform.touched_person").fetchone()[0] == 0
    assert _refresh(conn) == (checks, dups, std)


def test_a_rolled_back_night_leaves_its_persons_to_the_next_refresh(warehouse):
    """The touched persons are taken in the refresh's transaction: a refresh that fails gives them back."""
    conn = warehouse
    _measure(conn, [(20, 2, 3000, 1, None, None), (21, 2, 3000, 2, None, None)])
    conn.commit()
    with pytest.raises(RuntimeError), conn.transaction():
        stats._take_touched(conn)
        raise RuntimeError("crash mid-refresh")
    conn.commit()
    touched = {r[0] for r in conn.execute("SELECT person_id FROM eds_platform.touched_person")}
    assert touched == {1, 2, 3}  # the fixture's persons (their person rows were written) and 2
    _, dups, _ = _refresh(conn)
    assert dups["b"] == {"measurement": 1}
    _agree(conn)


def test_the_migration_counts_an_existing_warehouse_from_its_rows(warehouse):
    """A warehouse filled before the statistics existed (triggers absent) is counted by `rebuild`."""
    conn = warehouse
    stats.set_tracking(conn, "measurement", False)
    _measure(conn, [(30, 1, 0, 1, None, None), (31, 77, 3000, 2, None, None)])
    stats.set_tracking(conn, "measurement", True)
    conn.commit()
    assert statscheck.maintained(conn)["table_stats"].get(("measurement", 1)) is None
    stats.rebuild(conn)
    conn.commit()
    got = statscheck.maintained(conn)
    assert got["table_stats"][("measurement", 1)] == (1, 1, 0)
    assert got["orphans"] == {("measurement", 77): 1}


def test_an_event_pointing_to_a_visit_its_own_site_does_not_hold_is_counted_until_the_visit_arrives(warehouse):
    conn = warehouse
    visit = (
        "INSERT INTO omop.visit_occurrence (visit_occurrence_id, person_id, visit_concept_id, visit_start_date, "
        "visit_end_date, visit_type_concept_id, _site, _batch_id) VALUES (%s, 2, 9201, DATE '2026-11-30', "
        "DATE '2026-11-30', 32817, %s, 'b1')"
    )
    conn.execute(visit, (500, 1))
    conn.execute(
        "INSERT INTO omop.measurement (measurement_id, person_id, measurement_concept_id, measurement_date, "
        "visit_occurrence_id, _site, _batch_id) VALUES "
        "(40, 2, 3000, DATE '2026-11-30', 500, 1, 'b1'), "  # its own site's visit
        "(41, 2, 3000, DATE '2026-11-29', 500, 2, 'b1'), "  # site 1's visit, from site 2: an orphan reference
        "(42, 2, 3000, DATE '2026-11-28', 501, 2, 'b1')"  # a visit not (yet) delivered
    )
    conn.commit()
    _refresh(conn)
    got = _agree(conn)
    assert got["orphan_visits"] == {("measurement", 500, 2): 1, ("measurement", 501, 2): 1}
    # the missing visit arrives, the first one goes: rows 40 and 41 now point to nothing, 42 is resolved
    conn.execute(visit, (501, 2))
    conn.execute("DELETE FROM omop.visit_occurrence WHERE visit_occurrence_id = 500")
    conn.commit()
    _refresh(conn)
    got = _agree(conn)
    assert got["orphan_visits"] == {("measurement", 500, 1): 1, ("measurement", 500, 2): 1}


def test_a_person_whose_rows_all_go_leaves_no_trace_in_the_statistics(warehouse):
    """An objector's erasure: once the night's refresh has run, no statistics row names the person or its visit."""
    conn = warehouse
    conn.execute(
        "INSERT INTO omop.measurement (measurement_id, person_id, measurement_concept_id, measurement_date, "
        "visit_occurrence_id, _site, _batch_id) VALUES (50, 1, 3000, DATE '2026-11-30', 700, 1, 'b1')"
    )
    conn.commit()
    _refresh(conn)
    assert conn.execute("SELECT count(*) FROM eds_platform.event_person WHERE person_id = 1").fetchone()[0] == 1
    conn.execute("DELETE FROM omop.measurement WHERE person_id = 1")
    conn.execute("DELETE FROM omop.person WHERE person_id = 1")
    conn.commit()
    _refresh(conn)
    _agree(conn)
    for table, col, value in (
        ("event_person", "person_id", 1),
        ("orphan_rows", "person_id", 1),
        ("touched_person", "person_id", 1),
        ("visit_ref", "visit_id", 700),
        ("orphan_visit_rows", "visit_id", 700),
        ("touched_visit", "visit_id", 700),
    ):
        q = f"SELECT count(*) FROM eds_platform.{table} WHERE {col} = %s"
        assert conn.execute(q, (value,)).fetchone()[0] == 0, table


def _measurement_file(path) -> None:
    """100 measurement rows: persons 1, 2, 3 and 9 (not in the warehouse) 25 rows each; concepts 0 (34 rows),
    999 (33, not standard) and 3000 (33); 26 unknown units (one of them an empty unit string, not a NULL); visits
    500-504, 15 rows with none."""
    n = 100
    cols = {c: pa.nulls(n, pa.int64()) for c in expected_columns("measurement")}
    cols.update(
        measurement_id=pa.array(range(1000, 1000 + n), pa.int64()),
        person_id=pa.array([(1, 2, 3, 9)[i % 4] for i in range(n)], pa.int64()),
        measurement_concept_id=pa.array([(0, 999, 3000)[i % 3] for i in range(n)], pa.int64()),
        measurement_date=pa.array([dt.date(2026, 11, 30)] * n, pa.date32()),
        measurement_type_concept_id=pa.array([32817] * n, pa.int64()),
        unit_source_value=pa.array(["" if i == 1 else ("mg/dL" if i % 2 == 0 else None) for i in range(n)]),
        unit_concept_id=pa.array([8840 if i % 4 == 0 else (0 if i % 4 == 2 else None) for i in range(n)], pa.int64()),
        visit_occurrence_id=pa.array([None if i % 7 == 0 else 500 + i % 5 for i in range(n)], pa.int64()),
    )
    for c in ("measurement_source_value", "value_source_value", "measurement_time"):
        if c in cols:
            cols[c] = pa.nulls(n, pa.string())
    pq.write_table(pa.table(cols), path, row_group_size=40)


def _written(conn) -> dict:
    """What a recount of omop.measurement wrote: its maintained statistics and the persons and visits touched."""
    got = statscheck.maintained(conn)
    out = {
        k: {key: v for key, v in got[k].items() if key[0] == "measurement"}
        for k in ("table_stats", "rows_per_person", "visit_refs")
    }
    out["touched"] = sorted(r[0] for r in conn.execute("SELECT person_id FROM eds_platform.touched_person"))
    out["visits"] = sorted(r[0] for r in conn.execute("SELECT visit_id FROM eds_platform.touched_visit"))
    return out


@pytest.mark.parametrize("vocabulary", [True, False], ids=["vocabulary", "no-vocabulary"])
def test_a_bulk_load_counted_from_its_batches_equals_a_scan_of_the_loaded_table(
    warehouse, tmp_path, monkeypatch, vocabulary
):
    """The statistics a bulk load writes from the batches it sent (`loadcounts.py`: several batches, their groups
    folded together) are those a scan of the loaded table gives, and the counts are the file's."""
    conn = warehouse
    if not vocabulary:
        conn.execute("DROP SCHEMA vocab CASCADE")
    conn.execute("DELETE FROM eds_platform.touched_person")
    conn.commit()
    monkeypatch.setattr(merge, "COPY_BATCH_ROWS", 7)
    monkeypatch.setattr(loadcounts, "FOLD", 3)
    path = tmp_path / "measurement.parquet"
    _measurement_file(path)
    rows: dict = {}
    with conn.transaction():
        cols = expected_columns("measurement")
        assert merge._bulk_load(conn, "measurement", path, cols, 2, "b9", None, False, rows, PhaseTimer())
    loaded = _written(conn)
    with conn.transaction():
        conn.execute("DELETE FROM eds_platform.touched_person")
        conn.execute("DELETE FROM eds_platform.touched_visit")
        stats.recount(conn, "measurement")  # the scan
    assert loaded == _written(conn)
    assert rows["measurement"] == 100
    assert loaded["table_stats"] == {("measurement", 2): (100, 67 if vocabulary else 34, 26)}
    assert loaded["rows_per_person"] == {("measurement", p): 25 for p in (1, 2, 3, 9)}
    assert sum(loaded["visit_refs"].values()) == 85 and len(loaded["visit_refs"]) == 5
    assert loaded["touched"] == [1, 2, 3, 9] and loaded["visits"] == [500, 501, 502, 503, 504]
    conn.commit()
    _refresh(conn)
    assert statscheck.maintained(conn)["orphans"] == {("measurement", 9): 25}
