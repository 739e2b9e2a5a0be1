"""Trust zones on the real cluster: each zone's task, run by Airflow on that zone's own Edge worker, resolves its
own connections only.

The embedded cluster (dev/cluster.py) starts the central Airflow with the Edge executor and no data connection,
and one Edge worker per zone whose worker-side secrets backend reads that zone's own connections file. The
`eds_zone_selftest` DAG runs one probe per zone on that zone's queue; each probe asks Airflow for every
connection its zone must not hold. A platform's task cannot obtain a hospital's source, the transport key or
the national box private key; a hospital's task cannot obtain the national keys or another hospital's source.
"""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from eds_network.core import zones
from eds_network.core.config import load_network

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.timeout(1800)]

NETWORK = load_network()
DAG_ID = "eds_zone_selftest"


@pytest.fixture(scope="module")
def cluster(stack):
    from eds_network.dev.cluster import Cluster

    c = Cluster(stack, NETWORK)
    c.start()
    try:
        c.wait_workers(timeout=600)
        yield c
    finally:
        c.stop()


def _airflow(cluster, *args: str) -> str:
    import subprocess
    import sys
    from pathlib import Path

    res = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), *args],
        env=cluster.central_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def _run_selftest(cluster) -> dict[str, tuple[str, dict | None]]:
    _airflow(cluster, "dags", "reserialize")
    # unpaused and triggered through the REST API, as `Cluster.run_night` does (no further CLI process to start)
    api = cluster.api()
    api.set_paused(DAG_ID, False)
    run_id = f"zone_isolation__{int(time.time())}"
    api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": {}})
    dsn = cluster.stack.dsn("airflow")
    deadline = time.monotonic() + 1200
    state = None
    while time.monotonic() < deadline:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT state FROM dag_run WHERE dag_id=%s AND run_id=%s", (DAG_ID, run_id)).fetchone()
        state = row and row[0]
        if state in ("success", "failed"):
            break
        time.sleep(1)
    with psycopg.connect(dsn) as conn:
        tis = dict(
            conn.execute(
                "SELECT task_id, state FROM task_instance WHERE dag_id=%s AND run_id=%s", (DAG_ID, run_id)
            ).fetchall()
        )
        xcoms = dict(
            conn.execute(
                "SELECT task_id, value FROM xcom WHERE dag_id=%s AND run_id=%s AND key='return_value'", (DAG_ID, run_id)
            ).fetchall()
        )
    assert state in ("success", "failed"), f"{DAG_ID} did not finish: {tis}"
    return {t: (s, _value(xcoms.get(t))) for t, s in tis.items()}


def _value(v):
    if v is None or isinstance(v, dict):
        return v
    return json.loads(v)


@pytest.fixture(scope="module")
def probes(cluster):
    return _run_selftest(cluster)


def _probe(probes, zone: str) -> dict:
    state, value = probes[f"probe__{zones.queue(zone)}"]
    assert state == "success", (zone, state)  # a probe fails when a forbidden connection resolves
    assert value["zone"] == zone
    return value


def test_every_zone_has_its_own_edge_worker_on_its_own_queue(cluster):
    workers = {w["worker"]: w for w in cluster.workers()}
    for zone in cluster.zones():
        w = workers[zones.queue(zone)]
        assert w["state"] in ("idle", "running"), w
        assert zones.queue(zone) in w["queues"] and "default" not in w["queues"], w


def test_the_central_side_holds_no_connection(cluster):
    assert json.loads(cluster.central_connections_file.read_text()) == {}
    with psycopg.connect(cluster.stack.dsn("airflow")) as conn:
        assert conn.execute("SELECT count(*) FROM connection").fetchone()[0] == 0


def test_a_platform_task_cannot_obtain_a_hospital_source_the_transport_key_or_the_box_private_key(probes):
    for p in NETWORK.platforms:
        got = _probe(probes, zones.platform(p.id))
        for b in NETWORK.local_bases:
            assert b.source_connection_id in got["refused"], (p.id, b.id)
        conn_id = NETWORK.transport_key_connection_id
        assert conn_id in got["refused"], (p.id, conn_id)
        assert "isn't defined" in got["refused"][conn_id], got["refused"][conn_id]  # Airflow's own refusal
        # the box key's public half only (feasibility counts are sealed to the HDH): its private key is not there
        assert NETWORK.national.box_key_connection_id in got["held"], p.id
        assert NETWORK.national.box_key_connection_id not in got["with_secret"], p.id
        assert p.warehouse_connection_id in got["held"]
        # the platform knows its level-1 key's version, never the key
        assert p.key_connection_id in got["held"] and p.key_connection_id not in got["with_secret"]


def test_a_hospital_task_cannot_obtain_the_national_keys_or_another_hospital_source(probes):
    for b in NETWORK.local_bases:
        got = _probe(probes, zones.local(b.id))
        assert NETWORK.national.key_connection_id in got["refused"], b.id
        for other in NETWORK.local_bases:
            if other.id != b.id:
                assert other.source_connection_id in got["refused"], (b.id, other.id)
        assert b.source_connection_id in got["held"]
        # the hospital holds the national box key's public half only: no secret in it
        assert NETWORK.national.box_key_connection_id in got["held"]
        assert NETWORK.national.box_key_connection_id not in got["with_secret"]


def test_the_national_zone_holds_its_keys_and_no_source(probes):
    got = _probe(probes, zones.NATIONAL)
    assert {NETWORK.national.key_connection_id, NETWORK.national.box_key_connection_id} <= set(got["with_secret"])
    for b in NETWORK.local_bases:
        assert b.source_connection_id in got["refused"]


def test_every_other_zone_probe_passed(probes):
    assert {s for s, _ in probes.values()} == {"success"}, probes
