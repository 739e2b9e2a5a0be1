"""Research projects and their data permits in the catalogue: what each permit allows, its status timeline, the
datasets extracted for it, withdrawal notices, and an audit entry for every access.

A project is requested with its purpose, the bases, tables and columns it asks for (the minimum necessary), its
cohort and period; the permit (reference, issuer, expiry date) is granted by the data access body; the dataset is
extracted from a pinned snapshot of the national tables, delivered into the project's own area, and deleted at
expiry (or when the project is closed). Status timeline:

    requested -> permit_granted -> extracted -> delivered -> closed | expired

(`extracted` and `delivered` may repeat: a new extract after a withdrawal). The lead time the HDH reports is from
the permit to the first delivery.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Date, DateTime, ForeignKey, String, Table, Text, func, select

from eds_network.catalogue.db import engine
from eds_network.catalogue.runs import audit
from eds_network.catalogue.tables import metadata
from eds_network.core.errors import EdsError

STATUSES = ("requested", "permit_granted", "extracted", "delivered", "closed", "expired")
# status -> the statuses it may follow
ALLOWED_AFTER = {
    "requested": (),
    "permit_granted": ("requested",),
    "extracted": ("permit_granted", "extracted", "delivered"),
    "delivered": ("extracted",),
    "closed": ("requested", "permit_granted", "extracted", "delivered"),
    "expired": ("permit_granted", "extracted", "delivered"),
}
PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{2,40}$")

project_t = Table(
    "project",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("title", Text, nullable=False),
    Column("purpose", Text, nullable=False),
    Column("requester", Text, nullable=False),
    Column("bases", JSON, nullable=False),  # list of base ids
    Column("tables", JSON, nullable=False),  # {table: [columns]}
    Column("cohort", JSON, nullable=False),  # core.cohort.Cohort as JSON
    Column("period_start", Date, nullable=False),
    Column("period_end", Date, nullable=False),
    Column("permit_reference", Text),
    Column("permit_issuer", Text),
    Column("permit_expires_on", Date),
    Column("status", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

project_event_t = Table(
    "project_event",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("project_id", String(64), ForeignKey("project.id"), nullable=False),
    Column("status", String(32), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", Text, nullable=False),
    Column("details", JSON),
)

project_dataset_t = Table(
    "project_dataset",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("project_id", String(64), ForeignKey("project.id"), nullable=False),
    Column("extract_id", Text, nullable=False),
    Column("pins", JSON, nullable=False),  # table -> national snapshot id
    Column("prefix", Text, nullable=False),
    Column("manifest_sha256", Text, nullable=False),
    Column("files", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("rows", JSON, nullable=False),  # table -> rows
    Column("persons", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deleted_at", DateTime(timezone=True)),
    Column("deletion", JSON),  # {objects_deleted, objects_left, reason}
)

project_withdrawal_t = Table(
    "project_withdrawal",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("project_id", String(64), ForeignKey("project.id"), nullable=False),
    Column("project_person_id", BigInteger, nullable=False),  # the project's pseudonym, never the national one
    Column("extract_id", Text, nullable=False),  # the dataset that held the patient
    Column("reason", Text, nullable=False),
    Column("noticed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


# Every feasibility answer given (protected values only: a suppressed count is null), who asked and when.
feasibility_t = Table(
    "feasibility_query",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("cohort_name", Text, nullable=False),
    Column("cohort", JSON, nullable=False),
    Column("k", BigInteger, nullable=False),
    Column("answer", JSON, nullable=False),
    Column("actor", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


class ProjectError(EdsError):
    """A project request the catalogue refuses (unknown project, bad transition, permit missing)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _event(conn, project_id: str, status: str, actor: str, at: dt.datetime, details: dict | None = None) -> None:
    row = conn.execute(select(project_t.c.status).where(project_t.c.id == project_id).with_for_update()).first()
    if row is None:
        raise ProjectError(f"project {project_id!r} is not in the catalogue")
    if row.status not in ALLOWED_AFTER[status]:
        raise ProjectError(f"project {project_id!r} is {row.status}: it cannot become {status}")
    conn.execute(project_t.update().where(project_t.c.id == project_id).values(status=status))
    conn.execute(
        project_event_t.insert().values(project_id=project_id, status=status, at=at, actor=actor, details=details)
    )
    audit(conn, actor, f"project.{status}", f"project:{project_id}", details)


