"""The package's layout rules that import-linter does not check: where schema changes live."""

from __future__ import annotations

import os
from pathlib import Path

import eds_network

ROOT = Path(eds_network.__file__).parent


def test_no_state_ddl_outside_the_migrations():
    """Runtime `CREATE TABLE IF NOT EXISTS` / `ADD COLUMN IF NOT EXISTS` in a zone's module would bypass them."""
    offenders = [
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if "migrations" not in p.parts
        and p.parts[len(ROOT.parts)] != "dev"
        and any(s in p.read_text() for s in ("CREATE TABLE IF NOT EXISTS", "ADD COLUMN IF NOT EXISTS"))
    ]
    assert offenders == []


def test_a_platform_module_importing_the_hospital_breaks_the_lint(tmp_path):
    """`make lint` runs these contracts: a copy of the package where a platform module imports `local` fails them,
    with the zones' contract named (and only that one)."""
    import shutil
    import subprocess
    import sys

    pkg = tmp_path / "eds_network"
    shutil.copytree(ROOT, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    with open(pkg / "platform" / "warehouse.py", "a") as f:
        f.write("\nfrom eds_network.local import extract  # noqa: E402, F401 (the break)\n")
    lint = Path(sys.executable).parent / "lint-imports"
    res = subprocess.run(
        [str(lint), "--config", str(ROOT.parents[1] / "pyproject.toml"), "--no-cache"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = " ".join(res.stdout.split())
    assert res.returncode != 0, out
    assert "Zones never import one another: they meet only through signed, verified exchanges BROKEN" in out
    assert "eds_network.platform.warehouse -> eds_network.local.extract" in out
    assert "Contracts: 5 kept, 1 broken." in out
