"""The DAG folder imports cleanly, every DAG is documented and safe to retry, and parsing touches no data system.

Part of the fast lane (`make test-fast`): no stack is started. The DAG folder is parsed in a child process whose
sockets refuse every connection, the Airflow metadata DB's included, and whose metadata DB is a bare,
never-started address: a DAG file that needs any server at parse time fails here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from eds_network.core import zones
from eds_network.core.config import load_network

# Loads the DAG folder with a socket guard: any TCP connection fails the parse and is reported.
PARSE = textwrap.dedent(
    """
    import json, os, socket, sys
    real_connect = socket.socket.connect
    touched = []
    def guarded(self, address):
        if isinstance(address, tuple):
            touched.append(str(address))
            raise OSError("network access at DAG parse time")
        return real_connect(self, address)
    socket.socket.connect = guarded
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    out = {"errors": {k: str(v)[-2000:] for k, v in bag.import_errors.items()}, "touched": touched, "dags": {}}
    for dag_id, dag in bag.dags.items():
        out["dags"][dag_id] = {
            "tags": sorted(dag.tags), "doc_md": bool(dag.doc_md and dag.doc_md.strip()),
            "tasks": {
                t.task_id: {"owner": t.owner, "retries": t.retries, "queue": t.queue} for t in dag.tasks
            },
            "timetable": type(dag.timetable).__name__,
            "deadline": str(getattr(getattr(dag.timetable, "timetable", None), "expression", "")),
            "deadline_tz": str(getattr(getattr(dag.timetable, "timetable", None), "timezone", "")),
            "asset_condition": str(getattr(dag.timetable, "asset_condition", "")),
            "params": {k: v for k, v in dag.params.dump().items()},
        }
    print("JSON:" + json.dumps(out, default=str))
    """
)


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    from eds_network.dev.stack import Stack

    home = tmp_path_factory.mktemp("dagbag-home")  # its own state folder: secrets generated there, no server
    stack = Stack(root=home, pg_port=1, s3_port=1, api_port=1)
    env = {**os.environ, **stack.airflow_env()}
    res = subprocess.run([sys.executable, "-c", PARSE], env=env, capture_output=True, text=True, timeout=300)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("JSON:")), None)
    assert line, f"DAG folder did not load:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return json.loads(line[5:])


def test_dag_folder_imports_without_errors(parsed):
    assert parsed["errors"] == {}


def test_parsing_touches_no_source_warehouse_or_s3(parsed):
    assert parsed["touched"] == []


def test_one_dag_per_base_and_platform_plus_national(parsed):
    network = load_network()
    expected = {b.dag_id for b in network.local_bases} | {p.dag_id for p in network.platforms} | {"eds_national"}
    assert expected <= set(parsed["dags"])


def test_every_dag_is_tagged_documented_owned_and_retried(parsed):
    for dag_id, d in parsed["dags"].items():
        assert "eds" in d["tags"], dag_id
        assert d["doc_md"], f"{dag_id} has no doc_md"
        for task_id, t in d["tasks"].items():
            assert t["owner"] == "eds-network", (dag_id, task_id)
            assert t["retries"] >= 2, (dag_id, task_id)


def test_local_dags_have_real_nightly_data_intervals(parsed):
    for b in load_network().local_bases:
        assert parsed["dags"][b.dag_id]["timetable"] == "CronDataIntervalTimetable"


def test_platform_dags_run_when_all_members_arrived_or_at_their_deadline(parsed):
    for p in load_network().platforms:
        d = parsed["dags"][p.dag_id]
        assert d["timetable"] == "AssetOrTimeSchedule"
        assert (d["deadline"], d["deadline_tz"]) == (p.deadline, p.deadline_timezone)
        assert d["asset_condition"].startswith("AssetAll(")
        for b in p.members:
            assert f"name='{b.asset_name}'" in d["asset_condition"], b.id


def _zones_of_dag(dag_id: str, tags: list[str]) -> set[str]:
    """The zones a DAG's tasks may run in: its own level's zone, and the key holder of its platform."""
    network = load_network()
    if "local" in tags:
        base = next(b for b in network.local_bases if b.dag_id == dag_id)
        return {zones.local(base.id), zones.keys(base.platform)}
    if "mutualised" in tags:
        platform = next(p for p in network.platforms if p.dag_id == dag_id)
        return {zones.platform(platform.id), zones.keys(platform.id)}
    if "feasibility" in tags:  # each platform counts its bases (sealed), the HDH the rest and protects
        return {zones.NATIONAL, *(zones.platform(p.id) for p in network.platforms)}
    if "national" in tags:
        return {zones.NATIONAL}
    if "onboarding" in tags:  # the operator registers and backfills; each hospital checks its own source
        return {zones.OPERATOR, *(zones.local(b.id) for b in network.local_bases)}
    if "selftest" in tags:  # one probe per zone, on that zone's own worker
        keys_and_platforms = {z for p in network.platforms for z in (zones.platform(p.id), zones.keys(p.id))}
        return {*(zones.local(b.id) for b in network.local_bases), zones.NATIONAL, zones.OPERATOR, *keys_and_platforms}
    raise AssertionError(f"{dag_id}: tagged with no level (local, mutualised, national, feasibility, onboarding)")


def test_every_task_runs_on_a_queue_of_its_dags_zones(parsed):
    """No task runs on the shared `default` queue: each is on the queue of one zone its DAG may use."""
    for dag_id, d in parsed["dags"].items():
        allowed = {zones.queue(z): z for z in _zones_of_dag(dag_id, d["tags"])}
        for task_id, t in d["tasks"].items():
            assert t["queue"] in allowed, f"{dag_id}.{task_id} runs on queue {t['queue']!r}, not one of {allowed}"


def test_a_local_dag_runs_its_data_tasks_at_its_hospital(parsed):
    for b in load_network().local_bases:
        tasks = parsed["dags"][b.dag_id]["tasks"]
        for task_id in ("extract_table", "publish_batch", "record_run"):
            assert tasks[task_id]["queue"] == zones.queue(zones.local(b.id)), (b.id, task_id)


def test_the_zone_selftest_probes_every_zone_on_its_own_queue(parsed):
    tasks = parsed["dags"]["eds_zone_selftest"]["tasks"]
    network = load_network()
    every = [zones.local(b.id) for b in network.local_bases] + [zones.NATIONAL, zones.OPERATOR]
    every += [z for p in network.platforms for z in (zones.keys(p.id), zones.platform(p.id))]
    for z in every:
        assert tasks[f"probe__{zones.queue(z)}"]["queue"] == zones.queue(z), z
    assert len(tasks) == len(every)


def test_onboarding_reads_each_source_in_its_own_hospital_zone(parsed):
    tasks = parsed["dags"]["eds_onboard_base"]["tasks"]
    for b in load_network().local_bases:
        for step in ("check_schema", "profile"):
            assert tasks[f"{step}__{b.id}"]["queue"] == zones.queue(zones.local(b.id)), (b.id, step)
    assert tasks["backfill"]["queue"] == tasks["register"]["queue"] == zones.queue(zones.OPERATOR)


def test_onboarding_params_have_static_defaults(parsed):
    """No default computed from today's date at parse time: parsing on another day gives the same DAG."""
    params = parsed["dags"]["eds_onboard_base"]["params"]
    assert params["start_date"] is None and params["end_date"] is None
    assert params["dry_run"] is True and params["reprocess"] == "failed"
