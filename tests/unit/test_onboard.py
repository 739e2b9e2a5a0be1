"""The onboarding form's rules, without Airflow: date range, tables, defaults."""

from __future__ import annotations

import datetime as dt

import pytest
from airflow_client.client import ApiClient

from eds_network.core.config import load_network
from eds_network.core.errors import ConfigError
from eds_network.local import onboard
from eds_network.orchestration import backfill

TODAY = dt.date(2026, 11, 23)


def _req(**params):
    base = {"base": "hosp_b", "start_date": "2026-05-01", "end_date": "2026-11-01"}
    return onboard.parse_request(load_network(), {**base, **params}, operator="alice", today=TODAY)


def test_empty_dates_are_decided_when_the_run_starts():
    req = onboard.parse_request(load_network(), {"base": "hosp_b", "start_date": None}, today=TODAY)
    assert (req.start_date, req.end_date) == (dt.date(2026, 5, 1), TODAY)
    req = onboard.parse_request(load_network(), {"base": "hosp_b", "end_date": "2026-03-15"}, today=TODAY)
    assert (req.start_date, req.end_date) == (dt.date(2025, 9, 1), dt.date(2026, 3, 15))


def test_defaults_are_a_dry_run_of_the_bases_tables_two_intervals_at_a_time():
    req = _req()
    assert req.dry_run is True
    assert req.max_active_runs == 2
    assert req.reprocess == "failed"
    assert req.tables == tuple(load_network().base("hosp_b").tables)
    assert req.operator == "alice"


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2026-11-01", "2026-05-01", "start_date 2026-11-01 must be before end_date 2026-05-01"),
        ("2026-05-01", "2026-05-01", "must be before end_date"),
        ("2026-05-01", "2027-01-01", "end_date 2027-01-01 is in the future (today is 2026-11-23)"),
        ("01/05/2026", "2026-11-01", "start_date: '01/05/2026' is not a date"),
    ],
)
def test_a_bad_date_range_is_refused_with_a_message_naming_the_dates(start, end, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _req(start_date=start, end_date=end)


def test_unknown_base_names_the_configured_ones():
    with pytest.raises(ConfigError, match="unknown base 'hosp_z' .*hosp_a"):
        _req(base="hosp_z")


def test_tables_outside_the_bases_scope_are_reported_and_non_omop_refused():
    req = _req(tables=["person", "specimen"])
    assert req.tables == ("person",)
    assert req.ignored_tables == ("specimen",)
    with pytest.raises(ConfigError, match="patients not OMOP"):
        _req(tables=["person", "patients"])


def test_request_round_trips_through_xcom():
    req = _req(dry_run=False, max_active_runs=3)
    assert onboard.OnboardRequest.from_ref(req.ref()) == req


def test_bounds_are_midnight_in_the_bases_time_zone():
    start, end = _req().bounds(load_network().base("hosp_b"))
    assert start.isoformat() == "2026-05-01T00:00:00+02:00"
    assert end.isoformat() == "2026-11-01T00:00:00+01:00"


def test_backfill_asks_for_intervals_starting_before_the_end_date():
    base = load_network().base("hosp_b")
    body = backfill.backfill_body(base, _req(dry_run=False))
    assert body.dag_id == "eds_local__hosp_b"
    assert body.to_date.isoformat() == "2026-10-31T23:59:59+01:00"
    assert body.max_active_runs == 2
    assert body.reprocess_behavior == "failed"
    # what the official client sends (the API reads `to_date` as inclusive)
    sent = ApiClient().sanitize_for_serialization(body)
    assert sent["from_date"] == "2026-05-01T00:00:00+02:00" and sent["to_date"] == "2026-10-31T23:59:59+01:00"


def test_months_of_a_range():
    tz = dt.UTC
    assert onboard._months(dt.datetime(2025, 6, 1, tzinfo=tz), dt.datetime(2025, 12, 1, tzinfo=tz)) == [
        "2025-06", "2025-07", "2025-08", "2025-09", "2025-10", "2025-11",
    ]  # fmt: skip
    assert onboard._months(dt.datetime(2025, 6, 15, tzinfo=tz), dt.datetime(2025, 7, 2, tzinfo=tz)) == [
        "2025-06", "2025-07",
    ]  # fmt: skip
