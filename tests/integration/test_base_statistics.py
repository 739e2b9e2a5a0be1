"""Small-cell protected statistics in use: computed per base on a real platform warehouse, kept in the
catalogue, shown by the operator page and the JSON API — and no count in [1, k-1] is ever shown anywhere.

The warehouse has planted small cells: 3 women aged 40-49, 4 persons with a visit in 2025, a condition of 5
persons, and a base (hosp_b) of 7 persons in all.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import psycopg
import pytest

from eds_network import catalogue, ui
from eds_network.catalogue import base_stats
from eds_network.core.config import load_network

pytestmark = pytest.mark.integration

K = 11
REF = dt.date(2026, 11, 22)


def _warehouse(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("""
            CREATE SCHEMA omop; CREATE SCHEMA eds_platform;
            CREATE TABLE omop.person (person_id bigint PRIMARY KEY, gender_concept_id int, year_of_birth int,
                                      _site int NOT NULL);
            CREATE TABLE omop.visit_occurrence (visit_occurrence_id bigserial PRIMARY KEY, person_id bigint,
                                                visit_start_date date, _site int NOT NULL);
            CREATE TABLE omop.condition_occurrence (condition_occurrence_id bigserial PRIMARY KEY,
                                                    person_id bigint, condition_concept_id int, _site int NOT NULL);
            CREATE TABLE eds_platform.person_site (person_id bigint, base_id text, site_number int);
        """)
        pid = 0
        # hosp_a (site 1): women born 1955 (age 71), 1984 (42: only 3) and 1970 (56); men born 1952, 1981, 1970
        for base, site, groups in [
            (
                "hosp_a",
                1,
                [
                    (8532, 1955, 40),
                    (8532, 1984, 3),
                    (8507, 1952, 25),
                    (8507, 1981, 20),
                    (8532, 1970, 30),
                    (8507, 1970, 33),
                ],
            ),
            ("hosp_b", 2, [(8532, 1990, 4), (8507, 1990, 3)]),
        ]:
            for gender, year, n in groups:
                for _ in range(n):
                    pid += 1
                    conn.execute("INSERT INTO omop.person VALUES (%s, %s, %s, %s)", [pid, gender, year, site])
                    conn.execute("INSERT INTO eds_platform.person_site VALUES (%s, %s, %s)", [pid, base, site])
        for year, n in [(2024, 50), (2025, 4), (2026, 30)]:
            for i in range(n):
                conn.execute(
                    "INSERT INTO omop.visit_occurrence (person_id, visit_start_date, _site) VALUES (%s, %s, 1)",
                    [i + 1, dt.date(year, 3, 1)],
                )
        for concept, n in [(201826, 30), (320128, 12), (4329847, 5)]:
            for i in range(n):
                conn.execute(
                    "INSERT INTO omop.condition_occurrence (person_id, condition_concept_id, _site) VALUES (%s, %s, 1)",
                    [i + 1, concept],
                )


@pytest.fixture
def recorded(new_db):
    cat, wh = new_db(), new_db()
    catalogue.create_schema(cat)
    catalogue.register_network(cat, load_network())
    _warehouse(wh)
    docs = base_stats.record(cat, wh, "idf", ["hosp_a", "hosp_b"], reference_date=REF, k=K)
    return cat, docs


def _numbers(obj) -> list[int]:
    """Every count in a statistics document (not the ids, years, ranks, k or dates)."""
    out = []
    if isinstance(obj, dict):
        for key, v in obj.items():
            if key in ("persons", "any_year") and isinstance(v, int):
                out.append(v)
            elif isinstance(v, dict | list):
                out.extend(_numbers(v))
    elif isinstance(obj, list):
        for v in obj:
            out.extend(_numbers(v))
    return out


def test_statistics_are_protected_and_kept_in_the_catalogue(recorded):
    cat, docs = recorded
    a = base_stats.latest(cat, "hosp_a")["hosp_a"]
    assert a == json.loads(json.dumps(docs["hosp_a"]))
    cells = {(c["sex"], c["age_band"]): c["persons"] for c in a["persons_by_sex_age"]["cells"]}
    assert cells[("F", "40-49")] is None  # 3 women: primary suppression
    assert cells[("F", "50-59")] == 30 and cells[("M", "50-59")] == 33
    suppressed = [key for key, v in cells.items() if v is None]
    assert len(suppressed) > 1  # secondary suppression: the row and column totals would give it away
    totals = {t["of"]: t["persons"] for t in a["persons_by_sex_age"]["totals"]}
    assert totals["total"] == 151 and totals["F / all"] == 73
    years = {y["year"]: y["persons"] for y in a["persons_with_a_visit_per_year"]["years"]}
    assert years[2024] == 50 and years[2025] is None
    assert [c["persons"] for c in a["top_conditions"]] == [30, 12, None]
    b = base_stats.latest(cat, "hosp_b")["hosp_b"]
    assert {t["of"]: t["persons"] for t in b["persons_by_sex_age"]["totals"]}["total"] is None  # 7 persons


def test_nothing_under_k_is_ever_shown(recorded):
    cat, _ = recorded
    from fastapi.testclient import TestClient

    client = TestClient(ui.create_app(lambda: cat, load_network))
    shown = []
    for base in ("hosp_a", "hosp_b"):
        r = client.get(f"/api/bases/{base}/statistics")
        assert r.status_code == 200
        shown += _numbers(r.json())
    shown += _numbers(client.get("/api/network").json()["bases"])
    assert shown and all(n == 0 or n >= K for n in shown), sorted(set(shown))
    assert client.get("/api/bases/hosp_c/statistics").status_code == 404

    page = client.get("/").text
    counts = re.findall(r"data-count='([^']*)'", page)
    assert "suppressed" in counts and "30" in counts
    assert all(c == "suppressed" or int(c) == 0 or int(c) >= K for c in counts), counts
    for small in range(1, K):  # the planted small values appear nowhere as a shown count
        assert f"data-count='{small}'" not in page
    section = page[page.index("id='statistics'") : page.index("Audit trail")]
    assert "hosp_a" in section and "&lt;&nbsp;11" in section
