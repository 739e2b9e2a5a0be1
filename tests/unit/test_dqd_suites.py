"""The GX suites generated from the OHDSI DQD catalogue: present, reproducible, complete meta."""

from __future__ import annotations

import csv
import json

import pytest

from eds_network.core import omop
from eds_network.quality import dqd, generate

SUITES = dqd.DEFAULT_SUITES_DIR
CATALOGUE = dqd.DEFAULT_DQD_DIR
META_KEYS = {"check_name", "category", "subcategory", "context", "threshold_pct", "severity", "scope", "check_id"}

pytestmark = pytest.mark.skipif(not CATALOGUE.is_dir(), reason="DQD catalogue not available")


def suite(table: str) -> dict:
    return json.loads((SUITES / f"{table}.json").read_text(encoding="utf-8"))


def expectations(table: str, check_name: str | None = None, column: str | None = None) -> list[dict]:
    return [
        e
        for e in suite(table)["expectations"]
        if check_name in (None, e["meta"]["check_name"]) and column in (None, e["meta"]["column"])
    ]


def one(table: str, check_name: str, column: str) -> dict:
    found = expectations(table, check_name, column)
    assert len(found) == 1, (table, check_name, column, len(found))
    return found[0]


@pytest.mark.parametrize("table", omop.DEFAULT_TABLES)
def test_a_suite_exists_per_default_table(table):
    s = suite(table)
    assert s["name"] == f"omop54.{table}"
    assert s["expectations"], table
    assert s["meta"]["table"] == table


