"""Onboarding a base through the real Airflow stack: API server + scheduler + dag-processor (`airflow standalone`
on the embedded PostgreSQL metadata DB), driven through Airflow's REST API as the UI would, then the Trigger form
in a real headless browser.

The network is the demo network plus `hosp_onb`, a small generated hospital with 3 months of history
(September to November 2025, across the change to winter time) and a monthly schedule, so that the backfill has
3 intervals: more than its 2 parallel ones, and a middle one to rerun alone. Each interval is a whole DAG run of
Airflow tasks: their number, not the rows, sets the time of this module.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import urllib3
import yaml
from airflow_client.client import ClearTaskInstancesBody, TriggerDAGRunPostBody
from airflow_client.client.exceptions import ApiException

from eds_network import catalogue
from eds_network.core import omop
from eds_network.core.config import Network, load_network
from eds_network.core.exchange import TOKEN_COLUMN
from eds_network.core.storage import list_keys, read_json
from eds_network.dev import seed
from eds_network.local import extract, onboard
from eds_network.orchestration import airflow_api

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.usefixtures("synthea_zip")]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
BASE_ID = "hosp_onb"
PARIS = ZoneInfo("Europe/Paris")
START, END = dt.date(2025, 9, 1), dt.date(2025, 12, 1)  # 3 monthly intervals, 01:00 Paris on the 1st
INTERVALS = 3
FIRST = dt.datetime(2025, 9, 1, 1, 0, tzinfo=PARIS)
LAST_END = dt.datetime(2025, 12, 1, 1, 0, tzinfo=PARIS)
STAMP = (dt.datetime(2025, 9, 1, 2, 0, tzinfo=dt.UTC), dt.datetime(2025, 11, 30, 12, 0, tzinfo=dt.UTC))
TABLES = ["person", "visit_occurrence"]
RUN_TIMEOUT_S = 1500


def _network_yaml(tmp: Path) -> Path:
    raw = yaml.safe_load((REPO / "config" / "network.yaml").read_text())
    idf = next(p for p in raw["platforms"] if p["id"] == "idf")
    idf["members"].append(
        {
            "id": BASE_ID,
            "label": "Hôpital en cours d'intégration",
            "site_number": 9,
            "finess": "750000009",
            "source_connection_id": f"eds_src_{BASE_ID}",
            "tables": TABLES,
            "schedule": "0 1 1 * *",
            "start_date": "2025-01-01",
            "seed": {"source": "generated", "patients": 30, "seed": 9, "objectors": 1},
        }
    )
    path = tmp / "network.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def net_file(tmp_path_factory) -> Path:
    return _network_yaml(tmp_path_factory.mktemp("onboard"))


@pytest.fixture(scope="module")
def net(net_file) -> Network:
    return load_network(net_file)


@pytest.fixture(scope="module")
def airflow(stack, net, net_file):
    """Airflow API server, scheduler and dag-processor on the test stack (its ports), the DAG folder parsed with the extended network."""
    dsn = stack.create_database(f"src_{BASE_ID}", drop=True)
    seed.seed_base(dsn, net, BASE_ID, STAMP)
    stack.write_connections(net)
    catalogue.create_schema(stack.dsn("catalogue"))
    with catalogue.engine(stack.dsn("catalogue")).begin() as conn:  # milestones of earlier runs of this test
        conn.execute(catalogue.milestone_t.delete().where(catalogue.milestone_t.c.base_id == BASE_ID))
    # Earlier runs of this test: clear what they left in the intake (moto lives as long as the stack).
    s3 = stack.s3_client()
    bucket = net.platform("idf").intake.bucket
    for key in list_keys(s3, bucket, f"{BASE_ID}/"):
        s3.delete_object(Bucket=bucket, Key=key)
    env = {
        **os.environ,
        **stack.airflow_env(),
        "EDS_NETWORK_CONFIG": str(net_file),
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
    }
    # A metadata DB of this module's own, new at each run (earlier runs of the same DAGs would be reused by the
    # backfill): the session's metadata DB, which other tests share, is never reset.
    stack.create_database("airflow_onboarding", drop=True)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = stack.sqlalchemy_url("airflow_onboarding").replace(
        "+psycopg", "+psycopg2"
    )
    airflow_bin = str(Path(env["PATH"].split(os.pathsep)[0]) / "airflow")
    subprocess.run([airflow_bin, "db", "migrate"], env=env, check=True, capture_output=True)
    stack.logs.mkdir(parents=True, exist_ok=True)
    procs: dict[Path, subprocess.Popen] = {}  # each component's log -> its process
    for component in ("api-server", "scheduler", "dag-processor"):
        log = stack.logs / f"onboard-{component}.log"
        with open(log, "wb") as out:
            procs[log] = subprocess.Popen(
                [airflow_bin, component], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
    api = airflow_api.AirflowApi(f"http://localhost:{stack.api_port}", "admin", stack.ui_password(), timeout=120)
    try:
        _wait(
            lambda: _dag_ready(api, "eds_onboard_base") and _dag_ready(api, f"eds_local__{BASE_ID}"),
            600,
            procs,
        )
        yield api
    finally:
        for proc in procs.values():
            _signal_group(proc, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(10)
        with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS airflow_onboarding WITH (FORCE)")


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal a component's process group; one that already exited (its failure is being reported) is skipped."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _dag_ready(api: airflow_api.AirflowApi, dag_id: str) -> bool:
    try:
        api.dags.get_dag(dag_id)
        return True
    except (ApiException, urllib3.exceptions.HTTPError):  # not parsed yet (404), server not up yet
        return False


def _wait(ready, timeout: float, procs: dict[Path, subprocess.Popen] | None = None) -> None:
    """Poll `ready` until it holds; a process of `procs` (log -> process) that exits fails the wait with the end
    of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log, proc in (procs or {}).items():
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"{proc.args[-1]} exited with {proc.returncode}; the end of {log}:\n{tail}")
        if ready():
            return
        time.sleep(1)
    raise AssertionError(f"not ready after {timeout:.0f}s")


