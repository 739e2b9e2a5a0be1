"""Quality over time, per base, from the DQD results every night stored in `catalogue.quality_check`.

- `changes(dsn, base)`: the checks newly failing, resolved and still failing between the base's latest night and
  the night before. A check is identified by its stable id: the table and DQD's check id
  (`checkName:table.column[:conceptId]`), the same id every night, whatever the row counts.
- `reapply(checks, thresholds)`: DQD's rule `% violating <= threshold` applied again to stored results with other
  thresholds ({check id or `checkName:table.column` or `checkName`: pct}), without re-running anything;
  `changes(..., thresholds=…)` compares the nights under the new thresholds.
- `trends(dsn, base)`: per night, rows extracted, failing checks and lead time (hours from the end of the
  night's data interval to the platform's first accepted HDH delivery after the run) — the operator page's charts.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import func, select

from eds_network.catalogue.db import engine
from eds_network.catalogue.tables import base_t, quality_check_t, quality_table_t, run_t, run_table_t


def nights(dsn: str, base_id: str) -> list[dict]:
    """The base's local batches with quality results, oldest first: {batch_id, start, end, recorded_at}."""
    q = (
        select(
            quality_table_t.c.batch_id,
            func.max(quality_table_t.c.recorded_at).label("at"),
            func.max(run_t.c.data_interval_start).label("start"),
            func.max(run_t.c.data_interval_end).label("end"),
        )
        .select_from(
            quality_table_t.outerjoin(
                run_t,
                (run_t.c.level == "local")
                & (run_t.c.scope_id == quality_table_t.c.scope_id)
                & (run_t.c.batch_id == quality_table_t.c.batch_id),
            )
        )
        .where(quality_table_t.c.level == "local", quality_table_t.c.scope_id == base_id)
        .group_by(quality_table_t.c.batch_id)
    )
    with engine(dsn).connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q)]
    rows.sort(key=lambda r: (r["start"] or r["at"], r["at"]))
    return [{"batch_id": r["batch_id"], "start": r["start"], "end": r["end"], "recorded_at": r["at"]} for r in rows]


def stable_id(check: Mapping) -> str:
    return f"{check['table_name']}/{check['check_id']}"


def _checks(dsn: str, base_id: str, batch_id: str) -> list[dict]:
    c = quality_check_t.c
    q = select(quality_check_t).where(
        c.level == "local", c.scope_id == base_id, c.batch_id == batch_id, c.base_id == base_id
    )
    with engine(dsn).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def _threshold_for(check: Mapping, thresholds: Mapping[str, float]) -> float | None:
    generic = f"{check['check_name']}:{check['table_name']}.{check['field_name']}" if check["field_name"] else None
    for key in (check["check_id"], generic, check["check_name"]):
        if key and key in thresholds:
            return float(thresholds[key])
    return None


def reapply(checks: list[dict], thresholds: Mapping[str, float]) -> list[dict]:
    """The stored results with `thresholds` applied again (DQD: passed = violating_pct <= threshold). Checks not
    evaluated (not applicable, disabled) stay as they are."""
    out = []
    for c in checks:
        t = _threshold_for(c, thresholds)
        if t is None or c["status"] not in ("passed", "failed"):
            out.append(c)
            continue
        passed = c["violating_pct"] <= t
        out.append({**c, "threshold_pct": t, "passed": passed, "status": "passed" if passed else "failed"})
    return out


def _failing(checks: list[dict]) -> dict[str, dict]:
    return {stable_id(c): c for c in checks if c["status"] == "failed"}


def _brief(c: Mapping) -> dict:
    return {
        "id": stable_id(c),
        "check_name": c["check_name"],
        "table": c["table_name"],
        "column": c["field_name"],
        "category": c["category"],
        "severity": c["severity"],
        "violating_pct": c["violating_pct"],
        "threshold_pct": c["threshold_pct"],
    }


def changes(dsn: str, base_id: str, *, thresholds: Mapping[str, float] | None = None) -> dict:
    """Checks newly failing / resolved / still failing on the latest night versus the night before."""
    ns = nights(dsn, base_id)
    if not ns:
        return {"base_id": base_id, "night": None, "previous": None, "new": [], "resolved": [], "still_failing": []}
    cur = _checks(dsn, base_id, ns[-1]["batch_id"])
    prev = _checks(dsn, base_id, ns[-2]["batch_id"]) if len(ns) > 1 else []
    if thresholds:
        cur, prev = reapply(cur, thresholds), reapply(prev, thresholds)
    now, before = _failing(cur), _failing(prev)
    return {
        "base_id": base_id,
        "night": ns[-1]["batch_id"],
        "previous": ns[-2]["batch_id"] if len(ns) > 1 else None,
        "new": [_brief(now[k]) for k in sorted(set(now) - set(before))],
        "resolved": [_brief(before[k]) for k in sorted(set(before) - set(now))],
        "still_failing": [_brief(now[k]) for k in sorted(set(now) & set(before))],
    }


def trends(dsn: str, base_id: str, *, limit: int = 30) -> list[dict]:
    """Per local run of the base (oldest first, the last `limit`): night, rows extracted, failing checks, lead
    time in hours (None while the night's data has not been delivered to the HDH)."""
    r, rt, qc = run_t.c, run_table_t.c, quality_check_t.c
    with engine(dsn).connect() as conn:
        platform = conn.execute(select(base_t.c.platform_id).where(base_t.c.id == base_id)).scalar()
        runs = conn.execute(
            select(r.id, r.batch_id, r.data_interval_start, r.data_interval_end, r.recorded_at)
            .where(r.level == "local", r.scope_id == base_id)
            .order_by(r.data_interval_start.desc().nulls_last(), r.recorded_at.desc())
            .limit(limit)
        ).all()
        rows = dict(
            conn.execute(
                select(rt.run_id, func.sum(rt.extracted)).where(rt.run_id.in_([x.id for x in runs])).group_by(rt.run_id)
            ).all()
        )
        failing = dict(
            conn.execute(
                select(qc.batch_id, func.count())
                .where(qc.level == "local", qc.scope_id == base_id, qc.status == "failed")
                .group_by(qc.batch_id)
            ).all()
        )
        deliveries = sorted(
            conn.execute(
                select(r.recorded_at).where(r.level == "national", r.scope_id == platform, r.status == "success")
            ).scalars()
        )
    out = []
    for x in reversed(runs):
        delivered = next((d for d in deliveries if d >= x.recorded_at), None)
        lead = (
            round((delivered - x.data_interval_end).total_seconds() / 3600, 1)
            if delivered is not None and x.data_interval_end is not None
            else None
        )
        out.append(
            {
                "batch_id": x.batch_id,
                "night": (x.data_interval_start or x.recorded_at).date().isoformat(),
                "rows": int(rows.get(x.id) or 0),
                "failing_checks": int(failing.get(x.batch_id, 0)),
                "lead_time_hours": lead,
            }
        )
    return out
