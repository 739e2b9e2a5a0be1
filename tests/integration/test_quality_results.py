"""Quality results in the catalogue: local tables checked on real extractions, DQD JSON export (module and
`eds quality export`), mutualised checks on a real warehouse, volume versus the catalogue's history."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from psycopg import sql

from eds_network import catalogue, cli, quality
from eds_network.core import omop, omopzip
from eds_network.core.config import load_network
from eds_network.core.errors import QualityError
from eds_network.core.timing import PhaseTimer
from eds_network.dev import seed
from eds_network.local import extract
from eds_network.local.pseudonymise import ID_NAMESPACE
from eds_network.platform import stats as platform_stats
from eds_network.platform.migrations import MIGRATIONS as warehouse_migrations

pytestmark = [pytest.mark.integration]

PREFIX = "test-quality-"


@pytest.fixture(scope="module", autouse=True)
def _remove_intake_objects(stack):
    """The injected defects (identifier-like values among them) leave the shared test stack with the module."""
    yield
    from eds_network.core.storage import list_keys

    s3 = stack.s3_client()
    for p in load_network().platforms:
        for key in list_keys(s3, p.intake.bucket, PREFIX):
            s3.delete_object(Bucket=p.intake.bucket, Key=key)


UTC = dt.UTC
DAY1 = dt.datetime(2025, 3, 1, tzinfo=UTC)
DAY2 = DAY1 + dt.timedelta(days=1)
IN_DAY1 = DAY1 + dt.timedelta(hours=3)  # an UPDATE must set _updated_at itself, or the source stamps now()
PLANTED = "DUPONT Jean-Michel NIR 1750375123456"


@pytest.fixture
def cat(fresh_db) -> str:
    catalogue.create_schema(fresh_db)
    return fresh_db


def _checks(dsn: str, level: str, scope: str, batch: str, table: str | None = None) -> dict[str, dict]:
    rows, _ = catalogue.quality_results(dsn, level, scope, batch)
    return {f"{r['check_id']}@{r['base_id']}": r for r in rows if table in (None, r["table_name"])}


def _extract(stack, net, base_id: str, source: str, table: str, dsn: str, tmp_path: Path):
    res = stack.local_resources(net, base_id, source_dsn=source, intake_prefix=f"{PREFIX}{uuid.uuid4().hex[:8]}/")
    return extract.extract_table(
        net.base(base_id), table, DAY1, DAY2, res, on_checks=quality.catalogue_recorder(dsn, dag_run_id="test")
    )


def _insert_copy(conn, table: str, key: str, new_id: int, **values) -> None:
    """A copy of the table's first row under a new key, with some columns changed."""
    cols = [c for c in omop.table(table).column_names if c != key and c not in values]
    names = sql.SQL(", ").join(map(sql.Identifier, [key, *values, *cols]))
    conn.execute(
        sql.SQL(
            "INSERT INTO omop.{t} ({names}, _updated_at) SELECT %s, {vals}, {cols}, %s FROM omop.{t} "
            "ORDER BY {k} LIMIT 1"
        ).format(
            t=sql.Identifier(table),
            names=names,
            vals=sql.SQL(", ").join(sql.Placeholder() * len(values)),
            cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
            k=sql.Identifier(key),
        ),
        (new_id, *values.values(), DAY1 + dt.timedelta(hours=2)),
    )


# --------------------------------------------------------------------------------------------------
# Local level: every check of every table, in the catalogue, from a real extraction


