"""Reading the OHDSI DQD catalogue (check types, field- and concept-level CSVs) and parsing its values (thresholds, bounds) into expectation arguments."""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from eds_network.quality.dqd import DEFAULT_DQD_DIR, CheckType


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return [{k.strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(f)]


@cache
def _catalogue(dqd_dir: Path) -> tuple[dict[str, CheckType], list[dict[str, str]], list[dict[str, str]]]:
    missing = [
        n
        for n in (
            "OMOP_CDMv5.4_Check_Descriptions.csv",
            "OMOP_CDMv5.4_Field_Level.csv",
            "OMOP_CDMv5.4_Concept_Level.csv",
            "OMOP_CDMv5.4_Table_Level.csv",
        )
        if not (dqd_dir / n).is_file()
    ]
    if missing:
        raise FileNotFoundError(f"{dqd_dir}: DQD catalogue file(s) missing: {', '.join(missing)}")
    types = {}
    for row in _read_csv(dqd_dir / "OMOP_CDMv5.4_Check_Descriptions.csv"):
        types[row["checkName"]] = CheckType(
            name=row["checkName"],
            level=row["checkLevel"].upper(),
            description=" ".join(row["checkDescription"].split()),
            context=row["kahnContext"].lower(),
            category=row["kahnCategory"],
            subcategory=row["kahnSubcategory"],
            dqd_severity=row["severity"].lower(),
        )
    fields = _read_csv(dqd_dir / "OMOP_CDMv5.4_Field_Level.csv")
    concepts = _read_csv(dqd_dir / "OMOP_CDMv5.4_Concept_Level.csv")
    return types, fields, concepts


def load_check_types(dqd_dir: Path | str = DEFAULT_DQD_DIR) -> dict[str, CheckType]:
    return _catalogue(Path(dqd_dir).resolve())[0]


def _threshold(raw: str) -> float:
    return float(raw) if raw else 0.0  # DQD's default threshold is 0


def _number(raw: str) -> int | float:
    value = float(raw)
    return int(value) if value.is_integer() and "." not in raw else value


def _bound(raw: str, datatype: str) -> Any:
    """A DQD plausible value bound, as a JSON-able GX bound (literal or `$PARAMETER`)."""
    raw = raw.strip()
    if raw.upper().replace(" ", "") == "DATEADD(DD,1,GETDATE())":
        return {"$PARAMETER": "tomorrow"}
    if raw.upper().replace(" ", "") == "YEAR(GETDATE())+1":
        return {"$PARAMETER": "next_year"}
    m = re.fullmatch(r"'?(\d{4})(\d{2})(\d{2})'?", raw)
    if m and datatype in ("date", "datetime"):
        return f"{m[1]}-{m[2]}-{m[3]}T00:00:00"
    return _number(raw.strip("'"))


def _eq(column: str, value: int) -> dict[str, Any]:
    """A GX 1.x row condition (`Column(column) == value`) as JSON."""
    return {"type": "comparison", "column": {"name": column}, "operator": "==", "parameter": value}


def _not_null(column: str) -> dict[str, Any]:
    return {"type": "nullity", "column": {"name": column}, "is_null": False}


def _all(*conditions: dict[str, Any]) -> dict[str, Any]:
    return conditions[0] if len(conditions) == 1 else {"type": "and", "conditions": list(conditions)}


def _describe(template: str, values: Mapping[str, Any]) -> str:
    def sub(m: re.Match[str]) -> str:
        v = values.get(m[1])
        return str(v) if v not in (None, "") else m[0]

    return re.sub(r"@(\w+)", sub, template)


# --------------------------------------------------------------------------------------------------
# Building checks
