"""A deterministic error fails its task at once, through Airflow: one hospital's `value_as_number` drifts to
text; its `measurement` task fails on its first try (no retry, no 5-minute waits holding the night), its other
tables are published in the night's batch, and the other bases' nights are untouched. The column is then put
back and the night re-run, so the shared night of this folder is whole again for the tests after this one.
"""

from __future__ import annotations

import psycopg
import pytest

from eds_network import catalogue, cli
from eds_network.core.config import load_network
from eds_network.core.storage import read_json

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.mutates_night, pytest.mark.timeout(1800)]

NETWORK = load_network()
BASE = NETWORK.base("hosp_b")  # neither planted with identifiers nor used by the kill test
START, END = cli.demo_interval()


def _task_instances(stack, dag_id: str) -> dict[str, tuple[str, int]]:
    """(state, try_number) of each task instance of the DAG's latest run, mapped ones named by their table."""
    with psycopg.connect(stack.dsn("airflow")) as conn:
        rows = conn.execute(
            "SELECT ti.task_id, ti.rendered_map_index, ti.map_index, ti.state, ti.try_number FROM task_instance ti "
            "WHERE ti.dag_id = %s AND ti.run_id = (SELECT run_id FROM dag_run WHERE dag_id = %s ORDER BY id DESC "
            "LIMIT 1)",
            (dag_id, dag_id),
        ).fetchall()
    return {(f"{t}[{r or m}]" if m >= 0 else t): (s, n) for t, r, m, s, n in rows}


def _local_run(stack, base_id: str) -> dict:
    return {r["scope_id"]: r for r in catalogue.latest_runs(stack.dsn("catalogue")) if r["level"] == "local"}[base_id]


@pytest.fixture
def drifted(planted_night, stack):
    dsn = stack.dsn(f"src_{BASE.id}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE omop.measurement ALTER COLUMN value_as_number TYPE text")
    yield planted_night
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE omop.measurement ALTER COLUMN value_as_number TYPE double precision "
            "USING value_as_number::double precision"
        )
    again = stack.airflow("dags", "test", BASE.dag_id, END.isoformat(), check=False, capture=True)
    assert again.returncode == 0 and "state=failed" not in again.stdout + again.stderr, again.stdout[-3000:]


def test_a_drifted_column_fails_its_table_on_the_first_try_and_the_rest_publishes(drifted, stack):
    assert "measurement" in BASE.tables
    res = stack.airflow("dags", "test", BASE.dag_id, END.isoformat(), check=False, capture=True)
    out = res.stdout + res.stderr

    tis = _task_instances(stack, BASE.dag_id)
    assert tis["extract_table[measurement]"] == ("failed", 1), tis  # failed, and tried once: no up_for_retry
    assert "up_for_retry" not in {s for s, _ in tis.values()}
    for t in BASE.tables:
        if t != "measurement":
            assert tis[f"extract_table[{t}]"][0] == "success", (t, tis)
    assert tis["publish_batch"][0] == tis["record_run"][0] == "success", tis
    # the error names base, table and column, says it is not retried, and quotes no value
    assert "base=hosp_b table=measurement column=value_as_number" in out
    assert "a deterministic error: not retried" in out

    run = _local_run(stack, BASE.id)
    assert run["status"] == "partial" and run["details"]["failed_tables"] == ["measurement"]
    p = NETWORK.platform(BASE.platform)
    manifest = read_json(stack.s3_client(), p.intake.bucket, run["details"]["manifest_key"])
    assert set(manifest["tables"]) == set(BASE.tables) - {"measurement"}

    # the other bases of the night published theirs (their runs are whole)
    for b in NETWORK.local_bases:
        if b.id != BASE.id:
            assert _local_run(stack, b.id)["status"] == "success", b.id
