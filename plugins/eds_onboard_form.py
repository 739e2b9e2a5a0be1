"""Cross-field validation of the `eds_onboard_base` Trigger form, in the Airflow API server.

Airflow validates each Param on its own (JSON Schema): it cannot say that the start date must be before the
end date, or that the end date must not be in the future. This root middleware refuses such a trigger of
`eds_onboard_base` with HTTP 400 and a message naming both dates, which the Trigger form shows; the DAG's
first task checks the same rules again (`eds_network.local.onboard.check_range`) for any other way in.
"""

from __future__ import annotations

import json

from airflow.plugins_manager import AirflowPlugin

DAG_ID = "eds_onboard_base"
PATH_SUFFIX = f"/dags/{DAG_ID}/dagRuns"


class OnboardFormGuard:
    """Pure ASGI middleware: reads the trigger request's body, refuses a bad date range, else replays it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].rstrip("/").endswith(PATH_SUFFIX):
            await self.app(scope, receive, send)
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        problem = _problem(body)
        if problem:
            payload = json.dumps({"detail": problem}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _problem(body: bytes) -> str | None:
    from eds_network.core.errors import ConfigError
    from eds_network.local.onboard import check_range

    try:
        conf = (json.loads(body or b"{}") or {}).get("conf") or {}
    except (ValueError, AttributeError):
        return None  # not JSON: Airflow answers it
    if not isinstance(conf, dict) or "start_date" not in conf or "end_date" not in conf:
        return None  # defaults apply; the DAG's first task checks them
    try:
        check_range(conf["start_date"], conf["end_date"])
    except ConfigError as exc:
        return f"Invalid date range: {exc}"
    return None


class EdsOnboardFormPlugin(AirflowPlugin):
    name = "eds_onboard_form"
    fastapi_root_middlewares = [
        {"middleware": OnboardFormGuard, "args": [], "kwargs": {}, "name": "eds_onboard_base date range"}
    ]