def test_injected_defects_give_their_check_severity_and_action_in_the_catalogue(
    stack, new_db, cat, tmp_path, monkeypatch, synthea_zip
):
    monkeypatch.setenv("EDS_HOME", str(tmp_path / "home"))  # Data Docs land in this test's state folder
    net = load_network().resized("hosp_c", 40)
    source = new_db()
    seed.seed_base(source, net, "hosp_c", (DAY1, DAY2), tables=["person", "measurement", "drug_exposure"])
    with psycopg.connect(source) as conn:
        omopzip.load_vocabulary(conn, synthea_zip)  # the source's vocabulary: concept checks can run
        conn.commit()
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("ALTER TABLE omop.measurement ALTER COLUMN person_id DROP NOT NULL")
        conn.execute("ALTER TABLE omop.measurement DROP CONSTRAINT IF EXISTS measurement_pkey")
        keep = "person_id NOT IN (SELECT person_id FROM identity.opposition)"  # objectors are excluded first
        first, first_person = conn.execute(
            f"SELECT measurement_id, person_id FROM omop.measurement WHERE {keep} ORDER BY 1 LIMIT 1"
        ).fetchone()
        _insert_copy(conn, "measurement", "measurement_id", 91_000_001, person_id=None)  # null person_id
        _insert_copy(conn, "measurement", "measurement_id", first, person_id=first_person)  # duplicate key
        _insert_copy(conn, "measurement", "measurement_id", 91_000_005, measurement_source_value=PLANTED)
        # 5 % of measurements the year before the patient's birth; 5 % with a concept no vocabulary knows.
        conn.execute(
            "UPDATE omop.measurement m SET measurement_date = make_date((p.year_of_birth - 1)::int, 6, 1), "
            f"_updated_at = '{IN_DAY1}' "
            "FROM omop.person p WHERE p.person_id = m.person_id AND m.measurement_id % 20 = 0"
        )
        conn.execute(
            "UPDATE omop.measurement SET measurement_concept_id = 2000000999, _updated_at = %s "
            "WHERE measurement_id %% 20 = 1",
            (IN_DAY1,),
        )
        # 10 % of drug exposures with an implausible days_supply (DQD plausibleValueHigh: 365).
        conn.execute(
            "UPDATE omop.drug_exposure SET days_supply = 9999, _updated_at = %s WHERE drug_exposure_id %% 10 = 0",
            (IN_DAY1,),
        )
    tb = _extract(stack, net, "hosp_c", source, "measurement", cat, tmp_path)
    assert tb.quarantined == 2  # the null person_id and the second copy of the duplicated key
    batch = tb.batch_id
    got = _checks(cat, "local", "hosp_c", batch, "measurement")

    def one(check_id: str) -> dict:
        return got[f"{check_id}@hosp_c"]

    req = one("isRequired:measurement.person_id")
    assert (req["status"], req["severity"], req["action"], req["violating_rows"]) == (
        "failed",
        "fatal",
        "quarantine_rows",
        1,
    )
    assert (
        req["rows_checked"] == tb.extracted - tb.excluded_objection
        and req["threshold_pct"] == 0
        and req["passed"] is False
    )
    after_birth = one("plausibleAfterBirth:measurement.measurement_date")
    assert (after_birth["status"], after_birth["severity"], after_birth["action"]) == (
        "failed",
        "characterization",
        "warn",
    )
    assert after_birth["violating_pct"] > after_birth["threshold_pct"] == 1.0
    drugs = _extract(stack, net, "hosp_c", source, "drug_exposure", cat, tmp_path)
    high = _checks(cat, "local", "hosp_c", drugs.batch_id, "drug_exposure")[
        "plausibleValueHigh:drug_exposure.days_supply@hosp_c"
    ]
    assert (high["status"], high["severity"], high["action"]) == ("failed", "characterization", "warn")
    assert drugs.published == drugs.extracted - drugs.excluded_objection  # warnings: everything is published
    # An unknown concept: no vocabulary in the source, so the concept checks say why they did not run.
    unknown = one("isForeignKey:measurement.measurement_concept_id")
    assert (unknown["status"], unknown["severity"], unknown["action"]) == ("failed", "convention", "warn")
    assert unknown["violating_rows"] >= 1
    dup = one("isPrimaryKey:measurement.measurement_id")  # DQD counts both rows; the second is quarantined
    assert (dup["status"], dup["severity"], dup["action"], dup["violating_rows"]) == (
        "failed",
        "fatal",
        "quarantine_rows",
        2,
    )
    assert all(r["engine"] == "arrow" and r["category"] and r["check_level"] for r in got.values())

    # The table's row: GX Data Docs of the sample, where GX agreed with Arrow; no planted value in them.
    (row,) = [
        t for t in catalogue.quality_results(cat, "local", "hosp_c", batch)[1] if t["table_name"] == "measurement"
    ]
    assert row["quarantined_rows"] == 2 and not row["batch_fatal"]
    docs = Path(row["data_docs_path"])
    assert docs.is_file() and docs.is_relative_to(tmp_path / "home" / "datadocs" / "local" / "hosp_c")
    assert row["gx_mismatches"] == 0 and row["gx_sample_rows"] > 0
    text = "\n".join(p.read_text(errors="replace") for p in docs.parent.rglob("*.html"))
    assert "measurement_concept_id" in text
    for value in ("DUPONT", "1750375123456", "91000001", "2000000999"):
        assert value not in text, value

    # Rerunning the interval replaces the results instead of adding to them.
    before = len(got)
    _extract(stack, net, "hosp_c", source, "measurement", cat, tmp_path)
    assert len(_checks(cat, "local", "hosp_c", batch, "measurement")) == before

    # DQD-compatible export of the run, then through the CLI against the stack's catalogue.
    doc = quality.export_dqd(cat, base="hosp_c")
    item = next(c for c in doc["CheckResults"] if c["checkId"] == "field_isrequired_measurement_person_id")
    assert item["failed"] == 1 and item["numViolatedRows"] == 1 and item["numDenominatorRows"] == req["rows_checked"]
    assert item["cdmTableName"] == "MEASUREMENT" and item["category"] == "Conformance"
    assert item["action"] == "quarantine_rows" and doc["Metadata"][0]["CDM_SOURCE_NAME"] == "hosp_c"
    assert doc["DataDocs"]["measurement"] == str(docs)
    assert PLANTED not in json.dumps(doc, default=str)