def create(
    dsn: str,
    project_id: str,
    *,
    title: str,
    purpose: str,
    requester: str,
    bases: Sequence[str],
    tables: Mapping[str, Sequence[str]],
    cohort: Mapping[str, Any],
    actor: str,
    at: dt.datetime | None = None,
) -> None:
    """Record a project request (status `requested`)."""
    if not PROJECT_ID.match(project_id):
        raise ProjectError(f"project id {project_id!r}: 3-41 characters, lowercase letters, digits and '-'")
    if not tables or any(not cols for cols in tables.values()):
        raise ProjectError(f"project {project_id!r}: every requested table needs its columns (minimum necessary)")
    at = at or _now()
    with engine(dsn).begin() as conn:
        if conn.execute(select(project_t.c.id).where(project_t.c.id == project_id)).first():
            raise ProjectError(f"project {project_id!r} already exists")
        conn.execute(
            project_t.insert().values(
                id=project_id,
                title=title,
                purpose=purpose,
                requester=requester,
                bases=sorted(bases),
                tables={t: sorted(set(c)) for t, c in sorted(tables.items())},
                cohort=dict(cohort),
                period_start=dt.date.fromisoformat(str(cohort["period"]["start"])),
                period_end=dt.date.fromisoformat(str(cohort["period"]["end"])),
                status="requested",
            )
        )
        conn.execute(project_event_t.insert().values(project_id=project_id, status="requested", at=at, actor=actor))
        audit(conn, actor, "project.requested", f"project:{project_id}", {"bases": sorted(bases)})


def grant(
    dsn: str,
    project_id: str,
    *,
    permit_reference: str,
    issuer: str,
    expires_on: dt.date,
    actor: str,
    at: dt.datetime | None = None,
) -> None:
    """Record the data permit (status `permit_granted`)."""
    at = at or _now()
    if expires_on <= at.date():
        raise ProjectError(f"project {project_id!r}: permit expiry {expires_on} is not in the future")
    with engine(dsn).begin() as conn:
        _event(conn, project_id, "permit_granted", actor, at, {"permit": permit_reference, "issuer": issuer})
        conn.execute(
            project_t.update()
            .where(project_t.c.id == project_id)
            .values(permit_reference=permit_reference, permit_issuer=issuer, permit_expires_on=expires_on)
        )


def set_status(
    dsn: str, project_id: str, status: str, *, actor: str, at: dt.datetime | None = None, details: dict | None = None
) -> None:
    if status not in STATUSES:
        raise ProjectError(f"unknown project status {status!r}; one of {', '.join(STATUSES)}")
    with engine(dsn).begin() as conn:
        _event(conn, project_id, status, actor, at or _now(), details)


def get(dsn: str, project_id: str, *, actor: str) -> dict:
    """One project with its timeline, datasets, withdrawal notices and lead time (the access is audited)."""
    with engine(dsn).begin() as conn:
        row = conn.execute(select(project_t).where(project_t.c.id == project_id)).mappings().first()
        if row is None:
            raise ProjectError(f"project {project_id!r} is not in the catalogue")
        out = _describe(conn, dict(row))
        audit(conn, actor, "project.read", f"project:{project_id}")
    return out


def list_projects(dsn: str, *, actor: str) -> list[dict]:
    with engine(dsn).begin() as conn:
        rows = conn.execute(select(project_t).order_by(project_t.c.id)).mappings().all()
        out = [_describe(conn, dict(r)) for r in rows]
        audit(conn, actor, "project.list", "project:*", {"projects": len(out)})
    return out


def _describe(conn, p: dict) -> dict:
    events = (
        conn.execute(
            select(project_event_t.c.status, project_event_t.c.at, project_event_t.c.actor, project_event_t.c.details)
            .where(project_event_t.c.project_id == p["id"])
            .order_by(project_event_t.c.at, project_event_t.c.id)
        )
        .mappings()
        .all()
    )
    datasets = (
        conn.execute(
            select(project_dataset_t)
            .where(project_dataset_t.c.project_id == p["id"])
            .order_by(project_dataset_t.c.created_at, project_dataset_t.c.id)
        )
        .mappings()
        .all()
    )
    notices = conn.execute(
        select(func.count()).select_from(project_withdrawal_t).where(project_withdrawal_t.c.project_id == p["id"])
    ).scalar()
    p["timeline"] = [dict(e) for e in events]
    p["datasets"] = [dict(d) for d in datasets]
    p["withdrawal_notices"] = notices
    p["lead_time_days"] = lead_time_days(p["timeline"])
    live = [d for d in p["datasets"] if d["deleted_at"] is None]
    p["dataset_bytes"] = sum(d["bytes"] for d in live)
    return p


