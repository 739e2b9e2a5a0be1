"""Airflow plugin "EDS network": the operator page and its JSON API, inside the Airflow UI.

- FastAPI app mounted at `/eds` (`/eds/` the page, `/eds/api/...` JSON): built by `eds_network.ui`, behind
  Airflow's own authentication (`requires_access_view(WEBSITE)`: whoever may use the Airflow UI);
- an external view "EDS network" in the Airflow navigation that shows `/eds/` inside the UI;
- the milestone form (`POST /eds/milestones`): recorded under the logged-in Airflow user's name, by a user who
  may edit the `eds_national` DAG (what a milestone unblocks); audited in the catalogue;
- the feasibility form (`POST /eds/projects/feasibility`): a question recorded under the user's name (who may edit
  `eds_project_feasibility`), then the DAG triggered through Airflow's REST API with the request id.

The catalogue is read through the `eds_catalogue` connection (Airflow's secrets backend; `$EDS_CATALOGUE_DSN`
overrides it); Data Docs, when a
quality run wrote them, are served from `$EDS_DATA_DOCS_DIR` (default `$EDS_HOME/data_docs/<base>/`).
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow.api_fastapi.auth.managers.models.resource_details import AccessView, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_view
from airflow.plugins_manager import AirflowPlugin

from eds_network import ui
from eds_network.core.config import load_network, state_home

PREFIX = "/eds"


def _dsn() -> str:
    if os.environ.get("EDS_CATALOGUE_DSN"):  # another catalogue than the connection's (tests, staging)
        return os.environ["EDS_CATALOGUE_DSN"]
    from eds_network.orchestration.connections import catalogue_dsn

    return catalogue_dsn(load_network())


def _login_url(next_url: str) -> str:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager().get_url_login(next_url=next_url)


def _data_docs_dir() -> Path:
    """The one root the pipeline builds GX Data Docs under ($EDS_HOME/datadocs/<level>/<scope>/<table>/)."""
    return Path(os.environ.get("EDS_DATA_DOCS_DIR", state_home() / "datadocs"))


RECORD_PERMISSION_DAG = "eds_national"


def _recorder(user: GetUserDep) -> str:
    """The logged-in Airflow user's name, if they may edit the national DAG (else HTTP 403)."""
    from airflow.api_fastapi.app import get_auth_manager
    from fastapi import HTTPException

    allowed = get_auth_manager().is_authorized_dag(
        method="PUT", details=DagDetails(id=RECORD_PERMISSION_DAG), user=user
    )
    if not allowed:
        raise HTTPException(
            status_code=403, detail=f"recording a milestone needs edit access to the {RECORD_PERMISSION_DAG} DAG"
        )
    return user.get_name()


ASK_PERMISSION_DAG = "eds_project_feasibility"


def _asker(user: GetUserDep) -> str:
    """The logged-in Airflow user's name, if they may edit the feasibility DAG (else HTTP 403)."""
    from airflow.api_fastapi.app import get_auth_manager
    from fastapi import HTTPException

    allowed = get_auth_manager().is_authorized_dag(method="PUT", details=DagDetails(id=ASK_PERMISSION_DAG), user=user)
    if not allowed:
        raise HTTPException(
            status_code=403, detail=f"asking a feasibility question needs edit access to the {ASK_PERMISSION_DAG} DAG"
        )
    return user.get_name()


def _trigger(conf: dict) -> str:
    """The feasibility DAG run of a question asked on the page, through Airflow's REST API (the official client)
    as the operator zone's API user (`eds_airflow_api`)."""
    from airflow_client.client import TriggerDAGRunPostBody

    from eds_network.orchestration.connections import airflow_api

    api = airflow_api("eds_airflow_api")
    return api.runs.trigger_dag_run(ASK_PERMISSION_DAG, TriggerDAGRunPostBody(logical_date=None, conf=conf)).dag_run_id


app = ui.create_app(
    _dsn,
    load_network,
    auth=requires_access_view(AccessView.WEBSITE),
    login_url=_login_url,
    data_docs_dir=_data_docs_dir(),
    prefix=PREFIX,
    recorder=_recorder,
    asker=_asker,
    trigger=_trigger,
)


class EdsNetworkUiPlugin(AirflowPlugin):
    name = "eds_network_ui"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "EDS network"}]
    external_views = [
        {
            "name": "EDS network",
            "href": f"{PREFIX}/",
            "url_route": "eds-network",
            "destination": "nav",
            "nav_top_level": True,
        }
    ]
