"""Disclosure control of feasibility answers (`catalogue.feasibility.protect`) and the cohort model."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from eds_network.catalogue.feasibility import protect
from eds_network.core.cohort import Cohort
from tests.feasibility_attacks import differences_hit, published, recoverable

K = 11


CASES = [
    # one small base in a three-base platform
    (
        {("idf", "hosp_a"): 40, ("idf", "hosp_b"): 5, ("idf", "hosp_c"): 30, ("onco", "hosp_d"): 25},
        {"idf": 75, "onco": 25},
        100,
    ),
    # a small single-base platform: its total is the base, and network - other platform would give it
    (
        {("idf", "hosp_a"): 40, ("idf", "hosp_b"): 15, ("idf", "hosp_c"): 30, ("onco", "hosp_d"): 4},
        {"idf": 85, "onco": 4},
        89,
    ),
    # two bases >= k whose deduplicated platform total is under k (the same patients)
    (
        {("idf", "hosp_a"): 0, ("idf", "hosp_b"): 12, ("idf", "hosp_c"): 12, ("onco", "hosp_d"): 30},
        {"idf": 9, "onco": 30},
        39,
    ),
    # everything small
    (
        {("idf", "hosp_a"): 3, ("idf", "hosp_b"): 2, ("idf", "hosp_c"): 1, ("onco", "hosp_d"): 0},
        {"idf": 6, "onco": 0},
        6,
    ),
]


@pytest.mark.parametrize("per_base,per_platform,network", CASES)
def test_no_published_count_is_small_and_no_suppressed_count_can_be_recovered(per_base, per_platform, network):
    ans = protect(per_base, per_platform, network, k=K)
    assert all(v == 0 or v >= K for v in published(ans)), ans
    assert recoverable(ans, per_base) == [], ans
    assert differences_hit(ans, per_base, per_platform, network) == [], ans
    for (p, b), n in per_base.items():  # a small count is never shown
        if 0 < n < K:
            assert ans["bases"][p][b] is None


def test_suppression_is_as_small_as_needed_and_totals_are_the_deduplicated_ones():
    per_base, per_platform, network = CASES[0]
    ans = protect(per_base, per_platform, network, k=K)
    assert ans["bases"]["idf"]["hosp_b"] is None
    assert ans["suppressed"]["primary"] == ["idf/hosp_b"]
    assert len(ans["suppressed"]["secondary"]) == 1  # one complementary cell is enough
    assert ans["network"] == 100 and ans["platforms"]["onco"] == 25  # real (deduplicated) totals
    ans = protect(*CASES[2][:2], CASES[2][2], k=K)
    assert ans["platforms"]["idf"] is None  # 9 < k although 12 + 12 >= k


def test_the_attack_finds_a_naive_publication():
    """The attacks above are real: publishing every count >= k as is leaks the small single-base platform."""
    per_base, per_platform, network = CASES[1]
    naive = {
        "bases": {p: {b: (v if v >= K else None) for (q, b), v in per_base.items() if q == p} for p in per_platform},
        "platforms": {p: (v if v >= K else None) for p, v in per_platform.items()},
        "network": network,
    }
    assert differences_hit(naive, per_base, per_platform, network) == ["onco"]


def test_random_tables_never_leak():
    rng = np.random.default_rng(7)
    for _ in range(200):
        sizes = {"p1": 3, "p2": 1, "p3": 2}
        per_base = {
            (p, f"b{i}"): int(rng.choice([0, 1, 5, 10, 11, 12, 40])) for p, n in sizes.items() for i in range(n)
        }
        per_platform = {p: sum(v for (q, _), v in per_base.items() if q == p) for p in sizes}
        network = sum(per_platform.values())
        ans = protect(per_base, per_platform, network, k=K)
        assert all(v == 0 or v >= K for v in published(ans))
        assert recoverable(ans, per_base) == [], (per_base, ans)


def test_cohort_model_checks_its_fields():
    c = Cohort.model_validate(
        {
            "period": {"start": "2020-01-01", "end": "2027-01-01"},
            "criteria": [{"table": "condition_occurrence", "concepts": [201826]}],
            "age_min": 18,
            "age_max": 60,
            "sex": ["F"],
        }
    )
    assert c.birth_years == (1966, 2008) and c.gender_concepts == (8532,)
    assert c.criteria[0].concept_column == "condition_concept_id"
    for bad in (
        {"period": {"start": "2020-01-01", "end": "2019-01-01"}},
        {"criteria": [{"table": "note", "concepts": [1]}]},
        {"sex": ["X"]},
    ):
        doc = {
            "period": {"start": "2020-01-01", "end": "2021-01-01"},
            "criteria": [{"table": "measurement", "concepts": [1]}],
        }
        doc.update(bad)
        with pytest.raises(ValueError):
            Cohort.model_validate(doc)
    assert dt.date(2020, 1, 1) == c.period.start
