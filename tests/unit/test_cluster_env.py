"""The embedded cluster's environments: the central side holds no data connection, each zone's worker reads
its own connections file only and inherits nothing from the shell."""

from __future__ import annotations

import json

import pytest

from eds_network.core import zones
from eds_network.core.config import load_network
from eds_network.dev.cluster import EDGE_EXECUTOR, Cluster, cluster_zones
from eds_network.dev.stack import Stack
from eds_network.orchestration.selftest_tasks import connection_ids


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("EDS_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_LEAKED", "postgresql://x:y@h/db")  # a shell connection must not pass
    c = Cluster(Stack.default(), load_network())
    c.write_secrets()
    return c


def test_the_central_side_resolves_no_connection(cluster):
    env = cluster.central_env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == EDGE_EXECUTOR
    for var in ("AIRFLOW__SECRETS__BACKEND_KWARGS", "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS"):
        path = json.loads(env[var])["connections_file_path"]
        assert json.loads(open(path).read()) == {}, var


def test_each_zone_worker_reads_its_own_connections_file_only(cluster):
    network = load_network()
    files = set()
    for zone in cluster_zones(network):
        env = cluster.worker_env(zone)
        assert not [k for k in env if k.startswith("AIRFLOW_CONN_")], zone
        assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env, zone  # no metadata DB on a worker
        path = json.loads(env["AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS"])["connections_file_path"]
        assert path == json.loads(env["AIRFLOW__SECRETS__BACKEND_KWARGS"])["connections_file_path"]
        assert path.startswith(str(cluster.zone_dir(zone)))
        held = json.loads(open(path).read())
        assert set(held) == set(connection_ids(network, zone)), zone
        files.add(path)
        assert (cluster.zone_dir(zone).stat().st_mode & 0o077) == 0, zone  # a private folder
    assert len(files) == len(cluster_zones(network))


def test_a_hospital_file_has_no_national_or_other_hospital_secret(cluster):
    network = load_network()
    a, b = network.local_bases[0], network.local_bases[1]
    held = json.loads(cluster.zone_connections_file(zones.local(a.id)).read_text())
    assert b.source_connection_id not in held and network.national.key_connection_id not in held
    assert "password" not in held.get(network.national.box_key_connection_id, {})  # the public half only


def test_each_zone_worker_has_the_openlineage_transport_and_a_patient_execution_api_client(cluster, monkeypatch):
    """Task events are emitted by the task process: a worker without the stack's lineage env would emit none."""
    monkeypatch.delenv("EDS_LINEAGE", raising=False)
    want = cluster.stack.lineage_env()
    assert json.loads(want["AIRFLOW__OPENLINEAGE__TRANSPORT"])["type"] == "file"
    for zone in cluster_zones(load_network()):
        env = cluster.worker_env(zone)
        assert {k: env.get(k) for k in want} == want, zone
        # a loaded API server answers late: the default of 5 s fails a task before it starts
        assert float(env["AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT"]) >= 30, zone


def test_a_worker_row_older_than_the_workers_process_does_not_count_as_up(cluster):
    """A worker killed with an earlier cluster leaves its row 'idle': only a report made after this cluster's
    worker process started (its pid file) says that worker is up."""
    import datetime as dt
    import os

    pid = cluster._pidfile("edge-national")
    pid.parent.mkdir(parents=True, exist_ok=True)
    pid.write_text("1")
    started = dt.datetime(2026, 12, 3, 6, 0, tzinfo=dt.UTC)
    os.utime(pid, (started.timestamp(), started.timestamp()))
    assert cluster._reported_since_start("national", started + dt.timedelta(seconds=3))
    assert not cluster._reported_since_start("national", started - dt.timedelta(minutes=5))  # the stale row
    assert not cluster._reported_since_start("national", None)
    assert not cluster._reported_since_start("platform-idf", started + dt.timedelta(seconds=3))  # no process
