"""Fault injection through Airflow (slow: `make test-all`): the `airflow dags test` process running a hospital's
night is killed in the middle of a table's COPY (`EDS_FAULT=extract.mid_copy:exit`, the process dies as under
SIGKILL), then the same run is triggered again: the batch published is the clean one, the catalogue has one
run for it, nothing is left over in the intake.
"""

from __future__ import annotations

import psycopg
import pytest

from eds_network import catalogue, cli
from eds_network.core import exchange, faults
from eds_network.core.config import load_network
from eds_network.core.storage import list_keys, read_json

pytestmark = [
    pytest.mark.integration,
    pytest.mark.airflow,
    pytest.mark.slow,
    pytest.mark.mutates_night,
    pytest.mark.timeout(3600),
]

NETWORK = load_network()
BASE = NETWORK.base("hosp_c")
START, END = cli.demo_interval()
COUNTS = ("extracted", "published", "quarantined", "excluded_objection", "tombstones")


def _batch(stack, manifest_key: str) -> tuple[dict, list[str]]:
    p = NETWORK.platform(BASE.platform)
    s3 = stack.s3_client()
    m = read_json(s3, p.intake.bucket, manifest_key)
    return m, sorted(list_keys(s3, p.intake.bucket, manifest_key.rsplit("/", 1)[0] + "/"))


def _local_run(stack) -> dict:
    runs = {r["scope_id"]: r for r in catalogue.latest_runs(stack.dsn("catalogue")) if r["level"] == "local"}
    return runs[BASE.id]


def test_dags_test_process_killed_mid_copy_then_rerun_publishes_the_clean_batch(planted_night, stack, monkeypatch):
    before_run = _local_run(stack)
    manifest_key = before_run["details"]["manifest_key"]
    clean, clean_keys = _batch(stack, manifest_key)

    monkeypatch.setenv(faults.ENV, "extract.mid_copy:exit")
    killed = stack.airflow("dags", "test", BASE.dag_id, END.isoformat(), check=False, capture=True)
    assert killed.returncode != 0, killed.stdout[-2000:]
    monkeypatch.delenv(faults.ENV)
    _, keys_after_kill = _batch(stack, manifest_key)
    assert keys_after_kill == clean_keys  # the killed run published nothing: the manifest still lists the old batch

    again = stack.airflow("dags", "test", BASE.dag_id, END.isoformat(), check=False, capture=True)
    assert again.returncode == 0 and "state=failed" not in again.stdout + again.stderr, again.stdout[-3000:]
    m, keys = _batch(stack, manifest_key)
    for t in BASE.tables:
        assert {k: m["tables"][t][k] for k in COUNTS} == {k: clean["tables"][t][k] for k in COUNTS}, t
        if t != "person":  # the person file carries randomised sealed tokens; every other file is byte-identical
            assert m["tables"][t]["sha256"] == clean["tables"][t]["sha256"], t
    listed = (
        {manifest_key}
        | {e["key"] for e in m["tables"].values()}
        | {e["tombstones_key"] for e in m["tables"].values() if e["tombstones_key"]}
    )
    assert set(keys) == listed  # nothing left over from the killed run
    with psycopg.connect(stack.dsn("catalogue")) as conn:
        n = conn.execute(
            "SELECT count(*) FROM catalogue.run WHERE level = 'local' AND scope_id = %s AND batch_id = %s",
            (BASE.id, m["batch_id"]),
        ).fetchone()[0]
    assert n == 1
    assert _local_run(stack)["status"] == "success"
    assert exchange.MANIFEST in manifest_key