def test_a_fatal_table_is_recorded_with_fail_batch_and_an_error_naming_base_table_check_pct(
    stack, new_db, cat, tmp_path, monkeypatch
):
    monkeypatch.setenv("EDS_QUALITY_DOCS", "off")
    net = load_network().resized("hosp_c", 20)
    source = new_db()
    seed.seed_base(source, net, "hosp_c", (DAY1, DAY2), tables=["person", "measurement"])
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("ALTER TABLE omop.measurement ALTER COLUMN person_id DROP NOT NULL")
        conn.execute(
            "UPDATE omop.measurement SET person_id = NULL, _updated_at = %s WHERE measurement_id %% 4 = 0", (IN_DAY1,)
        )
    with pytest.raises(QualityError) as err:
        _extract(stack, net, "hosp_c", source, "measurement", cat, tmp_path)
    msg = str(err.value)
    assert "base=hosp_c" in msg and "table=measurement" in msg and "isRequired" in msg and "%" in msg
    batch = catalogue.quality_batches(cat, "local", "hosp_c")[0]
    req = _checks(cat, "local", "hosp_c", batch)["isRequired:measurement.person_id@hosp_c"]
    assert (req["status"], req["action"]) == ("failed", "fail_batch") and req["violating_pct"] > 5
    (row,) = catalogue.quality_results(cat, "local", "hosp_c", batch)[1]
    assert row["batch_fatal"] and row["data_docs_path"] is None