def _trigger(api: airflow_api.AirflowApi, **conf) -> str:
    conf = {
        "base": BASE_ID,
        "start_date": START.isoformat(),
        "end_date": END.isoformat(),
        "tables": TABLES,
        "max_active_runs": 2,
        **conf,
    }
    run_id = api.runs.trigger_dag_run(
        "eds_onboard_base", TriggerDAGRunPostBody(logical_date=None, conf=conf)
    ).dag_run_id
    state = {}

    def done() -> bool:
        state["run"] = api.runs.get_dag_run("eds_onboard_base", run_id)
        return state["run"].state in ("success", "failed")

    _wait(done, RUN_TIMEOUT_S)
    assert state["run"].state == "success", run_id
    return run_id


def _batches(stack, net: Network) -> dict[str, dict]:
    """Manifested batches of hosp_onb at the platform intake: batch id -> manifest."""
    s3 = stack.s3_client()
    bucket = net.platform("idf").intake.bucket
    return {
        k.split("/")[-2]: read_json(s3, bucket, k)
        for k in list_keys(s3, bucket, f"{BASE_ID}/")
        if k.endswith("/_manifest.json")
    }


def _rows(stack, net: Network, manifests, table: str) -> list[tuple]:
    """Every published row of `table` in these manifests (the randomised sealed token aside), sorted."""
    s3 = stack.s3_client()
    bucket = net.platform("idf").intake.bucket
    parts = []
    for m in manifests:
        entry = m["tables"][table]
        t = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=entry["key"])["Body"].read()))
        parts.append(t.drop_columns([c for c in t.column_names if c == TOKEN_COLUMN]))
    if not parts:
        return []
    return sorted(tuple(r.values()) for r in pa.concat_tables(parts).to_pylist())


