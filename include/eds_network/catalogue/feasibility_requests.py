"""Feasibility questions asked on the operator page (`/projects`): requested -> answered (or failed).

The page records the question (the cohort as `core.cohort.Cohort` JSON, k, who asked and when, audited) and
triggers `eds_project_feasibility` with the request id; the DAG's national task records the protected answer
(`feasibility_query`, never a raw count) and marks the request answered with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, ForeignKey, String, Table, Text, func, select

from eds_network.catalogue.db import engine
from eds_network.catalogue.projects import feasibility_t
from eds_network.catalogue.runs import audit
from eds_network.catalogue.tables import metadata
from eds_network.core.errors import EdsError

request_t = Table(
    "feasibility_request",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("cohort_name", Text, nullable=False),
    Column("cohort", JSON, nullable=False),
    Column("k", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # requested | answered | failed
    Column("requested_by", Text, nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("run_id", Text),
    Column("detail", Text),  # why the trigger failed (no value of the question)
    Column("answered_at", DateTime(timezone=True)),
    Column("feasibility_id", BigInteger, ForeignKey("feasibility_query.id")),
)


class RequestError(EdsError):
    """A feasibility request the catalogue does not have, or one already answered."""


def request(dsn: str, cohort: Mapping[str, Any], k: int, *, actor: str) -> int:
    """Record a requested question; its id (audited with who and when)."""
    name = str(cohort.get("name", "cohort"))
    with engine(dsn).begin() as conn:
        rid = conn.execute(
            request_t.insert()
            .values(cohort_name=name, cohort=dict(cohort), k=int(k), status="requested", requested_by=actor)
            .returning(request_t.c.id)
        ).scalar_one()
        audit(conn, actor, "project.feasibility_requested", f"feasibility_request:{rid}", {"k": int(k)})
    return rid


def set_triggered(dsn: str, request_id: int, *, run_id: str | None, detail: str | None = None) -> None:
    """The DAG run that answers the request, or why it could not be triggered (the request stays requested)."""
    with engine(dsn).begin() as conn:
        conn.execute(request_t.update().where(request_t.c.id == request_id).values(run_id=run_id, detail=detail))


def answer(dsn: str, request_id: int, cohort: Mapping[str, Any], answer_doc: Mapping[str, Any], *, actor: str) -> int:
    """Record the protected answer of a request and mark it answered (audited); the answer's id."""
    with engine(dsn).begin() as conn:
        row = conn.execute(select(request_t.c.status).where(request_t.c.id == request_id)).first()
        if row is None:
            raise RequestError(f"catalogue.feasibility_request: no request {request_id}")
        fid = conn.execute(
            feasibility_t.insert()
            .values(
                cohort_name=str(cohort.get("name", "cohort")), cohort=dict(cohort), k=int(answer_doc["k"]),
                answer=dict(answer_doc), actor=actor,
            )
            .returning(feasibility_t.c.id)
        ).scalar_one()  # fmt: skip
        conn.execute(
            request_t.update()
            .where(request_t.c.id == request_id)
            .values(status="answered", answered_at=func.now(), feasibility_id=fid)
        )
        audit(conn, actor, "project.feasibility", f"feasibility_request:{request_id}", {"k": int(answer_doc["k"])})
    return fid


def requests(dsn: str, *, limit: int = 20) -> list[dict]:
    """The latest requests, newest first, each with its protected answer (None until answered)."""
    q = (
        select(request_t, feasibility_t.c.answer)
        .select_from(request_t.outerjoin(feasibility_t, feasibility_t.c.id == request_t.c.feasibility_id))
        .order_by(request_t.c.id.desc())
        .limit(limit)
    )
    with engine(dsn).connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings().all()]
