"""The onboarding DAG's tasks (`dags/eds_onboard_base.py`): register, compare the schema, profile, backfill."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from eds_network import catalogue
from eds_network.core.config import load_network
from eds_network.core.errors import EdsError
from eds_network.local import onboard
from eds_network.orchestration import backfill as backfill_step
from eds_network.orchestration.connections import airflow_api, catalogue_dsn, pg_dsn


def register(params: Mapping[str, Any], *, operator: str, run_id: str) -> dict:
    """Validate the form and register the base in the catalogue, audited under the operator's name."""
    network = load_network()
    req = onboard.parse_request(network, params, operator=operator)
    if req.ignored_tables:
        print(f"not in the scope of base {req.base}, ignored: {', '.join(req.ignored_tables)}")
    onboard.register(catalogue_dsn(network), network, req, run_id)
    print(
        f"onboarding {req.base} [{req.start_date}, {req.end_date}) requested by {req.operator}"
        f"{' (dry run)' if req.dry_run else ''}"
    )
    return req.ref()


def check_schema(request: dict, *, run_id: str) -> dict:
    """Compare every table of the source with OMOP CDM 5.4; the report goes to the log and the catalogue."""
    network = load_network()
    req = onboard.OnboardRequest.from_ref(request)
    base = network.base(req.base)
    with onboard.connect_source(pg_dsn(base.source_connection_id, f"source of base {base.id}"), base.id) as conn:
        report = onboard.compare_schema(conn, base.id, req.tables)
    print(onboard.render_schema(report))
    ref = report.ref()
    onboard.store_report(catalogue_dsn(network), base.id, run_id, "schema", ref, req.operator)
    return {"ok": ref["ok"], "tables": {t: {"ok": v["ok"]} for t, v in ref["tables"].items()}}


def profile(request: dict, *, run_id: str) -> dict:
    """Rows per table and month over the range, and proposed per-base quality thresholds."""
    network = load_network()
    req = onboard.OnboardRequest.from_ref(request)
    base = network.base(req.base)
    start, end = req.bounds(base)
    with onboard.connect_source(pg_dsn(base.source_connection_id, f"source of base {base.id}"), base.id) as conn:
        p = onboard.profile(conn, base, req.tables, start, end)
    print(onboard.render_profile(p))
    onboard.store_report(catalogue_dsn(network), base.id, run_id, "profile", p, req.operator)
    return {"rows": {t: d["rows"] for t, d in p["tables"].items()}, "proposed": len(p["proposed_overrides"])}


def backfill(request: dict, schema: dict, *, run_id: str) -> dict:
    """Airflow's own backfill of the base's local DAG over the range (a dry run lists the intervals only)."""
    network = load_network()
    req = onboard.OnboardRequest.from_ref(request)
    base = network.base(req.base)
    dsn = catalogue_dsn(network)
    if not req.dry_run:
        onboard.require_schema_ok(schema, base.id)
    api = airflow_api(onboard.AIRFLOW_API_CONNECTION_ID)
    outcome = backfill_step.run_backfill(api, base, req, dsn, progress=print)
    onboard.store_report(dsn, base.id, run_id, "backfill", outcome.ref(), req.operator)
    if req.dry_run:
        return outcome.ref()
    with catalogue.engine(dsn).begin() as conn:
        catalogue.audit(
            conn,
            req.operator,
            "onboarding.backfilled" if not outcome.failed else "onboarding.backfill_failed",
            f"base:{base.id}",
            {"dag_run_id": run_id, "intervals": outcome.intervals, "failed": len(outcome.failed)},
        )
    if outcome.failed:
        raise EdsError(
            f"{len(outcome.failed)} of {outcome.intervals} intervals failed ({', '.join(outcome.failed[:10])}): "
            f"open {base.dag_id}, fix the cause, clear the failed task instances (or trigger this DAG again "
            "with reprocess=failed); the DAG stays paused until its history is complete",
            base=base.id,
        )
    if "transfer_channel" not in catalogue.milestones(dsn, base.id):
        catalogue.set_milestone(
            dsn,
            base.id,
            "transfer_channel",
            dt.date.today(),
            evidence=f"onboarding backfill of {outcome.intervals} intervals ({run_id})",
            recorded_by=req.operator,
        )
    return outcome.ref()
