"""The operator page's view model: everything the page and the JSON API show, from the catalogue only
(counts, dates, statuses, ids: never a patient value), as plain JSON-able data."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import select

from eds_network import catalogue
from eds_network.catalogue import base_stats, lead_time, milestone_records, projects, quality_label, quality_trends
from eds_network.core.config import Network

MILESTONE_LABELS = {
    "contract_signed": "Contract signed",
    "documentation": "Documentation",
    "preparation": "Preparation",
    "transfer_channel": "Transfer channel",
    "available": "Available",
}
LEVEL_LABELS = {"local": "Local (hospital EDS)", "mutualised": "Mutualised platform", "national": "National (HDH)"}
STAGE_LABELS = {
    "registered": "registered",
    "contract_signed": "contract signed",
    "documentation": "documentation",
    "preparation": "preparation",
    "transfer_channel": "transfer channel",
    "ready": "ready",
    "available": "available",
}


# ---------------------------------------------------------------------------------------------------------
# view model
# ---------------------------------------------------------------------------------------------------------


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def _quality(level: str, run: dict, totals: dict[str, int]) -> str:
    """ok / warn / fail from what the catalogue recorded for the run (no check value is shown)."""
    details = run.get("details") or {}
    if run["status"] == "failed":
        return "fail"
    if level == "local":
        if details.get("failed_tables"):
            return "fail"
        return "warn" if totals["quarantined"] else "ok"
    if level == "mutualised":
        if details.get("rejected"):
            return "fail"
        checks = details.get("checks") or {}
        failed = [c for c in checks.values() if isinstance(c, dict) and c.get("passed") is False]
        return "warn" if failed or run["status"] != "success" else "ok"
    receipt = details.get("receipt")
    return "ok" if receipt in (None, "accepted") and run["status"] == "success" else "fail"


def _run_summary(level: str, run: dict | None, dag_id: str) -> dict | None:
    if run is None:
        return None
    keys = ("extracted", "published", "quarantined", "excluded_objection", "tombstones")
    totals = {k: sum(int(t.get(k) or 0) for t in run["tables"].values()) for k in keys}
    dag_run_id = run.get("dag_run_id")
    return {
        "run_id": run["id"],
        "status": run["status"],
        "batch_id": run["batch_id"],
        "dag_id": dag_id,
        "dag_run_id": dag_run_id,
        "recorded_at": _iso(run["recorded_at"]),
        "data_interval_start": _iso(run.get("data_interval_start")),
        "data_interval_end": _iso(run.get("data_interval_end")),
        "tables": len(run["tables"]),
        "rows": totals,
        "quality": _quality(level, run, totals),
        "link": f"/dags/{dag_id}/runs/{dag_run_id}" if dag_run_id else f"/dags/{dag_id}/runs",
    }


def _latest_runs(dsn: str) -> dict[tuple[str, str], dict]:
    runs = catalogue.latest_runs(dsn)
    with catalogue.engine(dsn).connect() as conn:
        extra = {
            r.id: r
            for r in conn.execute(
                select(
                    catalogue.run_t.c.id,
                    catalogue.run_t.c.dag_run_id,
                    catalogue.run_t.c.data_interval_start,
                    catalogue.run_t.c.data_interval_end,
                ).where(catalogue.run_t.c.id.in_([r["id"] for r in runs]))
            )
        }
    out = {}
    for r in runs:
        e = extra.get(r["id"])
        if e is not None:
            r.update(
                dag_run_id=e.dag_run_id,
                data_interval_start=e.data_interval_start,
                data_interval_end=e.data_interval_end,
            )
        out[(r["level"], r["scope_id"])] = r
    return out


def _milestone_rows(dsn: str) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    with catalogue.engine(dsn).connect() as conn:
        for m in conn.execute(select(catalogue.milestone_t)):
            out.setdefault(m.base_id, {})[m.milestone] = {
                "date": m.reached_on.isoformat(),
                "evidence": m.evidence,
                "recorded_by": m.recorded_by,
                "recorded_at": _iso(m.recorded_at),
            }
    return out


def _out_of_order(reached: dict[str, dict]) -> list[str]:
    """Milestones reached before an earlier milestone of the national catalogue's order."""
    late = []
    order = catalogue.MILESTONES
    for i, m in enumerate(order):
        if m not in reached:
            continue
        for earlier in order[:i]:
            if earlier not in reached or reached[earlier]["date"] > reached[m]["date"]:
                late.append(m)
                break
    return late


