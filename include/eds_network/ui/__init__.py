"""The operator page "EDS network": a view model built from the catalogue, its HTML, and the FastAPI app.

The Airflow plugin (`plugins/eds_network_ui.py`) mounts `create_app(...)` under `/eds` and hands it Airflow's
own authentication dependency, so the page and its JSON API (`/eds/api/...`) sit behind the same login as the
Airflow UI. This module does not import Airflow.

What the page shows, all from the catalogue (counts, dates, statuses, ids: never a patient value):
  - bases x levels: for every network base, the last local run, its platform's last mutualised run and last
    national delivery run: status, rows, quality status, when; links to the DAG runs (and Data Docs if any);
  - onboarding milestones of every base (network and the seven reference bases): the five milestones with
    their dates, a placeholder where not reached, milestones reached out of order flagged;
  - lead times (contract signed -> available) against the 7-month target, and their distribution;
  - national deliveries and their receipts.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from eds_network import catalogue
from eds_network.catalogue import lead_time
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


AUDIT_DETAIL_KEYS = ("milestone", "reached_on", "batch_id", "platform", "level", "kind", "reference")


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


def data_docs_index(data_docs_dir: Path | None, base_id: str) -> Path | None:
    if data_docs_dir is None:
        return None
    p = Path(data_docs_dir) / base_id / "index.html"
    return p if p.is_file() else None


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

    bases = []
    for b in bases_rows:
        ms = reached.get(b["id"], {})
        levels: dict[str, dict | None] = {}
        links: dict[str, str | None] = {"dag_runs": None, "data_docs": None}
        platform = platforms.get(b["platform_id"] or "")
        if b["id"] in configured and platform is not None:
            dag_id = configured[b["id"]].dag_id
            links["dag_runs"] = f"/dags/{dag_id}/runs"
            levels["local"] = _run_summary("local", runs.get(("local", b["id"])), dag_id)
            levels["mutualised"] = _run_summary("mutualised", runs.get(("mutualised", platform.id)), platform.dag_id)
            levels["national"] = _run_summary("national", runs.get(("national", platform.id)), "eds_national")
            if data_docs_index(data_docs_dir, b["id"]):
                links["data_docs"] = f"{prefix}/data-docs/{b['id']}/"
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
            }
        )

    deliveries = []
    for d in catalogue.deliveries(dsn):
        receipt = d["receipt"] or {}
        deliveries.append(
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
    deliveries.reverse()  # newest first
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
        "deliveries": deliveries,
        "lead_time": lead_time.distribution(dsn, today=today),
        "audit": recent_audit(dsn),
    }


# ---------------------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------------------

CSS = """
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d2430; --muted:#667085; --line:#e4e7ec; --accent:#017cee;
  --ok:#12805c; --ok-bg:#e3f5ec; --warn:#9a6700; --warn-bg:#fff4d6; --fail:#b42318; --fail-bg:#fde8e7;
  --none:#667085; --none-bg:#f0f1f3; --info:#175cd3; --info-bg:#e6efff; }