def test_regenerating_is_byte_identical(tmp_path):
    generate.main(["generate", "--dqd", str(CATALOGUE), "--out", str(tmp_path)])
    for table in omop.DEFAULT_TABLES:
        fresh = (tmp_path / f"{table}.json").read_bytes()
        committed = (SUITES / f"{table}.json").read_bytes()
        assert fresh == committed, (
            f"expectations/{table}.json is stale: run `python -m eds_network.quality.dqd generate`"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{t}.json" for t in omop.DEFAULT_TABLES)
    # Twice in a row: the generator itself is deterministic.
    first = generate.render_suites(CATALOGUE, ["measurement"])
    assert generate.render_suites(CATALOGUE, ["measurement"]) == first


def test_check_mode_detects_stale_suites(tmp_path, capsys):
    generate.main(["generate", "--out", str(tmp_path), "--tables", "death"])
    assert generate.main(["generate", "--check", "--out", str(tmp_path), "--tables", "death"]) == 0
    path = tmp_path / "death.json"
    path.write_text(path.read_text().replace('"threshold_pct": 0.0', '"threshold_pct": 3.0', 1))
    assert generate.main(["generate", "--check", "--out", str(tmp_path), "--tables", "death"]) == 1
    assert "stale" in capsys.readouterr().err


@pytest.mark.parametrize("table", omop.DEFAULT_TABLES)
def test_every_expectation_has_dqd_meta_and_mostly_matches_threshold(table):
    names = {row["checkName"] for row in csv.DictReader((CATALOGUE / "OMOP_CDMv5.4_Check_Descriptions.csv").open())}
    seen = set()
    for e in suite(table)["expectations"]:
        m = e["meta"]
        assert META_KEYS <= m.keys(), (table, m)
        assert m["check_name"] in names
        assert m["category"] in ("Conformance", "Completeness", "Plausibility")
        assert m["context"] in ("verification", "validation")
        assert m["severity"] in dqd.SEVERITIES
        assert m["scope"] in (dqd.BATCH, dqd.CROSS_TABLE)
        assert 0 <= m["threshold_pct"] <= 100
        assert m["table"] == table
        assert m["check_id"] not in seen, m["check_id"]
        seen.add(m["check_id"])
        if "mostly" in e["kwargs"]:
            assert e["kwargs"]["mostly"] == pytest.approx(1 - m["threshold_pct"] / 100)
        else:
            assert e["type"] in ("expect_column_to_exist", "expect_column_values_to_be_in_type_list")
        assert e["type"].startswith("expect_")
        assert "id" not in e  # no GX ids: they would change at every generation


def test_thresholds_come_from_the_catalogue():
    rows = list(csv.DictReader((CATALOGUE / "OMOP_CDMv5.4_Field_Level.csv").open(encoding="utf-8-sig")))
    row = next(r for r in rows if r["cdmTableName"] == "DRUG_EXPOSURE" and r["cdmFieldName"] == "days_supply")
    e = one("drug_exposure", "plausibleValueHigh", "days_supply")
    assert e["kwargs"]["max_value"] == int(row["plausibleValueHigh"]) == 365
    assert e["meta"]["threshold_pct"] == float(row["plausibleValueHighThreshold"])
    units = [e for e in expectations("measurement", "plausibleUnitConceptIds") if e["meta"]["concept_id"] == 3006315]
    assert len(units) == 1
    assert units[0]["kwargs"]["value_set"] == [8784, 8785, 8848, 8961, 9444]
    assert units[0]["kwargs"]["mostly"] == pytest.approx(0.95)


def test_severity_rule():
    assert one("measurement", "isRequired", "person_id")["meta"]["severity"] == "fatal"
    assert one("measurement", "isRequired", "measurement_id")["meta"]["severity"] == "fatal"
    assert one("measurement", "isRequired", "measurement_concept_id")["meta"]["severity"] == "convention"
    assert one("measurement", "isPrimaryKey", "measurement_id")["meta"]["severity"] == "fatal"
    assert one("measurement", "cdmDatatype", "value_as_concept_id")["meta"]["severity"] == "fatal"
    assert one("measurement", "isForeignKey", "person_id")["meta"]["severity"] == "fatal"
    assert one("measurement", "isForeignKey", "visit_occurrence_id")["meta"]["severity"] == "convention"
    assert one("measurement", "isStandardValidConcept", "measurement_concept_id")["meta"]["severity"] == "convention"
    assert one("measurement", "plausibleValueLow", "measurement_date")["meta"]["severity"] == "characterization"
    assert one("person", "measureValueCompleteness", "race_concept_id")["meta"]["severity"] == "characterization"
    # Row-level fatal checks are the ones quarantining rows; cdmDatatype can only fail the batch.
    assert one("measurement", "isForeignKey", "person_id")["meta"]["row_level"] is True
    assert one("measurement", "cdmDatatype", "person_id")["meta"]["row_level"] is False
    assert "fatal" in dqd.__doc__ and "convention" in dqd.__doc__ and "characterization" in dqd.__doc__


def test_scopes_and_vocabulary_flags():
    fk_person = one("measurement", "isForeignKey", "person_id")
    assert fk_person["meta"]["scope"] == "cross_table"
    assert fk_person["meta"]["requires"] == ["person"]
    assert fk_person["kwargs"]["value_set"] == {"$PARAMETER": "known_ids__person"}
    fk_concept = one("measurement", "isForeignKey", "measurement_concept_id")
    assert fk_concept["meta"]["needs_vocabulary"] is True
    assert fk_concept["meta"]["requires"] == ["concept"]
    assert one("measurement", "isForeignKey", "visit_occurrence_id")["meta"]["dqd"]["fk_table"] == "visit_occurrence"
    after_birth = one("measurement", "plausibleTemporalAfter", "measurement_date")
    assert after_birth["meta"]["scope"] == "cross_table"
    assert after_birth["kwargs"]["column_B"] == dqd.BIRTH_DATE
    assert one("condition_occurrence", "plausibleDuringLife", "condition_start_date")["meta"]["scope"] == "cross_table"
    # Same-row orderings run in GX on the batch itself.
    same_row = one("condition_occurrence", "plausibleTemporalAfter", "condition_end_date")
    assert same_row["meta"]["scope"] == "batch"
    assert same_row["kwargs"] == {
        "column_A": "condition_end_date",
        "column_B": "condition_start_date",
        "or_equal": True,
        "ignore_row_if": "either_value_is_missing",
        "mostly": 0.99,
    }
    sbe = one("visit_occurrence", "plausibleStartBeforeEnd", "visit_start_date")
    assert (sbe["kwargs"]["column_A"], sbe["kwargs"]["column_B"]) == ("visit_end_date", "visit_start_date")
    for name in ("isRequired", "isPrimaryKey", "plausibleValueLow", "plausibleUnitConceptIds"):
        assert all(e["meta"]["scope"] == "batch" for e in expectations("measurement", name))


def test_dynamic_bounds_are_suite_parameters():
    high = one("measurement", "plausibleValueHigh", "measurement_date")
    assert high["kwargs"]["max_value"] == {"$PARAMETER": "tomorrow"}
    assert one("measurement", "plausibleValueLow", "measurement_date")["kwargs"]["min_value"] == "1950-01-01T00:00:00"
    assert one("person", "plausibleValueHigh", "year_of_birth")["kwargs"]["max_value"] == {"$PARAMETER": "next_year"}
    import datetime as dt

    assert dqd.suite_parameters(dt.date(2026, 12, 31)) == {"tomorrow": "2027-01-01T00:00:00", "next_year": 2027}


def test_concept_level_checks():
    for table in ("measurement", "observation", "condition_occurrence"):
        for e in suite(table)["expectations"]:
            m = e["meta"]
            assert (m["check_level"] == "CONCEPT") == ("concept_id" in m), m["check_id"]
    low = [e for e in expectations("observation", "plausibleValueLow") if e["meta"]["check_level"] == "CONCEPT"]
    assert len(low) == 9 and all(e["kwargs"]["column"] == "value_as_number" for e in low)
    assert low[0]["kwargs"]["row_condition"]["type"] == "and"
    gender = expectations("condition_occurrence", "plausibleGender")
    assert gender and all(e["meta"]["scope"] == "cross_table" and e["meta"]["requires"] == ["person"] for e in gender)


def test_not_implemented_checks_are_listed():
    names = {x["check_name"] for x in suite("condition_occurrence")["meta"]["not_implemented"]}
    assert {"withinVisitDates", "plausibleGenderUseDescendants", "measurePersonCompleteness"} <= names


@pytest.mark.parametrize("table", ["person", "measurement", "observation"])
def test_suites_load_in_great_expectations(table):
    gx = pytest.importorskip("great_expectations")
    s = suite(table)
    loaded = gx.ExpectationSuite(name=s["name"], expectations=s["expectations"], meta=s["meta"])
    assert len(loaded.expectations) == len(s["expectations"])


def test_checks_round_trip_through_the_suite_json():
    built = generate.build_checks(CATALOGUE, ["death"])["death"]
    loaded = dqd.load_checks("death")
    assert [c.check_id for c in built] == [c.check_id for c in loaded]
    assert [c.expectation() for c in built] == [c.expectation() for c in loaded]
