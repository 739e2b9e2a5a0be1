"""No process of the clone is left behind: `make stop` ends the cluster `make airflow` starts (API server,
scheduler, DAG processor, one Edge worker per zone), `eds stack stop` ends `airflow standalone` with its scheduler
and workers, and an interrupted `eds night` ends its Airflow child.

Each test runs the real commands in a state folder of its own (its own process registry and marker) on the session
stack's PostgreSQL (external to that folder: `EDS_PG_EXTERNAL`) and S3 endpoint, with a metadata DB and an API port
of its own: stopping it cannot touch the session's stack.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from eds_network.dev.processes import marked

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

EDS = str(Path(sys.executable).parent / "eds")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _groups_of(home: Path) -> list[int]:
    """Every live process in the process group of a pid file of the state folder's cluster (`<home>/cluster/`):
    the marker alone does not find them, since Airflow's `setproctitle` overwrites a process's environment."""
    leaders = set()
    for f in (home / "cluster").glob("*.pid"):
        try:
            leaders.add(int(f.read_text()))
        except ValueError:
            continue
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in leaders:  # state, ppid, pgrp
            found.append(int(stat.parent.name))
    return sorted(found)


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"{what}: the command exited ({proc.returncode}) first:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    pytest.fail(f"{what}: not within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def own_home(stack, tmp_path):
    """A state folder sharing the session's servers (its secrets copied) with its own metadata DB and API port."""
    from eds_network.dev.stack import Stack

    home = tmp_path / "home"
    shutil.copytree(stack.secrets_dir, home / "secrets")
    own = Stack(root=home, pg_port=stack.pg_port, s3_port=stack.s3_port, api_port=stack.api_port + 7)
    own.pg_root.mkdir(parents=True, exist_ok=True)  # the password of the shared cluster, where `own` reads it
    (own.pg_root / ".pg_password").write_text(stack.pg_password)
    db = f"airflow_{uuid.uuid4().hex[:8]}"
    stack.create_database(db)
    env = {
        **os.environ,
        "EDS_HOME": str(home),
        "EDS_PG_PORT": str(stack.pg_port),
        "EDS_S3_PORT": str(stack.s3_port),
        "EDS_API_PORT": str(own.api_port),
        "EDS_AIRFLOW_DB": db,
        "EDS_PG_EXTERNAL": "1",  # the session's server: this folder's `stop` must leave it running
    }
    yield home, env
    for pid in {*marked(str(home)), *_groups_of(home)}:  # never leave a process, even when the test failed
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
    if own.pg_root != home:
        shutil.rmtree(own.pg_root, ignore_errors=True)


def test_stack_stop_ends_airflow_standalone_with_its_scheduler_and_workers(own_home):
    home, env = own_home
    log = home / "standalone.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([EDS, "airflow", "standalone"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:

        def components() -> set[str]:
            lines = [_cmdline(p) for p in marked(str(home))]
            return {name for name in ("scheduler", "dag-processor", "api-server") if any(name in c for c in lines)}

        _wait_for(lambda: components() == {"scheduler", "dag-processor", "api-server"}, 420, "Airflow up", proc, log)
        before = marked(str(home))
        assert len(before) >= 4, [_cmdline(p) for p in before]  # standalone and its components at least

        res = subprocess.run([EDS, "stack", "stop"], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        proc.wait(timeout=60)
        left = marked(str(home))
        assert left == [], [_cmdline(p) for p in left]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_make_airflow_then_make_stop_leave_no_process(own_home, stack):
    """The real targets: `make airflow` returns once the central side lists every zone's Edge worker idle (its
    readiness signal, bounded by EDS_CLUSTER_WAIT: ten Airflow processes start at once, which takes minutes on a
    loaded machine; a process that exits first fails it at once); then `make stop` leaves no process of the state
    folder, and the session's PostgreSQL, which that folder did not start, still runs."""
    from eds_network.core import zones
    from eds_network.core.config import REPO_ROOT, load_network
    from eds_network.dev.cluster import cluster_zones

    home, env = own_home
    wait = 900
    env = {**env, "EDS_CLUSTER_WAIT": str(wait)}
    # this test's own virtualenv, already installed (-o install: no reinstall from within a test)
    make = ["make", "--no-print-directory", "-C", str(REPO_ROOT), f"VENV={Path(sys.executable).parent.parent}"]
    log = home / "make-airflow.log"
    with open(log, "wb") as out:
        res = subprocess.run(
            [*make, "-o", "install", "airflow"], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=3 * wait
        )
    assert res.returncode == 0, log.read_text()[-3000:]
    lines = [_cmdline(p) for p in {*marked(str(home)), *_groups_of(home)}]
    for component in ("api", "scheduler", "dag"):  # api-server / api_server, dag-processor / dag_processor
        assert any(f"airflow {component}" in c for c in lines), (component, lines)
    workers = [c for c in lines if "edge worker" in c]
    queues = {zones.queue(z) for z in cluster_zones(load_network())}
    assert {q for q in queues if any(q in c for c in workers)} == queues, workers  # one worker per zone

    res = subprocess.run([*make, "stop"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "embedded stack stopped" in res.stdout, (res.stdout[-2000:], res.stderr[-2000:])  # it ran `eds stack stop`
    left = sorted({*marked(str(home)), *_groups_of(home)})
    assert left == [], [_cmdline(p) for p in left]
    assert stack.pg_running()


def test_sigterm_to_eds_night_ends_its_airflow_children(own_home):
    home, env = own_home
    log = home / "night.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([EDS, "night"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        children = _wait_for(
            lambda: [p for p in marked(str(home)) if "airflow" in _cmdline(p)], 180, "an Airflow child", proc, log
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) != 0
        left = marked(str(home))
        assert left == [], [_cmdline(p) for p in left]
        assert not set(children) & set(marked(str(home)))
        assert not list((home / "run").glob("*.pid"))  # the registry forgot them
    finally:
        if proc.poll() is None:
            proc.kill()
