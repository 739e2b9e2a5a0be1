"""Onboarding's backfill: Airflow's own backfill of a base's local DAG, through the REST API, watched to the end.

Called by `dags/eds_onboard_base.py`. Progress is logged as intervals done / failed and rows published so far
(from the catalogue); a failed interval is named, never a row value.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from eds_network import catalogue
from eds_network.core.config import LocalBase
from eds_network.core.errors import ConfigError
from eds_network.local.onboard import POLL_SECONDS, OnboardRequest
from eds_network.orchestration.airflow_api import AirflowApi, AirflowApiError

log = logging.getLogger(__name__)


def backfill_body(base: LocalBase, req: OnboardRequest, reprocess: str | None = None) -> dict:
    """Intervals whose start (logical date) is in [start, end): `to_date` is inclusive in Airflow."""
    start, end = req.bounds(base)
    return {
        "dag_id": base.dag_id,
        "from_date": start.isoformat(),
        "to_date": (end - dt.timedelta(seconds=1)).isoformat(),
        "run_backwards": False,
        "max_active_runs": req.max_active_runs,
        "reprocess_behavior": reprocess or req.reprocess,
        "dag_run_conf": {},
    }


def rows_published(dsn: str, base_id: str, start: dt.datetime, end: dt.datetime) -> int:
    """Rows published to the platform intake by the base's local runs whose interval starts in [start, end)."""
    r, rt = catalogue.run_t, catalogue.run_table_t
    q = (
        select(func.coalesce(func.sum(rt.c.published), 0))
        .select_from(rt.join(r, r.c.id == rt.c.run_id))
        .where(
            r.c.level == "local",
            r.c.scope_id == base_id,
            r.c.data_interval_start >= start,
            r.c.data_interval_start < end,
        )
    )
    with catalogue.engine(dsn).connect() as conn:
        return int(conn.execute(q).scalar_one())


@dataclass(frozen=True)
class BackfillOutcome:
    base: str
    dag_id: str
    dry_run: bool
    intervals: int
    backfill_id: int | None = None
    succeeded: int = 0
    failed: tuple[str, ...] = ()
    rows_published: int = 0
    unpaused: bool = False
    elapsed_s: float = 0.0

    def ref(self) -> dict:
        d = asdict(self)
        d["failed"] = list(self.failed)
        return d