@pytest.mark.usefixtures("synthea_zip")
def test_clean_synthea27nj_passes_every_fatal_check(stack, new_db, cat, monkeypatch):
    monkeypatch.setenv("EDS_QUALITY_DOCS", "off")
    net = load_network()
    source = new_db()
    seed.seed_base(source, net, "hosp_a", (DAY1, DAY2))
    res = stack.local_resources(net, "hosp_a", source_dsn=source, intake_prefix=f"{PREFIX}{uuid.uuid4().hex[:8]}/")
    base = net.base("hosp_a")
    for t in base.tables:
        extract.extract_table(base, t, DAY1, DAY2, res, on_checks=quality.catalogue_recorder(cat))
    batch = catalogue.quality_batches(cat, "local", "hosp_a")[0]
    checks, tables = catalogue.quality_results(cat, "local", "hosp_a", batch)
    assert {t["table_name"] for t in tables} == set(base.tables)
    fatal = [r for r in checks if r["severity"] == "fatal"]
    assert len([r for r in fatal if r["status"] == "passed"]) > 50
    assert [r["check_id"] for r in fatal if r["status"] == "failed"] == []
    assert not any(t["batch_fatal"] or t["quarantined_rows"] for t in tables)


# --------------------------------------------------------------------------------------------------
# Mutualised level: a real warehouse, and volume versus the catalogue's history


def _warehouse(dsn: str) -> None:
    """Two sites; person 1 at both; a measurement seen at both sites, an orphan, a visit of the other site."""
    s1, s2 = 1 * ID_NAMESPACE, 2 * ID_NAMESPACE
    warehouse_migrations.ensure(dsn)
    with psycopg.connect(dsn) as conn:
        for pid in (1, 2):
            conn.execute(
                "INSERT INTO omop.person (person_id, gender_concept_id, year_of_birth, race_concept_id, "
                "ethnicity_concept_id, _site, _batch_id) VALUES (%s, 8507, 1980, 0, 0, 1, 'b')",
                (pid,),
            )
        for vid, site in ((s1 + 1, 1), (s2 + 1, 2)):
            conn.execute(
                "INSERT INTO omop.visit_occurrence (visit_occurrence_id, person_id, visit_concept_id, visit_start_date,"
                " visit_end_date, visit_type_concept_id, _site, _batch_id) VALUES (%s, 1, 9201, '2021-03-01', "
                "'2021-03-02', 32817, %s, 'b')",
                (vid, site),
            )
        rows = [  # (id, person, date, value, visit, site)
            (s1 + 1, 1, "2021-03-01", 5.5, s1 + 1, 1),
            (s2 + 1, 1, "2021-03-01", 5.5, s2 + 1, 2),  # the same event from site 2
            (s1 + 2, 2, "2021-03-01", 5.5, None, 1),
            (s1 + 3, 2, "2021-03-02", 6.0, s2 + 1, 1),  # a visit of the other site
            (s1 + 4, 99, "2021-03-03", 6.0, None, 1),  # no such person
        ]
        for mid, pid, day, value, visit, site in rows:
            conn.execute(
                "INSERT INTO omop.measurement (measurement_id, person_id, measurement_concept_id, measurement_date, "
                "measurement_type_concept_id, value_as_number, unit_concept_id, visit_occurrence_id, _site, _batch_id)"
                " VALUES (%s, %s, 3013721, %s, 32817, %s, 8645, %s, %s, 'b')",
                (mid, pid, day, value, visit, site),
            )
        # what consolidation keeps beside the rows: where each person is treated, and the night's statistics
        conn.execute(
            "INSERT INTO eds_platform.person_site (person_id, base_id, site_number) VALUES "
            "(1, 'hosp_a', 1), (1, 'hosp_b', 2), (2, 'hosp_a', 1)"
        )
        members = [SimpleNamespace(id="hosp_a", site_number=1), SimpleNamespace(id="hosp_b", site_number=2)]
        platform_stats.refresh(
            conn, SimpleNamespace(id="idf", members=members), ["visit_occurrence", "measurement"], PhaseTimer()
        )


