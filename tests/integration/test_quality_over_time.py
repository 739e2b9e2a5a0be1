"""Quality over time on the real catalogue: a check planted failing on night 2 is listed as new, fixed on night 3
it is listed as resolved; thresholds re-applied to the stored results change the verdicts without a re-run;
the operator page draws the nightly trends as inline SVG charts."""

from __future__ import annotations

import datetime as dt

import pytest
from psycopg import sql

from eds_network import catalogue, ui
from eds_network.catalogue import quality_trends
from eds_network.core.config import load_network

pytestmark = pytest.mark.integration

START = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
A = "isRequired:person.person_id"
B = "measureValueCompleteness:person.race_concept_id"
C = "plausibleValueLow:person.year_of_birth"


def _check(check_id: str, pct: float) -> dict:
    name, rest = check_id.split(":", 1)
    passed = pct <= 5.0
    return {
        "check_id": check_id,
        "check_name": name,
        "check_level": "FIELD",
        "field_name": rest.split(".")[1],
        "base_id": "hosp_a",
        "category": "Plausibility" if name.startswith("plausible") else "Completeness",
        "severity": "convention",
        "rows_checked": 100,
        "violating_rows": int(pct),
        "violating_pct": pct,
        "threshold_pct": 5.0,
        "passed": passed,
        "status": "passed" if passed else "failed",
        "action": "warn" if not passed else "none",
        "engine": "arrow",
    }


def _night(dsn: str, n: int, checks: dict[str, float], rows: int) -> None:
    start = START + dt.timedelta(days=n)
    batch = f"night{n}"
    catalogue.record_run(
        dsn,
        level="local",
        scope_id="hosp_a",
        batch_id=batch,
        status="success",
        tables={"person": {"extracted": rows, "published": rows, "quarantined": 0, "excluded_objection": 0}},
        interval=(start, start + dt.timedelta(days=1)),
    )
    catalogue.record_quality(
        dsn,
        level="local",
        scope_id="hosp_a",
        batch_id=batch,
        table_name="person",
        checks=[_check(k, v) for k, v in checks.items()],
        summary={"engine": "arrow", "rows_checked": rows, "checks": len(checks), "failed": {}},
    )


@pytest.fixture
def cat(fresh_db):
    catalogue.create_schema(fresh_db)
    catalogue.register_network(fresh_db, load_network())
    return fresh_db


def _ids(items: list[dict]) -> list[str]:
    return [c["id"] for c in items]


def test_new_then_resolved_with_stable_ids(cat):
    _night(cat, 1, {A: 0.0, B: 12.0, C: 0.0}, rows=100)
    first = quality_trends.changes(cat, "hosp_a")
    assert first["previous"] is None and _ids(first["new"]) == [f"person/{B}"]

    _night(cat, 2, {A: 0.0, B: 11.0, C: 30.0}, rows=120)  # C planted failing
    second = quality_trends.changes(cat, "hosp_a")
    assert (second["night"], second["previous"]) == ("night2", "night1")
    assert _ids(second["new"]) == [f"person/{C}"]
    assert _ids(second["still_failing"]) == [f"person/{B}"] and second["resolved"] == []

    _night(cat, 3, {A: 0.0, B: 13.0, C: 1.0}, rows=90)  # C fixed
    third = quality_trends.changes(cat, "hosp_a")
    assert _ids(third["resolved"]) == [f"person/{C}"] and third["new"] == []
    assert _ids(third["still_failing"]) == [f"person/{B}"]

    # thresholds re-applied to the stored results, nothing re-run: B tolerated at 15 %, then C strict at 0.5 %
    again = quality_trends.changes(cat, "hosp_a", thresholds={B: 15.0})
    assert again["still_failing"] == [] and _ids(again["resolved"]) == [f"person/{C}"] and again["new"] == []
    assert _ids(quality_trends.changes(cat, "hosp_a", thresholds={"plausibleValueLow": 0.5})["still_failing"]) == [
        f"person/{B}",
        f"person/{C}",
    ]
    stored = quality_trends._checks(cat, "hosp_a", "night3")
    assert {c["check_id"]: c["status"] for c in stored}[B] == "failed"  # the stored results are unchanged

    trends = quality_trends.trends(cat, "hosp_a")
    assert [t["rows"] for t in trends] == [100, 120, 90]
    assert [t["failing_checks"] for t in trends] == [1, 2, 1]
    assert [t["night"] for t in trends] == ["2026-11-21", "2026-11-22", "2026-11-23"]


