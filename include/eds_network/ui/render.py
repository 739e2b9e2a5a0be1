"""The operator page's HTML: Jinja2 templates in `templates/` (autoescaped), the stylesheet in `static/`.

The page loads nothing from the internet and runs no script: one stylesheet served by the app itself.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from pathlib import Path
from typing import Any

from eds_network.ui import charts
from eds_network.ui.view import LEVEL_LABELS, MILESTONE_LABELS, STAGE_LABELS

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

CHIP = {
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


def _n(v: int | None) -> str:
    return "—" if v is None else f"{v:,d}".replace(",", "\u202f")


def _when(iso: str | None) -> str:
    if not iso:
        return "—"
    t = dt.datetime.fromisoformat(iso)
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


@cache
def environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=False,
    )
    env.globals["bar_chart"] = charts.bar_chart
    env.filters.update(
        n=_n,
        when=_when,
        chip_class=lambda s: CHIP.get(s or "", "none"),
        milestone_label=lambda m: MILESTONE_LABELS[m],
        dictitems=lambda d: list(d.items()),
    )
    return env


def _cards(view: dict[str, Any]) -> list[tuple[Any, str]]:
    lt = view["lead_time"]
    network_bases = [b for b in view["bases"] if not b["reference"]]
    return [
        (len(network_bases), "network bases"),
        (len(view["bases"]) - len(network_bases), "reference bases"),
        (sum(1 for b in view["bases"] if b["stage"] == "available"), "available"),
        (
            f"{lt['median_days']:g} d" if lt["median_days"] is not None else "—",
            f"median lead time (target {lt['target_days']} d)",
        ),
        (f"{lt['within_target']} / {lt['available']}", "available within 7 months"),
        (sum(1 for d in view["deliveries"] if d["status"] == "received"), "deliveries received by the HDH"),
    ]


def _platform_groups(view: dict[str, Any]) -> list[tuple[str, dict | None, list[dict]]]:
    by_platform: dict[str, list[dict]] = {}
    for b in view["bases"]:
        if not b["reference"]:
            by_platform.setdefault(b["platform_id"] or "", []).append(b)
    labels = {p["id"]: p for p in view["platforms"]}
    return [(pid, labels.get(pid), members) for pid, members in by_platform.items()]


def milestone_form(
    prefix: str,
    *,
    csrf_token: str = "",
    error: str | None = None,
    notice: str | None = None,
    values: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What the milestone form needs: where it posts, its anti-forgery token, an error or notice, kept values."""
    from eds_network.catalogue.milestone_records import EVIDENCE_MAX
    from eds_network.catalogue.tables import MILESTONES

    # national.transfer.REQUIRED_MILESTONES (ui imports no zone; tests/unit checks they agree)
    required = tuple(m for m in MILESTONES if m in ("contract_signed", "preparation"))
    return {
        "action": f"{prefix}/milestones",
        "csrf_token": csrf_token,
        "error": error,
        "notice": notice,
        "kept": values or {},  # what the operator had typed (never the evidence), after a refusal
        "evidence_max": EVIDENCE_MAX,
        "required": required,
    }


def render_html(
    view: dict[str, Any],
    *,
    api_prefix: str = "/eds/api",
    static_prefix: str | None = None,
    form: dict[str, Any] | None = None,
) -> str:
    """The page for a `network_view(...)`; `static_prefix` defaults to the sibling of `api_prefix`."""
    prefix = api_prefix.rsplit("/api", 1)[0]
    if static_prefix is None:
        static_prefix = prefix + "/static"
    network_bases = [b for b in view["bases"] if not b["reference"]]
    ref_bases = [b for b in view["bases"] if b["reference"]]
    return (
        environment()
        .get_template("page.html")
        .render(
            view=view,
            lt=view["lead_time"],
            cards=_cards(view),
            platforms=_platform_groups(view),
            milestone_groups=[("Network bases", network_bases), ("Reference bases (HDH catalogue, 2023)", ref_bases)],
            level_labels=LEVEL_LABELS,
            stage_labels=STAGE_LABELS,
            api_prefix=api_prefix,
            static_prefix=static_prefix,
            form=form or milestone_form(prefix),
        )
    )
