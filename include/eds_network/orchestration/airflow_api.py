"""A small client of Airflow 3's public REST API (`/api/v2`), authenticated with a JWT from `/auth/token`."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eds_network.core.errors import EdsError

log = logging.getLogger(__name__)


class AirflowApiError(EdsError):
    """The Airflow REST API refused a call or could not be reached."""


@dataclass(frozen=True)
class AirflowApi:
    """A small client of Airflow 3's public REST API (`/api/v2`), authenticated with a JWT from `/auth/token`."""

    base_url: str
    username: str
    password: str = field(repr=False)
    timeout: float = 60.0
    attempts: int = 5

    def token(self) -> str:
        body = json.dumps({"username": self.username, "password": self.password}).encode()
        res = self._send("POST", "/auth/token", body, {"Content-Type": "application/json"})
        return res["access_token"]

    def _send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Any:
        url = self.base_url.rstrip("/") + path
        req = urllib.request.Request(url, data=body, method=method, headers={"Accept": "application/json", **headers})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 (configured API URL)
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:1000]
            try:
                detail = json.loads(detail).get("detail", detail)
            except (ValueError, AttributeError):
                pass
            raise AirflowApiError(f"Airflow API {method} {path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AirflowApiError(f"Airflow API {self.base_url} unreachable: {reason}") from None
        return json.loads(raw) if raw else None

    def call(self, method: str, path: str, payload: Any = None, query: Mapping[str, Any] | None = None) -> Any:
        if query:
            path += "?" + urllib.parse.urlencode(query, doseq=True)
        body = json.dumps(payload, default=str).encode() if payload is not None else None
        for attempt in range(1, self.attempts + 1):
            try:
                headers = {"Authorization": f"Bearer {self.token()}"}
                if body is not None:
                    headers["Content-Type"] = "application/json"
                return self._send(method, path, body, headers)
            except AirflowApiError as exc:
                # An API server busy or restarting: retry reads and the token; never retry a refused call.
                if "unreachable" not in str(exc) or attempt == self.attempts or method not in ("GET", "PATCH"):
                    raise
                log.warning("%s (attempt %d of %d), retrying", exc, attempt, self.attempts)
                time.sleep(5 * attempt)
        raise AssertionError("unreachable")

    # -- endpoints ---------------------------------------------------------------------------------
    def dag(self, dag_id: str) -> dict:
        return self.call("GET", f"/api/v2/dags/{dag_id}")

    def set_paused(self, dag_id: str, paused: bool) -> dict:
        return self.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused}, {"update_mask": "is_paused"})

    def backfill_dry_run(self, body: dict) -> list[dict]:
        return self.call("POST", "/api/v2/backfills/dry_run", body)["backfills"]

    def create_backfill(self, body: dict) -> dict:
        return self.call("POST", "/api/v2/backfills", body)

    def backfills(self, dag_id: str) -> list[dict]:
        return self.call("GET", "/api/v2/backfills", query={"dag_id": dag_id, "limit": 100})["backfills"]

    def backfill(self, backfill_id: int) -> dict:
        return self.call("GET", f"/api/v2/backfills/{backfill_id}")

    def dag_runs(self, dag_id: str, start: dt.datetime, end: dt.datetime) -> list[dict]:
        runs: list[dict] = []
        offset = 0
        while True:
            page = self.call(
                "GET",
                f"/api/v2/dags/{dag_id}/dagRuns",
                query={
                    "logical_date_gte": start.isoformat(),
                    "logical_date_lte": end.isoformat(),
                    "limit": 100,
                    "offset": offset,
                    "order_by": "logical_date",
                },
            )
            runs += page["dag_runs"]
            offset += len(page["dag_runs"])
            if not page["dag_runs"] or offset >= page["total_entries"]:
                return runs
