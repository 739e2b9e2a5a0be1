"""Onboarding's backfill: Airflow's own backfill of a base's local DAG, through the REST API, watched to the end.

Called by `dags/eds_onboard_base.py`. Progress is logged as intervals done / failed and rows published so far
(from the catalogue); a failed interval is named, never a row value.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from zoneinfo import ZoneInfo

from airflow_client.client import BackfillPostBody, DAGRunResponse, ReprocessBehavior
from airflow_client.client.exceptions import ConflictException
from sqlalchemy import func, select

from eds_network import catalogue
from eds_network.core.config import LocalBase
from eds_network.core.errors import ConfigError, EdsError
from eds_network.local.onboard import POLL_SECONDS, OnboardRequest
from eds_network.orchestration.airflow_api import AirflowApi

log = logging.getLogger(__name__)


class BackfillTimeout(EdsError):
    """The backfill did not complete within the time given to watch it."""


def backfill_body(base: LocalBase, req: OnboardRequest, reprocess: str | None = None) -> BackfillPostBody:
    """Intervals whose start (logical date) is in [start, end): `to_date` is inclusive in Airflow."""
    start, end = req.bounds(base)
    return BackfillPostBody(
        dag_id=base.dag_id,
        from_date=start,
        to_date=end - dt.timedelta(seconds=1),
        run_backwards=False,
        max_active_runs=req.max_active_runs,
        reprocess_behavior=ReprocessBehavior(reprocess or req.reprocess),
        dag_run_conf={},
    )


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
    dag = api.dags.get_dag(base.dag_id)  # 404 here: the DAG is not parsed yet (config entry missing or import error)
    every = _intervals(api, base, req, "completed")  # every interval of the range, whatever ran before ...
    todo = _intervals(api, base, req)  # ... and those this backfill will (re)run
    say(
        f"{base.dag_id}: {len(every)} intervals in [{req.start_date}, {req.end_date}), {len(todo)} to run "
        f"(reprocess={req.reprocess}), at most {req.max_active_runs} at a time"
    )
    _gap_warning(base, every, say)
    if req.dry_run:
        say("dry run: no backfill created, no data written, DAG left " + ("paused" if dag.is_paused else "unpaused"))
        return BackfillOutcome(base.id, base.dag_id, True, len(every), elapsed_s=time.monotonic() - t0)

    backfill_id = _create(api, base, req, say) if todo else None
    if dag.is_paused:
        api.set_paused(base.dag_id, False)
        say(f"{base.dag_id} unpaused (Airflow runs backfill runs of unpaused DAGs only)")
    first, last = min(every), max(every)
    rows = functools.partial(rows_published, catalogue_dsn, base.id, first, last + dt.timedelta(seconds=1))
    if backfill_id is not None:
        deadline = None if timeout_s is None else t0 + timeout_s
        _watch(api, base.dag_id, backfill_id, every, rows, say, poll_seconds, deadline)

    runs = {r.logical_date: r for r in api.runs_between(base.dag_id, first, last)}
    failed = tuple(_run_name(runs.get(i), i) for i in every if runs.get(i) is None or runs[i].state != "success")
    if failed and dag.is_paused:
        api.set_paused(base.dag_id, True)
        say(f"{base.dag_id} paused again: its history is incomplete")
    published = rows()
    say(
        f"backfill of {base.dag_id} finished: {len(every) - len(failed)}/{len(every)} intervals succeeded, "
        f"{published:,d} rows published"
    )
    return BackfillOutcome(
        base.id,
        base.dag_id,
        False,
        len(every),
        backfill_id,
        len(every) - len(failed),
        failed,
        published,
        not failed,
        time.monotonic() - t0,
    )


def _intervals(
    api: AirflowApi, base: LocalBase, req: OnboardRequest, reprocess: str | None = None
) -> list[dt.datetime]:
    """The logical dates Airflow's backfill would run (its dry run); none at all is the operator's error."""
    dry = api.backfills.create_backfill_dry_run(backfill_body(base, req, reprocess))
    dates = [i.logical_date for i in dry.backfills]
    if reprocess == "completed" and not dates:
        raise ConfigError(
            f"no complete {base.schedule!r} interval starts in [{req.start_date}, {req.end_date})", base=base.id
        )
    return dates


def _create(api: AirflowApi, base: LocalBase, req: OnboardRequest, say: Callable[[str], None]) -> int:
    """Create the backfill; a retry of this task (409: one is running) follows the one it created."""
    try:
        backfill_id = api.backfills.create_backfill(backfill_body(base, req)).id
        say(f"backfill {backfill_id} created for {base.dag_id}")
        return backfill_id
    except ConflictException:
        running = [b for b in api.backfills.list_backfills(base.dag_id, limit=100).backfills if not b.completed_at]
        if not running:
            raise
        say(f"backfill {running[-1].id} of {base.dag_id} is already running: following it")
        return running[-1].id


def _watch(
    api: AirflowApi,
    dag_id: str,
    backfill_id: int,
    every: Sequence[dt.datetime],
    rows: Callable[[], int],
    say: Callable[[str], None],
    poll_seconds: float,
    deadline: float | None,
) -> None:
    """Poll the backfill until Airflow marks it completed, saying each change of the progress line."""
    last_line = ""
    while True:
        completed = api.backfills.get_backfill(backfill_id).completed_at
        runs = api.runs_between(dag_id, min(every), max(every))
        done = sum(r.state == "success" for r in runs)
        failed = sum(r.state == "failed" for r in runs)
        line = f"progress: {done}/{len(every)} intervals done, {failed} failed, {rows():,d} rows published so far"
        if line != last_line:
            say(line)
            last_line = line
        if completed:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise BackfillTimeout(f"backfill {backfill_id} of {dag_id} still running at its deadline")
        time.sleep(poll_seconds)


def _run_name(run: DAGRunResponse | None, logical_date: dt.datetime) -> str:
    return run.dag_run_id if run is not None else f"(no run at {logical_date.isoformat()})"


def _gap_warning(base: LocalBase, every: Sequence[dt.datetime], say: Callable[[str], None]) -> None:
    """Nightly runs start from the latest complete interval (catchup=False): say so if the range stops short."""
    from croniter import croniter

    tz = ZoneInfo(base.timezone)
    now = dt.datetime.now(tz)
    it = croniter(base.schedule, now)
    latest_end = it.get_prev(dt.datetime)
    latest_start = it.get_prev(dt.datetime)
    last = max(every)
    cron = croniter(base.schedule, last.astimezone(tz))
    last_end = cron.get_next(dt.datetime)
    if last_end < latest_start:
        say(
            f"WARNING: the range stops at {last_end.isoformat()} but the first nightly run covers "
            f"[{latest_start.isoformat()}, {latest_end.isoformat()}): changes in between are not extracted; "
            "onboard again with a later end_date to cover them"
        )
