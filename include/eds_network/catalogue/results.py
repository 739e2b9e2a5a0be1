"""Per-night results: platform table statistics, member arrivals, data quality results, table volumes."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert

from eds_network.catalogue.db import engine
from eds_network.catalogue.runs import audit
from eds_network.catalogue.tables import (
    LEVELS,
    member_arrival_t,
    platform_table_stats_t,
    quality_check_t,
    quality_table_t,
    run_t,
    run_table_t,
)


def record_platform_stats(
    dsn: str, platform_id: str, standardisation: dict[str, dict[str, dict]], duplicates: dict[str, dict[str, int]]
) -> None:
    """Replace the platform's per base and table statistics with the latest consolidation's."""
    with engine(dsn).begin() as conn:
        conn.execute(platform_table_stats_t.delete().where(platform_table_stats_t.c.platform_id == platform_id))
        for base_id, per_table in standardisation.items():
            for t, st in per_table.items():
                conn.execute(
                    platform_table_stats_t.insert().values(
                        platform_id=platform_id,
                        base_id=base_id,
                        table_name=t,
                        rows=st["rows"],
                        unmapped_concepts=st["unmapped_concepts"],
                        unmapped_rate=st["unmapped_rate"],
                        unmapped_units=st.get("unmapped_units", 0),
                        duplicate_events=duplicates.get(base_id, {}).get(t, 0),
                    )
                )


def platform_stats(dsn: str, platform_id: str | None = None) -> list[dict]:
    q = select(platform_table_stats_t).order_by(
        platform_table_stats_t.c.platform_id, platform_table_stats_t.c.base_id, platform_table_stats_t.c.table_name
    )
    if platform_id:
        q = q.where(platform_table_stats_t.c.platform_id == platform_id)
    with engine(dsn).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def record_arrivals(
    dsn: str,
    platform_id: str,
    arrivals: dict[str, dict],
    *,
    dag_run_id: str | None = None,
    actor: str = "airflow",
) -> None:
    """Record each member's arrival for its night ({base: {status, night_end, reason}}). A member recorded
    late that arrives afterwards becomes `arrived_late` (the lateness is never erased); every status other
    than `arrived` is audited once."""
    with engine(dsn).begin() as conn:
        for base_id, a in arrivals.items():
            night_end = dt.datetime.fromisoformat(a["night_end"])
            status = a["status"]
            before = conn.execute(
                select(member_arrival_t.c.status).where(
                    member_arrival_t.c.platform_id == platform_id,
                    member_arrival_t.c.base_id == base_id,
                    member_arrival_t.c.night_end == night_end,
                )
            ).scalar()
            if status == "arrived" and before in ("late", "arrived_late"):
                status = "arrived_late"
            values = {"status": status, "dag_run_id": dag_run_id, "reason": a.get("reason"), "recorded_at": func.now()}
            conn.execute(
                insert(member_arrival_t)
                .values(platform_id=platform_id, base_id=base_id, night_end=night_end, **values)
                .on_conflict_do_update(index_elements=["platform_id", "base_id", "night_end"], set_=values)
            )
            if status != before and status != "arrived":
                audit(
                    conn,
                    actor,
                    f"member.{status}",
                    f"base:{base_id}",
                    {"platform": platform_id, "night_end": night_end.isoformat()},
                )


def arrivals(dsn: str, platform_id: str | None = None) -> list[dict]:
    q = select(member_arrival_t).order_by(member_arrival_t.c.night_end, member_arrival_t.c.base_id)
    if platform_id:
        q = q.where(member_arrival_t.c.platform_id == platform_id)
    with engine(dsn).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


# --------------------------------------------------------------------------------------------------
# Data quality results (written through eds_network.quality; counts, percentages and check names only)


def record_quality(
    dsn: str,
    *,
    level: str,
    scope_id: str,
    batch_id: str,
    table_name: str,
    checks: list[dict],
    summary: dict,
    dag_run_id: str | None = None,
) -> int:
    """Replace the quality results of one (level, scope, batch, table): rerunning a night replaces them.

    `checks`: rows of `quality_check` (without the run key); `summary`: the `quality_table` row's values."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}")
    key = {"level": level, "scope_id": scope_id, "batch_id": batch_id, "table_name": table_name}
    with engine(dsn).begin() as conn:
        conn.execute(quality_check_t.delete().where(*(quality_check_t.c[k] == v for k, v in key.items())))
        if checks:
            conn.execute(quality_check_t.insert(), [{**c, **key, "dag_run_id": dag_run_id} for c in checks])
        values = {**summary, "dag_run_id": dag_run_id, "recorded_at": func.now()}
        conn.execute(
            insert(quality_table_t).values(**key, **values).on_conflict_do_update(index_elements=list(key), set_=values)
        )
    return len(checks)


def quality_batches(dsn: str, level: str, scope_id: str) -> list[str]:
    """Batch ids with quality results for one scope, the most recently recorded first."""
    q = (
        select(quality_table_t.c.batch_id, func.max(quality_table_t.c.recorded_at).label("at"))
        .where(quality_table_t.c.level == level, quality_table_t.c.scope_id == scope_id)
        .group_by(quality_table_t.c.batch_id)
        .order_by(text("at DESC"))
    )
    with engine(dsn).connect() as conn:
        return [r.batch_id for r in conn.execute(q)]


def quality_results(dsn: str, level: str, scope_id: str, batch_id: str) -> tuple[list[dict], list[dict]]:
    """(checks, tables) of one batch: `quality_check` rows and `quality_table` rows, as dicts."""
    with engine(dsn).connect() as conn:
        checks = [
            dict(r._mapping)
            for r in conn.execute(
                select(quality_check_t)
                .where(
                    quality_check_t.c.level == level,
                    quality_check_t.c.scope_id == scope_id,
                    quality_check_t.c.batch_id == batch_id,
                )
                .order_by(quality_check_t.c.table_name, quality_check_t.c.base_id, quality_check_t.c.check_id)
            )
        ]
        tables = [
            dict(r._mapping)
            for r in conn.execute(
                select(quality_table_t)
                .where(
                    quality_table_t.c.level == level,
                    quality_table_t.c.scope_id == scope_id,
                    quality_table_t.c.batch_id == batch_id,
                )
                .order_by(quality_table_t.c.table_name)
            )
        ]
    return checks, tables


def table_volumes(dsn: str, base_id: str, table_name: str, *, before: dt.datetime | None = None, nights: int = 8):
    """(data_interval_start, extracted rows) of the base's latest local runs of one table, newest first."""
    q = (
        select(run_t.c.data_interval_start, run_table_t.c.extracted)
        .join(run_table_t, run_table_t.c.run_id == run_t.c.id)
        .where(
            run_t.c.level == "local",
            run_t.c.scope_id == base_id,
            run_table_t.c.table_name == table_name,
            run_t.c.data_interval_start.is_not(None),
        )
        .order_by(run_t.c.data_interval_start.desc())
        .limit(nights)
    )
    if before is not None:
        q = q.where(run_t.c.data_interval_start < before)
    with engine(dsn).connect() as conn:
        return [(r.data_interval_start, r.extracted) for r in conn.execute(q)]
