"""Onboarding lead times: days from `contract_signed` to `available`, per base and as a distribution.

The national target is 7 months (213 days) from the signed contract to the base being available in the
catalogue. A base not yet available has no lead time (`days` is None) but a running `elapsed_days`
(contract to `today`), so a base already past the target is visible before it finishes. A base without a
signed contract has neither.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics

from sqlalchemy import select

from eds_network import catalogue

TARGET_DAYS = 213  # 7 months


def lead_times(dsn: str, *, today: dt.date | None = None) -> list[dict]:
    """One dict per catalogued base (network and reference bases), ordered by base id."""
    today = today or dt.date.today()
    with catalogue.engine(dsn).connect() as conn:
        bases = conn.execute(
            select(
                catalogue.base_t.c.id,
                catalogue.base_t.c.label,
                catalogue.base_t.c.kind,
                catalogue.base_t.c.reference,
                catalogue.base_t.c.platform_id,
            ).order_by(catalogue.base_t.c.id)
        ).all()
        reached: dict[str, dict[str, dt.date]] = {}
        for base_id, m, day in conn.execute(
            select(
                catalogue.milestone_t.c.base_id, catalogue.milestone_t.c.milestone, catalogue.milestone_t.c.reached_on
            )
        ):
            reached.setdefault(base_id, {})[m] = day
    out = []
    for b in bases:
        ms = reached.get(b.id, {})
        start, end = ms.get("contract_signed"), ms.get("available")
        days = (end - start).days if start and end else None
        elapsed = (today - start).days if start and not end else None
        out.append(
            {
                "base_id": b.id,
                "label": b.label,
                "kind": b.kind,
                "reference": b.reference,
                "platform_id": b.platform_id,
                "contract_signed": start,
                "available": end,
                "days": days,
                "elapsed_days": elapsed,
                "stage": catalogue.stage(ms),
            }
        )
    return out


def _quantile(sorted_values: list[int], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default 'linear' method)."""
    if not sorted_values:
        return None
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def distribution(
    dsn: str, target_days: int = TARGET_DAYS, *, today: dt.date | None = None, reference_only: bool = False
) -> dict:
    """Lead-time distribution over the bases that are available (contract signed → available).

    within_target / over_target count the finished bases; pending counts the bases with a contract but not
    yet available, and pending_over_target those of them already past the target.
    """
    rows = [r for r in lead_times(dsn, today=today) if r["reference"] or not reference_only]
    done = sorted(r["days"] for r in rows if r["days"] is not None)
    pending = [r for r in rows if r["elapsed_days"] is not None]
    return {
        "target_days": target_days,
        "bases": len(rows),
        "available": len(done),
        "within_target": sum(1 for d in done if d <= target_days),
        "over_target": sum(1 for d in done if d > target_days),
        "pending": len(pending),
        "pending_over_target": sum(1 for r in pending if r["elapsed_days"] > target_days),
        "median_days": statistics.median(done) if done else None,
        "p90_days": _quantile(done, 0.9),
        "min_days": done[0] if done else None,
        "max_days": done[-1] if done else None,
    }
