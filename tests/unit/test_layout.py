"""The package's layout rules that import-linter does not check: where schema changes live."""

from __future__ import annotations

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
