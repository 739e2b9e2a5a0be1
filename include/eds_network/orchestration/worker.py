"""A zone's Edge worker with its zone's task code imported once: `python -m eds_network.orchestration.worker
edge worker --queues <queue> …` (the arguments of `airflow edge worker`, unchanged).

The Edge worker runs each task in a fork of itself (`apache-airflow-providers-edge3`, its default), and the task
then imports what it uses: pandas, pyarrow, boto3, the OpenLineage client, Great Expectations for the quality
checks of a hospital's tables (5-6 s of CPU alone on this machine). Imported by the worker before it forks, that
code is shared by every task it starts, each task paying only for its own work. What is imported depends on the
zone's kind (`EDS_ZONE`, set by the zone's deployment): a zone imports only its own zone's code, no other zone's.

Importing reads no connection and no secret; a module that cannot be imported is logged and left to the task,
which then fails with its own error, as it would without this preload.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time

from eds_network.core import zones

log = logging.getLogger("eds_network.worker")

# What every task process of every zone imports: Airflow's task runner, the data libraries, lineage.
COMMON = (
    "airflow.sdk",
    "airflow.sdk.execution_time.task_runner",
    "airflow.providers.openlineage.plugins.listener",
    "pyarrow",
    "pyarrow.parquet",
    "pyarrow.compute",
    "pandas",
    "psycopg",
    "boto3",
    "sqlalchemy",
    "nacl.public",
    "nacl.signing",
)
# What the tasks of each kind of zone import (their `*_tasks` module, and what those import when they run).
BY_KIND = {
    "local": (
        "eds_network.orchestration.local_tasks",
        "eds_network.orchestration.onboard_tasks",
        "eds_network.quality.datadocs",
        "great_expectations",
    ),
    "keys": ("eds_network.orchestration.keys_tasks",),
    "platform": (
        "eds_network.orchestration.platform_tasks",
        "eds_network.orchestration.feasibility_tasks",
    ),
    "national": (
        "eds_network.orchestration.national_tasks",
        "eds_network.orchestration.project_tasks",
        "eds_network.orchestration.feasibility_tasks",
        "pyiceberg.catalog.sql",
        "pyiceberg.io.pyarrow",
    ),
}


def modules_for(zone: str | None) -> tuple[str, ...]:
    """The modules a worker of `zone` imports before it starts: the common ones and its kind's."""
    if not zone:
        return COMMON
    return (*COMMON, *BY_KIND.get(zones.kind(zone), ()))


def preload(zone: str | None) -> tuple[list[str], list[str]]:
    """Imports `modules_for(zone)`; returns (imported, failed)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    done, failed = [], []
    for name in modules_for(zone):
        try:
            importlib.import_module(name)
            done.append(name)
        except Exception as exc:  # a task that needs it fails with its own error
            log.warning("worker preload: %s not imported (%s)", name, type(exc).__name__)
            failed.append(name)
    return done, failed


def main(argv: list[str] | None = None) -> None:
    zone = os.environ.get("EDS_ZONE")
    t0 = time.monotonic()
    done, failed = preload(zone)
    print(
        f"eds worker of zone {zone or '?'}: {len(done)} modules imported before forking tasks "
        f"in {time.monotonic() - t0:.1f}s" + (f", not imported: {', '.join(failed)}" if failed else ""),
        flush=True,
    )
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", *(sys.argv[1:] if argv is None else argv)]
    airflow_main()


if __name__ == "__main__":
    main()
