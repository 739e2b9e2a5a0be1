"""
### A research project's dataset (`eds_project_extract`): manual, from the Trigger form (HDH zone)

Extracts the dataset a data permit allows, from a pinned state of the national Iceberg tables, into the project's
own area (`projects/<project>/<extract>/` in the HDH bucket, read with the project's own credential):

1. **upkeep**: permits past their expiry date get their datasets deleted (nothing left under the area) and the
   project marked *expired*; patients of a delivered dataset who left the national tables (an objection) get a
   withdrawal notice by project pseudonym.
2. **extract**: the cohort's patients only, the permitted tables, columns and period only, in OMOP CDM 5.4
   shape; every `*_id` under the project's own pseudonyms (a key derived from the national key for this project:
   two projects cannot join, and no id equals a national one); Parquet + data dictionary + quality summary of the
   bases, and a manifest signed with the national key, written last. The same permit and pins give the same bytes.
   Recorded in the catalogue (`project_dataset`, timeline *extracted* then *delivered*, audit).

Pins: empty for the tables' current snapshots, or a JSON object `{"person": 123, "condition_occurrence": 456}`
(from `eds national tables`) to reproduce an earlier extract. Project, permit and cohort come from the catalogue
(`eds project create` / `eds project grant`); the form only names the project.
"""

from __future__ import annotations

import datetime as dt
import json

from airflow.sdk import Param, dag, get_current_context

from eds_network.core import zones
from eds_network.orchestration.zoned import zone_task


def _operator() -> str:
    user = getattr(get_current_context()["dag_run"], "triggering_user_name", None)
    return f"airflow:{user or 'operator'}"


@dag(
    dag_id="eds_project_extract",
    description="A research project's dataset from the national tables, under the project's pseudonyms",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,  # manual only: triggering it is the decision
    tags=["eds", "national", "projects"],
    default_args={"owner": "eds-network", "retries": 2, "retry_delay": dt.timedelta(seconds=30)},
    doc_md=__doc__,
    params={
        "project_id": Param(
            "",
            type="string",
            pattern="^[a-z][a-z0-9-]{2,40}$",
            title="Project",
            description="The project id in the catalogue (its permit must be granted and not expired).",
        ),
        "pins": Param(
            "",
            type="string",
            title="Pinned snapshots",
            description='Empty: the current snapshots. Else JSON {"table": snapshot id, ...}.',
        ),
    },
)
def eds_project_extract():
    @zone_task(zones.NATIONAL)
    def upkeep() -> dict:
        from eds_network.core.config import load_network
        from eds_network.orchestration import project_tasks

        network = load_network()
        res = project_tasks.resources_from_connections(network)
        actor = _operator()
        expired = project_tasks.expire_due(network, res, actor=actor)
        notices = project_tasks.withdrawal_notices(network, res, actor=actor)
        return {"expired": [e["project"] for e in expired], "notices": notices}

    @zone_task(zones.NATIONAL)
    def extract(_upkeep: dict) -> dict:
        from eds_network.core.config import load_network
        from eds_network.orchestration import project_tasks

        params = get_current_context()["params"]
        pins = {t: int(s) for t, s in json.loads(params["pins"]).items()} if params.get("pins") else None
        network = load_network()
        out = project_tasks.extract_project(
            network,
            project_tasks.resources_from_connections(network),
            params["project_id"],
            actor=_operator(),
            pins=pins,
        )
        return {k: out[k] for k in ("project_id", "extract_id", "status", "files", "bytes", "persons", "rows")}

    extract(upkeep())


eds_project_extract()
