"""The network, onboarding milestones, level runs with their row accounting, national deliveries, audit trail."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Table, func, select, text
from sqlalchemy.dialects.postgresql import insert

from eds_network.catalogue.db import engine
from eds_network.catalogue.tables import (
    LEVELS,
    MILESTONES,
    SCHEMA,
    audit_t,
    base_t,
    delivery_t,
    milestone_t,
    national_linkage_t,
    platform_t,
    run_t,
    run_table_t,
)
from eds_network.core.config import Network
from eds_network.core.errors import AccountingError


def audit(conn, actor: str, action: str, obj: str, details: dict | None = None) -> None:
    conn.execute(audit_t.insert().values(actor=actor, action=action, object=obj, details=details or {}))


def register_network(dsn: str, network: Network, actor: str = "eds-network") -> None:
    """Upsert the configured platforms and bases (idempotent)."""
    with engine(dsn).begin() as conn:
        for p in network.platforms:
            conn.execute(
                insert(platform_t)
                .values(id=p.id, label=p.label, kind=p.kind.value)
                .on_conflict_do_update(index_elements=["id"], set_={"label": p.label, "kind": p.kind.value})
            )
            for b in p.members:
                values = {"label": b.label, "kind": b.kind.value, "platform_id": p.id, "holder": p.label}
                res = conn.execute(
                    insert(base_t)
                    .values(id=b.id, **values)
                    .on_conflict_do_update(index_elements=["id"], set_=values)
                    .returning(text("xmax = 0"))
                )
                if res.scalar():
                    audit(conn, actor, "base.registered", f"base:{b.id}", {"platform": p.id})


def set_milestone(
    dsn: str, base_id: str, milestone: str, reached_on: dt.date, *, evidence: str | None, recorded_by: str
) -> str:
    """Record a milestone, or correct one already recorded (same row, new date / evidence / recorder, now).

    Audited as `milestone.set` (first time) or `milestone.corrected` (with the previous date and evidence);
    recording exactly what is already there changes nothing and returns `unchanged`."""
    if milestone not in MILESTONES:
        raise ValueError(f"unknown milestone {milestone!r}; expected one of {', '.join(MILESTONES)}")
    with engine(dsn).begin() as conn:
        before = conn.execute(
            select(milestone_t.c.reached_on, milestone_t.c.evidence)
            .where(milestone_t.c.base_id == base_id, milestone_t.c.milestone == milestone)
            .with_for_update()
        ).first()
        if before is not None and (before.reached_on, before.evidence) == (reached_on, evidence):
            return "unchanged"
        values = {"reached_on": reached_on, "evidence": evidence, "recorded_by": recorded_by, "recorded_at": func.now()}
        conn.execute(
            insert(milestone_t)
            .values(base_id=base_id, milestone=milestone, **values)
            .on_conflict_do_update(index_elements=["base_id", "milestone"], set_=values)
        )
        details = {"milestone": milestone, "reached_on": reached_on.isoformat(), "evidence": evidence}
        if before is not None:
            details |= {"previous_reached_on": before.reached_on.isoformat(), "previous_evidence": before.evidence}
        action = "milestone.corrected" if before is not None else "milestone.set"
        audit(conn, recorded_by, action, f"base:{base_id}", details)
    return action


def unset_milestone(dsn: str, base_id: str, milestone: str, *, reason: str, recorded_by: str) -> bool:
    """Withdraw a milestone recorded by mistake (audited `milestone.unset` with what it was and why)."""
    with engine(dsn).begin() as conn:
        gone = conn.execute(
            milestone_t.delete()
            .where(milestone_t.c.base_id == base_id, milestone_t.c.milestone == milestone)
            .returning(milestone_t.c.reached_on, milestone_t.c.evidence)
        ).first()
        if gone is None:
            return False
        audit(
            conn,
            recorded_by,
            "milestone.unset",
            f"base:{base_id}",
            {
                "milestone": milestone,
                "previous_reached_on": gone.reached_on.isoformat(),
                "previous_evidence": gone.evidence,
                "reason": reason,
            },
        )
    return True


def milestones(dsn: str, base_id: str) -> dict[str, dt.date]:
    with engine(dsn).connect() as conn:
        rows = conn.execute(
            select(milestone_t.c.milestone, milestone_t.c.reached_on).where(milestone_t.c.base_id == base_id)
        ).all()
    return dict(rows)


def stage(reached: Iterable[str]) -> str:
    """The onboarding stage, in the national catalogue's order. Milestones may be reached out of order; a base
    is `available` only when all five are reached, `ready` when the first four are."""
    got = set(reached)
    if set(MILESTONES) <= got:
        return "available"
    if set(MILESTONES[:4]) <= got:
        return "ready"
    for m in reversed(MILESTONES[:4]):
        if m in got:
            return m
    return "registered"


def rows_passed_through(rows: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Row accounting of a level that forwards every row it holds (platform package, national delivery)."""
    return {t: {"extracted": n, "published": n, "quarantined": 0, "excluded_objection": 0} for t, n in rows.items()}