def _lead(row: dict, target: int) -> dict:
    if row["days"] is not None:
        state = "within" if row["days"] <= target else "over"
        return {"days": row["days"], "elapsed_days": None, "state": state, "target_days": target}
    if row["elapsed_days"] is not None:
        state = "running" if row["elapsed_days"] <= target else "running_over"
        return {"days": None, "elapsed_days": row["elapsed_days"], "state": state, "target_days": target}
    return {"days": None, "elapsed_days": None, "state": "not_started", "target_days": target}


AUDIT_DETAIL_KEYS = (
    "milestone",
    "reached_on",
    "previous_reached_on",
    "batch_id",
    "platform",
    "level",
    "kind",
    "reference",
)


def recent_audit(dsn: str, limit: int = 20) -> list[dict]:
    """The newest entries of the append-only audit trail: who, what, when, on which object (and a few known
    detail keys, ids and dates only)."""
    a = catalogue.audit_t
    with catalogue.engine(dsn).connect() as conn:
        rows = conn.execute(select(a).order_by(a.c.id.desc()).limit(max(1, min(limit, 500)))).all()
    return [
        {
            "id": r.id,
            "at": _iso(r.at),
            "actor": r.actor,
            "action": r.action,
            "object": r.object,
            "details": {k: v for k, v in (r.details or {}).items() if k in AUDIT_DETAIL_KEYS},
        }
        for r in rows
    ]


def data_docs_file(root: Path | None, rel: str) -> Path | None:
    """The file `rel` under the Data Docs root (a folder means its index.html), or None: never outside the root."""
    if root is None:
        return None
    base = Path(root).resolve()
    p = (base / rel).resolve()
    if p != base and base not in p.parents:
        return None
    if p.is_dir():
        p = p / "index.html"
    return p if p.is_file() else None


def data_docs_index(root: Path | None, base_id: str, dsn: str | None = None) -> dict[str, str]:
    """{table: path under the root} of the base's latest local Data Docs, as the pipeline recorded them in
    `catalogue.quality_table.data_docs_path` (GX builds one site per table), when they exist under the root."""
    if root is None or dsn is None:
        return {}
    q = catalogue.quality_table_t
    with catalogue.engine(dsn).connect() as conn:
        rows = conn.execute(
            select(q.c.table_name, q.c.data_docs_path)
            .where(q.c.level == "local", q.c.scope_id == base_id, q.c.data_docs_path.is_not(None))
            .order_by(q.c.recorded_at)
        ).all()
    base = Path(root).resolve()
    out = {}
    for table, path in rows:  # newest last: it wins
        p = Path(path).resolve()
        if base in p.parents and p.is_file():
            out[table] = p.relative_to(base).as_posix()
    return dict(sorted(out.items()))


def _quality_over_time(dsn: str, base_id: str) -> dict:
    """DQD checks newly failing / resolved / still failing since the previous night, and the nightly trends."""
    return {"changes": quality_trends.changes(dsn, base_id), "trends": quality_trends.trends(dsn, base_id)}


def _levels_and_links(dsn, base_id, configured, platform, runs, data_docs_dir, prefix) -> tuple[dict, dict]:
    """A network base's last run per level, and its links (DAG runs, each table's Data Docs)."""
    levels: dict[str, dict | None] = {}
    links: dict[str, Any] = {"dag_runs": None, "data_docs": None, "data_docs_tables": {}}
    if configured is None or platform is None:
        return levels, links
    dag_id = configured.dag_id
    links["dag_runs"] = f"/dags/{dag_id}/runs"
    levels["local"] = _run_summary("local", runs.get(("local", base_id)), dag_id)
    levels["mutualised"] = _run_summary("mutualised", runs.get(("mutualised", platform.id)), platform.dag_id)
    levels["national"] = _run_summary("national", runs.get(("national", platform.id)), "eds_national")
    docs = {t: f"{prefix}/data-docs/{rel}" for t, rel in data_docs_index(data_docs_dir, base_id, dsn).items()}
    links["data_docs_tables"] = docs
    links["data_docs"] = docs.get("person") or next(iter(docs.values()), None)
    return levels, links


