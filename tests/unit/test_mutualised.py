"""Pure parts of the mutualised level: which night a run consolidates, who is late, units to UCUM."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from eds_network.core.config import load_network
from eds_network.platform import consolidate, standardise

PARIS = ZoneInfo("Europe/Paris")
PLATFORM = load_network().platform("idf")


def _manifest(base: str, end: dt.datetime) -> dict:
    start = end - dt.timedelta(days=1)
    return {
        "base": base,
        "batch_id": f"{base}__{end:%Y%m%d}",
        "data_interval": {"start": start.isoformat(), "end": end.isoformat()},
    }


def test_the_night_of_a_run_is_the_members_last_scheduled_night_end():
    base = PLATFORM.members[0]  # 0 1 * * * Europe/Paris
    night = dt.datetime(2026, 11, 22, 1, 0, tzinfo=PARIS)
    assert consolidate.night_end_of(base, night) == night  # a run at the night's end consolidates it
    assert consolidate.night_end_of(base, night + dt.timedelta(hours=6)) == night  # the 07:00 deadline
    assert consolidate.night_end_of(base, night - dt.timedelta(minutes=1)) == night - dt.timedelta(days=1)
    # Same instant given in UTC.
    assert consolidate.night_end_of(base, dt.datetime(2026, 11, 22, 6, 0, tzinfo=dt.UTC)) == night


def test_a_member_without_a_batch_reaching_the_night_is_late_and_a_refused_one_rejected():
    night = dt.datetime(2026, 11, 23, 1, 0, tzinfo=PARIS)
    manifests = [
        _manifest("hosp_a", night - dt.timedelta(days=1)),  # yesterday's night only
        _manifest("hosp_b", night),
        _manifest("hosp_c", night),
    ]
    rejected = {manifests[1]["batch_id"]: "platform idf: [base=hosp_b table=measurement] bad file"}
    got = consolidate.arrivals(PLATFORM, manifests, rejected, night + dt.timedelta(hours=6))
    assert {b: a["status"] for b, a in got.items()} == {"hosp_a": "late", "hosp_b": "rejected", "hosp_c": "arrived"}
    assert got["hosp_b"]["reason"] == rejected[manifests[1]["batch_id"]]
    assert got["hosp_a"]["reason"] is None
    assert dt.datetime.fromisoformat(got["hosp_a"]["night_end"]) == night


def test_non_ucum_units_map_to_ucum_with_their_conversion_factor():
    known = {"mm[Hg]", "kg", "cm", "mg/dL", "Cel"}
    assert standardise.to_ucum("mmHg", known) == ("mm[Hg]", 1.0)
    assert standardise.to_ucum("°C", known) == ("Cel", 1.0)
    assert standardise.to_ucum("kg", known) == ("kg", 1.0)
    assert standardise.to_ucum("lb", known) == ("kg", pytest.approx(0.45359237))
    assert standardise.to_ucum("in", known) == ("cm", pytest.approx(2.54))
    assert standardise.to_ucum("g/l", known) is None  # g/L is not in this vocabulary
    assert standardise.to_ucum("furlong", known) is None
    assert standardise.to_ucum(None, known) is None


def test_only_the_main_concept_of_a_table_is_standardised():
    assert standardise.concept_columns("measurement") == ("measurement_concept_id", "measurement_source_concept_id")
    assert standardise.concept_columns("death") == ("cause_concept_id", "cause_source_concept_id")
    assert standardise.concept_columns("person") is None
    assert standardise.concept_columns("observation_period") is None


def test_the_nights_erasure_counts_objections_rows_and_files_never_ids():
    rows = {
        "hosp_a__20250302": {"person": 10, "person.tombstones": 3, "person.erased": 41, "measurement.tombstones": 2},
        "hosp_b__20250302": {"person.tombstones": 1, "person.erased": 0, "tombstones.purged": 2},
    }
    got = consolidate.erasure_counts(rows, {"packages": 2, "batches": 4, "objects": 37})
    assert got == {
        "objections_received": 4,
        "rows_erased": 41,
        "files_purged": 39,
        "packages_purged": 2,
        "batches_purged": 4,
    }
    assert consolidate.erasure_counts({}, None)["files_purged"] == 0
