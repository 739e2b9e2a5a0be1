"""GX Data Docs: GX runs the same suites on a bounded sample and builds its Data Docs; its counts are compared with the Arrow engine's."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from eds_network.core.errors import QualityError
from eds_network.quality import dqd
from eds_network.quality.checks import check_batch
from eds_network.quality.dqd import BATCH
from eds_network.quality.gx import _GX_LOCK, _gx_counts, _to_pandas
from eds_network.quality.results import GX_RESULT_FORMAT
from eds_network.quality.suites import _plan, _suites_dir


@dataclass(frozen=True)
class DataDocs:
    """A GX Data Docs site built from a bounded sample, and whether GX agreed with the Arrow engine on it."""

    path: str  # index.html
    sample_rows: int
    expectations: int
    mismatches: tuple[str, ...] = ()  # check ids where GX and Arrow count different violating rows
    errors: tuple[str, ...] = ()  # check ids GX could not evaluate


def _docs_context(out: Path, site: str):
    """A fresh ephemeral GX context whose only Data Docs site is `out` (GX's default temp site removed)."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    try:
        context.variables.progress_bars = {"globally": False}
    except Exception:  # older/newer config shapes: progress bars are cosmetic
        pass
    for name in context.get_site_names():  # the ephemeral default site (an empty temp dir): never built
        backend = (context.variables.data_docs_sites or {}).get(name, {}).get("store_backend", {})
        context.delete_data_docs_site(name)
        tmp = Path(str(backend.get("base_directory", "")))
        if tmp.is_absolute() and tmp.is_dir() and not any(tmp.iterdir()):
            tmp.rmdir()
    context.add_data_docs_site(
        site_name=site,
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(out)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    return context


def gx_data_docs(
    base: str,
    table: str,
    sample: pa.Table,
    *,
    out_dir: Path | str,
    suites_dir: Path | None = None,
    today: dt.date | None = None,
    result_format: Mapping[str, Any] | None = None,
) -> DataDocs:
    """Validate `sample` with GX 1.x (a Checkpoint in a fresh ephemeral context, the batch-scope
    expectations of `table`'s suite) and build GX Data Docs into `out_dir` (replaced). The Arrow engine
    runs on the same sample; every check where the two engines count different violating rows is listed
    in `mismatches`. `result_format` is for tests only: the default returns no value of the data."""
    import shutil

    table = table.lower()
    sdir = _suites_dir(suites_dir)
    today = today or dt.date.today()
    arrow = check_batch(base, table, sample, suites_dir=Path(sdir), today=today, engine="arrow")
    plan = _plan(sdir, table)
    ids = {c.check_id for c in plan.field_checks} | {
        r.check_id for r in arrow.results if r.level == "CONCEPT" and r.evaluated
    }
    out = Path(out_dir).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with _GX_LOCK:
        counts, errors = _run_checkpoint(out, base, table, plan, ids, sample, today, result_format)
    mismatches = tuple(
        sorted(
            r.check_id
            for r in arrow.results
            if r.evaluated and r.check_id in counts and counts[r.check_id] != r.violating_rows
        )
    )
    index = out / "index.html"
    if not index.is_file():
        raise QualityError("GX did not write Data Docs", base=base, table=table)
    return DataDocs(str(index), sample.num_rows, len(counts) + len(errors), mismatches, tuple(sorted(errors)))


def _run_checkpoint(
    out: Path, base: str, table: str, plan, ids: set[str], sample: pa.Table, today: dt.date, result_format
) -> tuple[dict[str, int], list[str]]:
    """One GX Checkpoint on `sample` (the batch-scope expectations of the checks in `ids`), its Data Docs site
    built into `out`: violating rows per check id, and the checks GX could not evaluate."""
    import logging

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    site = "eds_datadocs"
    context = _docs_context(out, site)
    batch_definition = (
        context.data_sources.add_pandas("eds_sample")
        .add_dataframe_asset(f"{base}.{table}")
        .add_batch_definition_whole_dataframe("sample")
    )
    wanted = [
        e
        for e in plan.suite_json["expectations"]
        if e["meta"]["check_id"] in ids and e["meta"].get("scope") == BATCH and e["type"] != "expect_column_to_exist"
    ]
    suite = context.suites.add(gx.ExpectationSuite(name=f"{base}.{table}", expectations=json.loads(json.dumps(wanted))))
    vd = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{base}.{table}.sample", data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{base}.{table}",
            validation_definitions=[vd],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[site])],
            result_format=dict(result_format or GX_RESULT_FORMAT),
        )
    )
    run = checkpoint.run(
        batch_parameters={"dataframe": _to_pandas(sample, table)},
        expectation_parameters=dqd.suite_parameters(today),
    )
    counts: dict[str, int] = {}
    errors: list[str] = []
    for validation in run.run_results.values():
        c, e = _gx_counts(validation.results, sample)
        counts.update(c)
        errors += e
    return counts, errors


# --------------------------------------------------------------------------------------------------
