"""The operator page's milestone form, rendered without a server: the held-back delivery offers to record the
missing milestone, every form carries the anti-forgery token, a refusal is shown escaped and never echoes the
evidence; the token is bound to the session; the page's gate milestones are the national gate's."""

from __future__ import annotations

from eds_network.national.transfer import REQUIRED_MILESTONES
from eds_network.ui.app import csrf_token
from eds_network.ui.render import milestone_form, render_html

LEAD = {
    k: None for k in ("median_days", "p90_days", "min_days", "max_days")
} | {"target_days": 213, "available": 0, "bases": 1, "within_target": 0, "over_target": 0, "pending": 0,
     "pending_over_target": 0}  # fmt: skip
BASE = {
    "id": "hosp_d", "label": "CHU D", "reference": False, "platform_id": "onco", "stage": "documentation",
    "milestones": [], "out_of_order": [], "lead_time": None, "levels": {}, "statistics": None, "holder": None,
    "links": {"dag_runs": None, "data_docs_tables": {}}, "quality_over_time": None, "quality_label": None,
}  # fmt: skip
HELD = {
    "platform": "onco", "source_delivery": "onco-20261122-0001", "skipped_at": "2026-12-02T01:10:00+00:00",
    "unblocked": False,
    "bases": [{"base": "hosp_d", "named": ["preparation"], "missing": ["preparation"], "recorded": []}],
}  # fmt: skip


def _view(held: list[dict]) -> dict:
    return {
        "network": "demo", "generated_at": "2026-12-02T10:00:00+00:00", "today": "2026-12-02",
        "milestones": [{"milestone": "preparation", "label": "Preparation"}], "levels": [], "platforms": [],
        "bases": [BASE], "deliveries": [], "held": held, "lead_time": LEAD, "audit": [],
    }  # fmt: skip


def test_a_held_delivery_offers_to_record_the_missing_milestone_with_the_token():
    html = render_html(_view([HELD]), form=milestone_form("/eds", csrf_token="t0k"))
    row = html[html.index("data-held-platform='onco'") :]
    row = row[: row.index("</tr>")]
    assert "data-held-base='hosp_d' data-held-milestone='preparation'" in row and "onco-20261122-0001" in row
    assert "<input type='hidden' name='milestone' value='preparation'>" in row and "Record Preparation" in row
    assert html.count("name='csrf_token' value='t0k'") == 2  # the held row's form and the general form
    assert "<script" not in html and "http" not in html


def test_a_refusal_is_escaped_and_the_evidence_never_echoed():
    form = milestone_form("/eds", error="unknown base '<b>x</b>'", values={"base": "hosp_d", "milestone": "x"})
    html = render_html(_view([]), form=form)
    assert "unknown base &#39;&lt;b&gt;x&lt;/b&gt;&#39;" in html and "<b>x</b>" not in html
    assert "<option value='hosp_d' selected>" in html
    assert "No delivery held back" in html


def test_the_token_is_bound_to_the_session_and_the_gate_milestones_agree():
    assert csrf_token("session-a") != csrf_token("session-b") and len(csrf_token("session-a")) == 64
    assert csrf_token(None) == "" and csrf_token("") == ""
    assert milestone_form("/eds")["required"] == REQUIRED_MILESTONES
