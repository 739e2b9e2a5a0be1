"""The generated DQD suites, parsed once per process into evaluation plans; per-base overrides matched to checks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eds_network.core import omop
from eds_network.quality import dqd
from eds_network.quality.dqd import Check

# --------------------------------------------------------------------------------------------------
# Suites (cached once per process)
from eds_network.quality.results import Override


@dataclass(frozen=True, eq=False)
class _Plan:
    table: str
    checks: tuple[Check, ...]
    field_checks: tuple[Check, ...]
    gender: dict[str, tuple[Check, ...]]  # concept column -> plausibleGender checks
    units: dict[str, tuple[Check, ...]]  # concept column -> plausibleUnitConceptIds checks
    ranges: tuple[Check, ...]  # concept-level plausibleValueLow / High
    suite_json: dict[str, Any]


@cache
def _plan(suites_dir: str, table: str) -> _Plan:
    suite = dqd.load_suite(table, suites_dir)
    checks = tuple(Check.from_expectation(e) for e in suite["expectations"])
    gender: dict[str, list[Check]] = {}
    units: dict[str, list[Check]] = {}
    ranges, fields = [], []
    for c in checks:
        if c.level != "CONCEPT":
            fields.append(c)
        elif c.check_name == "plausibleGender":
            gender.setdefault(c.column, []).append(c)
        elif c.check_name == "plausibleUnitConceptIds":
            units.setdefault(c.column, []).append(c)
        else:
            ranges.append(c)
    return _Plan(
        table=table,
        checks=checks,
        field_checks=tuple(fields),
        gender={k: tuple(v) for k, v in gender.items()},
        units={k: tuple(v) for k, v in units.items()},
        ranges=tuple(ranges),
        suite_json=suite,
    )


def _suites_dir(suites_dir: Path | str | None) -> str:
    return str(Path(suites_dir or dqd.DEFAULT_SUITES_DIR).resolve())


def unknown_override_keys(
    keys: Iterable[str], tables: Iterable[str] = omop.DEFAULT_TABLES, suites_dir: Path | None = None
) -> list[str]:
    """Override keys (already syntax-checked) that match no check of `tables`: for config validation."""
    known: set[str] = set()
    for t in tables:
        for c in _plan(_suites_dir(suites_dir), t).checks:
            known.add(c.check_id)
            known.add(f"{c.check_name}:{c.table}.{c.column}")
            if c.concept_id is not None:
                known.add(f"{c.check_name}:{c.table}.{c.column}:{c.concept_id}")
    return sorted(k for k in keys if k not in known)


def _find_override(check: Check, concept_id: int | None, unit: int | None, overrides: Mapping[str, Override]):
    base = f"{check.check_name}:{check.table}.{check.column}"
    keys = []
    if concept_id is not None:
        if unit is not None:
            keys.append(f"{base}:{concept_id}:{unit}")
        keys.append(f"{base}:{concept_id}")
    keys.append(base)
    for k in keys:
        if k in overrides:
            o = overrides[k]
            return k, (o if isinstance(o, Override) else Override.model_validate(o))
    return None, None


# --------------------------------------------------------------------------------------------------
# Evaluation
