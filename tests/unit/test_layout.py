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


MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500
DAGS = ROOT.parents[1] / "dags"


def _sources() -> list[Path]:
    """Every module of the package and the DAG folder, except Alembic revisions (declarative table definitions:
    one `op.create_table` per table, read as a schema, not as logic)."""
    files = [*ROOT.rglob("*.py"), *DAGS.rglob("*.py")]
    return sorted(p for p in files if "versions" not in p.parent.parts[-1:])


def oversized() -> list[str]:
    """Modules over MAX_MODULE_LINES lines and functions over MAX_FUNCTION_LINES lines (`path:line name lines`)."""
    import ast

    out = []
    for path in _sources():
        text = path.read_text()
        rel = path.relative_to(ROOT.parents[1])
        if text.count("\n") > MAX_MODULE_LINES:
            out.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append(f"{rel}:{node.lineno} {node.name}(): {n} lines")
    return out


def test_no_module_over_500_lines_and_no_function_over_80():
    """A module of one responsibility, a function a reader takes in at once (`python tests/unit/test_layout.py`
    lists the offenders)."""
    assert oversized() == []


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


if __name__ == "__main__":
    print("\n".join(oversized()) or "none")
