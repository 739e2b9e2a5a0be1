"""Feasibility on the national tables: patients matching a cohort per platform and network-wide, deduplicated by
the national (level-2) pseudonym. Counts only: no row, no id leaves this module.

Read from one pinned state of the tables (`pins`: table -> snapshot id, the current snapshots when not given), so
a count can be reproduced and the extract of a permit reads the same rows as its feasibility did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, In, LessThan

from eds_network.core.cohort import Cohort
from eds_network.national.tables import NAMESPACE, PLATFORM_COLUMN, table_names

NETWORK = "*"  # the key of the network-wide count


def current_pins(catalog: SqlCatalog) -> dict[str, int]:
    """Table -> its current snapshot id (tables with no snapshot left out)."""
    out = {}
    for name in table_names(catalog):
        snap = catalog.load_table((NAMESPACE, name)).metadata.current_snapshot_id
        if snap is not None:
            out[name] = snap
    return out


def _scan(catalog: SqlCatalog, table: str, pins: Mapping[str, int], row_filter, fields: tuple[str, ...]):
    tbl = catalog.load_table((NAMESPACE, table))
    return tbl.scan(row_filter=row_filter, selected_fields=fields, snapshot_id=pins[table]).to_arrow()


def cohort_persons(
    catalog: SqlCatalog, cohort: Cohort, pins: Mapping[str, int], *, platforms: Iterable[str] | None = None
) -> dict[str, set[int]]:
    """Platform -> national person ids matching `cohort` (concept sets already expanded) on that platform's rows,
    and NETWORK -> those matching on all rows (a patient's criteria may be met at different platforms).
    `platforms` restricts the rows considered to those platforms' (a permit's)."""
    if "person" not in pins or any(c.table not in pins for c in cohort.criteria):
        return {NETWORK: set()}
    lo, hi = cohort.birth_years
    pf = AlwaysTrue()
    if cohort.age_min is not None or cohort.age_max is not None:
        pf = And(GreaterThanOrEqual("year_of_birth", lo), LessThan("year_of_birth", hi + 1))
    if cohort.gender_concepts:
        pf = And(pf, In("gender_concept_id", set(cohort.gender_concepts)))
    only = In(PLATFORM_COLUMN, set(platforms)) if platforms is not None else AlwaysTrue()
    pf = And(pf, only)
    people = _scan(catalog, "person", pins, pf, (PLATFORM_COLUMN, "person_id"))
    eligible = set(people.column("person_id").to_pylist())
    per_platform: dict[str, set[int]] | None = None
    network: set[int] | None = None
    for c in cohort.criteria:
        f = And(
            And(In(c.concept_column, set(c.concepts)), only),
            And(
                GreaterThanOrEqual(c.date_column, cohort.period.start.isoformat()),
                LessThan(c.date_column, cohort.period.end.isoformat()),
            ),
        )
        rows = _scan(catalog, c.table, pins, f, (PLATFORM_COLUMN, "person_id"))
        hits: dict[str, set[int]] = {}
        for p, pid in zip(rows.column(PLATFORM_COLUMN).to_pylist(), rows.column("person_id").to_pylist(), strict=True):
            if pid in eligible:
                hits.setdefault(p, set()).add(pid)
        every = set().union(*hits.values()) if hits else set()
        if per_platform is None:
            per_platform, network = hits, every
        else:
            per_platform = {p: s & hits.get(p, set()) for p, s in per_platform.items()}
            network &= every
    out = {p: s for p, s in (per_platform or {}).items()}
    out[NETWORK] = network or set()
    return out


def platform_counts(catalog: SqlCatalog, cohort: Cohort, pins: Mapping[str, int]) -> dict[str, int]:
    """Platform -> matching persons, NETWORK -> matching persons network-wide (each person once)."""
    return {p: len(s) for p, s in cohort_persons(catalog, cohort, pins).items()}
