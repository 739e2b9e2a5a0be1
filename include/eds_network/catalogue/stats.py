"""Small-cell protected statistics over a platform warehouse (OMOP CDM 5.4, schema `omop`).

`protected_counts(cells, k=11, totals=...)` is the disclosure control every published count goes through:

- **primary suppression**: a cell (or total) with 0 < n < k is not published (`None`). Zeros are published:
  an empty cell reveals no one.
- **secondary (complementary) suppression**: a suppressed value must not be recoverable from what is
  published. Cells are the unknowns; every published cell and every published total is a linear equation
  (a total is the sum of the cells it covers). A suppressed cell — or a suppressed total — is *disclosed*
  when its value follows from those equations (exact linear check, with rational arithmetic). The classic
  case: exactly one suppressed cell in a row whose total is published (total − published cells). Each
  disclosure is repaired by suppressing the smallest positive published cell of the groups involved that
  protects it, else the smallest total that does; the check runs again until nothing is disclosed.

Table shape: cells are keyed by tuples of the same length (e.g. `(sex, birth_band)`); a total is keyed by
the same tuple with `None` in the summed positions: `("F", None)` is the row total of women, `(None, None)`
the grand total. It covers the cells matching its non-None positions and must equal their sum.
`totals=None` means "the marginal totals are published": every row, column and the grand total are computed
and protected with the cells. `totals={}` publishes cells only (e.g. a top-N list, which has no additive
structure).

Not covered (documented limit): bounds disclosure — an attacker knows a suppressed cell is in [1, k-1] and
suppressed sums are known, which can narrow the interval (e.g. two suppressed cells summing to 2 are both 1).

The warehouse functions (`persons_by_sex_birth_band`, `top_conditions`, `visits_per_year`) compute counts
with SQL on a platform warehouse DSN and return protected results; `base_id` restricts them to one member
base (persons via `eds_platform.person_site`, events via the site number).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from fractions import Fraction

import psycopg

DEFAULT_K = 11
SEX = {8507: "M", 8532: "F"}


# ---------------------------------------------------------------------------------------------------------
# disclosure control


def _covers(total: tuple, cell: tuple) -> bool:
    return all(t is None or t == c for t, c in zip(total, cell, strict=True))


def _order(key: tuple) -> tuple:
    return tuple((v is None, str(v)) for v in key)


def marginal_totals(cells: Mapping[tuple, int]) -> dict[tuple, int]:
    """Every marginal total of the table: each wildcard pattern (row, column, …, grand total)."""
    out: dict[tuple, int] = {}
    if not cells:
        return out
    n = len(next(iter(cells)))
    for mask in itertools.product((False, True), repeat=n):
        if not any(mask):
            continue
        for key, v in cells.items():
            t = tuple(None if m else c for m, c in zip(mask, key, strict=True))
            out[t] = out.get(t, 0) + v
    return out


class _Span:
    """Row space of 0/1 linear forms over the suppressed cells, kept in reduced row echelon form."""

    def __init__(self, size: int):
        self.size = size
        self.rows: dict[int, list[Fraction]] = {}  # pivot column -> row (zero in every other pivot column)

    def reduce(self, v: list[Fraction]) -> list[Fraction]:
        v = list(v)
        for p, row in self.rows.items():
            if v[p]:
                f = v[p]
                v = [a - f * b for a, b in zip(v, row, strict=True)]
        return v

    def add(self, v: list[Fraction]) -> None:
        v = self.reduce(v)
        p = next((i for i, a in enumerate(v) if a), None)
        if p is None:
            return
        v = [a / v[p] for a in v]
        for q, row in self.rows.items():
            if row[p]:
                f = row[p]
                self.rows[q] = [a - f * b for a, b in zip(row, v, strict=True)]
        self.rows[p] = v

    def contains(self, v: list[Fraction]) -> bool:
        return not any(self.reduce(v))


def protected_counts(
    cells: Mapping[tuple, int],
    *,
    k: int = DEFAULT_K,
    totals: Mapping[tuple, int] | None = None,
    suppress: frozenset[tuple] | set[tuple] = frozenset(),
) -> dict:
    """Apply primary and secondary suppression. `suppress` names cells or totals to treat as primary-suppressed
    whatever their value (e.g. a published total that is not the plain sum of its cells). Returns

    {"k", "cells": {key: n | None}, "totals": {key: n | None}, "primary": [keys], "secondary": [keys]}

    where None marks a suppressed value; `primary` and `secondary` list suppressed cell and total keys.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    vals = {tuple(key): int(v) for key, v in cells.items()}
    lengths = {len(key) for key in vals}
    if len(lengths) > 1:
        raise ValueError("all cell keys must have the same length")
    if any(v < 0 for v in vals.values()):
        raise ValueError("counts must be non-negative")
    if any(None in key for key in vals):
        raise ValueError("None is reserved for totals and may not appear in a cell key")
    tots = marginal_totals(vals) if totals is None else {tuple(t): int(v) for t, v in totals.items()}
    cover: dict[tuple, list[tuple]] = {}
    for t, v in tots.items():
        if lengths and len(t) not in lengths:
            raise ValueError(f"total {t!r}: key length differs from the cells'")
        if None not in t:
            raise ValueError(f"total {t!r}: a total key needs at least one None (summed) position")
        cover[t] = [c for c in vals if _covers(t, c)]
        if sum(vals[c] for c in cover[t]) != v:
            raise ValueError(f"total {t!r} = {v} is not the sum of the cells it covers")

    sup_cells = {c for c, v in vals.items() if 0 < v < k or c in suppress}
    sup_tots = {t for t, v in tots.items() if 0 < v < k or t in suppress}
    primary = sup_cells | sup_tots
    secondary: set[tuple] = set()

    while True:
        leak = _disclosed(vals, tots, cover, sup_cells, sup_tots)
        if leak is None:
            break
        what, key = leak
        item_cover = {key} if what == "cell" else set(cover[key])
        related = [t for t in tots if t not in sup_tots and item_cover & set(cover[t])]
        candidates = sorted(
            {c for t in related for c in cover[t] if c not in sup_cells and vals[c] > 0},
            key=lambda c: (vals[c], _order(c)),
        )

        def still_disclosed(cells_: set[tuple], tots_: set[tuple], what=what, key=key) -> bool:
            return _is_disclosed(what, key, vals, tots, cover, cells_, tots_)

        # the next smallest published cell that protects this value, else a total that does
        choice = next((("cell", c) for c in candidates if not still_disclosed(sup_cells | {c}, sup_tots)), None)
        if choice is None:
            by_size = sorted(related, key=lambda t: (tots[t], _order(t)))
            choice = next((("total", t) for t in by_size if not still_disclosed(sup_cells, sup_tots | {t})), None)
        if choice is None:  # no single suppression suffices: make progress and check again
            choice = ("cell", candidates[0]) if candidates else ("total", max(related, key=lambda t: len(cover[t])))
        (sup_cells if choice[0] == "cell" else sup_tots).add(choice[1])
        secondary.add(choice[1])

    return {
        "k": k,
        "cells": {c: (None if c in sup_cells else v) for c, v in sorted(vals.items(), key=lambda i: _order(i[0]))},
        "totals": {t: (None if t in sup_tots else v) for t, v in sorted(tots.items(), key=lambda i: _order(i[0]))},
        "primary": sorted(primary, key=_order),
        "secondary": sorted(secondary, key=_order),
    }


