"""Small-cell protected statistics of each base, computed on its platform warehouse after each consolidation
and kept in `catalogue.base_statistics`: what the catalogue, the operator page and the API show.

Per base (k = 11 by default, `EDS_STATS_K`):
  - persons by sex x 10-year age band (age at the reference date's year), with row, column and grand totals:
    primary suppression under k and secondary (complementary) suppression (`stats.protected_counts`);
  - persons with at least one visit, per calendar year of visit start (each year a count of persons);
  - the top 20 conditions (standard concept), counted on persons.
Only what may be published is stored: a suppressed value is null, and nothing in [1, k-1] is ever written
(`is_publishable` is asserted before the write). Keys are strings so the JSON is what the API serves.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from eds_network.catalogue import stats
from eds_network.catalogue.db import engine
from eds_network.catalogue.tables import base_statistics_t

K = int(os.environ.get("EDS_STATS_K", stats.DEFAULT_K))
TOP_N = 20


def _label(key: tuple) -> str:
    return "total" if all(v is None for v in key) else " / ".join("all" if v is None else str(v) for v in key)


def _band_order(band: str) -> tuple[bool, int]:
    start = band.split("-")[0].rstrip("+")
    return (not start.isdigit(), int(start) if start.isdigit() else 0)


def _tables(warehouse_dsn: str) -> set[str]:
    """The OMOP tables of the warehouse (a platform may not carry visits or conditions)."""
    import psycopg

    with psycopg.connect(warehouse_dsn) as conn:
        rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'omop'")
        return {r[0] for r in rows}


def compute(warehouse_dsn: str, base_id: str, *, reference_date: dt.date, k: int = K) -> dict:
    """The protected statistics of one member base of a warehouse, as JSON-able data."""
    have = _tables(warehouse_dsn)
    sex_age = stats.persons_by_sex_age_band(warehouse_dsn, reference_year=reference_date.year, k=k, base_id=base_id)
    visits = (
        stats.visits_per_year(warehouse_dsn, k=k, base_id=base_id, persons=True)
        if "visit_occurrence" in have
        else {"cells": {}, "persons_with_a_visit": 0}
    )
    top = (
        stats.top_conditions(warehouse_dsn, n=TOP_N, k=k, base_id=base_id)
        if "condition_occurrence" in have
        else {"ranking": []}
    )
    sexes = sorted({c[0] for c in sex_age["cells"]})
    bands = sorted({c[1] for c in sex_age["cells"]}, key=_band_order)
    return {
        "k": k,
        "reference_date": reference_date.isoformat(),
        "persons_by_sex_age": {
            "sexes": sexes,
            "bands": bands,
            "cells": [
                {"sex": s, "age_band": b, "persons": sex_age["cells"].get((s, b), 0)} for b in bands for s in sexes
            ],
            "totals": [{"of": _label(t), "persons": v} for t, v in sex_age["totals"].items()],
            "suppressed": len(sex_age["primary"]) + len(sex_age["secondary"]),
        },
        "persons_with_a_visit_per_year": {
            "years": [{"year": y[0], "persons": v} for y, v in visits["cells"].items()],
            "any_year": visits["persons_with_a_visit"],
        },
        "top_conditions": [
            {"rank": r["rank"], "concept_id": r["condition_concept_id"], "name": r["name"], "persons": r["persons"]}
            for r in top["ranking"]
        ],
    }


def published_counts(doc: dict) -> Iterable[int]:
    """Every count a statistics document publishes (nulls are suppressed values)."""
    p = doc["persons_by_sex_age"]
    yield from (c["persons"] for c in p["cells"] if c["persons"] is not None)
    yield from (t["persons"] for t in p["totals"] if t["persons"] is not None)
    v = doc["persons_with_a_visit_per_year"]
    yield from (y["persons"] for y in v["years"] if y["persons"] is not None)
    if v["any_year"] is not None:
        yield v["any_year"]
    yield from (c["persons"] for c in doc["top_conditions"] if c["persons"] is not None)


def is_publishable(doc: dict) -> bool:
    return all(n == 0 or n >= doc["k"] for n in published_counts(doc))


def record(
    dsn: str,
    warehouse_dsn: str,
    platform_id: str,
    base_ids: Iterable[str],
    *,
    reference_date: dt.date,
    dag_run_id: str | None = None,
    k: int = K,
) -> dict[str, dict]:
    """Compute and replace the statistics of each member base; returns {base: document}."""
    out = {}
    for base_id in base_ids:
        doc = compute(warehouse_dsn, base_id, reference_date=reference_date, k=k)
        if not is_publishable(doc):  # protected_counts guarantees it; never write a small cell if it did not
            raise AssertionError(f"base {base_id}: a statistic under k={k} would be published")
        values = {
            "platform_id": platform_id,
            "k": k,
            "reference_date": reference_date,
            "statistics": doc,
            "dag_run_id": dag_run_id,
        }
        with engine(dsn).begin() as conn:
            conn.execute(
                insert(base_statistics_t)
                .values(base_id=base_id, **values)
                .on_conflict_do_update(index_elements=["base_id"], set_=values)
            )
        out[base_id] = doc
    return out


def latest(dsn: str, base_id: str | None = None) -> dict[str, dict]:
    """{base: statistics document} as recorded (one base, or all)."""
    q = select(base_statistics_t.c.base_id, base_statistics_t.c.statistics)
    if base_id is not None:
        q = q.where(base_statistics_t.c.base_id == base_id)
    with engine(dsn).connect() as conn:
        return {r.base_id: r.statistics for r in conn.execute(q)}
