"""Validation of a base's `quality_overrides` at config load: a mistyped key must not silently match no check.

A key is `checkName:table.column[:conceptId[:unitConceptId]]`; its value `{threshold_pct: …}` or
`{disabled: true, reason: …}`. The known checks are the generated OHDSI DQD suites in `expectations/`
(`make expectations`), read here as data so that the configuration does not depend on the quality engine.
Errors name the key and what is wrong with it (unknown table, column, check, concept) — never a data value.
"""

from __future__ import annotations

import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

from eds_network.core import omop

KEY = re.compile(
    r"^(?P<check>[A-Za-z]+):(?P<table>[a-z_]+)\.(?P<column>[a-z0-9_]+)(?::(?P<concept>-?\d+)(?::-?\d+)?)?$"
)
VALUE_KEYS = {"threshold_pct", "disabled", "reason"}


def suites_dir() -> Path:
    default = Path(__file__).resolve().parents[3] / "expectations"
    return Path(os.environ.get("EDS_EXPECTATIONS_DIR", default))


@cache
def known_checks(table: str, directory: str) -> dict[tuple[str, str], set[int]]:
    """{(check_name, column): concept ids of its concept-level variants} for the DQD suite of one table."""
    path = Path(directory) / f"{table}.json"
    if not path.is_file():
        return {}
    out: dict[tuple[str, str], set[int]] = {}
    for e in json.loads(path.read_text(encoding="utf-8")).get("expectations", []):
        meta = e.get("meta") or {}
        if meta.get("table") != table or not meta.get("check_name"):
            continue
        concepts = out.setdefault((meta["check_name"], meta.get("column") or ""), set())
        cid = meta.get("check_id", "").split(":")
        if len(cid) >= 3 and cid[2].lstrip("-").isdigit():
            concepts.add(int(cid[2]))
    return out


def _value_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "expected a mapping {threshold_pct: …} or {disabled: true, reason: …}"
    unknown = sorted(set(value) - VALUE_KEYS)
    if unknown:
        return f"unknown setting {unknown[0]!r} (expected threshold_pct, disabled, reason)"
    if value.get("disabled") and not str(value.get("reason") or "").strip():
        return "a disabled check needs a reason"
    if not value.get("disabled") and value.get("threshold_pct") is None:
        return "sets neither threshold_pct nor disabled"
    t = value.get("threshold_pct")
    if t is not None and (not isinstance(t, int | float) or not 0 <= t <= 100):
        return "threshold_pct must be a percentage between 0 and 100"
    return None


def key_problem(key: str, tables: list[str], directory: Path | None = None) -> str | None:
    """What is wrong with one override key for a base with these tables, or None."""
    m = KEY.match(key)
    if not m:
        return "expected checkName:table.column[:conceptId[:unitConceptId]]"
    check, table, column = m["check"], m["table"], m["column"]
    if table not in tables:
        return f"table {table!r} is not in this base's tables"
    if not omop.table(table).has(column):
        return f"column {column!r} is not a column of the OMOP CDM 5.4 table {table!r}"
    checks = known_checks(table, str(directory or suites_dir()))
    if not checks:  # no suite generated for this table: the table and column are checked, the check cannot be
        return None
    names = {name for name, _ in checks}
    if check not in names:
        return f"unknown check {check!r} for table {table!r}"
    if (check, column) not in checks:
        return f"check {check!r} does not apply to {table}.{column}"
    concepts = checks[(check, column)]
    if m["concept"] is not None and int(m["concept"]) not in concepts:
        return f"check {check!r} on {table}.{column} has no variant for concept {m['concept']}"
    return None


def problems(overrides: dict[str, Any], tables: list[str], directory: Path | None = None) -> list[str]:
    """One message per bad override, each naming its key."""
    out = []
    for key, value in overrides.items():
        problem = key_problem(key, tables, directory) or _value_problem(value)
        if problem:
            out.append(f"quality_overrides: key {key!r}: {problem}")
    return out
