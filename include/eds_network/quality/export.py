"""DQD-compatible export of one run's results, rebuilt from the catalogue."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eds_network.core.errors import ConfigError, QualityError

# DQD-compatible export from the catalogue
from eds_network.quality.results import CheckResult, to_dqd_json


def _from_row(row: Mapping[str, Any]) -> CheckResult:
    na = row["status"] == "not_applicable"
    disabled = row["status"] == "disabled"
    return CheckResult(
        check_name=row["check_name"],
        table=row["table_name"],
        column=row["field_name"] or "",
        category=row["category"],
        subcategory=row["subcategory"] or "",
        severity=row["severity"],
        threshold_pct=float(row["threshold_pct"]),
        rows=int(row["rows_checked"]),
        violating_rows=int(row["violating_rows"]),
        violating_pct=float(row["violating_pct"]),
        passed=bool(row["passed"]),
        expectation_type="",
        scope=row["level"],
        context=row["context"] or "",
        level=row["check_level"],
        concept_id=row["concept_id"],
        unit_concept_id=row["unit_concept_id"],
        check_id=row["check_id"],
        description=row["description"] or "",
        not_applicable_reason=(row["note"] or "not applicable") if na else None,
        disabled_reason=(row["note"] or "disabled") if disabled else None,
        base=row["base_id"],
    )


def export_dqd(
    dsn: str, *, base: str | None = None, platform: str | None = None, batch_id: str | None = None
) -> dict[str, Any]:
    """The DQD results JSON of one run, from the catalogue: a base's local run (`base`) or a platform's
    mutualised run (`platform`); the latest recorded batch unless `batch_id` is given."""
    from eds_network import catalogue

    if (base is None) == (platform is None):
        raise ConfigError("export quality results of one base or one platform")
    level, scope = ("local", base) if base else ("mutualised", platform)
    batch = batch_id or next(iter(catalogue.quality_batches(dsn, level, scope)), None)
    if batch is None:
        raise QualityError(f"no quality results recorded for {level} {scope}", base=base)
    checks, tables = catalogue.quality_results(dsn, level, scope, batch)
    if not checks:
        raise QualityError(f"no quality results recorded for batch {batch}", base=base)
    results = []
    for row in checks:
        r = _from_row(row)
        results.append((r, row))
    doc = to_dqd_json(
        [r for r, _ in results],
        metadata={
            "CDM_SOURCE_NAME": scope,
            "CDM_SOURCE_ABBREVIATION": scope,
            "CDM_VERSION": "5.4",
            "CDM_RELEASE_DATE": min(t["recorded_at"] for t in tables).date().isoformat() if tables else None,
            "SOURCE_DESCRIPTION": f"eds-network {level} run, batch {batch}",
            "DQD_VERSION": "eds-network (OHDSI DQD 5.4 check names)",
            "VOCABULARY_VERSION": None,
        },
        started_at=min(r["recorded_at"] for r in checks),
        ended_at=max(r["recorded_at"] for r in checks),
    )
    for item, (_, row) in zip(doc["CheckResults"], results, strict=True):
        item["action"] = row["action"]
        item["engine"] = row["engine"]
        item["batchId"] = batch
    doc["DataDocs"] = {t["table_name"]: t["data_docs_path"] for t in tables if t.get("data_docs_path")}
    return doc
