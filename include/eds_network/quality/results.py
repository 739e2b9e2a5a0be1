"""Quality results: the DQD-shaped result of one check and of one batch, thresholds, the action taken, the DQD results JSON."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from eds_network.core.errors import QualityError
from eds_network.quality.dqd import CHARACTERIZATION, CONVENTION, FATAL

ENGINE_ENV = "EDS_QUALITY_ENGINE"
DEFAULT_QUARANTINE_LIMIT_PCT = 5.0
Engine = Literal["arrow", "gx"]

# GX result format: counts only; never a value, a partial list, an index list or a row.
GX_RESULT_FORMAT: dict[str, Any] = {
    "result_format": "BASIC",
    "partial_unexpected_count": 0,
    "include_unexpected_rows": False,
    "exclude_unexpected_values": True,
    "return_unique_unexpected": False,
}


class Override(BaseModel):
    """A per-base change to one check (or to every concept of a concept-level check)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold_pct: float | None = Field(default=None, ge=0, le=100, description="new % of violating rows tolerated")
    disabled: bool = False
    reason: str | None = Field(default=None, description="why: mandatory when disabled")

    @model_validator(mode="after")
    def _reason(self) -> Override:
        if self.disabled and not (self.reason or "").strip():
            raise ValueError("a disabled quality check needs a reason")
        if not self.disabled and self.threshold_pct is None:
            raise ValueError("an override sets threshold_pct or disables the check")
        return self


# --------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class CheckResult:
    check_name: str
    table: str
    column: str
    category: str
    subcategory: str
    severity: str
    threshold_pct: float
    rows: int  # DQD numDenominatorRows
    violating_rows: int
    violating_pct: float
    passed: bool
    expectation_type: str
    scope: str
    context: str = ""
    level: str = "FIELD"
    concept_id: int | None = None
    unit_concept_id: int | None = None
    check_id: str = ""
    description: str = ""
    not_applicable_reason: str | None = None
    disabled_reason: str | None = None
    override: str | None = None  # the override key applied, if any
    base: str = ""

    @property
    def status(self) -> str:
        if self.disabled_reason is not None:
            return "disabled"
        if self.not_applicable_reason is not None:
            return "not_applicable"
        return "passed" if self.passed else "failed"

    @property
    def evaluated(self) -> bool:
        return self.status in ("passed", "failed")

    def dqd_check_id(self) -> str:
        parts = [self.level.lower(), self.check_name.lower(), self.table, self.column]
        if self.concept_id is not None:
            parts.append(str(self.concept_id))
        if self.unit_concept_id is not None:
            parts.append(str(self.unit_concept_id))
        return "_".join(parts)

    def to_dqd(self) -> dict[str, Any]:
        """This result in the shape of a DQD results JSON `CheckResults` item."""
        na = self.status in ("not_applicable", "disabled")
        return {
            "numViolatedRows": self.violating_rows,
            "pctViolatedRows": round(self.violating_pct / 100.0, 6),
            "numDenominatorRows": self.rows,
            "executionTime": None,
            "queryText": "",
            "checkName": self.check_name,
            "checkLevel": self.level,
            "checkDescription": self.description,
            "cdmTableName": self.table.upper(),
            "cdmFieldName": self.column.upper(),
            "conceptId": self.concept_id,
            "unitConceptId": self.unit_concept_id,
            "sqlFile": None,
            "category": self.category,
            "subcategory": self.subcategory,
            "context": self.context.capitalize(),
            "warning": None,
            "error": None,
            "checkId": self.dqd_check_id(),
            "isError": 0,
            "notApplicable": int(na),
            "failed": int(self.status == "failed"),
            "passed": int(self.status == "passed"),
            "notApplicableReason": self.disabled_reason or self.not_applicable_reason,
            "thresholdValue": self.threshold_pct,
            "notesValue": self.override,
            # Not in DQD: our severity, where the check ran, and the base.
            "severity": self.severity,
            "scope": self.scope,
            "cdmSourceName": self.base,
        }


@dataclass(frozen=True, eq=False)
class QualityResult:
    base: str
    table: str
    rows: int
    results: tuple[CheckResult, ...]
    keep_mask: pa.BooleanArray  # True: the row passes every row-level fatal check
    quarantined_rows: int
    batch_fatal: bool
    warnings: tuple[str, ...]
    engine: str = "arrow"
    seconds: float = 0.0
    quarantine_limit_pct: float = DEFAULT_QUARANTINE_LIMIT_PCT

    @property
    def published_rows(self) -> int:
        return 0 if self.batch_fatal else self.rows - self.quarantined_rows

    @property
    def fatal_failures(self) -> tuple[CheckResult, ...]:
        """The fatal checks that make the batch fatal."""
        return tuple(r for r in self.results if _over_batch_limit(r, self.quarantine_limit_pct))

    def failed(self, severity: str | None = None) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status == "failed" and severity in (None, r.severity))

    def kept(self, batch: pa.Table) -> pa.Table:
        """The rows of `batch` that go on (all rows of an empty mask-less batch)."""
        return batch.filter(self.keep_mask)

    def ref(self) -> dict[str, Any]:
        """Counts only (JSON-able): for run records, XCom and manifests."""
        statuses = [r.status for r in self.results]
        return {
            "base": self.base,
            "table": self.table,
            "rows": self.rows,
            "quarantined_rows": self.quarantined_rows,
            "published_rows": self.published_rows,
            "batch_fatal": self.batch_fatal,
            "engine": self.engine,
            "seconds": round(self.seconds, 3),
            "checks": len(self.results),
            "passed": statuses.count("passed"),
            "failed": {s: len(self.failed(s)) for s in (FATAL, CONVENTION, CHARACTERIZATION)},
            "not_applicable": statuses.count("not_applicable"),
            "disabled": statuses.count("disabled"),
            "warnings": len(self.warnings),
        }