def summary(dsn: str) -> dict:
    """Aggregates only (no project read, so not an access to audit): projects per status, the live datasets' bytes,
    the median lead time permit -> first delivery, for the operator page's overview."""
    import statistics

    with engine(dsn).connect() as conn:
        by_status = dict(conn.execute(select(project_t.c.status, func.count()).group_by(project_t.c.status)).all())
        live = conn.execute(
            select(func.coalesce(func.sum(project_dataset_t.c.bytes), 0)).where(
                project_dataset_t.c.deleted_at.is_(None)
            )
        ).scalar()
        firsts = conn.execute(
            select(project_event_t.c.project_id, project_event_t.c.status, func.min(project_event_t.c.at))
            .where(project_event_t.c.status.in_(("permit_granted", "delivered")))
            .group_by(project_event_t.c.project_id, project_event_t.c.status)
        ).all()
    at: dict[str, dict[str, dt.datetime]] = {}
    for pid, status, when in firsts:
        at.setdefault(pid, {})[status] = when
    leads = [
        (t["delivered"] - t["permit_granted"]).total_seconds() / 86400
        for t in at.values()
        if "delivered" in t and "permit_granted" in t
    ]
    return {
        "projects": sum(by_status.values()),
        "by_status": {s: by_status[s] for s in STATUSES if s in by_status},
        "live_dataset_bytes": int(live or 0),
        "delivered": len(leads),
        "median_lead_time_hours": round(statistics.median(leads) * 24, 2) if leads else None,
    }


def lead_time_days(timeline: Sequence[Mapping]) -> float | None:
    """Days from the permit to the first delivery (None before both)."""
    granted = next((e["at"] for e in timeline if e["status"] == "permit_granted"), None)
    delivered = next((e["at"] for e in timeline if e["status"] == "delivered"), None)
    if granted is None or delivered is None:
        return None
    return round((delivered - granted).total_seconds() / 86400, 7)


def record_dataset(dsn: str, project_id: str, dataset: Mapping[str, Any], *, actor: str) -> None:
    """Record an extracted dataset (status `extracted`), then its delivery into the project's area (`delivered`)."""
    with engine(dsn).begin() as conn:
        conn.execute(project_dataset_t.insert().values({**dataset, "project_id": project_id}))
        details = {"extract_id": dataset["extract_id"], "bytes": dataset["bytes"], "persons": dataset["persons"]}
        _event(conn, project_id, "extracted", actor, _now(), details)
        _event(conn, project_id, "delivered", actor, _now(), {"prefix": dataset["prefix"]})


def record_deletion(
    dsn: str, project_id: str, extract_id: str, deletion: Mapping[str, Any], *, actor: str, status: str | None
) -> None:
    """Record that a dataset was deleted (and, with `status`, the project closed or expired)."""
    with engine(dsn).begin() as conn:
        conn.execute(
            project_dataset_t.update()
            .where(project_dataset_t.c.project_id == project_id, project_dataset_t.c.extract_id == extract_id)
            .values(deleted_at=_now(), deletion=dict(deletion))
        )
        audit(conn, actor, "project.dataset_deleted", f"project:{project_id}", {"extract_id": extract_id, **deletion})
        if status is not None:
            _event(conn, project_id, status, actor, _now(), {"extract_id": extract_id, **deletion})


def record_withdrawals(
    dsn: str, project_id: str, extract_id: str, person_ids: Sequence[int], *, reason: str, actor: str
) -> int:
    """Withdrawal notices: one per patient (by project pseudonym) of the project's dataset who objected."""
    if not person_ids:
        return 0
    with engine(dsn).begin() as conn:
        conn.execute(
            project_withdrawal_t.insert(),
            [
                {"project_id": project_id, "project_person_id": int(p), "extract_id": extract_id, "reason": reason}
                for p in sorted(person_ids)
            ],
        )
        audit(conn, actor, "project.withdrawal", f"project:{project_id}", {"notices": len(person_ids)})
    return len(person_ids)


def record_feasibility(dsn: str, cohort: Mapping[str, Any], answer: Mapping[str, Any], *, actor: str) -> None:
    """Keep a protected feasibility answer (never a raw count) and audit the query."""
    with engine(dsn).begin() as conn:
        conn.execute(
            feasibility_t.insert().values(
                cohort_name=str(cohort.get("name", "cohort")), cohort=dict(cohort), k=int(answer["k"]),
                answer=dict(answer), actor=actor,
            )
        )  # fmt: skip
        audit(conn, actor, "project.feasibility", f"cohort:{cohort.get('name', 'cohort')}", {"k": answer["k"]})


def feasibility_answers(dsn: str, *, limit: int = 20) -> list[dict]:
    with engine(dsn).connect() as conn:
        rows = conn.execute(select(feasibility_t).order_by(feasibility_t.c.id.desc()).limit(limit)).mappings().all()
    return [dict(r) for r in rows]


def withdrawals(dsn: str, project_id: str, *, actor: str) -> list[dict]:
    with engine(dsn).begin() as conn:
        rows = (
            conn.execute(
                select(project_withdrawal_t)
                .where(project_withdrawal_t.c.project_id == project_id)
                .order_by(project_withdrawal_t.c.id)
            )
            .mappings()
            .all()
        )
        audit(conn, actor, "project.withdrawals_read", f"project:{project_id}")
    return [dict(r) for r in rows]
