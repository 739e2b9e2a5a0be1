"""Airflow's public REST API through the official client (`apache-airflow-client`, package `airflow_client.client`).

Airflow 3's API wants a JWT: `AirflowApi` gets one from `POST /auth/token` with the API user's name and password,
sends it as a Bearer token, and gets a new one when the server answers 401 (the token expired). Connection
errors and 502/503/504 answers are retried by urllib3 with backoff (a server busy or restarting); a refused call
(4xx) is raised at once as the client's `ApiException` subclass (`NotFoundException`, `ConflictException`, ...).

    api = AirflowApi("http://localhost:8080", "admin", password)
    api.set_paused("eds_local__hosp_a", False)                 # the calls this project makes often, by name
    api.runs_between("eds_local__hosp_a", first, last)         # every run of an interval, all pages
    api.backfills.create_backfill(BackfillPostBody(...))       # any other endpoint through the client's own APIs

`call(method, path, payload)` reaches an endpoint by its path (JSON in and out) through the same client.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import urllib3
from airflow_client.client import (
    ApiClient,
    BackfillApi,
    Configuration,
    DAGApi,
    DAGPatchBody,
    DagRunApi,
    DAGRunResponse,
    TaskApi,
    TaskInstanceApi,
)
from airflow_client.client.exceptions import ApiException

from eds_network.core.errors import EdsError

#: Statuses of a server that is up but not ready (restarting, behind a proxy): retried like a refused connection.
RETRY_STATUSES = (502, 503, 504)


class AirflowApiError(EdsError):
    """The Airflow REST API refused the API user's credentials, refused a call made by path, or was unreachable."""


class _TokenClient(ApiClient):
    """The generated client, with the JWT of Airflow 3 (fetched on first use, again after a 401) and a timeout."""

    def __init__(self, api: AirflowApi) -> None:
        retries = urllib3.Retry(
            total=api.attempts,
            backoff_factor=2.5,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET", "PATCH"}),  # connection errors are retried for every method
            raise_on_status=False,  # the last 5xx answer reaches the caller as the client's ServiceException
        )
        super().__init__(Configuration(host=api.base_url.rstrip("/"), retries=retries))
        self._api = api

    def token(self) -> str:
        """A new JWT for the API user (`POST /auth/token`)."""
        res = self.rest_client.request(
            "POST",
            self.configuration.host + "/auth/token",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            body={"username": self._api.username, "password": self._api.password},
            _request_timeout=self._api.timeout,
        )
        data = res.read()
        if res.status != 201 and res.status != 200:
            raise AirflowApiError(
                f"Airflow API {self.configuration.host}: /auth/token refused user {self._api.username!r} "
                f"(HTTP {res.status}); check the password of connection eds_airflow_api"
            )
        return json.loads(data)["access_token"]

    def call_api(self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None):
        headers = dict(header_params or {})
        if self.configuration.access_token is None:
            self.configuration.access_token = self.token()
        headers["Authorization"] = f"Bearer {self.configuration.access_token}"
        timeout = _request_timeout or self._api.timeout
        res = super().call_api(method, url, headers, body, post_params, timeout)
        if res.status == 401:  # the token expired: one more try with a new one
            self.configuration.access_token = self.token()
            headers["Authorization"] = f"Bearer {self.configuration.access_token}"
            res = super().call_api(method, url, headers, body, post_params, timeout)
        return res


def _detail(data: bytes) -> str:
    """The server's reason for refusing a call (its `detail`), short."""
    text = data.decode("utf-8", "replace")[:1000]
    try:
        return str(json.loads(text).get("detail", text))
    except (ValueError, AttributeError):
        return text


@dataclass
class AirflowApi:
    """One client of the API: the generated endpoint groups (`dags`, `runs`, `backfills`, `tasks`,
    `task_instances`) and the few calls this project makes by name (`dag`, `set_paused`, `runs_between`,
    `dag_runs`, `call`)."""

    base_url: str
    username: str
    password: str = field(repr=False)
    timeout: float = 60.0
    attempts: int = 5

    @cached_property
    def client(self) -> ApiClient:
        return _TokenClient(self)

    @property
    def dags(self) -> DAGApi:
        return DAGApi(self.client)

    @property
    def runs(self) -> DagRunApi:
        return DagRunApi(self.client)

    @property
    def backfills(self) -> BackfillApi:
        return BackfillApi(self.client)

    @property
    def tasks(self) -> TaskApi:
        return TaskApi(self.client)

    @property
    def task_instances(self) -> TaskInstanceApi:
        return TaskInstanceApi(self.client)

    # -- the calls made by name ----------------------------------------------------------------------
    def dag(self, dag_id: str) -> dict:
        """The DAG as the API describes it (`dag_id`, `is_paused`, ...)."""
        return self._refused_as_error(lambda: self.dags.get_dag(dag_id).to_dict(), f"GET dag {dag_id}")

    def set_paused(self, dag_id: str, paused: bool) -> dict:
        """Pause or unpause the DAG; raises AirflowApiError if the server refuses."""

        def patch() -> dict:
            return self.dags.patch_dag(dag_id, DAGPatchBody(is_paused=paused), update_mask=["is_paused"]).to_dict()

        return self._refused_as_error(patch, f"PATCH dag {dag_id}")

    def runs_between(self, dag_id: str, first: dt.datetime, last: dt.datetime) -> list[DAGRunResponse]:
        """Every run of the DAG whose logical date is in [first, last], in logical-date order (all pages)."""
        runs: list[DAGRunResponse] = []
        while True:
            page = self.runs.get_dag_runs(
                dag_id,
                logical_date_gte=first,
                logical_date_lte=last,
                limit=100,
                offset=len(runs),
                order_by=["logical_date"],
            )
            runs += page.dag_runs
            if not page.dag_runs or len(runs) >= page.total_entries:
                return runs

    def dag_runs(self, dag_id: str, start: dt.datetime, end: dt.datetime) -> list[dict]:
        """`runs_between` as plain dicts (`dag_run_id`, `state`, `logical_date`, ...)."""
        runs = self._refused_as_error(lambda: self.runs_between(dag_id, start, end), f"GET dagRuns of {dag_id}")
        return [r.to_dict() for r in runs]

    def call(self, method: str, path: str, payload: Any = None, query: Mapping[str, Any] | None = None) -> Any:
        """Any endpoint by its path (`/api/v2/...`), JSON in and out, with the client's token and retries.

        A refused call (4xx, 5xx) or an unreachable server raises AirflowApiError naming the call and the
        server's reason."""
        url = self.client.configuration.host + path
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        headers = {"Accept": "application/json"}
        body = None
        if payload is not None:
            headers["Content-Type"] = "application/json"
            body = self.client.sanitize_for_serialization(payload)
        try:
            res = self.client.call_api(method, url, headers, body)
        except urllib3.exceptions.HTTPError as exc:
            raise AirflowApiError(f"Airflow API {self.base_url} unreachable: {exc}") from None
        data = res.read()
        if res.status >= 400:
            raise AirflowApiError(f"Airflow API {method} {path}: HTTP {res.status}: {_detail(data)}")
        return json.loads(data) if data else None

    def _refused_as_error(self, request, what: str):
        try:
            return request()
        except ApiException as exc:
            raise AirflowApiError(
                f"Airflow API {what}: HTTP {exc.status}: {_detail((exc.body or '').encode())}"
            ) from None
        except urllib3.exceptions.HTTPError as exc:
            raise AirflowApiError(f"Airflow API {self.base_url} unreachable: {exc}") from None
