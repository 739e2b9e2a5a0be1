"""check_batch on small Arrow batches with injected defects (both engines), overrides, exports, privacy."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict

import pyarrow as pa
import pytest
from pydantic import ValidationError

from eds_network import quality
from eds_network.core import omop
from eds_network.core.errors import ConfigError
from eds_network.quality import Override, Reference, check_batch, dqd
from eds_network.quality import gx as quality_gx
from eds_network.quality import suites as quality_suites

pytestmark = pytest.mark.skipif(not (dqd.DEFAULT_SUITES_DIR / "measurement.json").is_file(), reason="no suites")

TODAY = dt.date(2026, 1, 15)
GLUCOSE = 3013721  # DQD: plausible units 8645, 8923
MMOL = 8645
LAB = 32817  # type concept "EHR"
MALE_ONLY = 26662  # DQD concept-level: plausibleGender Male (condition_occurrence)


def make(table: str, n: int, **cols) -> pa.Table:
    """A batch with every OMOP column of `table`; columns not given are null."""
    spec = omop.table(table)
    data = {}
    for c in spec.columns:
        values = cols.pop(c.name, None)
        data[c.name] = pa.array(values if values is not None else [None] * n, c.arrow_type)
    assert not cols, f"unknown columns {list(cols)}"
    return pa.table(data)


def measurement(n: int = 20, **over) -> pa.Table:
    cols = {
        "measurement_id": list(range(1, n + 1)),
        "person_id": [1 + i % 3 for i in range(n)],
        "measurement_concept_id": [GLUCOSE] * n,
        "measurement_date": [dt.date(2021, 3, 1)] * n,
        "measurement_type_concept_id": [LAB] * n,
        "unit_concept_id": [MMOL] * n,
        "value_as_number": [5.5] * n,
    }
    for k, v in over.items():
        cols[k] = v
    return make("measurement", n, **cols)


PERSON = make(
    "person",
    3,
    person_id=[1, 2, 3],
    year_of_birth=[1980, 1990, 2000],
    gender_concept_id=[8507, 8532, 8507],
    race_concept_id=[0, 0, 0],
    ethnicity_concept_id=[0, 0, 0],
)
DEATH = make("death", 1, person_id=[2], death_date=[dt.date(2021, 1, 1)])
VOCAB = pa.table(
    {
        "concept_id": pa.array([0, GLUCOSE, LAB, MMOL, 4000001, MALE_ONLY], pa.int64()),
        "domain_id": ["Metadata", "Measurement", "Type Concept", "Unit", "Measurement", "Condition"],
        "standard_concept": [None, "S", "S", "S", None, "S"],
        "invalid_reason": [None, None, None, None, None, None],
    }
)
REF = Reference(person=PERSON, death=DEATH, concept=VOCAB)


def result(q: quality.QualityResult, check_id: str) -> quality.CheckResult:
    found = [r for r in q.results if r.check_id == check_id]
    assert len(found) == 1, (check_id, [r.check_id for r in q.results if r.check_id.startswith(check_id[:12])])
    return found[0]


def run(batch: pa.Table, table: str = "measurement", **kw) -> quality.QualityResult:
    kw.setdefault("today", TODAY)
    return check_batch("chu_test", table, batch, **kw)


# ------------------------------------------------------------------------------------------------
# Clean batch


def test_clean_batch_passes_and_everything_is_kept():
    q = run(measurement(), reference=REF)
    assert not q.batch_fatal
    assert q.quarantined_rows == 0 and q.published_rows == 20
    assert q.keep_mask.to_pylist() == [True] * 20
    assert not q.failed(), [r.check_id for r in q.failed()]
    assert result(q, "isForeignKey:measurement.person_id").status == "passed"
    assert result(q, "plausibleUnitConceptIds:measurement.measurement_concept_id:3013721").rows == 20
    # Lookups not given -> not applicable, never silently passed.
    assert result(q, "isForeignKey:measurement.visit_occurrence_id").status == "not_applicable"
    assert any("not evaluated: no VISIT_OCCURRENCE ids given" in w for w in q.warnings)


# ------------------------------------------------------------------------------------------------
# Fatal, row level


def test_null_person_id_is_quarantined_and_the_rest_goes_on():
    person_id = [1] * 100
    person_id[7] = None
    q = run(measurement(100, person_id=person_id), known_person_ids=pa.array([1, 2, 3]))
    r = result(q, "isRequired:measurement.person_id")
    assert (r.severity, r.passed, r.violating_rows, r.rows) == ("fatal", False, 1, 100)
    assert q.quarantined_rows == 1 and q.keep_mask[7].as_py() is False
    assert sum(q.keep_mask.to_pylist()) == 99
    assert not q.batch_fatal  # 1 % quarantined < 5 % limit
    assert q.published_rows == 99
    assert any(w.startswith("fatal: isRequired:measurement.person_id") for w in q.warnings)


def test_too_many_fatal_rows_make_the_batch_fatal():
    q = run(measurement(20, person_id=[None] * 10 + [1] * 10))
    assert q.batch_fatal and q.published_rows == 0
    msg = quality.fatal_message(q)
    for part in ("base=chu_test", "table=measurement", "isRequired", "person_id", "50.00%"):
        assert part in msg
    assert msg.startswith("[base=chu_test table=measurement column=person_id]")
    # A higher quarantine limit accepts it.
    assert not run(measurement(20, person_id=[None] * 10 + [1] * 10), quarantine_limit_pct=60).batch_fatal


def test_duplicate_primary_key_keeps_the_first_occurrence():
    ids = list(range(1, 41))
    ids[30] = 5  # second occurrence of 5
    q = run(measurement(40, measurement_id=ids))
    r = result(q, "isPrimaryKey:measurement.measurement_id")
    assert r.severity == "fatal" and not r.passed
    assert r.violating_rows == 2  # DQD counts every row of a duplicated key
    keep = q.keep_mask.to_pylist()
    assert keep[4] is True and keep[30] is False
    assert q.quarantined_rows == 1 and not q.batch_fatal


def test_duplicate_primary_key_unsorted_and_sparse_ids():
    ids = [10**15 + 7, 3, 10**15 + 7, 99, 3, 3]
    q = run(measurement(6, measurement_id=ids), quarantine_limit_pct=100)
    assert result(q, "isPrimaryKey:measurement.measurement_id").violating_rows == 5
    assert q.keep_mask.to_pylist() == [True, True, False, True, False, False]


def test_unknown_person_is_quarantined():
    q = run(measurement(50, person_id=[1] * 49 + [424242]), known_person_ids=pa.array([1, 2, 3]))
    r = result(q, "isForeignKey:measurement.person_id")
    assert (r.severity, r.violating_rows, r.scope) == ("fatal", 1, "cross_table")
    assert q.keep_mask.to_pylist() == [True] * 49 + [False]
    # The PERSON lookup also provides the known person ids.
    assert result(run(measurement(50, person_id=[1] * 49 + [424242]), reference=REF), r.check_id).violating_rows == 1
    # Without known ids the fatal FK is not evaluated (and quarantines nothing).
    q = run(measurement(50, person_id=[1] * 49 + [424242]))
    assert result(q, r.check_id).status == "not_applicable" and q.quarantined_rows == 0


def test_integer_field_with_wrong_type_fails_the_batch():
    batch = measurement(5).set_column(
        1, "person_id", pa.array(["1", "2", "3", "1", "x"])
    )  # person_id is the 2nd column
    assert batch.column_names[1] == "person_id"
    q = run(batch)
    r = result(q, "cdmDatatype:measurement.person_id")
    assert r.severity == "fatal" and r.violating_rows == 5
    assert q.batch_fatal and "cdmDatatype" in quality.fatal_message(q)


def test_missing_columns():
    batch = measurement(5).drop_columns(["measurement_id", "value_source_value"])
    q = run(batch)
    assert result(q, "cdmField:measurement.value_source_value").status == "failed"
    assert result(q, "cdmField:measurement.value_source_value").severity == "convention"
    assert result(q, "isRequired:measurement.measurement_id").violating_rows == 5
    assert q.batch_fatal and q.quarantined_rows == 5


# ------------------------------------------------------------------------------------------------
# Plausibility and conventions: warnings, batch published


def test_measurement_before_birth_is_a_cross_table_characterization_warning():
    dates = [dt.date(2021, 3, 1)] * 20
    dates[2] = dt.date(1999, 6, 1)  # person 3, born in 2000
    q = run(measurement(20, measurement_date=dates), reference=Reference(person=PERSON))
    for check_id in (
        "plausibleAfterBirth:measurement.measurement_date",
        "plausibleTemporalAfter:measurement.measurement_date",
    ):
        r = result(q, check_id)
        assert (r.severity, r.scope, r.violating_rows, r.passed) == ("characterization", "cross_table", 1, False)
    assert not q.batch_fatal and q.quarantined_rows == 0 and q.published_rows == 20
    assert any("plausibleAfterBirth:measurement.measurement_date" in w for w in q.warnings)
    # Birth date from birth_datetime wins over year_of_birth; month/day of birth are used when given.
    person = make("person", 1, person_id=[3], year_of_birth=[1990], month_of_birth=[7], day_of_birth=[2])
    q = run(
        measurement(2, person_id=[3, 3], measurement_date=[dt.date(1990, 7, 1), dt.date(1990, 7, 2)]),
        reference=Reference(person=person),
    )
    assert result(q, "plausibleAfterBirth:measurement.measurement_date").violating_rows == 1
    # No PERSON lookup: not applicable.
    q = run(measurement(20, measurement_date=dates))
    assert result(q, "plausibleAfterBirth:measurement.measurement_date").status == "not_applicable"


def test_value_out_of_plausible_range_is_a_warning_and_the_batch_is_published():
    dates = [dt.date(2021, 3, 1)] * 10
    dates[0] = dt.date(1912, 3, 4)  # before 1950
    dates[1] = dt.date(2026, 3, 1)  # after tomorrow
    q = run(measurement(10, measurement_date=dates))
    low = result(q, "plausibleValueLow:measurement.measurement_date")
    high = result(q, "plausibleValueHigh:measurement.measurement_date")
    assert (low.violating_rows, low.passed, low.severity) == (1, False, "characterization")
    assert (high.violating_rows, high.passed) == (1, False)
    assert not q.batch_fatal and q.published_rows == 10
    assert any(w.startswith("characterization: plausibleValueLow:measurement.measurement_date") for w in q.warnings)

    drug = make(
        "drug_exposure",
        4,
        drug_exposure_id=[1, 2, 3, 4],
        person_id=[1, 1, 2, 2],
        drug_concept_id=[0] * 4,
        drug_exposure_start_date=[dt.date(2021, 1, 1)] * 4,
        drug_exposure_end_date=[dt.date(2021, 1, 2)] * 3 + [dt.date(2020, 1, 1)],  # end before start
        drug_type_concept_id=[LAB] * 4,
        days_supply=[30, 30, 1000, None],
    )
    q = run(drug, "drug_exposure")
    r = result(q, "plausibleValueHigh:drug_exposure.days_supply")
    assert (r.rows, r.violating_rows) == (3, 1)  # DQD denominator: non-null values
    assert result(q, "plausibleStartBeforeEnd:drug_exposure.drug_exposure_start_date").violating_rows == 1
    assert result(q, "plausibleTemporalAfter:drug_exposure.drug_exposure_end_date").violating_rows == 1
    assert not q.batch_fatal


def test_unknown_or_non_standard_concept_is_a_convention_warning():
    concepts = [GLUCOSE] * 10
    concepts[0] = 999_999_999  # not in the vocabulary
    concepts[1] = 4000001  # in the vocabulary, not standard
    q = run(measurement(10, measurement_concept_id=concepts), reference=REF)
    fk = result(q, "isForeignKey:measurement.measurement_concept_id")
    assert (fk.severity, fk.violating_rows, fk.passed) == ("convention", 1, False)
    std = result(q, "isStandardValidConcept:measurement.measurement_concept_id")
    assert (std.severity, std.violating_rows) == ("convention", 1)
    unit_domain = result(q, "fkDomain:measurement.unit_concept_id")
    assert unit_domain.passed and unit_domain.violating_rows == 0
    assert not q.batch_fatal and q.quarantined_rows == 0
    assert any("isForeignKey:measurement.measurement_concept_id" in w for w in q.warnings)
    # Without a vocabulary, concept checks are not applicable.
    q = run(measurement(10, measurement_concept_id=concepts))
    assert result(q, "isForeignKey:measurement.measurement_concept_id").not_applicable_reason == (
        "no CONCEPT vocabulary given"
    )


def test_wrong_domain_and_unit():
    q = run(measurement(4, unit_concept_id=[GLUCOSE, MMOL, MMOL, None]), reference=REF)
    assert result(q, "fkDomain:measurement.unit_concept_id").violating_rows == 1
    units = result(q, "plausibleUnitConceptIds:measurement.measurement_concept_id:3013721")
    assert (units.rows, units.violating_rows, units.level) == (4, 1, "CONCEPT")  # NULL unit: not a violation
    assert units.concept_id == GLUCOSE


def test_gender_and_death_checks():
    cond = make(
        "condition_occurrence",
        4,
        condition_occurrence_id=[1, 2, 3, 4],
        person_id=[1, 2, 2, 3],  # person 2 is female and died on 2021-01-01
        condition_concept_id=[MALE_ONLY] * 4,
        condition_start_date=[dt.date(2020, 1, 1), dt.date(2020, 6, 1), dt.date(2021, 6, 1), dt.date(2020, 1, 1)],
        condition_type_concept_id=[LAB] * 4,
    )
    q = run(cond, "condition_occurrence", reference=REF)
    g = result(q, f"plausibleGender:condition_occurrence.condition_concept_id:{MALE_ONLY}")
    assert (g.rows, g.violating_rows, g.passed) == (4, 2, False)
    d = result(q, "plausibleDuringLife:condition_occurrence.condition_start_date")
    assert (d.rows, d.violating_rows) == (2, 1)  # rows of persons with a death record; > death + 60 days
    assert result(q, "plausibleBeforeDeath:condition_occurrence.condition_start_date").violating_rows == 1
    assert not q.batch_fatal


def test_concept_level_value_range():
    obs = make(
        "observation",
        5,
        observation_id=[1, 2, 3, 4, 5],
        person_id=[1] * 5,
        observation_concept_id=[37393449] * 4 + [LAB],
        observation_date=[dt.date(2021, 1, 1)] * 5,
        observation_type_concept_id=[LAB] * 5,
        unit_concept_id=[8840, 8840, 8840, 8753, 8840],
        value_as_number=[40.0, 100.0, 600.0, 40.0, 1.0],  # DQD: 50-500 mg/dL, 1-15 mmol/L
    )
    q = run(obs, "observation")
    low = result(q, "plausibleValueLow:observation.observation_concept_id:37393449:8840")
    high = result(q, "plausibleValueHigh:observation.observation_concept_id:37393449:8840")
    assert (low.level, low.concept_id, low.unit_concept_id) == ("CONCEPT", 37393449, 8840)
    assert (low.rows, low.violating_rows, high.violating_rows) == (3, 1, 1)
    assert result(q, "plausibleValueLow:observation.observation_concept_id:37393449:8753").violating_rows == 0
    assert not q.batch_fatal


def test_other_foreign_keys_with_known_ids():
    visits = [1, 2, 3, None, 77]
    q = run(
        measurement(5, visit_occurrence_id=visits), reference=Reference(ids={"visit_occurrence": pa.array([1, 2, 3])})
    )
    r = result(q, "isForeignKey:measurement.visit_occurrence_id")
    assert (r.severity, r.violating_rows, r.rows) == ("convention", 1, 5)
    assert q.quarantined_rows == 0


# ------------------------------------------------------------------------------------------------
# Empty batches, inputs, overrides


@pytest.mark.parametrize("engine", ["arrow", "gx"])
def test_empty_batch(engine):
    q = run(measurement(0), reference=REF, known_person_ids=pa.array([], pa.int64()), engine=engine)
    assert q.rows == 0 and len(q.keep_mask) == 0 and q.quarantined_rows == 0
    assert not q.batch_fatal and not q.failed()
    assert q.results and json.loads(json.dumps(q.ref()))["rows"] == 0
    q = run(pa.table({}), engine=engine)  # not even the columns
    assert q.rows == 0 and not q.batch_fatal


def test_record_batch_input_and_bad_arguments():
    batch = measurement(3).to_batches()[0]
    assert run(batch).rows == 3
    with pytest.raises(ConfigError, match="no expectation suite"):
        run(measurement(3), "note_nlp")
    with pytest.raises(ConfigError, match="unknown quality engine"):
        run(measurement(3), engine="spark")


def test_threshold_override():
    dates = [dt.date(2021, 3, 1)] * 20
    dates[0] = dt.date(1912, 3, 4)  # 5 % violating > 1 %
    key = "plausibleValueLow:measurement.measurement_date"
    assert not result(run(measurement(20, measurement_date=dates)), key).passed
    q = run(measurement(20, measurement_date=dates), overrides={key: Override(threshold_pct=10)})
    r = result(q, key)
    assert r.passed and r.threshold_pct == 10 and r.override == key and r.violating_rows == 1
    assert not any(key in w for w in q.warnings)


def test_disabled_override_needs_a_reason_and_stops_quarantine():
    person_id = [1] * 20
    person_id[3] = None
    key = "isRequired:measurement.person_id"
    q = run(
        measurement(20, person_id=person_id), overrides={key: Override(disabled=True, reason="feed B has no ids yet")}
    )
    r = result(q, key)
    assert r.status == "disabled" and r.passed and r.disabled_reason == "feed B has no ids yet"
    assert q.quarantined_rows == 0 and not q.batch_fatal
    assert f"{key} disabled by override: feed B has no ids yet" in q.warnings
    with pytest.raises(ValidationError, match="needs a reason"):
        Override(disabled=True)
    with pytest.raises(ValidationError, match="needs a reason"):
        Override(disabled=True, reason="  ")
    with pytest.raises(ValidationError):
        Override()
    with pytest.raises(ValidationError):
        Override(threshold_pct=150)
    # Plain dicts (from YAML) are accepted too.
    q = run(measurement(20, person_id=person_id), overrides={key: {"disabled": True, "reason": "feed B"}})
    assert result(q, key).status == "disabled"


def test_concept_level_override_and_keys():
    key = f"plausibleUnitConceptIds:measurement.measurement_concept_id:{GLUCOSE}"
    batch = measurement(4, unit_concept_id=[1, 1, MMOL, MMOL])
    assert not result(run(batch), key).passed
    assert result(run(batch, overrides={key: Override(threshold_pct=60)}), key).passed
    generic = "plausibleUnitConceptIds:measurement.measurement_concept_id"
    assert result(run(batch, overrides={generic: Override(threshold_pct=60)}), key).override == generic
    assert quality.unknown_override_keys([key, generic, "isRequired:measurement.nope"]) == [
        "isRequired:measurement.nope"
    ]


# ------------------------------------------------------------------------------------------------
# Volume, exports


def test_dqd_json_export():
    dates = [dt.date(2021, 3, 1)] * 10
    dates[0] = dt.date(1912, 3, 4)
    q = run(measurement(10, measurement_date=dates), reference=REF)
    doc = quality.to_dqd_json([q])
    json.dumps(doc)
    assert {"startTimestamp", "endTimestamp", "CheckResults", "Overview", "Metadata"} <= doc.keys()
    item = next(
        c for c in doc["CheckResults"] if c["checkId"] == "field_plausiblevaluelow_measurement_measurement_date"
    )
    assert item["failed"] == 1 and item["numViolatedRows"] == 1 and item["numDenominatorRows"] == 10
    assert item["pctViolatedRows"] == pytest.approx(0.1)
    assert item["cdmTableName"] == "MEASUREMENT" and item["cdmFieldName"] == "MEASUREMENT_DATE"
    for k in ("checkName", "category", "subcategory", "context", "thresholdValue", "notApplicable", "passed"):
        assert k in item
    assert doc["Overview"]["countTotal"] == len(q.results)
    assert doc["Overview"]["countOverallFailed"] == len(q.failed())


# ------------------------------------------------------------------------------------------------
# Privacy, and the GX engine


PLANTED = "DUPONT Jean-Michel NIR 1750375123456"
PLANTED_ID = 880101123456  # identity-looking person_id
PLANTED_PK = 770707070707  # duplicated measurement_id


def defect_batch() -> pa.Table:
    n = 30
    dates = [dt.date(2021, 3, 1)] * n
    dates[4] = dt.date(1912, 3, 4)
    dates[5] = dt.date(1999, 6, 1)
    ids = list(range(1, n + 1))
    ids[7] = ids[8] = PLANTED_PK
    return measurement(
        n,
        measurement_id=ids,
        person_id=[1, 2, 3] * 9 + [None, PLANTED_ID, 3],
        measurement_date=dates,
        measurement_concept_id=[GLUCOSE] * 27 + [999_999_999, 4000001, GLUCOSE],
        unit_concept_id=[MMOL] * 24 + [8923, 1, 1, None, MMOL, MMOL],
        value_as_number=[5.5] * 28 + [None, 1e9],
        measurement_source_value=[PLANTED] * n,
        value_source_value=[PLANTED] * n,
        unit_source_value=[PLANTED] * n,
    )


@pytest.fixture(scope="module")
def both_engines():
    pytest.importorskip("great_expectations")
    batch = defect_batch()
    kw = {"reference": REF, "known_person_ids": pa.array([1, 2, 3]), "quarantine_limit_pct": 50}
    return run(batch, engine="arrow", **kw), run(batch, engine="gx", **kw)


def serialised(q: quality.QualityResult) -> str:
    return "\n".join(
        [
            json.dumps([asdict(r) for r in q.results], default=str),
            json.dumps([r.to_dqd() for r in q.results]),
            json.dumps(q.ref()),
            json.dumps(quality.to_dqd_json([q])),
            "\n".join(q.warnings),
            quality.fatal_message(q),
            repr(q),
        ]
    )


def test_no_planted_value_in_any_serialised_result(both_engines):
    for q in both_engines:
        assert q.failed(), "the defect batch must fail checks, or this test proves nothing"
        text = serialised(q)
        for planted in ("DUPONT", "Jean-Michel", "1750375123456", str(PLANTED_ID), str(PLANTED_PK), "1912-03-04"):
            assert planted not in text, (q.engine, planted)


def test_gx_engine_gives_the_same_numbers_as_arrow(both_engines):
    arrow, gx = both_engines
    assert gx.engine == "gx" and arrow.engine == "arrow"
    assert not [w for w in gx.warnings if "mismatch" in w or "GX could not" in w], gx.warnings
    assert [(r.check_id, r.rows, r.violating_rows, r.status) for r in arrow.results] == [
        (r.check_id, r.rows, r.violating_rows, r.status) for r in gx.results
    ]
    assert arrow.keep_mask.equals(gx.keep_mask)
    assert arrow.quarantined_rows == gx.quarantined_rows == 3  # null person, unknown person, duplicate key
    failed = {r.check_id for r in arrow.failed()}
    assert {
        "isPrimaryKey:measurement.measurement_id",
        "plausibleValueLow:measurement.measurement_date",
        "plausibleAfterBirth:measurement.measurement_date",
        f"plausibleUnitConceptIds:measurement.measurement_concept_id:{GLUCOSE}",
    } <= failed


def test_raw_gx_validation_result_holds_no_value():
    """The GX result format itself: even GX's own (never stored) result object carries no value."""
    pytest.importorskip("great_expectations")
    plan_ids = [c.check_id for c in dqd.load_checks("measurement")]
    validation = quality_gx._gx_validate(
        quality_suites._suites_dir(None), "measurement", defect_batch(), plan_ids, dqd.suite_parameters(TODAY)
    )
    assert not validation.success
    text = json.dumps(validation.to_json_dict(), default=str)
    assert '"unexpected_count": ' in text
    for planted in ("DUPONT", "1750375123456", str(PLANTED_ID), str(PLANTED_PK), "1912", "partial_unexpected_list"):
        assert planted not in text, planted