def test_warehouse_checks_find_orphans_cross_site_visits_and_duplicate_events(fresh_db):
    _warehouse(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        results = {
            r.check_id: r for r in quality.warehouse_checks(conn, "idf", ["person", "visit_occurrence", "measurement"])
        }
    person_fk = results["isForeignKey:measurement.person_id"]
    assert (person_fk.rows, person_fk.violating_rows, person_fk.status, person_fk.severity) == (5, 1, "failed", "fatal")
    visit_fk = results["isForeignKey:measurement.visit_occurrence_id"]
    assert (visit_fk.violating_rows, visit_fk.status) == (1, "failed")
    dup = results["crossSiteDuplicates:measurement.measurement_concept_id"]
    assert (dup.rows, dup.violating_rows, dup.violating_pct, dup.status) == (5, 1, 20.0, "failed")
    assert results["isForeignKey:visit_occurrence.person_id"].status == "passed"
    assert results["crossSiteDuplicates:visit_occurrence.visit_concept_id"].violating_rows == 1
    assert all(r.base == "idf" and r.to_dqd()["cdmSourceName"] == "idf" for r in results.values())


def _night(dsn: str, base: str, day: int, rows: int) -> None:
    start = dt.datetime(2026, 11, 1, tzinfo=UTC) + dt.timedelta(days=day)
    catalogue.record_run(
        dsn,
        level="local",
        scope_id=base,
        batch_id=f"{base}-{day}",
        status="success",
        interval=(start, start + dt.timedelta(days=1)),
        tables={"measurement": {"extracted": rows, "published": rows, "quarantined": 0, "excluded_objection": 0}},
    )


def test_a_base_whose_volume_drops_80_pct_overnight_fails_volume_drop_first_nights_are_not_evaluated(
    cat, fresh_db, stack, capsys
):
    for day, n in enumerate((1000, 1010)):
        _night(cat, "hosp_x", day, n)
        _night(cat, "hosp_y", day, n)
    (first,) = quality.volume_checks(cat, {"hosp_x": ["measurement"]})
    assert first.status == "not_applicable" and "first nights" in first.not_applicable_reason
    for day, n in enumerate((990, 1000, 1000, 1000), start=2):
        _night(cat, "hosp_x", day, n)
        _night(cat, "hosp_y", day, n)
    _night(cat, "hosp_x", 6, 200)  # -80 % overnight
    _night(cat, "hosp_y", 6, 990)
    got = {r.base: r for r in quality.volume_checks(cat, {"hosp_x": ["measurement"], "hosp_y": ["measurement"]})}
    x, y = got["hosp_x"], got["hosp_y"]
    assert (x.status, x.severity, quality.action(x)) == ("failed", "characterization", "warn")
    assert x.violating_pct == pytest.approx(80.0) and x.rows == 1000
    assert y.status == "passed"

    # Stored with the warehouse checks of the platform, exportable as DQD JSON (module and CLI).
    _warehouse(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        results = quality.warehouse_checks(conn, "idf_test", ["person", "visit_occurrence", "measurement"])
    out = quality.record_platform_quality(cat, "idf_test", "delivery-1", [*results, x, y], dag_run_id="test")
    assert "volumeDrop:measurement@hosp_x" in out["failed"] and "isForeignKey:measurement.person_id" in out["failed"]
    stored = _checks(cat, "mutualised", "idf_test", "delivery-1")
    assert stored["volumeDrop:measurement@hosp_x"]["action"] == "warn"
    assert stored["volumeDrop:measurement@hosp_y"]["status"] == "passed"
    doc = quality.export_dqd(cat, platform="idf_test")
    vol = [c for c in doc["CheckResults"] if c["checkName"] == "volumeDrop"]
    assert {c["cdmSourceName"]: c["failed"] for c in vol} == {"hosp_x": 1, "hosp_y": 0}

    # The CLI reads the stack's catalogue.
    stack_cat = stack.dsn("catalogue")
    quality.record_platform_quality(stack_cat, "idf_cli_test", "delivery-1", [x, y])
    assert cli.main(["quality", "export", "--platform", "idf_cli_test"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["CheckResults"]) == 2 and printed["Overview"]["countOverallFailed"] == 1
    assert cli.main(["quality", "export", "--base", "no_such_base"]) == 2
