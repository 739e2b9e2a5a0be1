"""The official client wrapped by AirflowApi, against a small HTTP server that answers as Airflow 3's API does.

The server hands out a JWT at /auth/token, refuses a call whose token it expired (401), and serves the few
endpoints the project calls by name. What is checked: the token is fetched and renewed, the calls by name and by
path reach the right endpoint with the right body, a refusal is an AirflowApiError naming the call.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from eds_network.orchestration.airflow_api import AirflowApi, AirflowApiError

DAG = {
    "dag_id": "eds_local__hosp_a", "dag_display_name": "eds_local__hosp_a", "is_paused": True, "is_stale": False,
    "fileloc": "/dags/x.py", "tags": [], "owners": ["eds"], "max_active_tasks": 16,
    "max_consecutive_failed_dag_runs": 0, "has_task_concurrency_limits": False, "has_import_errors": False,
    "bundle_name": "dags-folder", "file_token": "f", "is_backfillable": True, "timetable_partitioned": False,
    "timetable_periodic": True,
}  # fmt: skip


def _run(i: int) -> dict:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=i)
    return {
        "dag_run_id": f"night__{i}", "dag_id": DAG["dag_id"], "dag_display_name": DAG["dag_id"],
        "logical_date": start.isoformat(), "queued_at": None, "start_date": None, "end_date": None,
        "data_interval_start": start.isoformat(), "data_interval_end": (start + dt.timedelta(days=1)).isoformat(),
        "run_after": start.isoformat(), "last_scheduling_decision": None, "run_type": "manual", "state": "success",
        "triggered_by": "rest_api", "conf": {}, "note": None, "dag_versions": [], "bundle_version": None,
    }  # fmt: skip


class _Airflow(BaseHTTPRequestHandler):
    tokens: list[str]
    calls: list[tuple[str, str, dict | None]]
    runs = [_run(i) for i in range(150)]

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        url = urlparse(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        if url.path == "/auth/token":
            if body != {"username": "admin", "password": "pw"}:
                return self._answer(401, {"detail": "Invalid credentials"})
            self.tokens.append(f"t{len(self.tokens)}")
            return self._answer(201, {"access_token": self.tokens[-1]})
        if self.headers.get("Authorization") != f"Bearer {self.tokens[-1] if self.tokens else None}":
            return self._answer(401, {"detail": "Token expired"})
        self.calls.append((method, url.path, body))
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == f"/api/v2/dags/{DAG['dag_id']}" and method == "PATCH":
            assert q["update_mask"] == "is_paused"
            return self._answer(200, {**DAG, "is_paused": body["is_paused"]})
        if url.path == f"/api/v2/dags/{DAG['dag_id']}":
            return self._answer(200, DAG)
        if url.path == f"/api/v2/dags/{DAG['dag_id']}/dagRuns" and method == "GET":
            offset, limit = int(q.get("offset", 0)), int(q.get("limit", 100))
            page = self.runs[offset : offset + limit]
            return self._answer(200, {"dag_runs": page, "total_entries": len(self.runs)})
        if url.path == f"/api/v2/dags/{DAG['dag_id']}/dagRuns" and method == "POST":
            return self._answer(409, {"detail": "DAGRun with dag_run_id: 'x' already exists"})
        return self._answer(404, {"detail": "Not Found"})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")


@pytest.fixture
def server():
    _Airflow.tokens, _Airflow.calls = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Airflow)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_calls_by_name_reach_their_endpoints_with_one_token(server):
    api = AirflowApi(server, "admin", "pw", timeout=10)
    assert api.dag(DAG["dag_id"])["dag_id"] == DAG["dag_id"]
    assert api.set_paused(DAG["dag_id"], False)["is_paused"] is False
    assert _Airflow.calls[-1] == ("PATCH", f"/api/v2/dags/{DAG['dag_id']}", {"is_paused": False})
    runs = api.dag_runs(DAG["dag_id"], dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
    assert [r["dag_run_id"] for r in runs] == [f"night__{i}" for i in range(150)]  # both pages
    assert _Airflow.tokens == ["t0"]


def test_an_expired_token_is_renewed_once(server):
    api = AirflowApi(server, "admin", "pw", timeout=10)
    api.dag(DAG["dag_id"])
    _Airflow.tokens.append("t-server-side")  # the server no longer accepts t0
    assert api.call("GET", f"/api/v2/dags/{DAG['dag_id']}")["dag_id"] == DAG["dag_id"]
    assert len(_Airflow.tokens) == 3


def test_a_refusal_names_the_call_and_the_reason(server):
    api = AirflowApi(server, "admin", "pw", timeout=10)
    with pytest.raises(AirflowApiError, match=r"POST /api/v2/dags/eds_local__hosp_a/dagRuns: HTTP 409: .*exists"):
        api.call("POST", f"/api/v2/dags/{DAG['dag_id']}/dagRuns", {"dag_run_id": "x"})
    with pytest.raises(AirflowApiError, match=r"HTTP 404: Not Found"):
        api.set_paused("eds_missing", True)
    with pytest.raises(AirflowApiError, match=r"refused user 'admin'"):
        AirflowApi(server, "admin", "wrong", timeout=10).dag(DAG["dag_id"])