# ------------------------------------------------------------------------------------------------
# One table over several record batches: summed results and the action taken


def test_table_checks_sum_record_batches_and_name_the_action():
    tc = quality.TableChecks("chu_test", "measurement", sample_rows=25)
    known = pa.array([1, 2, 3])
    first = measurement(20, person_id=[1, 2, 3] * 6 + [None, 3])  # one null person: quarantined
    dates = [dt.date(2021, 3, 1)] * 20
    dates[0] = dt.date(1912, 3, 4)  # plausibleValueLow (characterization): a warning
    second = measurement(20, measurement_id=list(range(101, 121)), measurement_date=dates)
    for batch in (first, second):
        tc.add(run(batch, known_person_ids=known, reference=REF), batch)
    tq = tc.finish("b1")
    assert tq.rows == 40 and tq.quarantined_rows == 1 and not tq.batch_fatal
    req = next(r for r in tq.results if r.check_id == "isRequired:measurement.person_id")
    assert (req.rows, req.violating_rows, req.violating_pct, req.status) == (40, 1, 2.5, "failed")
    assert tq.actions[req.check_id] == "quarantine_rows"
    low = next(r for r in tq.results if r.check_id == "plausibleValueLow:measurement.measurement_date")
    assert (low.rows, low.violating_rows, low.severity) == (40, 1, dqd.CHARACTERIZATION)
    assert tq.actions[low.check_id] == "warn"
    assert tq.actions["isPrimaryKey:measurement.measurement_id"] == "none"
    assert tc.sample().num_rows == 25  # bounded sample: 20 rows of the first batch, 5 of the second