def _span(
    vals: dict[tuple, int],
    tots: dict[tuple, int],
    cover: dict[tuple, list[tuple]],
    sup_cells: set[tuple],
    sup_tots: set[tuple],
):
    """The published totals' equations over the suppressed cells, and a form builder for a total."""
    unknowns = sorted(sup_cells, key=lambda c: (vals[c], _order(c)))
    index = {c: i for i, c in enumerate(unknowns)}

    def form(t: tuple) -> list[Fraction]:
        v = [Fraction(0)] * len(unknowns)
        for c in cover[t]:
            if c in index:
                v[index[c]] = Fraction(1)
        return v

    def unit(c: tuple) -> list[Fraction]:
        v = [Fraction(0)] * len(unknowns)
        v[index[c]] = Fraction(1)
        return v

    span = _Span(len(unknowns))
    for t in tots:
        if t not in sup_tots:
            span.add(form(t))
    return span, unknowns, form, unit


def _is_disclosed(what, key, vals, tots, cover, sup_cells, sup_tots) -> bool:
    span, _, form, unit = _span(vals, tots, cover, sup_cells, sup_tots)
    return span.contains(unit(key) if what == "cell" else form(key))


def _disclosed(
    vals: dict[tuple, int],
    tots: dict[tuple, int],
    cover: dict[tuple, list[tuple]],
    sup_cells: set[tuple],
    sup_tots: set[tuple],
) -> tuple[str, tuple] | None:
    """The first suppressed cell or total whose value follows from the published values, else None."""
    span, unknowns, form, unit = _span(vals, tots, cover, sup_cells, sup_tots)
    for c in unknowns:
        if span.contains(unit(c)):
            return "cell", c
    for t in sorted(sup_tots, key=_order):
        if span.contains(form(t)):
            return "total", t
    return None


def is_safe(result: Mapping, *, k: int | None = None) -> bool:
    """True when no published value of a `protected_counts` result is in [1, k-1]."""
    k = result["k"] if k is None else k
    published = [v for part in ("cells", "totals") for v in result[part].values() if v is not None]
    return all(v == 0 or v >= k for v in published)


# ---------------------------------------------------------------------------------------------------------
# statistics on a platform warehouse


def _site_filter(base_id: str | None, column: str = "_site") -> tuple[str, list]:
    if base_id is None:
        return "", []
    return (
        f" AND {column} = (SELECT min(site_number) FROM eds_platform.person_site WHERE base_id = %s)",
        [base_id],
    )