def _full_extraction(stack, net: Network) -> dict[str, list[tuple]]:
    """One extraction of the whole range, straight from the step module, into an intake prefix of its own."""
    base = net.base(BASE_ID)
    res = stack.local_resources(net, BASE_ID, intake_prefix=f"test-onboard-full-{uuid.uuid4().hex[:8]}/")
    out = {}
    for table in base.tables:
        ref = extract.extract_table(base, table, FIRST, LAST_END, res)
        manifest = {"tables": {table: {"key": ref.key}}}
        out[table] = _rows(stack, net, [manifest], table)
        assert ref.published == len(out[table])
    return out


def test_a_dry_run_checks_and_profiles_but_writes_no_data(airflow, stack, net):
    run_id = _trigger(airflow, dry_run=True)
    assert _batches(stack, net) == {}
    assert airflow.dags.get_dag(f"eds_local__{BASE_ID}").is_paused is True
    reports = onboard.reports(stack.dsn("catalogue"), BASE_ID, run_id)
    assert reports["schema"]["ok"] is True
    assert set(reports["schema"]["tables"]) == set(TABLES)
    assert reports["backfill"]["dry_run"] is True and reports["backfill"]["intervals"] == INTERVALS
    by_month = reports["profile"]["tables"]["visit_occurrence"]["by_month"]
    assert sorted(by_month) == ["2025-09", "2025-10", "2025-11"]
    with psycopg.connect(stack.dsn(f"src_{BASE_ID}")) as conn:
        total = conn.execute("SELECT count(*) FROM omop.visit_occurrence").fetchone()[0]
    assert sum(by_month.values()) == total > 0
    assert "preparation" not in catalogue.milestones(stack.dsn("catalogue"), BASE_ID)


def test_onboarding_backfills_exactly_one_full_extraction_then_unpauses(airflow, stack, net):
    run_id = _trigger(airflow, dry_run=False)
    batches = _batches(stack, net)
    in_range = {
        b: m for b, m in batches.items() if FIRST <= dt.datetime.fromisoformat(m["data_interval"]["start"]) < LAST_END
    }
    assert len(in_range) == INTERVALS
    full = _full_extraction(stack, net)
    for table in TABLES:
        # every batch of the base (the range's, and the first nightly run after unpausing, if it ran)
        assert _rows(stack, net, batches.values(), table) == full[table], table
        assert len(full[table]) > 0
    report = onboard.reports(stack.dsn("catalogue"), BASE_ID, run_id)["backfill"]
    assert report["intervals"] == report["succeeded"] == INTERVALS and report["failed"] == []
    assert report["rows_published"] == sum(len(v) for v in full.values())
    assert airflow.dags.get_dag(f"eds_local__{BASE_ID}").is_paused is False
    ms = catalogue.milestones(stack.dsn("catalogue"), BASE_ID)
    assert {"preparation", "transfer_channel"} <= set(ms)
    with psycopg.connect(stack.dsn("catalogue")) as conn:
        actors = {
            r[0]
            for r in conn.execute(
                "SELECT actor FROM catalogue.audit WHERE object = %s AND action LIKE 'onboarding.%%'",
                (f"base:{BASE_ID}",),
            )
        }
    assert actors == {"admin"}  # the user who triggered the onboarding


def test_the_same_backfill_again_changes_nothing(airflow, stack, net):
    def state():
        # Files are content-addressed: the same rows give the same keys, except for the person file, whose
        # sealed transport tokens are randomised at every extraction (compared row by row, tokens aside).
        batches = _batches(stack, net)
        keys = {b: {t: e["key"] for t, e in m["tables"].items() if t != "person"} for b, m in batches.items()}
        return keys, {t: _rows(stack, net, batches.values(), t) for t in TABLES}

    before = state()
    assert len(before[0]) >= INTERVALS
    run_id = _trigger(airflow, dry_run=False, reprocess="completed")  # every interval extracted again
    assert onboard.reports(stack.dsn("catalogue"), BASE_ID, run_id)["backfill"]["succeeded"] == INTERVALS
    assert state() == before


