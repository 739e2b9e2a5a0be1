"""OpenLineage for every task, through Airflow's OpenLineage provider (docs/lineage.md).

The provider's listener emits a START and a COMPLETE (or FAIL) event for every task instance and every DAG run.
What a task read and wrote, and the facts we add, come from here:

- `LineageOperator` is the operator class of `@zone_task` (Airflow's `@task` operator plus the provider's
  `get_openlineage_facets_on_complete` / `..._on_failure` methods): the provider's `DefaultExtractor` calls them
  in the task's process once the body has returned or raised.
- The task body (`orchestration/*_tasks.py`) calls `report(inputs=…, outputs=…, run_facets=…)` with what the step
  did; the operator hands that report to the provider. A task that reports nothing still has its START/COMPLETE.

Datasets follow the OpenLineage naming spec: PostgreSQL tables `postgres://host:port` + `database.schema.table`,
objects `s3://bucket` + key prefix. Custom facets (`eds_pseudonymisation`, `eds_quality`, `eds_rowAccounting`)
carry levels, key *versions*, verdicts and counts only: never an identifier, never key material, never a value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow.providers.standard.decorators.python import _PythonDecoratedOperator

ROW_FIELDS = ("extracted", "published", "quarantined", "excluded")


@dataclass(frozen=True)
class Dataset:
    """A dataset as OpenLineage names it, with the facets of this run (plain dicts of counts and labels)."""

    namespace: str
    name: str
    facets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass
class Report:
    inputs: list[Dataset] = field(default_factory=list)
    outputs: list[Dataset] = field(default_factory=list)
    run_facets: dict[str, dict[str, Any]] = field(default_factory=dict)


_report: Report | None = None  # this task process's report (one task runs at a time in a task process)


def report(
    *,
    inputs: Iterable[Dataset] = (),
    outputs: Iterable[Dataset] = (),
    run_facets: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Add what the running task read, wrote and did to its COMPLETE event (several calls add up)."""
    global _report  # noqa: PLW0603
    if _report is None:
        _report = Report()
    _report.inputs += list(inputs)
    _report.outputs += list(outputs)
    for k, v in (run_facets or {}).items():
        _report.run_facets[k] = dict(v)


def take() -> Report | None:
    """The report of the task that just ran (and forget it)."""
    global _report  # noqa: PLW0603
    out, _report = _report, None
    return out


def reset() -> None:
    global _report  # noqa: PLW0603
    _report = None


# -- datasets ----------------------------------------------------------------------------------------------------
def postgres_table(dsn: str, schema: str, table: str, **facets: Mapping[str, Any]) -> Dataset:
    """`postgres://host:port` + `database.schema.table` of a libpq URI (its user and password never used)."""
    u = urlsplit(dsn)
    host = u.hostname or "localhost"
    return Dataset(f"postgres://{host}:{u.port or 5432}", f"{u.path.lstrip('/')}.{schema}.{table}", facets)


def s3_object(bucket: str, key: str, **facets: Mapping[str, Any]) -> Dataset:
    """`s3://bucket` + the key prefix, without its trailing slash."""
    return Dataset(f"s3://{bucket}", key.strip("/") or "/", facets)


# -- facets ------------------------------------------------------------------------------------------------------
def row_accounting(rows: Mapping[str, Any]) -> dict[str, Any]:
    """extracted = published + quarantined + excluded, of one table (`excluded_objection` read as `excluded`)."""
    n = {k: int(rows.get(k, rows.get("excluded_objection", 0) if k == "excluded" else 0) or 0) for k in ROW_FIELDS}
    return {**n, "balanced": n["extracted"] == n["published"] + n["quarantined"] + n["excluded"]}


def total_accounting(tables: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    per = [row_accounting(r) for r in tables.values()]
    n = {k: sum(p[k] for p in per) for k in ROW_FIELDS}
    return {**n, "tables": len(per), "balanced": all(p["balanced"] for p in per)}


def passed_through(rows: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """A level that forwards every row it holds: each table's rows are extracted and published."""
    return {t: {"extracted": int(n), "published": int(n)} for t, n in rows.items()}


def pseudonymisation(level: int, key_versions: Mapping[str, Any], **policy: Any) -> dict[str, Any]:
    """The pseudonymisation level the data is at, and the key versions (labels) it was produced under."""
    versions = {str(k): v if isinstance(v, str | int) else sorted(map(str, v)) for k, v in key_versions.items()}
    return {"level": level, "keyVersions": versions, **policy}


def quality_verdict(checks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """`passed`, `warnings` (some check violated) or `failed` (a fatal check violated) of aggregated check
    results `{check: {rows, violating_rows, severity}}`: counts of checks only."""
    violated = [c for c in checks.values() if int(c.get("violating_rows") or 0) > 0]
    fatal = [c for c in violated if c.get("severity") == "fatal"]
    verdict = "failed" if fatal else "warnings" if violated else "passed"
    return {"verdict": verdict, "checks": len(checks), "violated": len(violated), "fatalViolated": len(fatal)}


# -- the operator the provider reads -----------------------------------------------------------------------------
def _ol_dataset(d: Dataset, output: bool):
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import output_statistics_output_dataset

    from eds_network.orchestration.lineage_facets import DATASET_FACETS

    facets = {k: DATASET_FACETS[k](**v) for k, v in d.facets.items()}
    if not output:
        return InputDataset(namespace=d.namespace, name=d.name, facets=facets)
    out_facets = {}
    rows = d.facets.get("eds_rowAccounting")
    if rows:
        out_facets["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
            rowCount=int(rows.get("published", 0))
        )
    return OutputDataset(namespace=d.namespace, name=d.name, facets=facets, outputFacets=out_facets)


def operator_lineage(rep: Report | None):
    from airflow.providers.openlineage.extractors import OperatorLineage

    from eds_network.orchestration.lineage_facets import RUN_FACETS

    if rep is None:
        return OperatorLineage()
    return OperatorLineage(
        inputs=[_ol_dataset(d, False) for d in rep.inputs],
        outputs=[_ol_dataset(d, True) for d in rep.outputs],
        run_facets={k: RUN_FACETS[k](**v) for k, v in rep.run_facets.items()},
    )


class LineageOperator(_PythonDecoratedOperator):
    """Airflow's `@task` operator, whose OpenLineage metadata is what its body `report()`ed."""

    def execute(self, context):
        reset()  # `airflow dags test` runs every task in one process: start from nothing
        return super().execute(context)

    def get_openlineage_facets_on_complete(self, task_instance):
        return operator_lineage(take())

    def get_openlineage_facets_on_failure(self, task_instance):
        return operator_lineage(take())
