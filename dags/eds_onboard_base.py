"""
### Onboarding a base (`eds_onboard_base`): manual, from the Trigger form

Brings a new base's history in safely, from the Airflow UI. Add the base to `config/network.yaml` (and its
source connection) first: its `eds_local__<base>` DAG appears paused. Then trigger this DAG with its form:

1. **register**: validates the form (start before end, nothing in the future), registers the base in the
   catalogue with an audit entry naming you, and (not in a dry run) the `preparation` milestone.
2. **check_schema**: connects to the source and compares every table with OMOP CDM 5.4 (missing / extra /
   mistyped columns); the report is in the task log and in `catalogue.onboarding_report`.
3. **profile**: rows per table and month over the range, and proposed per-base quality thresholds
   (`quality_overrides` to copy into the base's entry when the observed completeness is below DQD's default).
4. **backfill**: unless dry run, launches Airflow's own backfill of `eds_local__<base>` over the range (at most
   *max parallel intervals* at a time), reports progress (intervals done / total, rows published so far) and
   leaves the DAG unpaused for its nightly runs once every interval succeeded (paused again otherwise).

A failed interval is re-run alone: clear its failed task instances in `eds_local__<base>` (Grid view), then
trigger this DAG again with *reprocess* = `failed`. Each interval is one batch: rerunning it replaces its batch.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, get_current_context
from airflow.sdk.exceptions import AirflowSkipException

from eds_network.core import omop, zones
from eds_network.core.config import load_network
from eds_network.orchestration.zoned import zone_task

NETWORK = load_network()
BASES = [b.id for b in NETWORK.local_bases]


def _operator() -> str:
    user = getattr(get_current_context()["dag_run"], "triggering_user_name", None)
    return user or "operator"


@dag(
    dag_id="eds_onboard_base",
    description="Onboard a base: register, compare its schema with OMOP 5.4, profile its history, backfill it",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,  # manual only: triggering it is the decision
    tags=["eds", "onboarding"],
    default_args={"owner": "eds-network", "retries": 2, "retry_delay": dt.timedelta(seconds=30)},
    doc_md=__doc__,
    params={
        "base": Param(
            BASES[0],
            type="string",
            enum=BASES,
            title="Base",
            description="The base to onboard, as configured in config/network.yaml.",
        ),
        # Static defaults (empty): the dates are decided when the run starts, so the DAG does not change daily.
        "start_date": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Start date",
            description="First day of the history to bring in (intervals starting on or after it). Empty: the "
            "first day of the month six months before the end date.",
        ),
        "end_date": Param(
            None,
            type=["null", "string"],
            format="date",
            title="End date",
            description="Day after the last day of the history (exclusive); after the start date, not in the "
            "future. Empty: today. Nightly runs take over from the latest complete interval.",
        ),
        "tables": Param(
            list(omop.DEFAULT_TABLES),
            type="array",
            items={"type": "string", "enum": sorted(omop.CLINICAL_TABLES)},
            examples=sorted(omop.CLINICAL_TABLES),
            title="Tables",
            description="Tables to compare and profile (default: the base's tables). The backfill extracts "
            "every table of the base's configuration.",
        ),
        "dry_run": Param(
            True,
            type="boolean",
            title="Dry run",
            description="Check, profile and list the intervals only: no backfill, no data written.",
        ),
        "max_active_runs": Param(
            2,
            type="integer",
            minimum=1,
            maximum=32,
            title="Max parallel intervals",
            description="How many intervals of the backfill run at the same time (Airflow's max_active_runs).",
        ),
        "reprocess": Param(
            "failed",
            type="string",
            enum=["none", "failed", "completed"],
            title="Reprocess",
            description="Intervals that already ran: 'failed' re-runs the failed ones (default), 'completed' "
            "re-runs all of them (same rows: each interval replaces its batch), 'none' skips them.",
        ),
    },
)
def eds_onboard_base():
    @zone_task(zones.OPERATOR)
    def register() -> dict:
        from eds_network.orchestration import onboard_tasks

        ctx = get_current_context()
        return onboard_tasks.register(ctx["params"], operator=_operator(), run_id=ctx["run_id"])

    def at_the_hospital(base_id: str):
        """The schema check and the profile read the base's source: they run in that hospital's zone (one pair
        of tasks per base, the others skip)."""

        def only_for(request: dict) -> None:
            if request["base"] != base_id:
                raise AirflowSkipException(f"onboarding {request['base']}, not {base_id}")

        @zone_task(zones.local(base_id), task_id=f"check_schema__{base_id}")
        def check_schema(request: dict) -> dict:
            from eds_network.orchestration import onboard_tasks

            only_for(request)
            return onboard_tasks.check_schema(request, run_id=get_current_context()["run_id"])

        @zone_task(zones.local(base_id), task_id=f"profile__{base_id}")
        def profile(request: dict) -> dict:
            from eds_network.orchestration import onboard_tasks

            only_for(request)
            return onboard_tasks.profile(request, run_id=get_current_context()["run_id"])

        return check_schema, profile

    @zone_task(zones.OPERATOR, trigger_rule="none_failed")
    def backfill(request: dict, schemas: list, volumes: list) -> dict:
        from eds_network.orchestration import onboard_tasks

        return onboard_tasks.backfill(request, _chosen(schemas), run_id=get_current_context()["run_id"])

    req = register()
    schemas, volumes = [], []
    for base_id in BASES:
        check_schema, profile = at_the_hospital(base_id)
        schemas.append(check_schema(req))
        volumes.append(profile(req))
    backfill(req, schemas, volumes)


def _chosen(results: list) -> dict:
    """The one schema report of the base being onboarded (the other bases' tasks skipped: None)."""
    done = [r for r in results if r is not None]
    if len(done) != 1:
        raise ValueError(f"expected the schema report of one base, got {len(done)}")
    return done[0]


eds_onboard_base()