def record_run(
    dsn: str,
    *,
    level: str,
    scope_id: str,
    batch_id: str,
    status: str,
    tables: dict[str, dict] | None = None,
    dag_run_id: str | None = None,
    interval: tuple[dt.datetime, dt.datetime] | None = None,
    details: dict[str, Any] | None = None,
    actor: str = "airflow",
) -> int:
    """Record (or replace, on rerun) one level run and its row accounting. Returns the run id."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}")
    for t, r in (tables or {}).items():
        if r["extracted"] != r["published"] + r["quarantined"] + r["excluded_objection"]:
            raise AccountingError("row accounting does not balance", base=scope_id, table=t)
    values = {
        "status": status,
        "dag_run_id": dag_run_id,
        "details": details or {},
        "data_interval_start": interval[0] if interval else None,
        "data_interval_end": interval[1] if interval else None,
        "recorded_at": func.now(),
    }
    with engine(dsn).begin() as conn:
        run_id = conn.execute(
            insert(run_t)
            .values(level=level, scope_id=scope_id, batch_id=batch_id, **values)
            .on_conflict_do_update(constraint="run_once_per_batch", set_=values)
            .returning(run_t.c.id)
        ).scalar_one()
        conn.execute(run_table_t.delete().where(run_table_t.c.run_id == run_id))
        for t, r in (tables or {}).items():
            conn.execute(
                run_table_t.insert().values(
                    run_id=run_id,
                    table_name=t,
                    extracted=r["extracted"],
                    published=r["published"],
                    quarantined=r["quarantined"],
                    excluded_objection=r["excluded_objection"],
                    tombstones=r.get("tombstones", 0),
                )
            )
        audit(conn, actor, f"run.{level}.{status}", f"{level}:{scope_id}", {"batch_id": batch_id})
    return run_id


def record_delivery(
    dsn: str,
    *,
    delivery_id: str,
    platform_id: str,
    level: str,
    status: str,
    manifest_key: str | None,
    files: list[dict],
    rows: dict,
    key_versions: dict,
    receipt: dict | None = None,
    actor: str = "airflow",
) -> None:
    values = {
        "platform_id": platform_id,
        "level": level,
        "status": status,
        "manifest_key": manifest_key,
        "files": files,
        "bytes": sum(f.get("bytes", 0) for f in files),
        "rows": rows,
        "key_versions": key_versions,
        "receipt": receipt,
        "recorded_at": func.now(),
    }
    with engine(dsn).begin() as conn:
        conn.execute(
            insert(delivery_t)
            .values(id=delivery_id, **values)
            .on_conflict_do_update(index_elements=["id"], set_=values)
        )
        audit(conn, actor, f"delivery.{status}", f"delivery:{delivery_id}", {"platform": platform_id, "level": level})


def record_skipped_delivery(
    dsn: str,
    *,
    platform_id: str,
    source_delivery: str,
    skipped: dict[str, list[str]],
    message: str | None = None,
    actor: str = "airflow",
) -> None:
    """A platform delivery held back by missing milestones: a national run `skipped` with the reasons, and one
    audit entry per blocking base naming the milestones it lacks."""
    record_run(
        dsn,
        level="national",
        scope_id=platform_id,
        batch_id=f"skipped:{source_delivery}",
        status="skipped",
        details={"reason": "milestones", "missing_milestones": skipped, "message": message},
        actor=actor,
    )
    with engine(dsn).begin() as conn:
        for base_id, missing in skipped.items():
            audit(
                conn,
                actor,
                "delivery.skipped",
                f"base:{base_id}",
                {"platform": platform_id, "source_delivery": source_delivery, "missing_milestones": missing},
            )


def mark_transfer_channel(
    dsn: str, base_ids: Iterable[str], on: dt.date | None = None, actor: str = "eds-national"
) -> list[str]:
    """A first accepted national receipt proves the transfer channel: record the milestone where missing."""
    return _mark_where_missing(dsn, base_ids, "transfer_channel", on, "national receipt accepted", actor)


def mark_available(
    dsn: str, base_ids: Iterable[str], delivery_id: str, on: dt.date | None = None, actor: str = "eds-national"
) -> list[str]:
    """The HDH accepted a delivery carrying these bases: they are available at the national level (the end of
    the onboarding lead time). Recorded where missing, the accepted delivery as evidence; never moved later."""
    return _mark_where_missing(dsn, base_ids, "available", on, f"HDH receipt accepted: delivery {delivery_id}", actor)


def _mark_where_missing(
    dsn: str, base_ids: Iterable[str], milestone: str, on: dt.date | None, evidence: str, actor: str
) -> list[str]:
    done = []
    for b in base_ids:
        if milestone not in milestones(dsn, b):
            set_milestone(dsn, b, milestone, on or dt.date.today(), evidence=evidence, recorded_by=actor)
            done.append(b)
    return done


def record_already_delivered(dsn: str, *, platform_id: str, delivery_id: str, actor: str = "airflow") -> bool:
    """A national run found its delivery already in the landing zone: the run that delivered it becomes the
    platform's latest again (its row accounting and receipt kept). Returns whether that run is known here."""
    with engine(dsn).begin() as conn:
        n = conn.execute(
            run_t.update()
            .where(run_t.c.level == "national", run_t.c.scope_id == platform_id, run_t.c.batch_id == delivery_id)
            .values(recorded_at=func.now())
        ).rowcount
        audit(conn, actor, "delivery.already_delivered", f"delivery:{delivery_id}", {"platform": platform_id})
    return bool(n)


