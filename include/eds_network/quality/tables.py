"""One table of one run: results summed over its record batches, the action taken for each check, stored in the catalogue."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from eds_network.quality.datadocs import DataDocs, gx_data_docs
from eds_network.quality.dqd import CHARACTERIZATION, CONVENTION, FATAL
from eds_network.quality.results import DEFAULT_QUARANTINE_LIMIT_PCT, CheckResult, QualityResult, _pct, _replace, action

DOCS_ENV = "EDS_QUALITY_DOCS"  # "off" disables the GX Data Docs build of the local level
DOCS_ROWS_ENV = "EDS_QUALITY_DOCS_ROWS"  # rows of the bounded sample GX validates for Data Docs
DEFAULT_DOCS_ROWS = 1000
ROW_ACTIONS = ("none", "warn", "quarantine_rows", "fail_batch")


@dataclass(frozen=True)
class TableQuality:
    """The quality of one table in one run: DQD-style results summed over every record batch."""

    base: str
    table: str
    batch_id: str
    engine: str
    rows: int
    quarantined_rows: int
    batch_fatal: bool
    results: tuple[CheckResult, ...]
    actions: Mapping[str, str]  # check_id -> action
    docs: DataDocs | None = None

    def failed(self, severity: str | None = None) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status == "failed" and severity in (None, r.severity))

    def ref(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "table": self.table,
            "batch_id": self.batch_id,
            "rows": self.rows,
            "quarantined_rows": self.quarantined_rows,
            "batch_fatal": self.batch_fatal,
            "checks": len(self.results),
            "failed": {s: len(self.failed(s)) for s in (FATAL, CONVENTION, CHARACTERIZATION)},
            "data_docs": self.docs.path if self.docs else None,
        }


class TableChecks:
    """Sums `check_batch` results over the record batches of one table (memory: one entry per check) and
    keeps a bounded sample of the rows (the first `sample_rows` checked) for the GX Data Docs."""

    def __init__(self, base: str, table: str, *, sample_rows: int | None = None):
        self.base, self.table = base, table
        self.sample_rows = _docs_rows() if sample_rows is None else sample_rows
        self._acc: dict[str, list] = {}  # check_id -> [first result, rows, violating, evaluated]
        self._fatal_ids: set[str] = set()
        self._sample: list[pa.Table] = []
        self._sampled = 0
        self.rows = self.quarantined = 0
        self.batch_fatal = False
        self.engine = "arrow"
        self.limit = DEFAULT_QUARANTINE_LIMIT_PCT

    def add(self, q: QualityResult, batch: pa.Table | None = None) -> None:
        self.rows += q.rows
        self.quarantined += q.quarantined_rows
        self.batch_fatal |= q.batch_fatal
        self.engine, self.limit = q.engine, q.quarantine_limit_pct
        self._fatal_ids |= {r.check_id for r in q.fatal_failures}
        for r in q.results:
            acc = self._acc.setdefault(r.check_id, [r, 0, 0, False])
            if r.evaluated:
                if not acc[3]:
                    acc[0] = r
                acc[1] += r.rows
                acc[2] += r.violating_rows
                acc[3] = True
        if batch is not None and self._sampled < self.sample_rows and batch.num_rows:
            part = batch.slice(0, self.sample_rows - self._sampled)
            self._sample.append(part)
            self._sampled += part.num_rows

    def sample(self) -> pa.Table | None:
        if not self._sample:
            return None
        return pa.concat_tables(self._sample, promote_options="permissive")

    def results(self) -> list[CheckResult]:
        out = []
        for first, rows, violating, evaluated in self._acc.values():
            if not evaluated:
                out.append(first)
                continue
            pct = _pct(violating, rows)
            out.append(
                _replace(
                    first, rows=rows, violating_rows=violating, violating_pct=pct, passed=pct <= first.threshold_pct
                )
            )
        return out

    def finish(self, batch_id: str, *, docs: bool = False, docs_dir: Path | str | None = None) -> TableQuality:
        """The table's `TableQuality`; with `docs`, GX validates the sample and builds Data Docs (a failure
        to build them is logged, never raised: Data Docs are a view, not a gate)."""
        results = self.results()
        actions = {}
        for r in results:
            a = action(r, self.limit)
            if a == "quarantine_rows" and r.check_id in self._fatal_ids and self.batch_fatal:
                a = "fail_batch"
            actions[r.check_id] = a
        built = None
        sample = self.sample()
        if docs and sample is not None and sample.num_rows:
            try:
                built = gx_data_docs(
                    self.base, self.table, sample, out_dir=docs_dir or docs_path("local", self.base, self.table)
                )
            except Exception as exc:  # never a value: GX exceptions are not echoed
                import logging

                logging.getLogger(__name__).warning(
                    "%s.%s: GX Data Docs not built (%s)", self.base, self.table, type(exc).__name__
                )
        return TableQuality(
            base=self.base,
            table=self.table,
            batch_id=batch_id,
            engine=self.engine,
            rows=self.rows,
            quarantined_rows=self.quarantined,
            batch_fatal=self.batch_fatal,
            results=tuple(results),
            actions=actions,
            docs=built,
        )


def _docs_rows() -> int:
    if os.environ.get(DOCS_ENV, "").lower() in ("off", "0", "false", "no"):
        return 0
    return int(os.environ.get(DOCS_ROWS_ENV, DEFAULT_DOCS_ROWS))


def docs_path(level: str, scope: str, table: str) -> Path:
    """`$EDS_HOME/datadocs/<level>/<scope>/<table>/`: the latest Data Docs of one table (replaced each run)."""
    from eds_network.core.config import state_home

    return state_home() / "datadocs" / level / scope / table


def _check_row(r: CheckResult, act: str, engine: str) -> dict[str, Any]:
    return {
        "base_id": r.base,
        "check_id": r.check_id or r.dqd_check_id(),
        "check_name": r.check_name,
        "check_level": r.level,
        "field_name": r.column,
        "concept_id": r.concept_id,
        "unit_concept_id": r.unit_concept_id,
        "category": r.category,
        "subcategory": r.subcategory,
        "context": r.context,
        "severity": r.severity,
        "rows_checked": r.rows,
        "violating_rows": r.violating_rows,
        "violating_pct": float(r.violating_pct),
        "threshold_pct": float(r.threshold_pct),
        "passed": r.passed if r.evaluated else None,
        "status": r.status,
        "action": act,
        "note": r.disabled_reason or r.not_applicable_reason or r.override,
        "description": r.description,
        "engine": engine,
    }


def record_table_quality(dsn: str, tq: TableQuality, *, level: str = "local", dag_run_id: str | None = None) -> int:
    """Store one table's results in the catalogue (replacing a previous run of the same batch)."""
    from eds_network import catalogue

    failed = {s: len(tq.failed(s)) for s in (FATAL, CONVENTION, CHARACTERIZATION)}
    return catalogue.record_quality(
        dsn,
        level=level,
        scope_id=tq.base,
        batch_id=tq.batch_id,
        table_name=tq.table,
        checks=[_check_row(r, tq.actions.get(r.check_id, "none"), tq.engine) for r in tq.results],
        summary={
            "engine": tq.engine,
            "rows_checked": tq.rows,
            "quarantined_rows": tq.quarantined_rows,
            "batch_fatal": tq.batch_fatal,
            "checks": len(tq.results),
            "failed": failed,
            "data_docs_path": tq.docs.path if tq.docs else None,
            "gx_sample_rows": tq.docs.sample_rows if tq.docs else None,
            "gx_mismatches": len(tq.docs.mismatches) if tq.docs else None,
        },
        dag_run_id=dag_run_id,
    )


def catalogue_recorder(dsn: str, *, dag_run_id: str | None = None):
    """The callback a local task passes to `extract.extract_table(on_checks=…)`."""

    def record(tq: TableQuality) -> None:
        record_table_quality(dsn, tq, level="local", dag_run_id=dag_run_id)

    return record
