"""The processes the embedded stack starts, in one registry that `eds stack stop` (`make stop`) ends.

Every long-lived process of the stack (the S3 endpoint, `airflow standalone` and through it the scheduler, its
LocalExecutor workers, the API server, the DAG processor and the triggerer; each `airflow dags test` of a night;
any further worker a component adds) is started by `ProcessRegistry.spawn` in a process group of its own, with
a pid file `<state>/run/<name>.pid`. `stop()` ends each registered group (SIGTERM, then SIGKILL after a grace
period), then ends every process still carrying this stack's marker in its environment (`EDS_STACK_ID`, set in
every process the stack starts): a child that left its group (a daemonised worker) is found too. PostgreSQL is
not in the registry: `pg_ctl` manages it (its own pid file, fast shutdown).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = "EDS_STACK_ID"
GRACE_S = 15.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def group_alive(pgid: int) -> bool:
    """Whether a process group has a running member: a zombie (exited, not yet reaped by its parent, as a
    process this one started and has not waited for) does not count, though the kernel still signals it."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(_alive(pid) for pid in _members(pgid))


def _members(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(d.joinpath("stat").read_text().split(") ", 1)[1].split()[2]) == pgid:
                    out.append(int(d.name))
    return out


def _ancestors() -> set[int]:
    """This process and its parents: never ended by a sweep (the `eds` or pytest process running it)."""
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return out


def marked(stack_id: str) -> list[int]:
    """Pids of the running processes whose environment carries `EDS_STACK_ID=<stack_id>` (this user's)."""
    needle = f"{MARKER}={stack_id}".encode()
    mine = _ancestors()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in mine:
            continue
        with contextlib.suppress(OSError):
            if needle in d.joinpath("environ").read_bytes().split(b"\0") and _alive(int(d.name)):
                out.append(int(d.name))
    return sorted(out)


def _end(pids: Sequence[int], *, group: bool, grace: float) -> None:
    send = os.killpg if group else os.kill
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(pid, signal.SIGTERM)
    alive = group_alive if group else _alive
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if alive(pid):
            log.warning("process %s did not stop within %.0fs: killed", pid, grace)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                send(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5  # gone, not merely signalled: a restart finds its ports free
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)


class ProcessRegistry:
    """Pid files of the process groups one stack started (`folder`), and the marker its processes carry."""

    def __init__(self, folder: Path, stack_id: str):
        self.folder, self.stack_id = folder, stack_id

    def _pidfile(self, name: str) -> Path:
        return self.folder / f"{name}.pid"

    def spawn(self, name: str, cmd: Sequence[str], *, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
        """Start `cmd` as the leader of a new process group, registered as `name` until `forget(name)`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        env = {**(env if env is not None else os.environ), MARKER: self.stack_id}
        proc = subprocess.Popen(list(cmd), env=env, start_new_session=True, **popen)
        self._pidfile(name).write_text(str(proc.pid))
        return proc

    def forget(self, name: str) -> None:
        self._pidfile(name).unlink(missing_ok=True)

    def running(self) -> dict[str, int]:
        """Registered groups still alive (pid files of the others are removed)."""
        out = {}
        for f in sorted(self.folder.glob("*.pid")) if self.folder.is_dir() else []:
            try:
                pgid = int(f.read_text().strip())
            except ValueError:
                pgid = 0
            if pgid and group_alive(pgid):
                out[f.stem] = pgid
            else:
                f.unlink(missing_ok=True)
        return out

    def stop(self, prefix: str = "", *, grace: float = GRACE_S) -> None:
        """End the registered groups whose name starts with `prefix` (all by default); with no prefix, also every
        process left with this stack's marker."""
        groups = {n: p for n, p in self.running().items() if n.startswith(prefix)}
        _end(list(groups.values()), group=True, grace=grace)
        for name in groups:
            self.forget(name)
        if not prefix:
            _end(marked(self.stack_id), group=False, grace=grace)

    @contextlib.contextmanager
    def run(self, name: str, cmd: Sequence[str], **popen) -> Iterator[subprocess.Popen]:
        """`spawn` for the duration of a block; the group is ended if the block exits early (an exception,
        Ctrl-C, SIGTERM turned into SystemExit)."""
        proc = self.spawn(name, cmd, **popen)
        try:
            yield proc
        finally:
            if proc.poll() is None or group_alive(proc.pid):
                _end([proc.pid], group=True, grace=GRACE_S)
                proc.wait()
            self.forget(name)


def terminate_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit in the main thread, so that `finally` blocks (and `run`) end children."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
