"""Entry point of the batch checks: `check_batch` runs one table's suite on one Arrow batch."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from eds_network.core.errors import ConfigError
from eds_network.quality.evaluate import _Eval
from eds_network.quality.gx import _gx_counts, _gx_validate
from eds_network.quality.reference import Reference, _array, _count
from eds_network.quality.results import (
    DEFAULT_QUARANTINE_LIMIT_PCT,
    ENGINE_ENV,
    CheckResult,
    Engine,
    Override,
    QualityResult,
    _over_batch_limit,
    _pct,
    _replace,
    _row_level,
)
from eds_network.quality.suites import _plan, _suites_dir


def check_batch(
    base: str,
    table: str,
    batch: pa.Table | pa.RecordBatch,
    *,
    known_person_ids: pa.Array | pa.ChunkedArray | None = None,
    overrides: Mapping[str, Override] | None = None,
    suites_dir: Path | None = None,
    reference: Reference | None = None,
    quarantine_limit_pct: float = DEFAULT_QUARANTINE_LIMIT_PCT,
    engine: Engine | None = None,
    today: dt.date | None = None,
) -> QualityResult:
    """Run `table`'s suite on one batch (see the module docstring).

    `known_person_ids` (or `reference.ids["person"]` / `reference.person`) turns on the fatal
    person_id foreign key check; `reference` feeds the other cross-table checks; `today` fixes the
    dynamic bounds (default: today's date).
    """
    started = time.perf_counter()
    table = table.lower()
    if isinstance(batch, pa.RecordBatch):
        batch = pa.Table.from_batches([batch])
    engine = engine or os.environ.get(ENGINE_ENV, "arrow")  # type: ignore[assignment]
    if engine not in ("arrow", "gx"):
        raise ConfigError(f"unknown quality engine {engine!r} (arrow or gx)", base=base, table=table)
    sdir = _suites_dir(suites_dir)
    try:
        plan = _plan(sdir, table)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc), base=base, table=table) from None

    ev = _Eval(plan, batch, reference, known_person_ids, today or dt.date.today(), overrides, base)
    ev.run()
    warnings: list[str] = list(ev.notes)
    results = ev.results

    if engine == "gx" and batch.num_rows:
        gx_counts, errors = _gx_numerators(ev, sdir, table, batch)
        results = [_with_gx(r, gx_counts, ev.numerators, warnings) for r in results]
        if errors:
            warnings.append(f"GX could not evaluate {len(errors)} expectation(s): {', '.join(sorted(errors)[:10])}")

    rows = batch.num_rows
    if ev.masks and rows:
        bad = ev.masks[0]
        for m in ev.masks[1:]:
            bad = pc.or_(bad, m)
        keep = pc.invert(pc.fill_null(bad, False))
    else:
        keep = pa.array(np.ones(rows, dtype=bool))
    keep = _array(keep)
    quarantined = rows - _count(keep)

    batch_fatal = any(_over_batch_limit(r, quarantine_limit_pct) for r in results)
    warnings.extend(_warnings(results, quarantine_limit_pct))
    result = QualityResult(
        base=base,
        table=table,
        rows=rows,
        results=tuple(results),
        keep_mask=keep,
        quarantined_rows=quarantined,
        batch_fatal=batch_fatal,
        warnings=tuple(warnings),
        engine=engine,
        seconds=time.perf_counter() - started,
        quarantine_limit_pct=quarantine_limit_pct,
    )
    return result


def _with_gx(r: CheckResult, gx_counts: Mapping[str, int], arrow: Mapping[str, int], warnings: list[str]):
    if r.check_id not in gx_counts or not r.evaluated:
        return r
    n = gx_counts[r.check_id]
    if n == r.violating_rows:
        return r
    warnings.append(
        f"engine mismatch on {r.check_id}: GX counts {n} violating rows, Arrow {arrow.get(r.check_id)}; GX count kept"
    )
    pct = _pct(n, r.rows)
    return _replace(r, violating_rows=n, violating_pct=pct, passed=pct <= r.threshold_pct)


def _warnings(results: Sequence[CheckResult], limit: float) -> list[str]:
    out: list[str] = []
    missing: dict[str, int] = {}
    for r in results:
        if r.status == "not_applicable":
            missing[r.not_applicable_reason or ""] = missing.get(r.not_applicable_reason or "", 0) + 1
        elif r.status == "disabled":
            out.append(f"{r.check_id} disabled by override: {r.disabled_reason}")
        elif r.status == "failed":
            what = f"{r.violating_pct:.2f}% of {r.rows} rows violate (threshold {r.threshold_pct:g}%)"
            if _row_level(r):
                fatal = " - batch fatal" if _over_batch_limit(r, limit) else ""
                out.append(f"fatal: {r.check_id}: {what}; rows quarantined{fatal}")
            else:
                out.append(f"{r.severity}: {r.check_id}: {what}")
    for reason, n in sorted(missing.items()):
        out.append(f"{n} check(s) not evaluated: {reason}")
    return out


# --------------------------------------------------------------------------------------------------
def _gx_numerators(ev: _Eval, suites_dir: str, table: str, batch: pa.Table) -> tuple[dict[str, int], list[str]]:
    """Run the GX validation; return check_id -> GX unexpected count, and the check_ids GX failed to run."""
    concept_ids = {r.check_id for r in ev.results if r.level == "CONCEPT" and r.evaluated}
    field_ids = {c.check_id for c in ev.plan.field_checks}
    validation = _gx_validate(suites_dir, table, batch, field_ids | concept_ids, ev.params)
    out = _gx_counts(validation.results, batch)
    del validation  # nothing of GX's result object outlives this function
    return out