def _deliveries(dsn: str) -> list[dict]:
    """National deliveries and their receipts, newest first."""
    out = []
    for d in catalogue.deliveries(dsn):
        receipt = d["receipt"] or {}
        out.append(
            {
                "id": d["id"],
                "platform_id": d["platform_id"],
                "level": d["level"],
                "status": d["status"],
                "files": len(d["files"] or []),
                "bytes": d["bytes"] or 0,
                "rows": sum(int(v or 0) for v in (d["rows"] or {}).values()),
                "key_versions": d["key_versions"] or {},
                "receipt": receipt.get("status"),
                "recorded_at": _iso(d["recorded_at"]),
                "link": "/dags/eds_national/runs",
            }
        )
    out.reverse()
    return out


def network_view(
    dsn: str,
    network: Network,
    *,
    today: dt.date | None = None,
    data_docs_dir: Path | None = None,
    prefix: str = "/eds",
) -> dict[str, Any]:
    """Everything the page and the JSON API show, as plain JSON-able data."""
    today = today or dt.date.today()
    target = lead_time.TARGET_DAYS
    runs = _latest_runs(dsn)
    reached = _milestone_rows(dsn)
    leads = {r["base_id"]: r for r in lead_time.lead_times(dsn, today=today)}
    platforms = {p.id: p for p in network.platforms}
    with catalogue.engine(dsn).connect() as conn:
        rows = conn.execute(select(catalogue.base_t).order_by(catalogue.base_t.c.reference, catalogue.base_t.c.id))
        bases_rows = [dict(r._mapping) for r in rows]
    configured = {b.id: b for b in network.local_bases}
    order = {b.id: i for i, b in enumerate(network.local_bases)}
    bases_rows.sort(key=lambda b: (b["reference"], order.get(b["id"], len(order)), b["id"]))

    statistics = base_stats.latest(dsn)
    bases = []
    for b in bases_rows:
        ms = reached.get(b["id"], {})
        levels, links = _levels_and_links(
            dsn, b["id"], configured.get(b["id"]), platforms.get(b["platform_id"] or ""), runs, data_docs_dir, prefix
        )
        bases.append(
            {
                "id": b["id"],
                "label": b["label"],
                "kind": b["kind"],
                "holder": b["holder"],
                "reference": bool(b["reference"]),
                "platform_id": b["platform_id"],
                "stage": catalogue.stage(ms),
                "milestones": [
                    {"milestone": m, "label": MILESTONE_LABELS[m], "reached": m in ms, **ms.get(m, {"date": None})}
                    for m in catalogue.MILESTONES
                ],
                "out_of_order": _out_of_order(ms),
                "lead_time": _lead(leads[b["id"]], target) if b["id"] in leads else None,
                "levels": levels,
                "links": links,
                "statistics": statistics.get(b["id"]),
                "quality_over_time": _quality_over_time(dsn, b["id"]) if b["id"] in configured else None,
                # the EHDS data quality and utility label (Art. 78) of a network base with a local run
                "quality_label": quality_label.label(dsn, b["id"]) if b["id"] in configured else None,
            }
        )

    return {
        "network": network.name,
        "generated_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "today": today.isoformat(),
        "milestones": [{"milestone": m, "label": MILESTONE_LABELS[m]} for m in catalogue.MILESTONES],
        "levels": list(catalogue.LEVELS),
        "platforms": [
            {
                "id": p.id,
                "label": p.label,
                "kind": p.kind.value,
                "dag_id": p.dag_id,
                "members": [m.id for m in p.members],
            }
            for p in network.platforms
        ],
        "bases": bases,
        "deliveries": _deliveries(dsn),
        "held": milestone_records.held_deliveries(dsn),
        "lead_time": lead_time.distribution(dsn, today=today),
        "audit": recent_audit(dsn),
        "projects": projects.summary(dsn),
    }
