"""Mutualised-level checks: SQL on the consolidated warehouse (cross-site foreign keys, duplicate events) and each member table's volume versus its previous nights."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from eds_network.core import omop
from eds_network.core.events import EVENT_IDENTITY, identity_columns
from eds_network.quality.dqd import CHARACTERIZATION, CONVENTION, FATAL
from eds_network.quality.results import CheckResult, _pct
from eds_network.quality.tables import _check_row

DUPLICATE_THRESHOLD_PCT = 5.0
VOLUME_DROP_PCT = 50.0
VOLUME_NIGHTS = 7
VOLUME_MIN_HISTORY = 3


def _warehouse_result(platform: str, table: str, column: str, name: str, total: int, bad: int, **kw) -> CheckResult:
    threshold = kw.pop("threshold_pct", 0.0)
    total, bad = int(total), int(bad)  # sum() over bigint is numeric
    pct = _pct(bad, total)
    return CheckResult(
        check_name=name,
        table=table,
        column=column,
        threshold_pct=threshold,
        rows=int(total),
        violating_rows=int(bad),
        violating_pct=pct,
        passed=pct <= threshold,
        scope="warehouse",
        check_id=f"{name}:{table}.{column}" if column else f"{name}:{table}",
        base=platform,
        **kw,
    )


_FK = {"category": "Conformance", "subcategory": "Relational", "severity": FATAL, "context": "verification"}
_PERSON_FK = (
    "SELECT count(*), count(*) FILTER (WHERE e.person_id IS NOT NULL AND NOT EXISTS "
    "(SELECT 1 FROM omop.person p WHERE p.person_id = e.person_id)) FROM omop.{} e"
)
_VISIT_FK = (
    "SELECT count(*), count(*) FILTER (WHERE e.visit_occurrence_id IS NOT NULL AND NOT EXISTS "
    "(SELECT 1 FROM omop.visit_occurrence v WHERE v.visit_occurrence_id = e.visit_occurrence_id "
    "AND v._site = e._site)) FROM omop.{} e"
)
# A row is a duplicate when a lower-numbered site reported the same event (as platform.linkage flags it).
_DUPLICATES = (
    "SELECT count(*), count(*) FILTER (WHERE _site <> first_site) FROM "
    "(SELECT _site, min(_site) OVER (PARTITION BY {}) AS first_site FROM omop.{}) g"
)


def _maintained(conn) -> dict[str, dict[str, int]] | None:
    """The statistics the warehouse keeps up to date (the platform's `eds_platform.table_stats`, `orphan_rows`,
    `orphan_visit_rows` and `duplicate_event`, brought up to date by each consolidation from what it touched):
    {table: {rows, orphans, visit_orphans, duplicates}}, so that the checks cost what the night changed, not a
    scan of the warehouse. None for a warehouse without them."""
    if conn.execute("SELECT to_regclass('eds_platform.table_stats')").fetchone()[0] is None:
        return None
    out: dict[str, dict[str, int]] = {}
    for query, what in (
        ("SELECT table_name, sum(rows) FROM eds_platform.table_stats GROUP BY 1", "rows"),
        ("SELECT table_name, sum(rows) FROM eds_platform.orphan_rows GROUP BY 1", "orphans"),
        ("SELECT table_name, count(*) FROM eds_platform.duplicate_event GROUP BY 1", "duplicates"),
        ("SELECT table_name, sum(rows) FROM eds_platform.orphan_visit_rows GROUP BY 1", "visit_orphans"),
    ):
        for t, n in conn.execute(query):
            out.setdefault(t, {})[what] = int(n)
    return out


def _foreign_key(
    conn, platform: str, table: str, column: str, query: str, description: str, counted: tuple[int, int] | None = None
) -> CheckResult:
    from psycopg import sql

    total, bad = counted or conn.execute(sql.SQL(query).format(sql.Identifier(table))).fetchone()
    return _warehouse_result(
        platform,
        table,
        column,
        "isForeignKey",
        total,
        bad,
        expectation_type="sql",
        level="FIELD",
        description=description,
        **_FK,
    )


def _duplicates(
    conn, platform: str, table: str, cols: tuple[str, ...], counted: tuple[int, int] | None = None
) -> CheckResult:
    from psycopg import sql

    part = sql.SQL(", ").join(map(sql.Identifier, cols))
    total, bad = counted or conn.execute(sql.SQL(_DUPLICATES).format(part, sql.Identifier(table))).fetchone()
    return _warehouse_result(
        platform,
        table,
        EVENT_IDENTITY[table].concept,
        "crossSiteDuplicates",
        total,
        bad,
        threshold_pct=DUPLICATE_THRESHOLD_PCT,
        category="Plausibility",
        subcategory="Uniqueness",
        severity=CHARACTERIZATION,
        context="validation",
        expectation_type="sql",
        level="TABLE",
        description=f"same {', '.join(cols)} from two or more sites",
    )


def warehouse_checks(conn, platform: str, tables: Iterable[str]) -> list[CheckResult]:
    """Cross-site checks on the consolidated warehouse (`omop.*` with `_site`), one SQL query per check:

    - isForeignKey (fatal, 0 %): every event's person_id exists in omop.person; every visit_occurrence_id
      exists in omop.visit_occurrence *and comes from the same site* (an event of site A must not point
      to a visit of site B).
    - crossSiteDuplicates (characterization, 5 %): rows of an event (`core.events`) that a lower-numbered
      site also reported: the rows the platform flags in eds_platform.duplicate_event.
    Results are in the DQD shape (`base` is the platform); not evaluated when a table is missing. The counts are
    those the warehouse maintains when it has them (`_maintained`), else one query over the table per check."""
    present = {
        r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'omop'")
    }
    kept = _maintained(conn)
    out: list[CheckResult] = []
    for t in tables:
        if t not in present or t == "person":
            continue
        spec = omop.table(t)
        n = kept.get(t, {}) if kept is not None else None
        if spec.has("person_id") and "person" in present:
            what = "person_id found in PERSON (consolidated warehouse, all sites)"
            counted = (n.get("rows", 0), n.get("orphans", 0)) if n is not None else None
            out.append(_foreign_key(conn, platform, t, "person_id", _PERSON_FK, what, counted))
        if t != "visit_occurrence" and spec.has("visit_occurrence_id") and "visit_occurrence" in present:
            what = "visit_occurrence_id found in VISIT_OCCURRENCE at the same site"
            counted = (n.get("rows", 0), n.get("visit_orphans", 0)) if n is not None else None
            out.append(_foreign_key(conn, platform, t, "visit_occurrence_id", _VISIT_FK, what, counted))
        cols = identity_columns(t)
        if cols:
            counted = (n.get("rows", 0), n.get("duplicates", 0)) if n is not None else None
            out.append(_duplicates(conn, platform, t, cols, counted))
    return out


def volume_check(
    base: str,
    table: str,
    today: int | None,
    history: Sequence[int],
    *,
    drop_pct: float = VOLUME_DROP_PCT,
    min_history: int = VOLUME_MIN_HISTORY,
) -> CheckResult:
    """volumeDrop: `today`'s row count versus the median of the previous nights' (`history`).
    Failed when it is more than `drop_pct` % below; not evaluated on the first nights (fewer than
    `min_history` previous nights) or when the median is 0. Severity characterization: a warning."""
    prior = [int(h) for h in history if h is not None]
    median = statistics.median(prior) if prior else 0
    expected = int(math.ceil(median))
    drop = 100.0 * (median - (today or 0)) / median if median > 0 and today is not None else 0.0
    reason = None
    if today is None:
        reason = "no run recorded for this table"
    elif len(prior) < min_history:
        reason = f"first nights: {len(prior)} previous night(s), {min_history} needed"
    elif median <= 0:
        reason = "no rows in the previous nights"
    return CheckResult(
        check_name="volumeDrop",
        table=table,
        column="",
        category="Completeness",
        subcategory="Volume",
        severity=CHARACTERIZATION,
        threshold_pct=float(drop_pct),
        rows=expected,
        violating_rows=max(0, expected - int(today or 0)) if reason is None else 0,
        violating_pct=round(max(drop, 0.0), 6) if reason is None else 0.0,
        passed=reason is None and drop <= drop_pct,
        expectation_type="expect_table_row_count_to_be_between",
        scope="history",
        context="validation",
        level="TABLE",
        check_id=f"volumeDrop:{table}",
        description=f"row count vs the median of the last {len(prior)} night(s) ({expected} rows)",
        not_applicable_reason=reason,
        base=base,
    )


def volume_checks(
    catalogue_dsn: str,
    bases: Mapping[str, Iterable[str]],
    *,
    nights: int = VOLUME_NIGHTS,
    drop_pct: float = VOLUME_DROP_PCT,
    min_history: int = VOLUME_MIN_HISTORY,
) -> list[CheckResult]:
    """volumeDrop for each base -> tables: the latest local run's extracted rows (catalogue `run_table`)
    versus the median of the `nights` previous runs of the same base and table."""
    from eds_network import catalogue

    out = []
    for base, tables in bases.items():
        for t in tables:
            runs = catalogue.table_volumes(catalogue_dsn, base, t, nights=nights + 1)
            today = runs[0][1] if runs else None
            out.append(
                volume_check(base, t, today, [n for _, n in runs[1:]], drop_pct=drop_pct, min_history=min_history)
            )
    return out


def record_platform_quality(
    dsn: str, platform: str, batch_id: str, results: Iterable[CheckResult], *, dag_run_id: str | None = None
) -> dict[str, Any]:
    """Store mutualised-level results (warehouse and volume checks) per table; returns counts for XCom.
    Action: `warn` for every failure (the warehouse is already merged; the operator acts on it)."""
    by_table: dict[str, list[CheckResult]] = {}
    for r in results:
        by_table.setdefault(r.table, []).append(r)
    failed: dict[str, int] = {}
    from eds_network import catalogue

    for t, rs in sorted(by_table.items()):
        rows = [_check_row(r, "warn" if r.status == "failed" else "none", "sql") for r in rs]
        for r in rs:
            if r.status == "failed":
                failed[r.check_id if r.base == platform else f"{r.check_id}@{r.base}"] = 1
        catalogue.record_quality(
            dsn,
            level="mutualised",
            scope_id=platform,
            batch_id=batch_id,
            table_name=t,
            checks=rows,
            summary={
                "engine": "sql",
                "rows_checked": max((r.rows for r in rs if r.scope == "warehouse"), default=0),
                "checks": len(rs),
                "failed": {
                    s: sum(r.status == "failed" and r.severity == s for r in rs)
                    for s in (FATAL, CONVENTION, CHARACTERIZATION)
                },
            },
            dag_run_id=dag_run_id,
        )
    return {"checks": sum(len(v) for v in by_table.values()), "failed": sorted(failed)}


# --------------------------------------------------------------------------------------------------
def check_platform(
    platform, warehouse_dsn: str, catalogue_dsn: str, batch_id: str, *, dag_run_id: str | None = None
) -> dict[str, Any]:
    """The mutualised level's checks for one platform (`config.Platform`): warehouse checks, and the volume
    of each member base/table versus its previous nights; stored in the catalogue. Returns counts."""
    import psycopg

    tables = list(dict.fromkeys(t for b in platform.members for t in b.tables))
    with psycopg.connect(warehouse_dsn) as conn:
        results = warehouse_checks(conn, platform.id, tables)
    results += volume_checks(catalogue_dsn, {b.id: b.tables for b in platform.members})
    return record_platform_quality(catalogue_dsn, platform.id, batch_id, results, dag_run_id=dag_run_id)
