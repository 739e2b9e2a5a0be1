"""The embedded Airflow cluster: a central Airflow without data secrets, and one Edge worker per trust zone.

Airflow's own remote-worker mechanism (the Edge executor of `apache-airflow-providers-edge3`): the central side
(api-server, scheduler, dag-processor) queues each task on its zone's queue (`core/zones.py`); the zone's Edge
worker polls the central Edge API over HTTP (outbound only, as a hospital's worker would from inside the
hospital's network), runs the task, and resolves connections from its **own** secrets backend
(`[workers] secrets_backend` = LocalFilesystemBackend on the zone's own connections file).

    .eds/central/connections.json    the central side's connections: none of a data store or a key
    .eds/zones/<queue>/              a zone's private folder (mode 0700)
        connections.json             what that zone alone resolves (orchestration/zone_connections.py)
        airflow/                     the worker's AIRFLOW_HOME (no metadata DB: it talks to the API only)
    .eds/cluster/<process>.pid       the processes of the cluster (`eds cluster stop` ends them)

A worker's environment is built from nothing (no inherited `AIRFLOW_CONN_*`): the zone's connections file, the
central API's URLs and the Edge API's token secret (see docs/security.md for what that secret lets a worker
claim).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from eds_network.core import zones
from eds_network.core.config import REPO_ROOT, Network, load_network
from eds_network.core.errors import EdsError
from eds_network.dev.postgres import wait_port
from eds_network.dev.processes import MARKER, group_alive
from eds_network.orchestration.airflow_api import AirflowApi, AirflowApiError
from eds_network.orchestration.zone_connections import CENTRAL_CONNECTION_IDS, all_zones

log = logging.getLogger(__name__)

EDGE_EXECUTOR = "airflow.providers.edge3.executors.EdgeExecutor"
EDGE_DB_MANAGER = "airflow.providers.edge3.models.db.EdgeDBManager"
LOCAL_FS_BACKEND = "airflow.secrets.local_filesystem.LocalFilesystemBackend"
CENTRAL = ("api-server", "scheduler", "dag-processor")
WORKER_CONCURRENCY = 2  # a zone's tasks at once on one worker (the embedded stack shares 2 cores)
# How long a worker's signed request stays valid (seconds, plus as much leeway): Airflow's default, 30, is too short
# for one loaded 2-core machine, whose API server can stall for over a minute; a refused heartbeat stops a worker.
JWT_LEEWAY = "300"
# How long a task process waits for each answer of the execution API (seconds): the default, 5, times out (five
# tries, then the task fails before it starts) while that API server stalls under load.
EXECUTION_API_TIMEOUT = "60"
# How long `eds cluster start` waits for the API server, then for every zone's worker to be listed idle by the
# central side (seconds; EDS_CLUSTER_WAIT overrides): ten Airflow processes starting at once on a loaded 2-core
# machine take minutes. A cluster process that exits ends the wait at once.
DEFAULT_WAIT = 600.0


def wait_budget() -> float:
    """The seconds `eds cluster start` waits for each readiness signal (EDS_CLUSTER_WAIT, default DEFAULT_WAIT)."""
    raw = os.environ.get("EDS_CLUSTER_WAIT", "")
    try:
        return float(raw) if raw else DEFAULT_WAIT
    except ValueError:
        raise EdsError(f"EDS_CLUSTER_WAIT={raw!r} is not a number of seconds") from None


def cluster_zones(network: Network) -> list[str]:
    """Every zone that gets a worker: each hospital, key holder, platform, the HDH, and the operator."""
    return [*all_zones(network), zones.OPERATOR]


def _write_private(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    tmp.replace(path)


class Cluster:
    """The processes of the embedded cluster, on top of a started `Stack` (PostgreSQL, S3)."""

    def __init__(self, stack, network: Network | None = None):
        self.stack = stack
        self.network = network or load_network()

    # -- paths ----------------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.stack.root / "cluster"

    @property
    def central_connections_file(self) -> Path:
        return self.stack.root / "central" / "connections.json"

    def zone_dir(self, zone: str) -> Path:
        return self.stack.root / "zones" / zones.queue(zone)

    def zone_connections_file(self, zone: str) -> Path:
        return self.zone_dir(zone) / "connections.json"

    @property
    def edge_api_url(self) -> str:
        return f"http://localhost:{self.stack.api_port}/edge_worker/v1/rpcapi"

    # -- secrets --------------------------------------------------------------------------------------
    def zone_connections(self, zone: str) -> dict[str, dict]:
        if zone == zones.OPERATOR:  # the operator's worker: the catalogue and the Airflow REST API, no data
            full = self.stack.connections(self.network)
            ids = [self.network.catalogue_connection_id, *CENTRAL_CONNECTION_IDS]
            return {c: full[c] for c in ids if c in full}
        return self.stack.zone_connections(self.network, zone)

    def write_secrets(self) -> None:
        """Each zone's connections file in its private folder; the central side's holds no connection."""
        _write_private(self.central_connections_file, {})
        for zone in cluster_zones(self.network):
            _write_private(self.zone_connections_file(zone), self.zone_connections(zone))

    # -- environments ---------------------------------------------------------------------------------
    def central_env(self) -> dict[str, str]:
        """The stack's Airflow environment with the Edge executor and no data connection."""
        env = self.stack.airflow_env()
        central = json.dumps({"connections_file_path": str(self.central_connections_file)})
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": EDGE_EXECUTOR,
                "AIRFLOW__EDGE__API_ENABLED": "True",
                "AIRFLOW__EDGE__API_URL": self.edge_api_url,
                "AIRFLOW__EDGE__JOB_SUCCESS_PURGE": "1440",  # a day: which zone's worker ran each task
                "AIRFLOW__API_AUTH__JWT_LEEWAY": JWT_LEEWAY,
                "AIRFLOW__SECRETS__BACKEND_KWARGS": central,
                "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": central,
            }
        )
        return env

    def worker_env(self, zone: str) -> dict[str, str]:
        """A zone's worker environment, from nothing: its own secrets file, the central API, no metadata DB."""
        central = self.stack.airflow_env()
        own = json.dumps({"connections_file_path": str(self.zone_connections_file(zone))})
        # MARKER (the stack's state folder, no secret): `eds stack stop` finds a worker that left its group
        keep = ("EDS_HOME", "EDS_PG_PORT", "EDS_S3_PORT", "PATH", "NO_PROXY", "EDS_VOCABULARY_ZIP", MARKER)
        env = {k: central[k] for k in keep if k in central}
        env.update({k: os.environ[k] for k in ("HOME", "LANG", "TZ", "EDS_NETWORK_CONFIG") if k in os.environ})
        env.update(
            {
                "AIRFLOW_HOME": str(self.zone_dir(zone) / "airflow"),
                "AIRFLOW__CORE__DAGS_FOLDER": central["AIRFLOW__CORE__DAGS_FOLDER"],
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": EDGE_EXECUTOR,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": central["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"],
                "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": central["AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT"],
                "AIRFLOW__EDGE__API_URL": self.edge_api_url,
                "AIRFLOW__EDGE__JOB_POLL_INTERVAL": "2",
                "AIRFLOW__EDGE__HEARTBEAT_INTERVAL": "10",
                "AIRFLOW__API_AUTH__JWT_SECRET": central["AIRFLOW__API_AUTH__JWT_SECRET"],
                "AIRFLOW__API_AUTH__JWT_LEEWAY": JWT_LEEWAY,
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": EXECUTION_API_TIMEOUT,
                "AIRFLOW__SECRETS__BACKEND": LOCAL_FS_BACKEND,
                "AIRFLOW__SECRETS__BACKEND_KWARGS": own,
                "AIRFLOW__WORKERS__SECRETS_BACKEND": LOCAL_FS_BACKEND,
                "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": own,
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.stack.airflow_home / "logs"),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "EDS_ZONE": zone,
                # OpenLineage (docs/lineage.md): task events are emitted by the task process, on the worker
                **self.stack.lineage_env(),
            }
        )
        return env

    # -- processes ------------------------------------------------------------------------------------
    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _alive(self, name: str) -> bool:
        try:
            pid = int(self._pidfile(name).read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
        return True

    def _spawn(self, name: str, args: list[str], env: dict[str, str], program: list[str] | None = None) -> None:
        """`airflow <args>` (or `program <args>`) in its own session, output to the stack's log of `name`."""
        if self._alive(name):
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stack.logs.mkdir(parents=True, exist_ok=True)
        program = program or [str(Path(sys.executable).parent / "airflow")]
        with open(self.stack.logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                [*program, *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                start_new_session=True,
            )  # fmt: skip
        self._pidfile(name).write_text(str(proc.pid))

    def zones(self) -> list[str]:
        return cluster_zones(self.network)

    def worker_name(self, zone: str) -> str:
        return f"edge-{zones.queue(zone)}"

    def process_names(self) -> list[str]:
        return [*CENTRAL, *(self.worker_name(z) for z in cluster_zones(self.network))]

    def start(self) -> None:
        """Central Airflow with the Edge executor, then one Edge worker per zone on that zone's queue."""
        self.write_secrets()
        env = self.central_env()
        res = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise EdsError(f"airflow db migrate (Edge tables) failed:\n{res.stdout[-1500:]}\n{res.stderr[-1500:]}")
        for name in CENTRAL:
            self._spawn(name, [name], env)
        wait_port(self.stack.api_port, "the Airflow API server", timeout=wait_budget())
        for zone in cluster_zones(self.network):
            self._spawn(
                self.worker_name(zone),
                ["edge", "worker", "--queues", zones.queue(zone), "--edge-hostname", zones.queue(zone),
                 "--concurrency", str(WORKER_CONCURRENCY)],
                self.worker_env(zone),
                program=[sys.executable, "-m", "eds_network.orchestration.worker"],  # its zone's code imported once
            )  # fmt: skip

    # -- a night through the scheduler -------------------------------------------------------------------
    def api(self) -> AirflowApi:
        """The central Airflow's REST API, as the operator (the `eds_airflow_api` connection's login)."""
        return AirflowApi(f"http://localhost:{self.stack.api_port}", "admin", self.stack.ui_password())

    def airflow(self, *args: str) -> str:
        """The Airflow CLI on the central side (no data connection)."""
        res = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), *args],
            env=self.central_env(), capture_output=True, text=True, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise EdsError(f"airflow {' '.join(args)} failed:\n{res.stderr.strip()[-1500:]}")
        return res.stdout

    def _trigger_night(self, api: AirflowApi, dag_id: str, night: tuple[dt.datetime, dt.datetime]) -> str:
        """A run of `dag_id` for exactly `night`, with the logical date the scheduler would give it (the interval's
        start), so that unpausing the DAG does not add a second run of that night; an existing one is cleared
        (rerun: the interval's batch is replaced)."""
        start, end = night
        same = api.dag_runs(dag_id, start, start)
        if same:
            run_id = same[0]["dag_run_id"]
            api.call("POST", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/clear", {"dry_run": False})
            return run_id
        run_id = f"night__{start.astimezone(dt.UTC):%Y%m%dT%H%M}"
        body = {
            "dag_run_id": run_id,
            "logical_date": start.isoformat(),
            "data_interval_start": start.isoformat(),
            "data_interval_end": end.isoformat(),
            "conf": {},
        }
        api.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)
        return run_id

    def run_night(self, night: tuple[dt.datetime, dt.datetime], *, timeout: float = 1800, say=print) -> dict:
        """One whole network night through the scheduler on the zones' Edge workers.

        Each base's local DAG gets a run for `night`; the platforms' and the HDH's DAGs are unpaused and run
        when their Assets say so (every member published; every platform packaged). Waits for the whole chain,
        then pauses every DAG again (as they were created). Returns {dag_id: final state} of the night's runs."""
        import psycopg

        from eds_network.dev.access import apply_pg_roles

        api = self.api()
        apply_pg_roles(self.stack, self.network)  # the zones' grants, as the init job applies them (after a seed)
        self.airflow("dags", "reserialize")  # every DAG, its Assets and its next run computed now
        net = self.network
        local = [b.dag_id for b in net.local_bases]
        downstream = [*(p.dag_id for p in net.platforms), "eds_national"]
        try:
            for dag_id in downstream:
                api.set_paused(dag_id, False)
            # Unpausing a platform's DAG runs its latest missed deadline at once (catchup off): let that run (and
            # the HDH's run its package starts) end before the night, so the night's batches are consolidated by
            # the run their Assets start, as on a night of the network.
            self._settle(downstream, say)
            with psycopg.connect(self.stack.dsn(self.stack.airflow_db)) as conn:
                t0 = conn.execute("SELECT now()").fetchone()[0]  # the night's runs are those queued from now on
            runs = {dag_id: self._trigger_night(api, dag_id, night) for dag_id in local}
            for dag_id in local:
                api.set_paused(dag_id, False)
            say(f"  night {night[0]:%Y-%m-%d %H:%M} → {night[1]:%Y-%m-%d %H:%M} triggered on {len(local)} bases")
            return self._wait_night(runs, downstream, t0, timeout, say)
        finally:
            for dag_id in [*local, *downstream]:
                try:
                    api.set_paused(dag_id, True)
                except AirflowApiError as exc:
                    log.warning("could not pause %s again: %s", dag_id, exc)

    def _settle(self, dags: list[str], say, quiet: float = 20, timeout: float = 900) -> None:
        """Until no run of `dags` is queued or running for `quiet` seconds in a row."""
        import psycopg

        deadline = time.monotonic() + timeout
        calm_since = time.monotonic()
        said = False
        while time.monotonic() < deadline:
            with psycopg.connect(self.stack.dsn(self.stack.airflow_db)) as conn:
                active = conn.execute(
                    "SELECT dag_id, run_id FROM dag_run WHERE dag_id = ANY(%s) AND state IN ('queued', 'running')",
                    (dags,),
                ).fetchall()
            if active:
                if not said:
                    say(f"  letting the missed deadline runs end first: {sorted(r[1] for r in active)}")
                    said = True
                calm_since = time.monotonic()
            elif time.monotonic() - calm_since >= quiet:
                return
            time.sleep(2)
        raise EdsError(f"runs of {dags} still active after {timeout:.0f}s")

    def _wait_night(self, runs: dict[str, str], downstream: list[str], t0, timeout: float, say) -> dict:
        """Until the local runs, then a platform run and a national run queued after them, are finished and no
        run of the night's DAGs is queued or running."""
        import psycopg

        dags = [*runs, *downstream]
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            with psycopg.connect(self.stack.dsn(self.stack.airflow_db)) as conn:
                rows = conn.execute(
                    "SELECT dag_id, run_id, state, queued_at, end_date FROM dag_run WHERE dag_id = ANY(%s) "
                    "AND (run_id = ANY(%s) OR queued_at >= %s) ORDER BY queued_at",
                    (dags, list(runs.values()), t0),
                ).fetchall()
            final = {}
            for dag_id, run_id, state, _queued, _end in rows:
                if dag_id in runs and run_id != runs[dag_id]:
                    continue
                final[dag_id] = state
                if seen.get(f"{dag_id}/{run_id}") != state and state in ("success", "failed"):
                    say(f"  {dag_id:32s} {state:8s} ({time.monotonic() - started:.0f}s)")
                seen[f"{dag_id}/{run_id}"] = state
            active = [r for r in rows if r[2] in ("queued", "running")]
            done = all(final.get(d) in ("success", "failed") for d in dags)
            if done and not active:
                # the HDH's run of the night: queued after every platform's run of the night was (its schedule
                # needs every platform's package Asset); not after they *ended*, since a platform's package
                # task emits its Asset before the run's last tasks end (the HDH's run then starts meanwhile)
                last_platform = max(r[3] for r in rows if r[0] in downstream[:-1])
                national = [r for r in rows if r[0] == "eds_national" and r[3] >= last_platform]
                if national or any(final.get(d) == "failed" for d in dags):
                    return final
            time.sleep(3)
        raise EdsError(f"the night did not finish within {timeout:.0f}s: {seen}")

    def stop(self, grace: float = 20) -> None:
        """End every process of the cluster by the process group each was started in: the zones' Edge workers
        first, while the API server they report to is still up, then the central processes.

        A worker asked to stop (SIGTERM) ends its running jobs and then tells the central side it is offline,
        through the API server; asked at the same time as the API server, it retries that call until it is
        killed (20-40 s). Each phase waits at most `grace` seconds, then kills what is left."""
        workers = [self.worker_name(z) for z in cluster_zones(self.network)]
        central = [n for n in reversed(self.process_names()) if n not in workers]
        for phase in (workers, central):
            pids: dict[str, int] = {}
            for name in phase:
                try:
                    pids[name] = int(self._pidfile(name).read_text())
                except (OSError, ValueError):
                    continue
                _signal_group(pids[name], signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(group_alive(p) for p in pids.values()):
                time.sleep(0.2)
            for name, pid in pids.items():
                if group_alive(pid):
                    log.warning("%s still running %.0fs after SIGTERM: killed", name, grace)
                    _signal_group(pid, signal.SIGKILL)
                self._pidfile(name).unlink(missing_ok=True)

    def _worker_rows(self) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.stack.dsn(self.stack.airflow_db)) as conn:
            return conn.execute(
                "SELECT worker_name, state, queues, last_update FROM edge_worker ORDER BY worker_name"
            ).fetchall()

    def workers(self, rows: list[tuple] | None = None) -> list[dict]:
        """The Edge workers the central side knows: hostname, state, queues, last heartbeat."""
        rows = self._worker_rows() if rows is None else rows
        return [{"worker": w, "state": s, "queues": q, "last_heartbeat": str(t)} for w, s, q, t in rows]

    def wait_workers(self, timeout: float | None = None) -> list[dict]:
        """Wait until every zone's worker has registered and is idle or running (the central side's `edge_worker`
        table says so), at most `timeout` seconds (default `wait_budget()`); a cluster process that exits first
        fails at once. Each worker that comes up is logged."""
        timeout = wait_budget() if timeout is None else timeout
        want = {zones.queue(z) for z in cluster_zones(self.network)}
        t0 = time.monotonic()
        deadline = t0 + timeout
        seen: list[dict] = []
        said: set[str] = set()
        while time.monotonic() < deadline:
            try:
                rows = self._worker_rows()
                seen, up = self.workers(rows), self._reporting(rows)
            except Exception:  # the Edge tables may not exist yet
                seen, up = [], set()
            if up - said:
                log.info("Edge workers up after %.0fs: %d of %d", time.monotonic() - t0, len(up & want), len(want))
                said |= up
            if want <= up:
                return seen
            dead = [n for n in self.process_names() if not self._alive(n)]
            if dead:
                raise EdsError(f"cluster process(es) exited: {dead} (see {self.stack.logs})")
            time.sleep(2)
        late = sorted(want - up)
        raise EdsError(f"Edge workers not up after {timeout:.0f}s (EDS_CLUSTER_WAIT): {late}")

    def _reporting(self, rows: list[tuple]) -> set[str]:
        """The workers idle or running by a report newer than their process's start (its pid file): a row left
        'idle' by a worker of an earlier cluster that was killed is not this cluster's worker being up."""
        return {w for w, state, _, last in rows if state in ("idle", "running") and self._reported_since_start(w, last)}

    def _reported_since_start(self, hostname: str, last: dt.datetime | None) -> bool:
        process = {zones.queue(z): self.worker_name(z) for z in cluster_zones(self.network)}.get(hostname)
        if process is None:
            return False
        try:
            started = self._pidfile(process).stat().st_mtime
        except OSError:
            return False
        return last is not None and last.timestamp() >= started


def latest_night(network: Network, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """The latest complete nightly interval of the local bases at `now`: the run the scheduler makes when a base's
    DAG is unpaused (catchup off). The demo's bases share one schedule; a network whose bases do not is refused."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    schedules = {(b.schedule, b.timezone) for b in network.local_bases}
    if len(schedules) != 1:
        raise EdsError(f"the bases' schedules differ ({sorted(schedules)}): give the night explicitly")
    cron, tz = schedules.pop()
    local = (now or dt.datetime.now(dt.UTC)).astimezone(ZoneInfo(tz))
    it = croniter(cron, local)
    end = it.get_prev(dt.datetime)
    return it.get_prev(dt.datetime), end


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
