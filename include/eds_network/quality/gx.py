"""The GX 1.x engine: a process-wide ephemeral context that validates a batch and reduces GX's results to counts."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

import pyarrow as pa

from eds_network.core import omop
from eds_network.quality.dqd import BATCH
from eds_network.quality.results import GX_RESULT_FORMAT
from eds_network.quality.suites import _plan

# --------------------------------------------------------------------------------------------------
# GX engine

_GX_LOCK = threading.Lock()


@cache
def _gx_runtime():
    """One ephemeral GX context per process, with a pandas data source for in-memory frames."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import logging

    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    source = context.data_sources.add_pandas("eds_batches")
    asset = source.add_dataframe_asset("batch")
    return context, asset.add_batch_definition_whole_dataframe("whole_batch")


@cache
def _gx_expectation(suites_dir: str, table: str, check_id: str):
    """The GX Expectation of one batch-scope check (parsed on first use, then cached)."""
    import great_expectations as gx

    exp = next(e for e in _plan(suites_dir, table).suite_json["expectations"] if e["meta"]["check_id"] == check_id)
    return gx.ExpectationSuite(name="parse", expectations=[exp]).expectations[0]


def _gx_suite(suites_dir: str, table: str, check_ids: Iterable[str]):
    """The suite validated for one batch: field-level expectations, and the concept-level ones of the
    concepts present in the batch (GX pays a fixed cost per expectation, even on a tiny frame)."""
    import great_expectations as gx

    plan = _plan(suites_dir, table)
    wanted = set(check_ids)
    batch_ids = [
        c.check_id
        for c in plan.checks
        if c.scope == BATCH and c.expectation_type != "expect_column_to_exist" and c.check_id in wanted
    ]
    name = f"{plan.suite_json['name']}.batch"
    return gx.ExpectationSuite(name=name, expectations=[_gx_expectation(suites_dir, table, k) for k in batch_ids])


def _to_pandas(batch: pa.Table, table: str):
    import pandas as pd

    # Missing columns become typed nulls: cdmField reports them; the other expectations see nulls.
    cols = {}
    spec = omop.table(table) if table in omop.schema() else None
    for name in batch.column_names:
        cols[name] = batch.column(name)
    if spec is not None:
        for c in spec.columns:
            if c.name not in cols:
                cols[c.name] = pa.nulls(batch.num_rows, c.arrow_type)
    mapper = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int64Dtype(), pa.int16(): pd.Int64Dtype()}
    return pa.table(cols).to_pandas(types_mapper=mapper.get, date_as_object=False)


def _gx_validate(suites_dir: str, table: str, batch: pa.Table, check_ids: Iterable[str], params: Mapping[str, Any]):
    """One GX validation of `batch` (GX's result object: keep it local, reduce it to counts)."""
    suite = _gx_suite(suites_dir, table, check_ids)
    _, batch_definition = _gx_runtime()
    frame = _to_pandas(batch, table)
    with _GX_LOCK:
        gx_batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        return gx_batch.validate(suite, result_format=GX_RESULT_FORMAT, expectation_parameters=dict(params))


def _gx_counts(gx_results, batch: pa.Table) -> tuple[dict[str, int], list[str]]:
    """GX expectation results -> (check_id -> unexpected count, check_ids GX failed to evaluate)."""
    out: dict[str, int] = {}
    errors: list[str] = []
    for r in gx_results:
        check_id = r.expectation_config.meta["check_id"]
        if r.exception_info.get("raised_exception") or any(
            isinstance(v, dict) and v.get("raised_exception") for v in r.exception_info.values()
        ):
            errors.append(check_id)
            continue
        if r.expectation_config.type == "expect_column_values_to_be_in_type_list":
            col = (
                batch.column(r.expectation_config.kwargs["column"])
                if r.expectation_config.kwargs["column"] in batch.column_names
                else None
            )
            out[check_id] = 0 if r.success else (batch.num_rows - (col.null_count if col is not None else 0))
        else:
            out[check_id] = int(r.result.get("unexpected_count") or 0)
    return out, errors


# --------------------------------------------------------------------------------------------------
# Entry point