def run_backfill(
    api: AirflowApi,
    base: LocalBase,
    req: OnboardRequest,
    catalogue_dsn: str,
    *,
    poll_seconds: float = POLL_SECONDS,
    progress: Callable[[str], None] | None = None,
    timeout_s: float | None = None,
) -> BackfillOutcome:
    """Create the backfill of the base's local DAG, let it run with bounded concurrency, report progress,
    and leave the DAG unpaused for its nightly runs once every interval succeeded.

    Airflow 3 starts backfill runs of unpaused DAGs only: the DAG is unpaused when the backfill is created
    and paused again (as it was before) if an interval fails, so a base whose history is incomplete does not
    run nightly. A dry run asks Airflow which intervals it would create and changes nothing.
    """
    say = progress or log.info
    t0 = time.monotonic()
    start, end = req.bounds(base)
    dag = api.dag(base.dag_id)  # 404 here: the DAG is not parsed yet (config entry missing or import error)
    # Every interval of the range (reprocess 'completed' lists them all, whatever ran before) ...
    every = api.backfill_dry_run(backfill_body(base, req, reprocess="completed"))
    # ... and those this backfill will (re)run.
    todo = api.backfill_dry_run(backfill_body(base, req))
    if not every:
        raise ConfigError(
            f"no complete {base.schedule!r} interval starts in [{req.start_date}, {req.end_date})", base=base.id
        )
    say(
        f"{base.dag_id}: {len(every)} intervals in [{req.start_date}, {req.end_date}), {len(todo)} to run "
        f"(reprocess={req.reprocess}), at most {req.max_active_runs} at a time"
    )
    _gap_warning(base, every, say)
    if req.dry_run:
        say("dry run: no backfill created, no data written, DAG left " + ("paused" if dag["is_paused"] else "unpaused"))
        return BackfillOutcome(base.id, base.dag_id, True, len(every), elapsed_s=time.monotonic() - t0)

    was_paused = bool(dag["is_paused"])
    backfill_id = None
    if todo:
        try:
            backfill_id = int(api.create_backfill(backfill_body(base, req))["id"])
            say(f"backfill {backfill_id} created for {base.dag_id}")
        except AirflowApiError as exc:
            running = [b for b in api.backfills(base.dag_id) if not b.get("completed_at")]
            if "HTTP 409" not in str(exc) or not running:
                raise
            backfill_id = int(running[-1]["id"])  # a retry of this task: follow the backfill it created
            say(f"backfill {backfill_id} of {base.dag_id} is already running: following it")
    if was_paused:
        api.set_paused(base.dag_id, False)
        say(f"{base.dag_id} unpaused (Airflow runs backfill runs of unpaused DAGs only)")
    logical = [dt.datetime.fromisoformat(i["logical_date"]) for i in every]
    first, last = min(logical), max(logical)
    last_line = ""
    while backfill_id is not None:
        state = api.backfill(backfill_id)
        runs = api.dag_runs(base.dag_id, first, last)
        done = sum(r["state"] == "success" for r in runs)
        failed = sum(r["state"] == "failed" for r in runs)
        line = (
            f"progress: {done}/{len(every)} intervals done, {failed} failed, "
            f"{rows_published(catalogue_dsn, base.id, first, last + dt.timedelta(seconds=1)):,d} rows published so far"
        )
        if line != last_line:
            say(line)
            last_line = line
        if state.get("completed_at"):
            break
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise AirflowApiError(f"backfill {backfill_id} of {base.dag_id} still running after {timeout_s:.0f}s")
        time.sleep(poll_seconds)

    runs = {r["logical_date"]: r for r in api.dag_runs(base.dag_id, first, last)}
    failed_runs = []
    for i in every:
        r = _run_at(runs, i["logical_date"])
        if r is None or r["state"] != "success":
            failed_runs.append(r["dag_run_id"] if r else f"(no run at {i['logical_date']})")
    rows = rows_published(catalogue_dsn, base.id, first, last + dt.timedelta(seconds=1))
    if failed_runs:
        if was_paused:
            api.set_paused(base.dag_id, True)
            say(f"{base.dag_id} paused again: its history is incomplete")
    unpaused = not failed_runs
    say(
        f"backfill of {base.dag_id} finished: {len(every) - len(failed_runs)}/{len(every)} intervals succeeded, "
        f"{rows:,d} rows published"
    )
    return BackfillOutcome(
        base.id,
        base.dag_id,
        False,
        len(every),
        backfill_id,
        len(every) - len(failed_runs),
        tuple(failed_runs),
        rows,
        unpaused,
        time.monotonic() - t0,
    )


def _run_at(runs: Mapping[str, dict], logical_date: str) -> dict | None:
    want = dt.datetime.fromisoformat(logical_date)
    for k, r in runs.items():
        if k and dt.datetime.fromisoformat(k) == want:
            return r
    return None


def _gap_warning(base: LocalBase, every: Sequence[dict], say: Callable[[str], None]) -> None:
    """Nightly runs start from the latest complete interval (catchup=False): say so if the range stops short."""
    from croniter import croniter

    tz = ZoneInfo(base.timezone)
    now = dt.datetime.now(tz)
    it = croniter(base.schedule, now)
    latest_end = it.get_prev(dt.datetime)
    latest_start = it.get_prev(dt.datetime)
    last = max(dt.datetime.fromisoformat(i["logical_date"]) for i in every)
    cron = croniter(base.schedule, last.astimezone(tz))
    last_end = cron.get_next(dt.datetime)
    if last_end < latest_start:
        say(
            f"WARNING: the range stops at {last_end.isoformat()} but the first nightly run covers "
            f"[{latest_start.isoformat()}, {latest_end.isoformat()}): changes in between are not extracted; "
            "onboard again with a later end_date to cover them"
        )
