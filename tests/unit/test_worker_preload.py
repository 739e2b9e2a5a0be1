"""The zone workers' preload (orchestration/worker.py): each zone imports its own kind's code only, and every
module it names exists (a stale name would silently cost every task its import again)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from eds_network.orchestration import worker


@pytest.mark.parametrize("zone", ["local:hosp_a", "keys:idf", "platform:idf", "national", "operator"])
def test_a_zone_worker_preloads_every_module_it_names_and_only_its_own_kinds(zone):
    names = worker.modules_for(zone)
    own = set(worker.BY_KIND.get(zone.split(":")[0], ()))
    assert {n for n in names if n.startswith("eds_network.")} == {n for n in own if n.startswith("eds_network.")}
    # in a fresh interpreter, as a worker starts: every name imports, and the zone's own task module is there
    code = f"from eds_network.orchestration import worker; d, f = worker.preload({zone!r}); print(len(d), f)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == f"{len(names)} []", out.stderr[-2000:]  # a library may log first


def test_a_local_worker_imports_great_expectations_and_a_platform_worker_does_not():
    assert "great_expectations" in worker.modules_for("local:hosp_a")
    assert "great_expectations" not in worker.modules_for("platform:idf")
    assert "eds_network.orchestration.local_tasks" not in worker.modules_for("national")
    assert "eds_network.orchestration.national_tasks" not in worker.modules_for("local:hosp_a")