* { box-sizing:border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
header { background:#0b2545; color:#fff; padding:18px 28px; display:flex; align-items:baseline; gap:16px; }
header h1 { margin:0; font-size:22px; font-weight:650; letter-spacing:.2px; }
header .sub { color:#c9d6ea; font-size:13px; }
header .api { margin-left:auto; font-size:13px; }
header a { color:#c9d6ea; }
main { padding:20px 28px 40px; max-width:1500px; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; margin:0 0 20px;
  box-shadow:0 1px 2px rgba(16,24,40,.04); }
section > h2 { margin:0; padding:14px 18px; font-size:16px; border-bottom:1px solid var(--line); }
section > h2 small { color:var(--muted); font-weight:400; font-size:13px; margin-left:8px; }
.cards { display:flex; gap:14px; flex-wrap:wrap; margin:0 0 20px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:12px 16px; min-width:170px; }
.card .n { font-size:24px; font-weight:650; }
.card .l { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.4px; }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; width:100%; }
th, td { padding:9px 12px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:#fafbfc; color:var(--muted); font-weight:600; font-size:12px; text-transform:uppercase;
  letter-spacing:.3px; white-space:nowrap; }
tr:last-child td { border-bottom:0; }
tr.group td { background:#f2f6fc; font-weight:600; color:#0b2545; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
.muted { color:var(--muted); }
.small { font-size:12px; }
.base-label { font-weight:600; }
.id { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12px; color:var(--muted); }
.chip { display:inline-block; padding:1px 8px; border-radius:999px; font-size:12px; font-weight:600;
  white-space:nowrap; border:1px solid transparent; }
.ok { color:var(--ok); background:var(--ok-bg); }
.warn { color:var(--warn); background:var(--warn-bg); }
.fail { color:var(--fail); background:var(--fail-bg); }
.none { color:var(--none); background:var(--none-bg); }
.info { color:var(--info); background:var(--info-bg); }
.level .line { margin-top:3px; }
.timeline { display:flex; gap:0; min-width:640px; }
.step { flex:1; position:relative; padding:0 4px 0 0; }
.step .bar { height:6px; border-radius:3px; background:var(--line); margin-bottom:6px; }
.step.done .bar { background:var(--ok); }
.step.ooo .bar { background:#f79009; }
.step .name { font-size:11px; color:var(--muted); text-transform:uppercase; letter-spacing:.3px; }
.step .date { font-variant-numeric:tabular-nums; font-weight:600; }
.step.todo .date { color:#98a2b3; font-weight:400; }
.leadbar { position:relative; height:8px; background:var(--line); border-radius:4px; width:180px; margin-top:4px; }
.leadbar span { position:absolute; left:0; top:0; bottom:0; border-radius:4px; }
.leadbar i { position:absolute; top:-3px; bottom:-3px; width:2px; background:#0b2545; }
a { color:var(--accent); text-decoration:none; }
a:hover { text-decoration:underline; }
footer { color:var(--muted); font-size:12px; padding:0 28px 24px; }
"""

_CHIP = {
    "success": "ok",
    "received": "ok",
    "delivered": "ok",
    "accepted": "ok",
    "ok": "ok",
    "within": "ok",
    "available": "ok",
    "partial": "warn",
    "warn": "warn",
    "running": "info",
    "ready": "info",
    "over": "fail",
    "running_over": "fail",
    "failed": "fail",
    "rejected": "fail",
    "fail": "fail",
}


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _chip(text: str, kind: str | None = None) -> str:
    return f"<span class='chip {kind or _CHIP.get(text, 'none')}'>{_e(text)}</span>"


def _n(v: int | None) -> str:
    return "—" if v is None else f"{v:,d}".replace(",", "\u202f")


def _when(iso: str | None) -> str:
    if not iso:
        return "—"
    t = dt.datetime.fromisoformat(iso)
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _level_cell(level: str, s: dict | None) -> str:
    if s is None:
        return f"<td class='level' data-level='{level}'>{_chip('no run yet', 'none')}</td>"
    rows = s["rows"]
    return (
        f"<td class='level' data-level='{level}' data-status='{_e(s['status'])}'>"
        f"{_chip(s['status'])} <span class='small muted'>quality</span> {_chip(s['quality'])}"
        f"<div class='line small'><b>{_n(rows['published'])}</b> rows published of {_n(rows['extracted'])}"
        + (f" · {_n(rows['quarantined'])} quarantined" if rows["quarantined"] else "")
        + (f" · {_n(rows['excluded_objection'])} objections" if rows["excluded_objection"] else "")
        + f" · {s['tables']} tables</div>"
        f"<div class='line small muted'>{_e(_when(s['recorded_at']))} · "
        f"<a href='{_e(s['link'])}' target='_top'>DAG run</a></div></td>"
    )


def _lead_cell(lt: dict | None) -> str:
    if lt is None or lt["state"] == "not_started":
        return "<td class='muted small'>no contract yet</td>"
    target = lt["target_days"]
    days = lt["days"] if lt["days"] is not None else lt["elapsed_days"]
    scale = max(target * 1.8, days)
    colour = {"within": "var(--ok)", "over": "var(--fail)", "running": "var(--info)", "running_over": "var(--fail)"}[
        lt["state"]
    ]
    label = {
        "within": "within target",
        "over": "over target",
        "running": "running",
        "running_over": "running, over target",
    }[lt["state"]]
    text = f"{days} days" if lt["days"] is not None else f"{days} days so far"
    return (
        f"<td data-lead-state='{lt['state']}'><b>{text}</b> {_chip(label, _CHIP[lt['state']])}"
        f"<div class='leadbar' title='target {target} days'><span style='width:{100 * days / scale:.1f}%;"
        f"background:{colour}'></span><i style='left:{100 * target / scale:.1f}%'></i></div></td>"
    )


def _timeline(b: dict) -> str:
    steps = []
    for m in b["milestones"]:
        cls = "done" if m["reached"] else "todo"
        if m["milestone"] in b["out_of_order"]:
            cls += " ooo"
        title = f"{m['label']}: " + (
            f"{m['date']}, recorded by {m.get('recorded_by')}; evidence: {m.get('evidence') or '-'}"
            if m["reached"]
            else "not reached yet"
        )
        steps.append(
            f"<div class='step {cls}' data-milestone='{m['milestone']}' title='{_e(title)}'><div class='bar'></div>"
            f"<div class='name'>{_e(m['label'])}</div>"
            f"<div class='date'>{_e(m['date']) if m['reached'] else 'not reached'}</div></div>"
        )
    return f"<div class='timeline'>{''.join(steps)}</div>"


def render_html(view: dict[str, Any], *, api_prefix: str = "/eds/api") -> str:
    lt = view["lead_time"]
    network_bases = [b for b in view["bases"] if not b["reference"]]
    ref_bases = [b for b in view["bases"] if b["reference"]]
    received = sum(1 for d in view["deliveries"] if d["status"] == "received")
    cards = [
        (len(network_bases), "network bases"),
        (len(ref_bases), "reference bases"),
        (sum(1 for b in view["bases"] if b["stage"] == "available"), "available"),
        (
            f"{lt['median_days']:g} d" if lt["median_days"] is not None else "—",
            f"median lead time (target {lt['target_days']} d)",
        ),
        (f"{lt['within_target']} / {lt['available']}", "available within 7 months"),
        (received, "deliveries received by the HDH"),
    ]
    cards_html = "".join(
        f"<div class='card'><div class='n'>{_e(n)}</div><div class='l'>{_e(label)}</div></div>" for n, label in cards
    )

    # bases x levels
    grid = []
    by_platform: dict[str, list[dict]] = {}
    for b in network_bases:
        by_platform.setdefault(b["platform_id"] or "", []).append(b)
    labels = {p["id"]: p for p in view["platforms"]}
    for pid, members in by_platform.items():
        p = labels.get(pid)
        title = f"{p['label']} ({p['kind']})" if p else pid
        grid.append(
            f"<tr class='group'><td colspan='5'>Platform {_e(title)} <span class='id'>{_e(pid)}</span></td></tr>"
        )
        for b in members:
            links = []
            if b["links"]["dag_runs"]:
                links.append(f"<a href='{_e(b['links']['dag_runs'])}' target='_top'>DAG runs</a>")
            if b["links"]["data_docs"]:
                links.append(f"<a href='{_e(b['links']['data_docs'])}'>Data Docs</a>")
            grid.append(
                f"<tr data-base='{_e(b['id'])}'><td><div class='base-label'>{_e(b['label'])}</div>"
                f"<div class='id'>{_e(b['id'])}</div><div class='small'>{' · '.join(links)}</div></td>"
                f"<td>{_chip(STAGE_LABELS.get(b['stage'], b['stage']), _CHIP.get(b['stage']))}</td>"
                + "".join(_level_cell(lv, b["levels"].get(lv)) for lv in view["levels"])
                + "</tr>"
            )
    grid_html = (
        "<table id='levels'><thead><tr><th>Base</th><th>Stage</th>"
        + "".join(f"<th>{_e(LEVEL_LABELS[lv])}</th>" for lv in view["levels"])
        + f"</tr></thead><tbody>{''.join(grid)}</tbody></table>"
    )

    # milestones timeline + lead time
    ms_rows = []
    for group, bases in (("Network bases", network_bases), ("Reference bases (HDH catalogue, 2023)", ref_bases)):
        ms_rows.append(f"<tr class='group'><td colspan='4'>{_e(group)}</td></tr>")
        for b in bases:
            ooo = (
                f"<div class='small'>{_chip('reached out of order', 'warn')} "
                f"{_e(', '.join(MILESTONE_LABELS[m] for m in b['out_of_order']))}</div>"
                if b["out_of_order"]
                else ""
            )
            who = b["holder"] or ""
            ms_rows.append(
                f"<tr data-base='{_e(b['id'])}' data-stage='{_e(b['stage'])}'><td><div class='base-label'>"
                f"{_e(b['label'])}</div><div class='id'>{_e(b['id'])}</div><div class='small muted'>{_e(who)}</div>"
                f"</td><td>{_chip(STAGE_LABELS.get(b['stage'], b['stage']), _CHIP.get(b['stage']))}</td>"
                f"<td>{_timeline(b)}{ooo}</td>{_lead_cell(b['lead_time'])}</tr>"
            )
    ms_html = (
        "<table id='milestones'><thead><tr><th>Base</th><th>Stage</th><th>Onboarding milestones</th>"
        f"<th>Lead time (target {lt['target_days']} days)</th></tr></thead><tbody>{''.join(ms_rows)}</tbody></table>"
    )

    # deliveries
    if view["deliveries"]:
        d_rows = "".join(
            f"<tr data-delivery='{_e(d['id'])}'><td class='id'>{_e(d['id'])}</td><td>{_e(d['platform_id'])}</td>"
            f"<td>{_chip(d['status'])}</td><td>{_chip(d['receipt'] or 'no receipt', _CHIP.get(d['receipt'] or ''))}"
            f"</td><td class='num'>{d['files']}</td><td class='num'>{_n(d['rows'])}</td>"
            f"<td class='num'>{_n(d['bytes'])}</td>"
            f"<td class='small'>{_e(', '.join(f'{k} {v}' for k, v in sorted(d['key_versions'].items())))}</td>"
            f"<td class='small'>{_e(_when(d['recorded_at']))}</td></tr>"
            for d in view["deliveries"]
        )
        del_html = (
            "<table id='deliveries'><thead><tr><th>Delivery</th><th>Platform</th><th>Status</th><th>Receipt</th>"
            "<th class='num'>Files</th><th class='num'>Rows</th><th class='num'>Bytes</th><th>Key versions</th>"
            f"<th>Recorded</th></tr></thead><tbody>{d_rows}</tbody></table>"
        )
    else:
        del_html = "<p class='muted' style='padding:0 18px'>No national delivery recorded yet.</p>"

    audit_rows = "".join(
        f"<tr><td class='small'>{_e(_when(a['at']))}</td><td>{_e(a['actor'])}</td><td><code>{_e(a['action'])}</code>"
        f"</td><td class='id'>{_e(a['object'])}</td><td class='small muted'>"
        f"{_e(' · '.join(f'{k} {v}' for k, v in a['details'].items()))}</td></tr>"
        for a in view.get("audit", [])
    )
    audit_html = (
        "<table id='audit'><thead><tr><th>When</th><th>Who</th><th>Action</th><th>Object</th><th>Details</th></tr>"
        f"</thead><tbody>{audit_rows}</tbody></table>"
    )
    dist = (
        f"{lt['available']} of {lt['bases']} bases available: {lt['within_target']} within the "
        f"{lt['target_days']}-day target, {lt['over_target']} over; {lt['pending']} under way "
        f"({lt['pending_over_target']} already past the target). Median {_e(lt['median_days'])} days, "
        f"90th percentile {_e(lt['p90_days'])} days, range {_e(lt['min_days'])}–{_e(lt['max_days'])} days."
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>EDS network</title><style>{CSS}</style></head>
<body>
<header><h1>EDS network</h1><span class="sub">{_e(view["network"])} · catalogue as of {_e(_when(view["generated_at"]))}</span>
<span class="api"><a href="{_e(api_prefix)}/network">JSON API</a></span></header>
<main>
<div class="cards">{cards_html}</div>
<section><h2>Bases × levels <small>last run per level, rows and quality status</small></h2>
<div class="scroll">{grid_html}</div></section>
<section><h2>Onboarding milestones and lead times <small>contract signed → available, 7-month target</small></h2>
<div class="scroll">{ms_html}</div>
<p class="small" style="padding:4px 18px 12px;margin:0" id="lead-distribution">{dist}</p></section>
<section><h2>National deliveries and receipts <small>HDH landing zone</small></h2>
<div class="scroll">{del_html}</div></section>
<section><h2>Audit trail <small>latest entries; append-only, enforced by the database</small></h2>
<div class="scroll">{audit_html}</div></section>
</main>
<footer>Counts, dates and statuses from the catalogue only: no patient-level value is shown.
Reference bases' dates are the catalogue's recorded milestones (see their evidence).</footer>
</body></html>"""


# ---------------------------------------------------------------------------------------------------------
# FastAPI app
# ---------------------------------------------------------------------------------------------------------


def create_app(
    dsn: Callable[[], str],
    network: Callable[[], Network],
    *,
    auth: Callable | None = None,
    login_url: Callable[[str], str] | None = None,
    data_docs_dir: Path | None = None,
    prefix: str = "/eds",
):
    """The FastAPI app mounted at `prefix`: `/` (the page), `/api/...` (JSON), `/data-docs/<base>/`.

    `auth` is a FastAPI dependency applied to every route (the plugin passes Airflow's); an unauthenticated
    browser asking for the page is redirected to `login_url(next)`."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse

    deps = [Depends(auth)] if auth is not None else []
    app = FastAPI(title="EDS network", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")

    @app.exception_handler(HTTPException)
    async def _unauthenticated(request: Request, exc: HTTPException):
        wants_html = "text/html" in request.headers.get("accept", "") and "/api/" not in request.url.path
        if exc.status_code in (401, 403) and wants_html and login_url is not None:
            return RedirectResponse(login_url(f"{prefix}/"), status_code=303)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    def view(today: dt.date | None = None) -> dict:
        return network_view(dsn(), network(), today=today, data_docs_dir=data_docs_dir, prefix=prefix)

    def base_or_404(base_id: str, v: dict) -> dict:
        for b in v["bases"]:
            if b["id"] == base_id:
                return b
        raise HTTPException(status_code=404, detail=f"catalogue.base: no base {base_id!r}")

    @app.get("/", response_class=HTMLResponse, dependencies=deps)
    def page() -> HTMLResponse:
        return HTMLResponse(render_html(view(), api_prefix=f"{prefix}/api"))

    @app.get("/api/network", dependencies=deps)
    def api_network() -> dict:
        return view()

    @app.get("/api/bases", dependencies=deps)
    def api_bases() -> list[dict]:
        return view()["bases"]

    @app.get("/api/bases/{base_id}", dependencies=deps)
    def api_base(base_id: str) -> dict:
        return base_or_404(base_id, view())

    @app.get("/api/bases/{base_id}/healthdcat", dependencies=deps)
    def api_healthdcat(base_id: str) -> JSONResponse:
        from eds_network.catalogue import healthdcat

        try:
            doc = healthdcat.dataset_jsonld(dsn(), base_id)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"catalogue.base: no base {base_id!r}") from None
        return JSONResponse(doc, media_type="application/ld+json")

    @app.get("/api/catalog/healthdcat", dependencies=deps)
    def api_catalog_healthdcat() -> JSONResponse:
        from eds_network.catalogue import healthdcat

        return JSONResponse(healthdcat.catalog_jsonld(dsn()), media_type="application/ld+json")

    @app.get("/api/deliveries", dependencies=deps)
    def api_deliveries() -> list[dict]:
        return view()["deliveries"]

    @app.get("/api/lead-times", dependencies=deps)
    def api_lead_times() -> dict:
        v = view()
        return {
            "distribution": v["lead_time"],
            "bases": [{"id": b["id"], "reference": b["reference"], **(b["lead_time"] or {})} for b in v["bases"]],
        }

    @app.get("/api/audit", dependencies=deps)
    def api_audit(limit: int = 50) -> list[dict]:
        return recent_audit(dsn(), limit)

    @app.get("/data-docs/{base_id}/", dependencies=deps)
    def data_docs(base_id: str) -> FileResponse:
        if not base_id.replace("_", "").isalnum():
            raise HTTPException(status_code=404, detail="no such base")
        path = data_docs_index(data_docs_dir, base_id)
        if path is None:
            raise HTTPException(status_code=404, detail=f"no Data Docs for base {base_id!r}")
        return FileResponse(path, media_type="text/html")

    return app
