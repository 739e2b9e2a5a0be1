"""The operator page's feasibility form: `POST /projects/feasibility` asks a question from `/projects`.

The form's fields are the cohort model's (`core.cohort.from_fields`: one criterion, a period, age and sex filters)
and k. A valid question is recorded as *requested* in the catalogue (who and when, audited) and handed to
`trigger` (the plugin's: Airflow's REST API, `eds_project_feasibility` with the request id); the DAG records the
protected answer and the request becomes *answered* on the page. A refused field is named, its value never echoed.
Without `trigger` (or when Airflow refuses the run) the request stays *requested* and the page says how to run it.
"""

# No `from __future__ import annotations`: FastAPI must see the route parameters' types (Request) as objects.

import hmac
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from eds_network.catalogue import feasibility_requests
from eds_network.core.cohort import CohortError, from_fields
from eds_network.core.errors import EdsError

DAG_ID = "eds_project_feasibility"
FIELDS = ("name", "table", "concepts", "descendants", "start", "end", "age_min", "age_max", "k")
DEFAULT_K = 11


def parse_form(body: bytes) -> tuple[dict[str, Any], int]:
    """The cohort document and k of a submitted form; CohortError naming the field that is wrong."""
    raw = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    one = {k: v[0].strip() for k, v in raw.items()}
    fields: dict[str, Any] = {k: one.get(k, "") for k in FIELDS}
    fields["descendants"] = one.get("descendants", "") in ("on", "true", "1")
    fields["sex"] = [s for s in raw.get("sex", []) if s]
    for f in ("age_min", "age_max"):
        fields[f] = fields[f] or None
    try:
        k = int(fields.pop("k") or DEFAULT_K)
    except ValueError:
        raise CohortError("feasibility cohort: invalid field(s) k") from None
    if k < 2:
        raise CohortError("feasibility cohort: invalid field(s) k")
    cohort = from_fields(fields)
    return json.loads(cohort.model_dump_json()), k


def feasibility_routes(app, deps: list, dsn: Callable[[], str], prefix: str, recorder, trigger, page) -> None:
    """`POST /projects/feasibility`. `recorder` names the user (or refuses one who may not ask), `trigger(conf)`
    returns the DAG run id (None: nothing triggers runs here), `page(status, error, notice)` renders /projects."""
    from fastapi import Depends, HTTPException, Request
    from fastapi.responses import JSONResponse, RedirectResponse
    from starlette.concurrency import run_in_threadpool

    from eds_network.ui.forms import FORM_MAX_BYTES, SESSION_COOKIE, _same_origin, csrf_token

    @app.post("/projects/feasibility", dependencies=deps)
    async def ask_feasibility(request: Request, who: str = Depends(recorder)):
        body = await request.body()
        wants_json = "application/json" in request.headers.get("accept", "")
        if len(body) > FORM_MAX_BYTES:
            raise HTTPException(status_code=413, detail=f"form larger than {FORM_MAX_BYTES} bytes")
        token = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}.get("csrf_token", "")
        bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
        expected = csrf_token(request.cookies.get(SESSION_COOKIE))
        if not _same_origin(request) or (not bearer and not (expected and hmac.compare_digest(expected, token))):
            error, status = "The form's anti-forgery check failed: reload the page and submit again.", 403
        else:
            try:
                cohort, k = parse_form(body)
                error = None
            except CohortError as exc:
                error, status = str(exc), 400
        if error is not None:
            if wants_json:
                return JSONResponse({"detail": error}, status_code=status)
            return page(request, status, error=error)
        # blocking calls off the event loop: the trigger goes through the REST API of this very server
        rid = await run_in_threadpool(feasibility_requests.request, dsn(), cohort, k, actor=who)
        run_id, detail = None, None
        if trigger is not None:
            try:
                run_id = await run_in_threadpool(
                    trigger, {"request_id": rid, "cohort_json": json.dumps(cohort), "k": k}
                )
            except EdsError as exc:
                detail = str(exc)
            except Exception as exc:  # Airflow refused or is unreachable: the request stays requested
                detail = f"{type(exc).__name__}: the run could not be triggered"
        await run_in_threadpool(feasibility_requests.set_triggered, dsn(), rid, run_id=run_id, detail=detail)
        if wants_json:
            return JSONResponse({"request_id": rid, "run_id": run_id, "status": "requested"})
        return RedirectResponse(f"{prefix}/projects?asked={rid}#feasibility-form", 303)
