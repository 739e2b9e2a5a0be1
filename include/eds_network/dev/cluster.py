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
from eds_network.dev.stack import _wait_port
from eds_network.orchestration.zone_connections import CENTRAL_CONNECTION_IDS, all_zones

log = logging.getLogger(__name__)

EDGE_EXECUTOR = "airflow.providers.edge3.executors.EdgeExecutor"
EDGE_DB_MANAGER = "airflow.providers.edge3.models.db.EdgeDBManager"
LOCAL_FS_BACKEND = "airflow.secrets.local_filesystem.LocalFilesystemBackend"
CENTRAL = ("api-server", "scheduler", "dag-processor")
WORKER_CONCURRENCY = 2  # a zone's tasks at once on one worker (the embedded stack shares 2 cores)


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
                "AIRFLOW__SECRETS__BACKEND_KWARGS": central,
                "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": central,
            }
        )
        return env

    def worker_env(self, zone: str) -> dict[str, str]:
        """A zone's worker environment, from nothing: its own secrets file, the central API, no metadata DB."""
        central = self.stack.airflow_env()
        own = json.dumps({"connections_file_path": str(self.zone_connections_file(zone))})
        keep = ("EDS_HOME", "EDS_PG_PORT", "EDS_S3_PORT", "PATH", "NO_PROXY", "EDS_VOCABULARY_ZIP")
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
                "AIRFLOW__SECRETS__BACKEND": LOCAL_FS_BACKEND,
                "AIRFLOW__SECRETS__BACKEND_KWARGS": own,
                "AIRFLOW__WORKERS__SECRETS_BACKEND": LOCAL_FS_BACKEND,
                "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": own,
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.stack.airflow_home / "logs"),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "EDS_ZONE": zone,
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

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        if self._alive(name):
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stack.logs.mkdir(parents=True, exist_ok=True)
        airflow = str(Path(sys.executable).parent / "airflow")
        with open(self.stack.logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                [airflow, *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
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
        _wait_port(self.stack.api_port, "the Airflow API server", timeout=240)
        for zone in cluster_zones(self.network):
            self._spawn(
                self.worker_name(zone),
                ["edge", "worker", "--queues", zones.queue(zone), "--edge-hostname", zones.queue(zone),
                 "--concurrency", str(WORKER_CONCURRENCY)],
                self.worker_env(zone),
            )  # fmt: skip

    def stop(self) -> None:
        """End every process of the cluster (workers first), by the process group each was started in."""
        for name in reversed(self.process_names()):
            path = self._pidfile(name)
            try:
                pid = int(path.read_text())
            except (OSError, ValueError):
                continue
            _end_group(pid)
            path.unlink(missing_ok=True)

    def workers(self) -> list[dict]:
        """The Edge workers the central side knows: hostname, state, queues, last heartbeat."""
        import psycopg

        with psycopg.connect(self.stack.dsn("airflow")) as conn:
            rows = conn.execute(
                "SELECT worker_name, state, queues, last_update FROM edge_worker ORDER BY worker_name"
            ).fetchall()
        return [{"worker": w, "state": s, "queues": q, "last_heartbeat": str(t)} for w, s, q, t in rows]

    def wait_workers(self, timeout: float = 300) -> list[dict]:
        """Wait until every zone's worker has registered and is idle or running."""
        want = {zones.queue(z) for z in cluster_zones(self.network)}
        deadline = time.monotonic() + timeout
        seen: list[dict] = []
        while time.monotonic() < deadline:
            try:
                seen = self.workers()
            except Exception:  # the Edge tables may not exist yet
                seen = []
            up = {w["worker"] for w in seen if w["state"] in ("idle", "running")}
            if want <= up:
                return seen
            dead = [n for n in self.process_names() if not self._alive(n)]
            if dead:
                raise EdsError(f"cluster process(es) exited: {dead} (see {self.stack.logs})")
            time.sleep(2)
        raise EdsError(f"Edge workers not up after {timeout:.0f}s: {sorted(want - {w['worker'] for w in seen})}")


def _end_group(pid: int, grace: float = 20) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