def test_one_interval_is_rerun_alone_by_clearing_its_task_instances(airflow, stack, net):
    """What an operator does in the UI for a failed interval: clear its task instances; only it runs again."""
    dag_id = f"eds_local__{BASE_ID}"
    runs = airflow.runs_between(dag_id, FIRST, LAST_END - dt.timedelta(seconds=1))
    assert len(runs) == INTERVALS
    target = runs[1]  # the middle one: a run before it and one after it must stay as they are
    others = {r.dag_run_id: r.end_date for r in runs if r.dag_run_id != target.dag_run_id}
    before = {t: _rows(stack, net, _batches(stack, net).values(), t) for t in TABLES}
    cleared = airflow.task_instances.post_clear_task_instances(
        dag_id,
        ClearTaskInstancesBody(dry_run=False, dag_run_id=target.dag_run_id, only_failed=False, reset_dag_runs=True),
    )
    # Every task of that one run is cleared (the OPRF round trip, extraction, publication, record), nothing else.
    tasks = {t.task_id for t in airflow.tasks.get_tasks(dag_id).tasks}
    assert {ti.task_id for ti in cleared.task_instances} == tasks
    assert {"extract_table", "publish_batch", "record_run"} <= tasks
    assert {ti.dag_run_id for ti in cleared.task_instances} == {target.dag_run_id}
    state = {}

    def done() -> bool:
        state["run"] = airflow.runs.get_dag_run(dag_id, target.dag_run_id)
        return state["run"].state in ("success", "failed") and state["run"].end_date != target.end_date

    _wait(done, RUN_TIMEOUT_S)
    assert state["run"].state == "success"
    after_runs = airflow.runs_between(dag_id, FIRST, LAST_END - dt.timedelta(seconds=1))
    assert {r.dag_run_id: r.end_date for r in after_runs if r.dag_run_id in others} == others
    assert {t: _rows(stack, net, _batches(stack, net).values(), t) for t in TABLES} == before


# --------------------------------------------------------------------------------------------------
# The Trigger form in a real headless browser


def test_trigger_form_renders_defaults_and_refuses_a_bad_date_range(airflow, stack):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url = f"http://localhost:{stack.api_port}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"{url}/auth/login")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(stack.ui_password())
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda u: "/auth/login" not in u, timeout=60_000)
            page.goto(f"{url}/dags/eds_onboard_base")
            page.get_by_role("button", name="Trigger").first.click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_text("Run Parameters").first.wait_for(timeout=30_000)
            lines = [ln.strip() for ln in dialog.inner_text().splitlines()]
            for label in ("Base", "Start date", "End date", "Tables", "Dry run", "Max parallel intervals", "Reprocess"):
                assert label in lines, label
            assert dialog.get_by_text("How many intervals of the backfill run at the same time").count() == 1
            start = dialog.locator("input#element_start_date")
            end = dialog.locator("input#element_end_date")
            assert start.get_attribute("type") == end.get_attribute("type") == "date"
            # Static defaults: empty, the dates are decided when the run starts (`onboard.check_range`).
            assert start.input_value() == end.input_value() == ""
            assert dialog.locator("input[name=element_base]").input_value() == load_network().local_bases[0].id
            tables = [t.input_value() for t in dialog.locator("input[name=element_tables]").all()]
            assert tables == list(omop.DEFAULT_TABLES)
            assert dialog.locator("input[name=element_dry_run]").is_checked()
            assert dialog.locator("input[name=element_max_active_runs]").input_value() == "2"
            assert dialog.locator("input[name=element_reprocess]").input_value() == "failed"
            page.screenshot(path=str(ARTIFACTS / "onboard_form_defaults.png"), full_page=True)

            start.fill("2026-10-01")
            end.fill("2026-03-01")
            dialog.get_by_role("button", name="Trigger").last.click()
            message = dialog.get_by_text("Invalid date range: start_date 2026-10-01 must be before end_date 2026-03-01")
            message.wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "onboard_form_bad_range.png"), full_page=True)
        finally:
            browser.close()
    runs = airflow.runs.get_dag_runs("eds_onboard_base", limit=100).dag_runs
    assert not [r for r in runs if (r.conf or {}).get("start_date") == "2026-10-01"]