def persons_by_sex_birth_band(
    dsn: str, *, k: int = DEFAULT_K, band_years: int = 10, base_id: str | None = None
) -> dict:
    """Persons by sex (M, F, other) × birth-year band, with row, column and grand totals, protected."""
    where, params = "", []
    if base_id is not None:
        where = (
            " WHERE EXISTS (SELECT 1 FROM eds_platform.person_site s WHERE s.person_id = p.person_id"
            " AND s.base_id = %s)"
        )
        params = [base_id]
    q = f"SELECT gender_concept_id, (year_of_birth / %s) * %s AS band, count(*) FROM omop.person p{where} GROUP BY 1, 2"
    cells: dict[tuple, int] = {}
    with psycopg.connect(dsn) as conn:
        for gender, band, n in conn.execute(q, [band_years, band_years, *params]):
            sex = SEX.get(gender, "other")
            label = "unknown" if band is None else f"{band}-{band + band_years - 1}"
            cells[(sex, label)] = cells.get((sex, label), 0) + n
    out = protected_counts(cells, k=k)
    out["dimensions"] = ("sex", "birth_years")
    return out


def persons_by_sex_age_band(
    dsn: str, *, reference_year: int, k: int = DEFAULT_K, band_years: int = 10, base_id: str | None = None
) -> dict:
    """Persons by sex (M, F, other) x age band at `reference_year` (0-9, 10-19, …, 100+), with row, column and
    grand totals, protected."""
    where, params = "", []
    if base_id is not None:
        where = (
            " WHERE EXISTS (SELECT 1 FROM eds_platform.person_site s WHERE s.person_id = p.person_id"
            " AND s.base_id = %s)"
        )
        params = [base_id]
    q = (
        "SELECT gender_concept_id, least((%s - year_of_birth) / %s, 10) * %s AS band, count(*) "
        f"FROM omop.person p{where} GROUP BY 1, 2"
    )
    cells: dict[tuple, int] = {}
    with psycopg.connect(dsn) as conn:
        for gender, band, n in conn.execute(q, [reference_year, band_years, band_years, *params]):
            sex = SEX.get(gender, "other")
            if band is None or band < 0:
                label = "unknown"
            elif band >= 10 * band_years:
                label = f"{band}+"
            else:
                label = f"{band}-{band + band_years - 1}"
            cells[(sex, label)] = cells.get((sex, label), 0) + n
    out = protected_counts(cells, k=k)
    out["dimensions"] = ("sex", "age_band")
    return out


def top_conditions(dsn: str, *, n: int = 20, k: int = DEFAULT_K, base_id: str | None = None) -> dict:
    """The n conditions (standard concept) with the most persons; each count protected (no totals)."""
    where, params = _site_filter(base_id)
    q = (
        "SELECT condition_concept_id, count(DISTINCT person_id) FROM omop.condition_occurrence "
        f"WHERE condition_concept_id IS NOT NULL{where} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %s"
    )
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(q, [*params, n]).fetchall()
        names: dict[int, str] = {}
        if rows and conn.execute("SELECT to_regclass('omop.concept')").fetchone()[0]:
            names = dict(
                conn.execute(
                    "SELECT concept_id, concept_name FROM omop.concept WHERE concept_id = ANY(%s)",
                    [[r[0] for r in rows]],
                ).fetchall()
            )
    out = protected_counts({(cid,): persons for cid, persons in rows}, k=k, totals={})
    out["dimensions"] = ("condition_concept_id",)
    out["ranking"] = [
        {"rank": i + 1, "condition_concept_id": cid, "name": names.get(cid), "persons": out["cells"][(cid,)]}
        for i, (cid, _) in enumerate(rows)
    ]
    return out


def visits_per_year(dsn: str, *, k: int = DEFAULT_K, base_id: str | None = None, persons: bool = False) -> dict:
    """Visits per calendar year of visit start, with the grand total, protected. `persons=True` counts the
    persons with at least one visit that year instead (the grand total is then persons with any visit)."""
    where, params = _site_filter(base_id)
    what = "count(DISTINCT person_id)" if persons else "count(*)"
    q = (
        f"SELECT extract(year FROM visit_start_date)::int, {what} FROM omop.visit_occurrence "
        f"WHERE visit_start_date IS NOT NULL{where} GROUP BY 1 ORDER BY 1"
    )
    with psycopg.connect(dsn) as conn:
        cells = {(year,): visits for year, visits in conn.execute(q, params)}
        if persons:  # persons with a visit in any year: not the sum of the years, computed and protected apart
            total = conn.execute(
                f"SELECT count(DISTINCT person_id) FROM omop.visit_occurrence WHERE visit_start_date IS NOT NULL{where}",
                params,
            ).fetchone()[0]
    if persons:
        out = protected_counts(cells, k=k, totals={})
        out["persons_with_a_visit"] = total if total == 0 or total >= k else None
        return {**out, "dimensions": ("year",)}
    out = protected_counts(cells, k=k)
    out["dimensions"] = ("year",)
    return out