def test_a_fatal_table_names_fail_batch_as_the_action():
    tc = quality.TableChecks("chu_test", "measurement", sample_rows=0)
    batch = measurement(20, person_id=[None] * 5 + [1] * 15)  # 25 % null person_id > 5 % limit
    tc.add(run(batch, known_person_ids=pa.array([1])))
    tq = tc.finish("b1")
    assert tq.batch_fatal and tq.actions["isRequired:measurement.person_id"] == "fail_batch"
    assert tq.docs is None and tc.sample() is None


def test_volume_check_first_nights_are_not_evaluated_and_an_80_pct_drop_fails():
    r = quality.volume_check("chu_test", "measurement", 1000, [1000, 1100])
    assert r.status == "not_applicable" and "first nights" in r.not_applicable_reason
    r = quality.volume_check("chu_test", "measurement", 200, [1000, 1100, 950, 1000, 1020])
    assert r.status == "failed" and r.violating_pct == pytest.approx(80.0) and r.severity == dqd.CHARACTERIZATION
    assert quality.action(r) == "warn"
    assert quality.volume_check("chu_test", "measurement", 900, [1000] * 5).status == "passed"
    assert quality.volume_check("chu_test", "measurement", None, [1000] * 5).status == "not_applicable"


# ------------------------------------------------------------------------------------------------
# GX Data Docs on a sample: the same suite executed by GX, agreeing with Arrow, showing no value

