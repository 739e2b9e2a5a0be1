"""The operator's milestone tools (`eds milestone …`, the operator page's form): record, correct, withdraw and list
onboarding milestones, with who and when, validated before anything is written and audited in `catalogue.audit`.

Validation refuses, with a message naming the base and milestone (never echoing evidence text): a base the
catalogue does not know, a milestone not among the five, a date that is not YYYY-MM-DD, in the future or before
2000, evidence longer than 500 characters or that looks like a direct identifier (an e-mail address, a number of
13 digits or more such as a NIR): evidence is a document reference or a URL, never a person's data.

`held_deliveries` is the other side of the national gate: per platform whose latest national run was skipped for
missing milestones, which base lacks which milestone, and whether it has been recorded since (then the next
national run delivers).
"""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import select

from eds_network.catalogue.db import engine
from eds_network.catalogue.runs import latest_runs, set_milestone, stage, unset_milestone
from eds_network.catalogue.tables import MILESTONES, base_t, milestone_t
from eds_network.core.errors import EdsError

EVIDENCE_MAX = 500
EARLIEST = dt.date(2000, 1, 1)
_EMAIL = re.compile(r"[^\s@/]+@[^\s@/]+\.[A-Za-z]{2,}")
_LONG_NUMBER = re.compile(r"\d{13,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class MilestoneError(EdsError):
    """A milestone request the catalogue refuses (unknown base or milestone, bad date or evidence)."""


def parse_date(text: str | None, *, base: str | None = None) -> dt.date | None:
    if text is None or not str(text).strip():
        return None
    try:
        return dt.date.fromisoformat(str(text).strip())
    except ValueError:
        raise MilestoneError(f"date {str(text)[:20]!r} is not a date in the form YYYY-MM-DD", base=base) from None


def known_bases(dsn: str) -> list[str]:
    with engine(dsn).connect() as conn:
        return list(conn.execute(select(base_t.c.id).order_by(base_t.c.id)).scalars())


def _check_base(dsn: str, base_id: str) -> None:
    known = known_bases(dsn)
    if base_id not in known:
        shown = ", ".join(known[:30]) + (" …" if len(known) > 30 else "")
        raise MilestoneError(
            f"unknown base {base_id[:64]!r}: the catalogue has {shown or 'no base yet'} "
            "(a network base is registered from config/network.yaml at its first run or onboarding)"
        )


def _check_milestone(milestone: str, base_id: str) -> None:
    if milestone not in MILESTONES:
        raise MilestoneError(
            f"unknown milestone {milestone[:40]!r}: expected one of {', '.join(MILESTONES)}", base=base_id
        )


def check_evidence(evidence: str | None, *, base: str | None = None) -> str | None:
    """The evidence as stored (stripped, None when empty), or a MilestoneError that never quotes it."""
    if evidence is None or not evidence.strip():
        return None
    text = evidence.strip()
    if len(text) > EVIDENCE_MAX:
        raise MilestoneError(f"evidence is {len(text)} characters long (at most {EVIDENCE_MAX})", base=base)
    if _CONTROL.search(text):
        raise MilestoneError("evidence holds control characters", base=base)
    if _EMAIL.search(text) or _LONG_NUMBER.search(text):
        raise MilestoneError(
            "evidence looks like it holds a direct identifier (an e-mail address, or a number of 13 digits or more "
            "such as a NIR): give a document reference or a URL instead",
            base=base,
        )
    return text


def record(
    dsn: str,
    base_id: str,
    milestone: str,
    reached_on: dt.date | None = None,
    *,
    evidence: str | None = None,
    recorded_by: str,
    correct: bool = False,
    today: dt.date | None = None,
) -> dict:
    """Record (or, if already recorded, correct) a milestone; `correct=True` refuses a milestone not recorded yet.

    Returns {base, milestone, reached_on, action} with action milestone.set | milestone.corrected | unchanged."""
    today = today or dt.date.today()
    base_id, milestone = (base_id or "").strip(), (milestone or "").strip()
    _check_base(dsn, base_id)
    _check_milestone(milestone, base_id)
    reached_on = reached_on or today
    if reached_on > today:
        raise MilestoneError(f"{milestone}: date {reached_on} is in the future (today is {today})", base=base_id)
    if reached_on < EARLIEST:
        raise MilestoneError(f"{milestone}: date {reached_on} is before {EARLIEST}", base=base_id)
    evidence = check_evidence(evidence, base=base_id)
    who = (recorded_by or "").strip()
    if not who:
        raise MilestoneError(f"{milestone}: who records it is not known", base=base_id)
    current = current_milestones(dsn, base_id)
    if correct and milestone not in current:
        raise MilestoneError(
            f"{milestone} is not recorded yet: nothing to correct (use `eds milestone set`)", base=base_id
        )
    if evidence is None and milestone in current:
        evidence = current[milestone]["evidence"]  # a date correction keeps the evidence unless a new one is given
    action = set_milestone(dsn, base_id, milestone, reached_on, evidence=evidence, recorded_by=who[:200])
    return {"base": base_id, "milestone": milestone, "reached_on": reached_on.isoformat(), "action": action}


def unset(dsn: str, base_id: str, milestone: str, *, reason: str, recorded_by: str) -> dict:
    """Withdraw a milestone recorded by mistake; the reason is required and audited."""
    base_id, milestone = (base_id or "").strip(), (milestone or "").strip()
    _check_base(dsn, base_id)
    _check_milestone(milestone, base_id)
    why = check_evidence(reason, base=base_id)
    if not why:
        raise MilestoneError(f"{milestone}: withdrawing a milestone needs a reason", base=base_id)
    if not unset_milestone(dsn, base_id, milestone, reason=why, recorded_by=recorded_by.strip()[:200]):
        raise MilestoneError(f"{milestone} is not recorded: nothing to withdraw", base=base_id)
    return {"base": base_id, "milestone": milestone, "action": "milestone.unset"}


def current_milestones(dsn: str, base_id: str) -> dict[str, dict]:
    m = milestone_t
    with engine(dsn).connect() as conn:
        rows = conn.execute(select(m).where(m.c.base_id == base_id)).all()
    return {
        r.milestone: {
            "reached_on": r.reached_on.isoformat(),
            "evidence": r.evidence,
            "recorded_by": r.recorded_by,
            "recorded_at": r.recorded_at.isoformat() if r.recorded_at else None,
        }
        for r in rows
    }


def listing(dsn: str, base_id: str | None = None) -> list[dict]:
    """Per catalogued base (or the one asked, which must exist): its stage and its five milestones."""
    if base_id is not None:
        _check_base(dsn, base_id)
    ids = [base_id] if base_id is not None else known_bases(dsn)
    out = []
    for b in ids:
        have = current_milestones(dsn, b)
        out.append(
            {
                "base": b,
                "stage": stage(have),
                "milestones": [{"milestone": m, **have.get(m, {"reached_on": None})} for m in MILESTONES],
            }
        )
    return out


def held_deliveries(dsn: str) -> list[dict]:
    """Platforms whose latest national run was skipped by the milestone gate: the bases and milestones it named,
    each with `recorded` (reached since: the next national run will deliver) and `missing` (still blocking)."""
    out = []
    for r in latest_runs(dsn):
        details = r.get("details") or {}
        if r["level"] != "national" or r["status"] != "skipped" or details.get("reason") != "milestones":
            continue
        bases = []
        for base_id, missing in sorted((details.get("missing_milestones") or {}).items()):
            have = current_milestones(dsn, base_id)
            bases.append(
                {
                    "base": base_id,
                    "named": list(missing),
                    "missing": [m for m in missing if m not in have],
                    "recorded": [m for m in missing if m in have],
                }
            )
        out.append(
            {
                "platform": r["scope_id"],
                "source_delivery": r["batch_id"].removeprefix("skipped:"),
                "skipped_at": r["recorded_at"].isoformat() if r["recorded_at"] else None,
                "bases": bases,
                "unblocked": all(not b["missing"] for b in bases),
            }
        )
    return out
