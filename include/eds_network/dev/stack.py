"""The embedded stack used by `make demo` and the tests: a real PostgreSQL and a local S3 endpoint.

State lives in `.eds/` (or $EDS_HOME), git-ignored:
  .eds/pg/                 PostgreSQL cluster (the machine's binaries; the `pgserver` wheel as fallback)
  .eds/secrets/            generated secrets (mode 0600): DB password, pseudonymisation keys,
                           Airflow's connections file read by its LocalFilesystemBackend secrets backend
  .eds/airflow/            AIRFLOW_HOME (airflow.cfg is not used: everything is set by environment)
  .eds/logs/               server logs

One PostgreSQL server holds Airflow's metadata DB (`airflow`), the catalogue (`catalogue`), one source
DB per hospital (`src_<base>`) and one warehouse per platform (`wh_<platform>`). The S3 endpoint is a
moto server on 127.0.0.1: it keeps objects in memory, so they live as long as `make stop` is not run.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from eds_network.core.config import REPO_ROOT, Network, load_network, state_home
from eds_network.core.errors import EdsError
from eds_network.dev import access
from eds_network.dev.connections import StackConnections
from eds_network.dev.postgres import PG_USER, EmbeddedPostgres, port_free, wait_port
from eds_network.dev.processes import MARKER, ProcessRegistry

log = logging.getLogger(__name__)

__all__ = ["PG_USER", "Stack", "ephemeral_port_range", "home"]


def home() -> Path:
    return state_home()


# The Airflow log servers (the LocalExecutor scheduler's, the triggerer's) listen on api_port + 3 and api_port + 5:
# a second stack at api_port + 1 (the rehearsal's) or + 7 (test_processes') gets ports of its own.
LOG_SERVER_OFFSETS = (3, 5)


def _port(var: str, default: int) -> int:
    return int(os.environ.get(var, default))


def ephemeral_port_range() -> tuple[int, int] | None:
    """The kernel's range of ports for outgoing connections (Linux: 32768-60999 by default), or None.

    A server port inside it can be held, at the moment the server starts, by the client side of any
    connection (or one in TIME_WAIT, for a minute after it closed): the bind then fails at random. The
    stack's default ports all lie below it."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Stack(EmbeddedPostgres, StackConnections):
    """Paths, ports and secrets of the embedded stack. Cheap to build; `start()` makes it real.

    PostgreSQL: `dev/postgres.py`; keys and Airflow connections: `dev/connections.py`."""

    root: Path
    pg_port: int
    s3_port: int
    api_port: int
    # the S3 endpoint behind TLS with a private CA (EDS_S3_TLS=1: the production rehearsal, as MinIO in compose)
    s3_tls: bool = False

    @classmethod
    def default(cls) -> Stack:
        return cls(
            root=home(),
            pg_port=_port("EDS_PG_PORT", 25432),
            s3_port=_port("EDS_S3_PORT", 25900),
            api_port=_port("EDS_API_PORT", 8080),
            s3_tls=os.environ.get("EDS_S3_TLS", "").lower() in ("1", "true", "yes"),
        )

    # -- paths -----------------------------------------------------------------------------------------
    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def connections_file(self) -> Path:
        return self.secrets_dir / "connections.json"

    @property
    def s3_endpoint(self) -> str:
        if self.s3_tls:
            return f"https://localhost:{self.s3_port}"
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def tls_files(self):
        """The private CA and the S3 endpoint's certificate (dev/tls.py), made on first use."""
        from eds_network.dev.tls import private_ca

        return private_ca(self.root / "tls")

    @property
    def s3_verify(self) -> str | None:
        """What S3 clients verify the endpoint with: the private CA's bundle when behind TLS."""
        return str(self.tls_files.ca) if self.s3_tls else None

    # -- secrets ---------------------------------------------------------------------------------------
    def _secret(self, name: str, make, folder: Path | None = None) -> str:
        folder = folder or self.secrets_dir
        path = folder / name
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            if folder == self.secrets_dir:
                os.chmod(folder, 0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(make())
        return path.read_text().strip()

    def ui_password(self, user: str = "admin") -> str:
        """The Airflow UI password of `user`, in the file the simple auth manager reads (created if missing)."""
        path = self.secrets_dir / "ui_passwords.json"
        passwords = json.loads(path.read_text()) if path.exists() else {}
        if user not in passwords:
            passwords[user] = secrets.token_urlsafe(16)
            self.secrets_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(passwords) + "\n")
        return passwords[user]

    # -- processes and S3 (moto server) ----------------------------------------------------------------------
    @property
    def processes(self) -> ProcessRegistry:
        """The registry of every process this stack starts (`stop()` ends them all): pid files in <state>/run/."""
        return ProcessRegistry(self.root / "run", str(self.root))

    def s3_running(self) -> bool:
        return not port_free(self.s3_port)

    def start_s3(self, network: Network | None = None) -> None:
        if self.s3_running():
            if network is not None and not access.s3_logins(self):
                raise EdsError(f"an S3 server already listens on port {self.s3_port} without this stack's users")
            return
        self.logs.mkdir(parents=True, exist_ok=True)
        moto = Path(sys.executable).parent / "moto_server"
        cmd = [str(moto) if moto.exists() else "moto_server", "-H", "127.0.0.1", "-p", str(self.s3_port)]
        if self.s3_tls:  # moto's own TLS, with the certificate our private CA signed
            cmd += ["-c", str(self.tls_files.cert), "-k", str(self.tls_files.key)]
        # moto enforces IAM (signatures + each user's policies) once it has served these first requests,
        # which create the administrator user (dev/access.py)
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(access.MOTO_NO_AUTH_ACTIONS)}
        access.forget_s3_users(self)
        with open(self.logs / "moto.log", "ab") as out:
            self.processes.spawn("moto", cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        wait_port(self.s3_port, "moto S3 server")
        access.create_s3_users(self, network or load_network())

    def stop_s3(self) -> None:
        # its IAM users die with it: `stop` waits until it is gone, so a restart starts a fresh server
        self.processes.stop("moto")
        access.forget_s3_users(self)

    @property
    def s3_login(self) -> tuple[str, str]:
        """The stack administrator's S3 access key and secret (every action; not a zone's credential)."""
        admin = access.s3_logins(self).get(access.ADMIN_S3_USER)
        return (admin.login, admin.password) if admin else ("eds-local", "eds-local-secret")

    def s3_client(self):
        from eds_network.core.storage import s3_client

        return s3_client(self.s3_endpoint, *self.s3_login, "eu-west-3", verify=self.s3_verify)

    # -- Airflow ---------------------------------------------------------------------------------------
    @property
    def airflow_db(self) -> str:
        """The metadata DB: `airflow`, or $EDS_AIRFLOW_DB (another one on the same server, for a test that
        migrates its own)."""
        return os.environ.get("EDS_AIRFLOW_DB", "airflow")

    def airflow_env(self) -> dict[str, str]:
        """Environment for every Airflow process of the embedded stack (CLI, dags test, standalone)."""
        fernet = self._secret("fernet_key", lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
        jwt = self._secret("api_jwt_secret", lambda: secrets.token_urlsafe(32))
        venv_bin = str(Path(sys.executable).parent)
        env = {
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sqlalchemy_url(self.airflow_db).replace(
                "+psycopg", "+psycopg2"
            ),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__FERNET_KEY": fernet,
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.secrets_dir / "ui_passwords.json"),
            "AIRFLOW__API_AUTH__JWT_SECRET": jwt,
            "AIRFLOW__API__SECRET_KEY": jwt,
            "AIRFLOW__API__HOST": "127.0.0.1",  # the embedded stack's UI listens on loopback only
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": f"http://localhost:{self.api_port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{self.api_port}/execution/",
            # the log servers of the LocalExecutor's scheduler and of the triggerer, beside this stack's API port
            # (Airflow's defaults, 8793/8794, would collide between two stacks of one machine)
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.api_port + LOG_SERVER_OFFSETS[0]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.api_port + LOG_SERVER_OFFSETS[1]),
            "AIRFLOW__SECRETS__BACKEND": "airflow.secrets.local_filesystem.LocalFilesystemBackend",
            "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"connections_file_path": str(self.connections_file)}),
            "AIRFLOW__WORKERS__SECRETS_BACKEND": "airflow.secrets.local_filesystem.LocalFilesystemBackend",
            "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps(
                {"connections_file_path": str(self.connections_file)}
            ),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            # a busy 2-core machine can take more than the default 30 s to import a DAG file's dependencies
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "180",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
            # OpenLineage (docs/lineage.md): every task and DAG run's events, one JSON file each, under lineage/
            **self.lineage_env(),
            "EDS_HOME": str(self.root),
            **self.vocabulary_env(),
            "EDS_PG_PORT": str(self.pg_port),
            "EDS_S3_PORT": str(self.s3_port),
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "NO_PROXY": "*",
            MARKER: str(self.root),  # every process of this stack carries it: `stop()` finds them all
        }
        return env

    @property
    def lineage_dir(self) -> Path:
        return self.root / "lineage"

    def lineage_env(self) -> dict[str, str]:
        """The OpenLineage provider's file transport: `<state>/lineage/events-<time>.json`, one event a file
        (several task processes write at once). `EDS_LINEAGE=off` leaves the provider disabled."""
        if os.environ.get("EDS_LINEAGE", "on") == "off":
            return {"AIRFLOW__OPENLINEAGE__DISABLED": "True"}
        self.lineage_dir.mkdir(parents=True, exist_ok=True)
        transport = {"type": "file", "log_file_path": str(self.lineage_dir / "events"), "append": False}
        return {
            "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
            "AIRFLOW__OPENLINEAGE__NAMESPACE": "eds-network",
        }

    def vocabulary_env(self) -> dict[str, str]:
        """The demo platforms standardise with the Synthea27Nj sample's vocabulary subset, when it is beside the
        checkout (production names its own Athena archive in EDS_VOCABULARY_ZIP)."""
        from eds_network.core.errors import SourceError
        from eds_network.dev.seed import synthea_zip_path
        from eds_network.platform.standardise import VOCABULARY_ENV

        if os.environ.get(VOCABULARY_ENV):
            return {VOCABULARY_ENV: os.environ[VOCABULARY_ENV]}
        try:
            return {VOCABULARY_ENV: str(synthea_zip_path())}
        except SourceError:
            return {}

    def airflow(self, *args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
        """Run the Airflow CLI in the stack's environment, in a registered process group: ended with the
        stack (`stop`), and at once if this call is interrupted (Ctrl-C, SIGTERM, an exception)."""
        env = {**os.environ, **self.airflow_env()}
        airflow = Path(sys.executable).parent / "airflow"
        name = "airflow-" + "-".join(a for a in args[:2] if a.isidentifier()) + f"-{secrets.token_hex(4)}"
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE} if capture else {}
        with self.processes.run(name, [str(airflow), *args], env=env, text=True, **pipes) as proc:
            out, err = proc.communicate()
        res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check:
            res.check_returncode()
        return res

    # -- whole stack -----------------------------------------------------------------------------------
    def warn_ephemeral_ports(self) -> list[str]:
        """Warn about each port of the stack that lies in the kernel's ephemeral range; returns the warnings."""
        span = ephemeral_port_range()
        if span is None:
            return []
        warnings = [
            f"{var}={port} lies in the kernel's range for outgoing connections ({span[0]}-{span[1]}): a client "
            f"socket may hold it when the server starts and the start then fails; choose a port below {span[0]}"
            for var, port in (
                ("EDS_PG_PORT", self.pg_port),
                ("EDS_S3_PORT", self.s3_port),
                ("EDS_API_PORT", self.api_port),
            )
            if span[0] <= port <= span[1]
        ]
        for warning in warnings:
            log.warning(warning)
        return warnings

    def start(self, network: Network | None = None, *, migrate: bool = True) -> None:
        network = network or load_network()
        t0 = time.monotonic()
        self.warn_ephemeral_ports()
        self.root.mkdir(parents=True, exist_ok=True)
        self.start_postgres()
        for db in [
            "airflow",
            "catalogue",
            *(f"wh_{p.id}" for p in network.platforms),
            *(f"src_{b.id}" for b in network.local_bases),
        ]:
            self.create_database(db)
        # The HDH's database holds the national tables' Iceberg catalog, pointing at files in S3 whose objects
        # live in the S3 server's memory: a new S3 server means a new, empty catalog.
        self.create_database("hdh", drop=not self.s3_running())
        self.start_s3(network)
        from eds_network.core.storage import ensure_bucket

        s3 = self.s3_client()
        for loc in [
            network.national.landing_zone,
            *(p.intake for p in network.platforms),
            *(p.outbox for p in network.platforms),
            *(p.key_holder.exchange for p in network.platforms),
        ]:
            ensure_bucket(s3, loc.bucket)
        self.write_connections(network)
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        if migrate:
            res = self.airflow("db", "migrate", check=False, capture=True)
            if res.returncode != 0:
                raise EdsError(f"airflow db migrate failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        from eds_network import catalogue

        catalogue.create_schema(self.dsn("catalogue"))
        catalogue.register_network(self.dsn("catalogue"), network)
        access.apply_pg_roles(self, network)  # each zone's own role and grants (dev/access.py)
        log.info(
            "embedded stack up in %.1fs (PostgreSQL :%d, S3 %s)", time.monotonic() - t0, self.pg_port, self.s3_endpoint
        )

    def stop(self) -> None:
        """Stop every process the stack started (registered groups, then anything left with its marker), then
        PostgreSQL."""
        self.processes.stop()
        self.stop_postgres()

    def status(self) -> dict[str, bool]:
        return {"postgres": self.pg_running(), "s3": self.s3_running(), **{n: True for n in self.processes.running()}}