PLANTED_VALUE = 1750375123456.0  # an NIR-looking number in a failing column (plausibleValueHigh)


def docs_defect_batch() -> pa.Table:
    b = defect_batch()
    values = b.column("value_as_number").to_pylist()
    values[0] = PLANTED_VALUE
    return b.set_column(b.schema.get_field_index("value_as_number"), "value_as_number", pa.array(values, pa.float64()))


def _all_text(folder) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.suffix in (".html", ".json", ".js"))


@pytest.fixture(scope="module")
def gx_docs(tmp_path_factory):
    pytest.importorskip("great_expectations")
    out = tmp_path_factory.mktemp("datadocs") / "chu_test" / "measurement"
    return quality.gx_data_docs("chu_test", "measurement", docs_defect_batch(), out_dir=out, today=TODAY), out


def test_gx_data_docs_are_built_and_gx_agrees_with_arrow_on_injected_defects(gx_docs):
    docs, out = gx_docs
    assert docs.path == str((out / "index.html").resolve()) and (out / "index.html").is_file()
    assert list(out.glob("validations/**/*.html")), "a validation page per run"
    assert docs.sample_rows == 30 and docs.expectations > 20
    assert docs.mismatches == () and docs.errors == ()
    text = _all_text(out)
    # The failures are in the docs (so the grep below looks at pages that do show the failing checks).
    assert "measurement_id" in text and "value_as_number" in text


def test_gx_data_docs_show_no_identifier_like_value(gx_docs):
    _, out = gx_docs
    text = _all_text(out)
    planted = ("DUPONT", "Jean-Michel", "1750375123456", str(PLANTED_ID), str(PLANTED_PK), "1912-03-04", "1912")
    for value in planted:
        # as a whole token: the docs' own run times (e.g. 20261202T191230) may hold the digits of a planted year
        assert not re.search(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])", text), value


def test_with_gx_default_result_format_the_same_docs_would_leak(tmp_path):
    """Control: the grep above can fail - GX's own default format puts the planted values in the docs."""
    pytest.importorskip("great_expectations")
    out = tmp_path / "leaky"
    quality.gx_data_docs(
        "chu_test",
        "measurement",
        docs_defect_batch(),
        out_dir=out,
        today=TODAY,
        result_format={"result_format": "SUMMARY"},
    )
    text = _all_text(out)
    assert str(PLANTED_PK) in text or "1750375123456" in text
