"""The embedded stack's PostgreSQL server: the machine's binaries (the `pgserver` wheel as fallback), one cluster
under the stack's state folder (as root: a folder of its own, run as the `postgres` user), loopback only."""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from eds_network.core.errors import EdsError

log = logging.getLogger(__name__)

PG_USER = "eds"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_port(port: int, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not port_free(port):
            return
        time.sleep(0.2)
    raise EdsError(f"{what} did not start listening on 127.0.0.1:{port} within {timeout:.0f}s")


def _pg_bindir() -> Path:
    """The machine's PostgreSQL binaries (newest version), else the pgserver wheel's."""
    env = os.environ.get("EDS_PG_BINDIR")
    if env:
        return Path(env)
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if candidates:
        return candidates[-1].parent
    try:
        import pgserver  # type: ignore[import-not-found]

        return Path(pgserver.__file__).parent / "pginstall" / "bin"
    except ImportError:
        raise EdsError(
            "no PostgreSQL server binaries found: install them (apt-get install postgresql) "
            "or `pip install pgserver`, or set EDS_PG_BINDIR"
        ) from None


class EmbeddedPostgres:
    """The PostgreSQL part of `Stack` (a mixin: it uses the stack's `root`, `pg_port`, `logs` and `_secret`)."""

    @property
    def pg_root(self) -> Path:
        """Where the cluster lives. As root, PostgreSQL runs as the `postgres` user, which may not be able to
        traverse the checkout's folders (a clone under a 0700 temp folder): the cluster then lives in a
        world-traversable folder of its own, named after this state folder."""
        if os.geteuid() != 0:
            return self.root
        import hashlib
        import tempfile

        tag = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"eds-network-pg-{tag}"

    @property
    def pgdata(self) -> Path:
        return self.pg_root / "pg"

    @property
    def pg_password(self) -> str:
        # Kept next to the cluster it opens (the cluster may live outside the state folder, see pg_root).
        return self._secret(".pg_password", lambda: secrets.token_urlsafe(24), folder=self.pg_root)

    def dsn(self, dbname: str) -> str:
        return f"postgresql://{PG_USER}:{self.pg_password}@127.0.0.1:{self.pg_port}/{dbname}"

    def sqlalchemy_url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{PG_USER}:{self.pg_password}@127.0.0.1:{self.pg_port}/{dbname}"

    # -- PostgreSQL ------------------------------------------------------------------------------------
    def _run_as(self) -> list[str]:
        """PostgreSQL refuses to run as root: use the `postgres` system user (created if missing)."""
        if os.geteuid() != 0:
            return []
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
        return ["runuser", "-u", "postgres", "--"]

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for p in [path, *path.rglob("*")]:
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def pg_running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists() and not port_free(self.pg_port)

    @property
    def pg_external(self) -> bool:
        """$EDS_PG_EXTERNAL=1: the PostgreSQL server on `pg_port` is not this state folder's (another stack's, a
        developer's own): start and stop leave it alone."""
        return os.environ.get("EDS_PG_EXTERNAL") == "1"

    def _claim_pg_root(self) -> None:
        """As root the cluster lives outside the state folder (`pg_root`), so a new state folder at the same path
        (a fresh clone, a removed `.eds/`) would find the databases a previous checkout left there: stale
        catalogue rows, warehouses, ledgers. The state folder and its cluster share a random mark; a cluster
        whose mark this state folder does not hold is an orphan, stopped and removed before a new one is made.
        (A cluster and a state folder from before marks existed, with its secrets, are adopted as they are.)"""
        if self.pg_root == self.root:
            return
        mine_file, theirs_file = self.root / ".pg_cluster", self.pg_root / ".pg_cluster"
        mine = mine_file.read_text().strip() if mine_file.exists() else None
        theirs = theirs_file.read_text().strip() if theirs_file.exists() else None
        legacy = mine is None and theirs is None and self.secrets_dir.exists()
        if self.pg_root.exists() and (mine is None or mine != theirs) and not legacy:
            log.warning("%s: a cluster this state folder did not make (an orphan): removed", self.pg_root)
            self.stop_postgres()
            shutil.rmtree(self.pg_root)
            theirs = None
        if mine is None or theirs is None:
            mark = mine or theirs or secrets.token_hex(8)
            self.root.mkdir(parents=True, exist_ok=True)
            self.pg_root.mkdir(parents=True, exist_ok=True)
            mine_file.write_text(mark + "\n")
            theirs_file.write_text(mark + "\n")

    def start_postgres(self) -> None:
        if self.pg_external:
            wait_port(self.pg_port, "the external PostgreSQL")
            return
        self._claim_pg_root()
        bindir = _pg_bindir()
        runas = self._run_as()
        self.logs.mkdir(parents=True, exist_ok=True)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bindir, runas)
        if self.pg_running():
            return
        if not port_free(self.pg_port):
            raise EdsError(f"port {self.pg_port} is taken by another program: set EDS_PG_PORT")
        logfile = self.pg_root / "postgres.log"
        logfile.touch()
        self._chown(logfile)
        pg_ctl = [str(bindir / "pg_ctl"), "-D", str(self.pgdata), "-o", f"-p {self.pg_port}", "-l", str(logfile)]
        res = subprocess.run([*runas, *pg_ctl, "-w", "-t", "60", "start"], capture_output=True, text=True)
        if res.returncode != 0:
            tail = logfile.read_text()[-800:] if logfile.exists() else ""
            raise EdsError(f"PostgreSQL did not start: {res.stderr.strip()} {tail}")
        wait_port(self.pg_port, "PostgreSQL")

    def _initdb(self, bindir: Path, runas: list[str]) -> None:
        """A new cluster: the stack's superuser with its generated password, loopback only, scram-sha-256."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        os.chmod(self.pg_root, 0o755)
        pwfile = self.pgdata.parent / ".pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.pg_password + "\n")
        self._chown(self.pgdata)
        self._chown(pwfile)
        initdb = [str(bindir / "initdb"), "-D", str(self.pgdata), "-U", PG_USER, "--pwfile", str(pwfile)]
        options = ["--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8"]
        try:
            subprocess.run([*runas, *initdb, *options], check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            raise EdsError(f"initdb failed: {exc.stderr.strip()[-800:]}") from None
        finally:
            pwfile.unlink(missing_ok=True)
        with open(self.pgdata / "postgresql.conf", "a") as f:
            f.write(
                "\n# eds-network embedded stack\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.pgdata}'\n"
                "max_connections = 200\nshared_buffers = 256MB\nfsync = on\n"
                "log_min_messages = warning\nlog_statement = 'none'\n"
            )

    def stop_postgres(self) -> None:
        if self.pg_external:
            return
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text().splitlines()[0])
        try:
            os.kill(pid, signal.SIGINT)  # fast shutdown
        except ProcessLookupError:
            return
        for _ in range(300):
            if not pidfile.exists():
                return
            time.sleep(0.1)

    def create_database(self, name: str, *, drop: bool = False) -> str:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            if drop:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)
