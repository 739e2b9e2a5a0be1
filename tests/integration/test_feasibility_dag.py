"""Feasibility through the zoned DAG (`eds_project_feasibility`, `airflow dags test`) after the session's night:
the recorded answer is the CLI's protected answer for the same cohort, and no XCom of the run holds a raw count
in clear (the platforms' per-base counts are sealed to the national box key; only the protected answer is clear).
"""

from __future__ import annotations

import base64
import json

import psycopg
import pytest

from eds_network.catalogue import feasibility_requests, projects
from eds_network.core.config import load_network
from eds_network.orchestration import feasibility_tasks, project_tasks
from tests.integration import test_projects as tp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2700)]

NETWORK = load_network()
K = tp.K
DAG_ID = "eds_project_feasibility"
COMPARED = ("k", "bases", "platforms", "network", "suppressed", "pins", "descendants", "concepts", "cohort")


def _run(stack, conf: dict):
    res = stack.airflow("dags", "test", DAG_ID, "-c", json.dumps(conf), check=False, capture=True)
    return res.returncode, res.stdout + res.stderr


def _xcoms(stack) -> list[tuple[str, str, str]]:
    """(task id, key, value as stored in the metadata DB) of every XCom of the DAG's latest run (a task returning
    a dict also stores each of its keys)."""
    with psycopg.connect(stack.dsn(stack.airflow_db)) as conn:
        run_id = conn.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = %s ORDER BY id DESC LIMIT 1", (DAG_ID,)
        ).fetchone()[0]
        return conn.execute(
            "SELECT task_id, key, value::text FROM xcom WHERE dag_id = %s AND run_id = %s", (DAG_ID, run_id)
        ).fetchall()


def _decoded(text: str):
    v = json.loads(text)
    return json.loads(v) if isinstance(v, str) else v


def test_the_zoned_dag_records_the_clis_protected_answer_and_xcom_holds_no_raw_count(tp_night, stack):
    concept = tp._small_cell_concept(stack)
    name = f"dag-c{concept}"
    cohort = tp._cohort(concept, name=name)
    raw = project_tasks.raw_counts(NETWORK, tp_night["warehouses"], tp_night["national"], cohort)
    expected = project_tasks.feasibility(NETWORK, tp_night["warehouses"], tp_night["national"], cohort, k=K)
    assert expected["suppressed"]["primary"], "the cohort must have a small cell to hide"
    conf = {"name": name, "table": "condition_occurrence", "concepts": str(concept), "descendants": True}
    conf |= {"start": "2000-01-01", "end": "2027-01-01", "k": K}
    rc, out = _run(stack, conf)
    assert rc == 0 and "state=failed" not in out, out[-4000:]
    recorded = next(
        f for f in projects.feasibility_answers(stack.dsn("catalogue"), limit=50) if f["cohort_name"] == name
    )
    assert recorded["actor"].startswith("airflow:")
    assert {key: recorded["answer"][key] for key in COMPARED} == {key: expected[key] for key in COMPARED}

    rows = _xcoms(stack)
    xcoms = {t: v for t, key, v in rows if key == "return_value"}
    counts = {t: _decoded(v) for t, v in xcoms.items() if t.startswith("count__")}
    assert sorted(counts) == sorted(f"count__{p.id}" for p in NETWORK.platforms)
    for task_id, v in counts.items():
        # only ciphertext: no base id, no count key, no number but the sealed bytes
        assert set(v) == {"platform", "key_version", "sealed"}, v
        assert not any(b.id in text for t, _, text in rows if t == task_id for b in NETWORK.local_bases), task_id
    for _, _, text in rows:
        assert "per_base" not in text and "per_platform" not in text
    # a suppressed cell's raw value is nowhere in the run's XComs next to its base
    for label in expected["suppressed"]["primary"] + expected["suppressed"]["secondary"]:
        if "/" in label:
            p, b = label.split("/")
            assert _decoded(xcoms["answer"])["bases"][p][b] is None
            for _, _, text in rows:
                assert f'"{b}": {raw["per_base"][(p, b)]}' not in text
    # and the sealed boxes hold exactly the platforms' raw counts (the national private key opens them)
    box = stack.keys(NETWORK)[NETWORK.national.box_key_connection_id]
    opened = feasibility_tasks.open_counts(list(counts.values()), base64.b64decode(box["password"]))
    assert opened == raw["per_base"]


