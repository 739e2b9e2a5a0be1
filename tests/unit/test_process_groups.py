"""A process group whose members have all exited is ended, even while its leader, a child of this process not
waited for yet, is a zombie the kernel still signals: stopping the cluster a test started waits for no grace."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from eds_network.dev.processes import group_alive


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]


def test_a_running_group_is_alive_and_a_zombie_leader_is_not():
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert group_alive(proc.pid)
        os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _state(proc.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _state(proc.pid) == "Z"
        os.killpg(proc.pid, 0)  # the kernel still signals the group of an unreaped leader...
        assert not group_alive(proc.pid)  # ...which runs no more
    finally:
        proc.kill()
        proc.wait()
    assert not group_alive(proc.pid)
