"""A whole network night through the scheduler on the zones' own Edge workers, with the counts of the demo.

The embedded cluster (dev/cluster.py): the central Airflow holds no data connection; each zone's Edge worker
resolves its own connections file only (its PostgreSQL role, its S3 user, its keys). Each base's local DAG gets a
run for the night; the platforms' runs start from the members' Assets, the HDH's from the platforms'. The row
counts of every level equal those of the same night run by `airflow dags test` (tests/integration/demo_counts.json,
asserted on that path by test_network_night.py), and every task ran on its own zone's worker.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from eds_network import cli
from eds_network.core import zones
from eds_network.core.config import load_network
from eds_network.dev.cluster import Cluster, latest_night

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.slow, pytest.mark.timeout(3600)]

NETWORK = load_network()
DEMO_COUNTS = Path(__file__).with_name("demo_counts.json")


@pytest.fixture(scope="module")
def night(stack):
    c = Cluster(stack, NETWORK)
    interval = latest_night(NETWORK)
    cli.seed_network(NETWORK, interval)
    c.start()
    try:
        c.wait_workers(timeout=600)
        states = c.run_night(interval, timeout=2400)
        yield {"cluster": c, "states": states, "interval": interval}
    finally:
        c.stop()


def test_every_dag_of_the_night_succeeds_through_the_scheduler(night):
    dags = {b.dag_id for b in NETWORK.local_bases} | {p.dag_id for p in NETWORK.platforms} | {"eds_national"}
    assert night["states"] == dict.fromkeys(dags, "success")


def test_the_counts_equal_those_of_the_embedded_demo(night, stack):
    assert cli.summary_counts(stack.dsn("catalogue")) == json.loads(DEMO_COUNTS.read_text())


def test_the_platforms_ran_from_their_members_assets_and_the_hdh_from_the_platforms(night, stack):
    with psycopg.connect(stack.dsn("airflow")) as conn:
        rows = conn.execute(
            "SELECT dag_id, run_type FROM dag_run WHERE dag_id = ANY(%s) AND state = 'success' "
            "AND queued_at >= (SELECT min(queued_at) FROM dag_run WHERE run_id LIKE 'night__%%')",
            ([p.dag_id for p in NETWORK.platforms] + ["eds_national"],),
        ).fetchall()
    assert {d for d, t in rows if t == "asset_triggered"} == {p.dag_id for p in NETWORK.platforms} | {"eds_national"}


def test_every_task_ran_on_its_own_zone_worker(night, stack):
    with psycopg.connect(stack.dsn("airflow")) as conn:
        jobs = conn.execute(
            "SELECT j.dag_id, j.task_id, j.queue, j.edge_worker FROM edge_job j JOIN dag_run r "
            "ON r.dag_id = j.dag_id AND r.run_id = j.run_id WHERE j.state = 'success' "
            "AND r.queued_at >= (SELECT min(queued_at) FROM dag_run WHERE run_id LIKE 'night__%%')"
        ).fetchall()
    assert len(jobs) > 40
    for dag_id, task_id, queue, worker in jobs:
        assert queue != "default", (dag_id, task_id)
        assert worker == queue, (dag_id, task_id, queue, worker)  # the Edge worker of that zone's queue only
    workers = {w for *_, w in jobs}
    assert {zones.queue(zones.local(b.id)) for b in NETWORK.local_bases} <= workers
    assert {zones.queue(zones.platform(p.id)) for p in NETWORK.platforms} | {zones.queue(zones.NATIONAL)} <= workers


def test_the_central_side_and_each_worker_hold_only_their_own_secrets(night):
    c = night["cluster"]
    assert json.loads(c.central_connections_file.read_text()) == {}
    for b in NETWORK.local_bases:
        held = set(json.loads(c.zone_connections_file(zones.local(b.id)).read_text()))
        assert b.source_connection_id in held
        assert not {o.source_connection_id for o in NETWORK.local_bases if o.id != b.id} & held
        assert NETWORK.national.key_connection_id not in held