def test_the_operator_page_draws_the_trends_and_lists_the_changes(cat):
    from fastapi.testclient import TestClient

    for n, checks, rows in [(1, {B: 12.0, C: 0.0}, 100), (2, {B: 11.0, C: 30.0}, 120), (3, {B: 13.0, C: 1.0}, 90)]:
        _night(cat, n, checks, rows)
    page = TestClient(ui.create_app(lambda: cat, load_network)).get("/").text
    block = page[page.index("<div class='trend' data-base='hosp_a'>") :]
    block = block[: block.index("</div></div></div>")]
    for kind in ("rows", "failing", "lead"):
        assert f"data-chart='{kind}'" in block
    rows_chart = block[block.index("data-chart='rows'") : block.index("data-chart='failing'")]
    assert rows_chart.count("<rect") == 3 and "2026-11-22: 120" in rows_chart
    resolved = block[block.index("data-changes='resolved'") : block.index("data-changes='still_failing'")]
    assert f"data-check='person/{C}'" in resolved
    assert "http://" not in page and "<script" not in page


def test_three_real_extraction_nights_list_a_planted_failure_as_new_then_resolved(stack, cat):
    """The real local step (extract, DQD checks) on three nights of a small generated hospital: night 2's changed
    persons carry an implausible year of birth, night 3 corrects them; the catalogue's own results say so."""
    import uuid

    import psycopg

    from eds_network import quality
    from eds_network.core import omop
    from eds_network.dev import seed
    from eds_network.local import extract

    net = load_network().resized("hosp_c", 40)
    base = net.base("hosp_c")
    day = dt.timedelta(days=1)
    src = stack.create_database(f"t_qot_{uuid.uuid4().hex[:8]}", drop=True)
    seed.seed_base(src, net, "hosp_c", (START, START + day))
    res = stack.local_resources(net, "hosp_c", source_dsn=src, intake_prefix=f"test-qot-{uuid.uuid4().hex[:8]}/")
    recorder = quality.catalogue_recorder(cat, dag_run_id="manual__quality_over_time")
    check = "plausibleValueLow:person.year_of_birth"
    change = sql.Identifier(omop.CHANGE_COLUMN)

    def night(n: int, year: int | None) -> int:
        start = START + n * day
        if year is not None:  # the night's changes: every other person, with this year of birth
            with psycopg.connect(src) as conn:
                conn.execute(
                    sql.SQL(
                        "UPDATE omop.person SET year_of_birth = %s, {} = %s WHERE person_id IN (SELECT person_id FROM omop.person ORDER BY 1 LIMIT 20)"
                    ).format(change),
                    (year, start + dt.timedelta(hours=3)),
                )
        tb = extract.extract_table(base, "person", start, start + day, res, on_checks=recorder)
        counts = {k: getattr(tb, k) for k in ("extracted", "published", "quarantined", "excluded_objection")}
        catalogue.record_run(  # as the local DAG's record task does
            cat,
            level="local",
            scope_id="hosp_c",
            batch_id=tb.batch_id,
            status="success",
            tables={"person": counts},
            interval=(start, start + day),
        )
        return tb.extracted

    assert night(0, None) == 40
    first = quality_trends.changes(cat, "hosp_c")
    assert f"person/{check}" not in _ids(first["new"])
    assert night(1, 1700) == 20  # planted: below DQD's plausible low (1850)
    second = quality_trends.changes(cat, "hosp_c")
    assert f"person/{check}" in _ids(second["new"]), second
    assert night(2, 1980) == 20  # fixed
    third = quality_trends.changes(cat, "hosp_c")
    assert f"person/{check}" in _ids(third["resolved"]) and f"person/{check}" not in _ids(third["new"]), third
    assert [t["night"] for t in quality_trends.trends(cat, "hosp_c")] == ["2026-11-20", "2026-11-21", "2026-11-22"]
    with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(src.rsplit("/", 1)[-1])))