def _row_level(r: CheckResult) -> bool:
    return r.severity == FATAL and r.check_name in ("isRequired", "isPrimaryKey", "isForeignKey")


def _over_batch_limit(r: CheckResult, quarantine_limit_pct: float) -> bool:
    """A fatal check makes the batch fatal: row-level ones above max(threshold, quarantine limit)."""
    if r.severity != FATAL or not r.evaluated:
        return False
    if _row_level(r):
        return r.violating_pct > max(r.threshold_pct, quarantine_limit_pct)
    return r.violating_pct > r.threshold_pct


def fatal_message(result: QualityResult) -> str:
    """`[base=… table=… column=…] …`: every fatal check over its limit, with its violating %; never a value."""
    fails = result.fatal_failures
    if not fails:
        return str(QualityError("no fatal quality check failed", base=result.base, table=result.table))
    parts = [
        f"{r.check_name} on {r.table}.{r.column}: {r.violating_pct:.2f}% of {r.rows} rows violate "
        f"(threshold {r.threshold_pct:g}%)"
        for r in fails
    ]
    column = fails[0].column if len({r.column for r in fails}) == 1 else None
    return str(
        QualityError(
            "fatal quality check failed, batch quarantined: " + "; ".join(parts),
            base=result.base,
            table=result.table,
            column=column,
        )
    )


def _pct(violating: int, rows: int) -> float:
    return round(100.0 * violating / rows, 6) if rows else 0.0


def _replace(r: CheckResult, **changes) -> CheckResult:
    return CheckResult(**{**asdict(r), **changes})


def action(r: CheckResult, quarantine_limit_pct: float = DEFAULT_QUARANTINE_LIMIT_PCT) -> str:
    """What the pipeline does about one result: none / warn / quarantine_rows / fail_batch."""
    if r.status != "failed":
        return "none"
    if _over_batch_limit(r, quarantine_limit_pct):
        return "fail_batch"
    if _row_level(r):
        return "quarantine_rows"
    return "warn"


def _flatten(results: Iterable[QualityResult | CheckResult]) -> list[CheckResult]:
    out: list[CheckResult] = []
    for r in results:
        out.extend(r.results if isinstance(r, QualityResult) else (r,))
    return out


def to_dqd_json(
    results: Iterable[QualityResult | CheckResult],
    *,
    metadata: Mapping[str, Any] | None = None,
    started_at: dt.datetime | None = None,
    ended_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """A DQD-compatible results document (CheckResults, Overview, Metadata) for the DQD viewer."""
    checks = [r.to_dqd() for r in _flatten(results)]
    evaluated = [c for c in checks if not c["notApplicable"]]
    failed = sum(c["failed"] for c in checks)
    overview: dict[str, Any] = {
        "countTotal": len(checks),
        "countThresholdFailed": failed,
        "countErrorFailed": 0,
        "countOverallFailed": failed,
        "countPassed": sum(c["passed"] for c in checks),
        "countNotApplicable": len(checks) - len(evaluated),
        "percentPassed": round(100.0 * (len(evaluated) - failed) / len(evaluated)) if evaluated else 100,
        "percentFailed": round(100.0 * failed / len(evaluated)) if evaluated else 0,
    }
    for cat in ("Plausibility", "Conformance", "Completeness"):
        sel = [c for c in evaluated if c["category"] == cat]
        overview[f"countTotal{cat}"] = len(sel)
        overview[f"countFailed{cat}"] = sum(c["failed"] for c in sel)
        overview[f"countPassed{cat}"] = sum(c["passed"] for c in sel)
    for ctx in ("Verification", "Validation"):
        sel = [c for c in evaluated if c["context"] == ctx]
        overview[f"countTotal{ctx}"] = len(sel)
        overview[f"countFailed{ctx}"] = sum(c["failed"] for c in sel)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start, end = started_at or now, ended_at or now
    return {
        "startTimestamp": start.isoformat(),
        "endTimestamp": end.isoformat(),
        "executionTime": f"{(end - start).total_seconds():.0f} secs",
        "CheckResults": checks,
        "Metadata": [dict(metadata or {"CDM_VERSION": "5.4"})],
        "Overview": overview,
    }
