"""The production rehearsal: the production path end to end on this machine, without a container engine.

A stack of its own (state in $EDS_HOME/rehearsal, ports one above the test stack's): PostgreSQL with one role per
zone (orchestration/grants.py, the statements compose's airflow-init applies to eds-db), the S3 endpoint **behind TLS with a private
CA** (moto's own TLS, a CA made with `cryptography`, dev/tls.py): every client verifies it with the CA given in
its connection's extra `verify`, never the system's trust store. The catalogue is migrated when the stack starts;
the sources are seeded through `eds seed --connections FILE` (the path a non-embedded stack takes); the
platforms' vocabulary is loaded (`vocabulary: required`). Then one whole network night through the scheduler on
the per-zone Edge workers (central side with no connection), and a key rotation with a real version bump: the
next night re-extracts every member under the new version and the platform retires the old one.

    make rehearsal      # this test alone (also run by make test-all)
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
from pathlib import Path

import psycopg
import pytest
from botocore.exceptions import SSLError

from eds_network import catalogue, cli
from eds_network.core import zones
from eds_network.core.config import load_network
from eds_network.core.storage import s3_client

pytestmark = [pytest.mark.rehearsal, pytest.mark.integration, pytest.mark.airflow, pytest.mark.timeout(5400)]

NETWORK = load_network()
DEMO_COUNTS = Path(__file__).parents[1] / "integration" / "demo_counts.json"
IDF = NETWORK.platform("idf")


@pytest.fixture(scope="module")
def rehearsal():
    from eds_network.dev.cluster import Cluster, latest_night
    from eds_network.dev.stack import Stack

    if os.environ.get("EDS_NO_STACK"):
        pytest.skip("EDS_NO_STACK: this lane starts no data system")
    test_stack = Stack.default()
    s = Stack(
        root=test_stack.root / "rehearsal",
        pg_port=test_stack.pg_port + 1,
        s3_port=test_stack.s3_port + 1,
        api_port=test_stack.api_port + 1,
        s3_tls=True,
    )
    s.stop()  # from a clean slate: what an earlier rehearsal left (its PostgreSQL data included) goes
    for path in {s.root, s.pg_root}:
        shutil.rmtree(path, ignore_errors=True)
    s.start(NETWORK)
    c = Cluster(s, NETWORK)
    night = latest_night(NETWORK)
    # the path a non-embedded stack takes: the operator's connections file names the sources and the catalogue
    seeded = cli.seed_network(NETWORK, night, cli.seed_dsns(NETWORK, str(s.connections_file)))
    try:
        c.start()
        c.wait_workers(timeout=600)
        first = c.run_night(night, timeout=2400)
        counts = cli.summary_counts(s.dsn("catalogue"))
        lineage = sorted(s.lineage_dir.glob("events*"))
        yield {
            "stack": s,
            "cluster": c,
            "night": night,
            "seeded": seeded,
            "first": first,
            "counts": counts,
            "lineage": lineage,
        }
    finally:
        c.stop()
        if not os.environ.get("EDS_KEEP_STACK"):
            s.stop()


def _ids(s, c) -> dict:
    """Every platform's warehouse visit ids, and per national table and platform its ids, read as the HDH zone
    reads them (its own PostgreSQL role and S3 credential, from its zone's connections file)."""
    from urllib.parse import quote

    from eds_network.core.storage import S3Endpoint
    from eds_network.national import tables

    out: dict = {"warehouse": {}, "national": {}}
    for p in NETWORK.platforms:
        with psycopg.connect(s.dsn(f"wh_{p.id}")) as conn:
            out["warehouse"][p.id] = {
                r[0] for r in conn.execute("SELECT visit_occurrence_id FROM omop.visit_occurrence")
            }
    own = json.loads(c.zone_connections_file(zones.NATIONAL).read_text())
    pg, s3 = own[NETWORK.national.tables_connection_id], own[NETWORK.national.landing_zone.connection_id]
    dsn = f"postgresql://{quote(pg['login'])}:{quote(pg['password'], safe='')}@{pg['host']}:{pg['port']}/{pg['schema']}"
    landing = S3Endpoint(s3["extra"]["endpoint_url"], s3["login"], s3["password"], verify=s3["extra"]["verify"])
    res = tables.NationalTables(dsn, landing)
    catalog = res.catalog(NETWORK.national)
    for name in ("person", "visit_occurrence"):
        key = "person_id" if name == "person" else "visit_occurrence_id"
        for p in NETWORK.platforms:
            out["national"][(name, p.id)] = set(tables.platform_rows(catalog, name, p.id).column(key).to_pylist())
    return out


@pytest.fixture(scope="module")
def rotated(rehearsal):
    """The platform idf's level-1 key and the network's transport key rotated (new secrets, versions bumped), then
    the same night again: every base re-extracts in full under the new versions."""
    from eds_network.dev.keys import rotate_stack_key

    s, c = rehearsal["stack"], rehearsal["cluster"]
    before = _ids(s, c)
    old, new = rotate_stack_key(s, NETWORK, IDF.key_connection_id)
    transport = rotate_stack_key(s, NETWORK, NETWORK.transport_key_connection_id)
    c.write_secrets()  # each zone's own file: the key holder gets the new key, the others its version at most
    states = c.run_night(rehearsal["night"], timeout=2400)
    return {"old": old, "new": new, "transport": transport, "states": states, "before": before, "after": _ids(s, c)}


def _all_dags() -> set[str]:
    return {b.dag_id for b in NETWORK.local_bases} | {p.dag_id for p in NETWORK.platforms} | {"eds_national"}


def test_the_s3_endpoint_is_tls_with_a_private_ca_that_every_client_must_be_given(rehearsal):
    s = rehearsal["stack"]
    assert s.s3_endpoint.startswith("https://")
    key, secret = s.s3_login
    with pytest.raises(SSLError):  # the system's trust store does not know the private CA
        s3_client(s.s3_endpoint, key, secret).list_buckets()
    assert s3_client(s.s3_endpoint, key, secret, verify=s.s3_verify).list_buckets()["Buckets"]
    for zone in rehearsal["cluster"].zones():  # every zone's S3 connection carries the CA
        for conn_id, conn in json.loads(rehearsal["cluster"].zone_connections_file(zone).read_text()).items():
            if conn.get("conn_type") == "aws":
                assert conn["extra"]["verify"] == s.s3_verify, (zone, conn_id)
    ssl.create_default_context(cafile=s.s3_verify)  # a readable PEM bundle


def test_the_catalogue_is_migrated_when_the_stack_starts(rehearsal):
    assert catalogue.current_revision(rehearsal["stack"].dsn("catalogue")) == catalogue.head_revision()


def test_the_sources_were_seeded_through_a_connections_file(rehearsal):
    assert {b.id for b in NETWORK.local_bases} == set(rehearsal["seeded"])
    assert all(sum(t.values()) > 0 for t in rehearsal["seeded"].values())


def test_a_whole_night_through_the_scheduler_over_tls_has_the_counts_of_the_embedded_demo(rehearsal):
    assert rehearsal["first"] == dict.fromkeys(_all_dags(), "success")
    assert rehearsal["counts"] == json.loads(DEMO_COUNTS.read_text())


def test_every_task_of_the_night_ran_on_its_own_zone_worker(rehearsal):
    with psycopg.connect(rehearsal["stack"].dsn("airflow")) as conn:
        jobs = conn.execute(
            "SELECT dag_id, task_id, queue, edge_worker FROM edge_job WHERE state = 'success'"
        ).fetchall()
    assert len(jobs) > 40
    for dag_id, task_id, queue, worker in jobs:
        assert queue != "default" and worker == queue, (dag_id, task_id, queue, worker)
    assert {zones.queue(z) for z in rehearsal["cluster"].zones() if z != zones.OPERATOR} <= {j[3] for j in jobs}


def test_the_zone_workers_emit_the_openlineage_events_of_their_tasks(rehearsal):
    """Task events come from the task process, on the zone's worker: every DAG's tasks reported COMPLETE."""
    events = [json.loads(f.read_text()) for f in rehearsal["lineage"]]
    completed = {
        e["job"]["name"].split(".", 1)[0] for e in events if e["eventType"] == "COMPLETE" and "." in e["job"]["name"]
    }
    assert completed == _all_dags()


def test_the_platforms_standardised_with_the_loaded_vocabulary(rehearsal):
    s = rehearsal["stack"]
    for p in NETWORK.platforms:
        assert p.vocabulary == "required"
        with psycopg.connect(s.dsn(f"wh_{p.id}")) as conn:
            loads = conn.execute("SELECT count(*) FROM eds_platform.vocabulary_load").fetchone()[0]
        assert loads >= 1, p.id
    stats = catalogue.platform_stats(s.dsn("catalogue"))
    assert stats and any(r["unmapped_rate"] < 1 for r in stats)


def test_the_operator_zone_holds_the_airflow_api_connection_and_it_answers(rehearsal):
    from eds_network.orchestration.airflow_api import AirflowApi

    c = rehearsal["cluster"]
    conns = json.loads(c.zone_connections_file(zones.OPERATOR).read_text())
    api = conns["eds_airflow_api"]
    client = AirflowApi(f"{api['schema']}://{api['host']}:{api['port']}", api["login"], api["password"])
    assert client.dag(NETWORK.local_bases[0].dag_id)["dag_id"] == NETWORK.local_bases[0].dag_id


def test_a_key_rotation_bumps_the_version_re_extracts_and_retires_the_old_one(rehearsal, rotated):
    s = rehearsal["stack"]
    assert (rotated["old"], rotated["new"]) == ("v1", "v2")
    assert rotated["states"] == dict.fromkeys(_all_dags(), "success")
    with psycopg.connect(s.dsn(f"wh_{IDF.id}")) as conn:
        versions = dict(conn.execute("SELECT version, retired_at IS NOT NULL FROM eds_platform.key_version"))
        rows = dict(conn.execute("SELECT _key_version, count(*) FROM omop.person GROUP BY 1"))
    assert versions == {"v1": True, "v2": False}
    assert set(rows) == {"v2"} and rows["v2"] > 0  # every member re-extracted under v2
    with psycopg.connect(s.dsn("catalogue")) as conn:
        retired = conn.execute(
            "SELECT details FROM catalogue.audit WHERE action = 'key.retired' AND object = %s",
            (f"key:{IDF.key_connection_id}",),
        ).fetchall()
    assert [d for (d,) in retired if d.get("version") == "v1"], retired  # audited: the old version is retired
    # the counts of the re-keyed night are those of the first night: nothing lost, nothing doubled
    assert cli.summary_counts(s.dsn("catalogue"))["mutualised:idf"] == rehearsal["counts"]["mutualised:idf"]


def test_the_transport_key_rotation_keeps_every_count_and_changes_every_id_down_to_the_national_tables(
    rehearsal, rotated
):
    s = rehearsal["stack"]
    assert rotated["transport"] == ("v1", "v2")
    assert rotated["states"] == dict.fromkeys(_all_dags(), "success")
    assert cli.summary_counts(s.dsn("catalogue")) == rehearsal["counts"]  # every level, every table, every scope
    before, after = rotated["before"], rotated["after"]
    for p, ids in before["warehouse"].items():  # level-1 row ids are keyed by the transport key
        assert ids and len(after["warehouse"][p]) == len(ids) and not ids & after["warehouse"][p], p
    for key, ids in before["national"].items():  # national ids come from the tokens: all new, as many
        assert ids and len(after["national"][key]) == len(ids) and not ids & after["national"][key], key
    with psycopg.connect(s.dsn(f"wh_{IDF.id}")) as conn:
        kinds = [k for (k,) in conn.execute("SELECT kind FROM eds_platform.packaged ORDER BY packaged_at")]
    assert kinds[-1] == "full"  # the first package under the new transport version replaces the HDH's partition