def record_national_linkage(dsn: str, summary: dict) -> int:
    """Store a national linkage summary (see transfer.national_linkage): one row per pair of deliveries."""
    with engine(dsn).begin() as conn:
        for pair in summary.get("pairs", []):
            (pa_, pb), (da, db) = pair["platforms"], pair["deliveries"]
            values = {
                "platform_a": pa_,
                "platform_b": pb,
                "shared_persons": pair["shared_persons"],
                "summary_key": summary.get("summary_key"),
                "recorded_at": func.now(),
            }
            conn.execute(
                insert(national_linkage_t)
                .values(delivery_a=da, delivery_b=db, **values)
                .on_conflict_do_update(index_elements=["delivery_a", "delivery_b"], set_=values)
            )
    return len(summary.get("pairs", []))


def national_linkage(dsn: str) -> list[dict]:
    with engine(dsn).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(national_linkage_t))]


def record_key_event(dsn: str, action: str, obj: str, details: dict, actor: str = "airflow") -> None:
    """Audit a key's use, rotation or retirement: connection ids and versions only, never key material."""
    with engine(dsn).begin() as conn:
        audit(conn, actor, action, obj, details)


def latest_runs(dsn: str) -> list[dict]:
    """Per (level, scope): the latest run with its table totals — what the demo summary and the UI show."""
    q = text(f"""
        SELECT DISTINCT ON (r.level, r.scope_id) r.id, r.level, r.scope_id, r.batch_id, r.status, r.details,
               r.recorded_at
        FROM {SCHEMA}.run r ORDER BY r.level, r.scope_id, r.recorded_at DESC""")
    with engine(dsn).connect() as conn:
        runs = [dict(r._mapping) for r in conn.execute(q)]
        for r in runs:
            r["tables"] = {
                row.table_name: dict(row._mapping)
                for row in conn.execute(select(run_table_t).where(run_table_t.c.run_id == r["id"]))
            }
    return runs


def deliveries(dsn: str) -> list[dict]:
    with engine(dsn).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(delivery_t).order_by(delivery_t.c.recorded_at))]


def count(dsn: str, table: Table) -> int:
    with engine(dsn).connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


KEY_EVALUATED = "key.evaluated"
KEY_EVALUATION_REFUSED = "key.evaluation_refused"


def evaluations_on(dsn: str, platform_id: str, base_id: str, day: dt.date) -> int:
    """Level-1 OPRF evaluations the key holder of `platform_id` made for `base_id` on `day` (UTC).

    Summed from the audit by `catalogue.key_evaluations_on` (migration 0006), a SECURITY DEFINER function: the
    key holder's role may execute it but, like every task role, not read the audit itself."""
    q = text(f"SELECT {SCHEMA}.key_evaluations_on(:platform, :base, :day)")
    with engine(dsn).connect() as conn:
        return int(conn.execute(q, {"platform": platform_id, "base": base_id, "day": day}).scalar_one())


def record_evaluations(dsn: str, platform_id: str, base_id: str, details: dict, *, refused: bool = False) -> None:
    """Audit one request's evaluation (or its refusal): counts, batch and key version, never an element."""
    with engine(dsn).begin() as conn:
        audit(
            conn,
            f"keys:{platform_id}",
            KEY_EVALUATION_REFUSED if refused else KEY_EVALUATED,
            f"base:{base_id}",
            {"platform": platform_id, **details},
        )