def test_an_invalid_cohort_fails_the_run_naming_the_field(tp_night, stack):
    rc, out = _run(stack, {"name": "bad-period", "start": "2027-01-01", "end": "2000-01-01"})
    assert rc != 0 or "state=failed" in out
    assert "invalid field(s) start/end" in out


def _page_client(stack, triggered: list):
    from fastapi.testclient import TestClient

    from eds_network import ui

    def trigger(conf: dict) -> str:
        triggered.append(conf)
        return f"manual__page_{len(triggered)}"

    app = ui.create_app(lambda: stack.dsn("catalogue"), load_network, recorder=lambda: "alice", trigger=trigger)
    return TestClient(app)


BEARER = {"authorization": "Bearer test"}  # a request with a Bearer header needs no anti-forgery token


def test_the_operator_page_asks_a_question_and_shows_the_dags_protected_answer(tp_night, stack):
    concept = tp._small_cell_concept(stack)
    name = f"page-c{concept}"
    expected = project_tasks.feasibility(
        NETWORK, tp_night["warehouses"], tp_night["national"], tp._cohort(concept, name=name), k=K
    )
    triggered: list = []
    client = _page_client(stack, triggered)
    assert "id='feasibility-form'" in client.get("/projects").text
    form = {"name": name, "table": "condition_occurrence", "concepts": str(concept), "descendants": "on"}
    form |= {"start": "2000-01-01", "end": "2027-01-01", "k": str(K)}
    r = client.post("/projects/feasibility", data=form, headers=BEARER, follow_redirects=False)
    assert r.status_code == 303, r.text
    (conf,) = triggered
    rid = conf["request_id"]
    html = client.get("/projects").text
    assert f"data-request='{rid}' data-status='requested'" in html
    rc, out = _run(stack, conf)
    assert rc == 0 and "state=failed" not in out, out[-4000:]
    html = client.get("/projects").text
    assert f"data-request='{rid}' data-status='answered'" in html
    row = html.split(f"data-request='{rid}'", 1)[1].split("</tr>", 1)[0]
    net = expected["network"]
    assert (f"data-count='{net}'" if net is not None else "data-count='suppressed'") in row
    (asked,) = [q for q in feasibility_requests.requests(stack.dsn("catalogue"), limit=50) if q["id"] == rid]
    assert asked["requested_by"] == "alice" and asked["answered_at"] is not None
    assert {key: asked["answer"][key] for key in COMPARED} == {key: expected[key] for key in COMPARED}
    with psycopg.connect(stack.dsn("catalogue")) as conn:
        actions = [
            a for (a,) in conn.execute(
                "SELECT action FROM catalogue.audit WHERE object = %s ORDER BY id", (f"feasibility_request:{rid}",)
            )
        ]  # fmt: skip
    assert actions == ["project.feasibility_requested", "project.feasibility"]


def test_a_bad_field_of_the_form_is_named_and_its_value_never_echoed(stack):
    triggered: list = []
    client = _page_client(stack, triggered)
    good = {"name": "ok", "table": "condition_occurrence", "concepts": "201826", "start": "2000-01-01"}
    good |= {"end": "2027-01-01", "k": "11"}
    cases = {
        "start/end": {"start": "2027-01-01", "end": "2000-01-01"},
        "table": {"table": "<b>NOT-A-TABLE-zq</b>"},
        "concepts": {"concepts": "SECRET-zq"},
        "age_max": {"age_min": "60", "age_max": "18"},
        "k": {"k": "1"},
    }
    for field, bad in cases.items():
        r = client.post("/projects/feasibility", data=good | bad | {"name": "NAME-zq"}, headers=BEARER)
        assert r.status_code == 400, field
        assert f"invalid field(s) {field}" in r.text, (field, r.text[-2000:])
        assert "-zq" not in r.text, field
    assert triggered == []


@pytest.fixture(scope="module")
def tp_night(network_night, stack):
    results = network_night["results"]
    assert all(ok for _, ok, _ in results), results
    warehouses, national = tp.project_cli._resources(stack, NETWORK)
    return {"warehouses": warehouses, "national": national}
