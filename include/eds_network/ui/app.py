"""The FastAPI app of the operator page: `/` (the page), `/api/...` (JSON), `/static/...`, `/data-docs/...`."""

# No `from __future__ import annotations`: FastAPI must see the route parameters' types (Request) as objects.

import datetime as dt
import hmac
import mimetypes
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

from eds_network.catalogue import milestone_records
from eds_network.core.config import Network
from eds_network.ui.forms import (  # noqa: F401 (csrf_token is the app's, for its callers)
    FORM_MAX_BYTES,
    SESSION_COOKIE,
    _same_origin,
    csrf_token,
)
from eds_network.ui.render import STATIC, milestone_form, render_html
from eds_network.ui.view import MILESTONE_LABELS, data_docs_file, network_view, recent_audit


def create_app(
    dsn: Callable[[], str],
    network: Callable[[], Network],
    *,
    auth: Callable | None = None,
    login_url: Callable[[str], str] | None = None,
    data_docs_dir: Path | None = None,
    prefix: str = "/eds",
    recorder: Callable | None = None,
    asker: Callable | None = None,
    trigger: Callable[[dict], str | None] | None = None,
):
    """The FastAPI app mounted at `prefix`: `/` (the page), `/api/...` (JSON), `/static/<file>`, `/data-docs/<base>/`,
    `POST /milestones` (the milestone form).

    `auth` is a FastAPI dependency applied to every route (the plugin passes Airflow's); an unauthenticated
    browser asking for the page is redirected to `login_url(next)`. `recorder` is a dependency returning the
    name of the user recording a milestone (and refusing one who may not); without it nobody may record. `asker`
    does the same for the feasibility form (default: `recorder`), `trigger(conf)` starts the feasibility DAG run of
    a question asked with it and returns its run id (without it the question waits for a run by hand)."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

    def _nobody() -> str:
        raise HTTPException(status_code=403, detail="recording (milestones, questions) is not enabled on this server")

    deps = [Depends(auth)] if auth is not None else []
    app = FastAPI(title="EDS network", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")

    @app.exception_handler(HTTPException)
    async def _unauthenticated(request: Request, exc: HTTPException):
        wants_html = "text/html" in request.headers.get("accept", "") and "/api/" not in request.url.path
        if exc.status_code in (401, 403) and wants_html and request.method == "GET" and login_url is not None:
            return RedirectResponse(login_url(f"{prefix}/"), status_code=303)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    def view(today: dt.date | None = None) -> dict:
        return network_view(dsn(), network(), today=today, data_docs_dir=data_docs_dir, prefix=prefix)

    def base_or_404(base_id: str, v: dict) -> dict:
        for b in v["bases"]:
            if b["id"] == base_id:
                return b
        raise HTTPException(status_code=404, detail=f"catalogue.base: no base {base_id!r}")

    def page_with(request: Request, v: dict, status: int = 200, **form) -> HTMLResponse:
        token = csrf_token(request.cookies.get(SESSION_COOKIE))
        html = render_html(v, api_prefix=f"{prefix}/api", form=milestone_form(prefix, csrf_token=token, **form))
        return HTMLResponse(html, status_code=status)

    @app.get("/", response_class=HTMLResponse, dependencies=deps)
    def page(request: Request, recorded: str | None = None) -> HTMLResponse:
        v = view()
        return page_with(request, v, notice=_recorded_notice(v, recorded))

    _milestone_route(app, deps, dsn, view, page_with, prefix, recorder or _nobody)
    _file_routes(app, deps, data_docs_dir)
    _network_routes(app, deps, dsn, view, base_or_404)
    _catalogue_routes(app, deps, dsn, view, base_or_404)
    from eds_network.ui.projects import project_routes

    project_routes(app, deps, dsn, prefix, asker or recorder or _nobody, trigger)
    return app


def _milestone_route(app, deps: list, dsn: Callable[[], str], view, page_with, prefix: str, recorder) -> None:
    """`POST /milestones`: the milestone form (`recorder` names the user, or refuses one who may not)."""
    from fastapi import Depends, HTTPException, Request
    from fastapi.responses import JSONResponse, RedirectResponse

    @app.post("/milestones", dependencies=deps)
    async def record_milestone(request: Request, who: str = Depends(recorder)):
        """The milestone form: same origin, anti-forgery token bound to the session, validated, audited."""
        body = await request.body()
        wants_json = "application/json" in request.headers.get("accept", "")
        if len(body) > FORM_MAX_BYTES:
            raise HTTPException(status_code=413, detail=f"form larger than {FORM_MAX_BYTES} bytes")
        fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        values = {k: fields.get(k, "").strip() for k in ("base", "milestone", "date")}
        bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
        expected = csrf_token(request.cookies.get(SESSION_COOKIE))
        forged = not _same_origin(request) or (
            not bearer and not (expected and hmac.compare_digest(expected, fields.get("csrf_token", "")))
        )
        error, status = None, 400
        if forged:
            error, status = "The form's anti-forgery check failed: reload the page and submit again.", 403
        else:
            try:
                out = milestone_records.record(
                    dsn(),
                    values["base"],
                    values["milestone"],
                    milestone_records.parse_date(values["date"], base=values["base"] or None),
                    evidence=fields.get("evidence"),
                    recorded_by=who,
                )
            except milestone_records.MilestoneError as exc:
                error = str(exc)
        if error is not None:
            if wants_json:
                return JSONResponse({"detail": error}, status_code=status)
            return page_with(request, view(), status, error=error, values=values)  # evidence never echoed back
        if wants_json:
            return JSONResponse(out)
        return RedirectResponse(f"{prefix}/?recorded={out['base']}.{out['milestone']}#milestone-form", 303)


def _file_routes(app, deps: list, data_docs_dir: Path | None) -> None:
    """The page's static files, and the GX Data Docs it links to."""
    from fastapi import HTTPException
    from fastapi.responses import FileResponse

    @app.get("/static/{name}", dependencies=deps)
    def static(name: str) -> FileResponse:
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise HTTPException(status_code=404, detail="no such file")
        media = {".css": "text/css", ".svg": "image/svg+xml"}.get(path.suffix, "application/octet-stream")
        return FileResponse(path, media_type=media)

    @app.get("/data-docs/{rel:path}", dependencies=deps)
    def data_docs(rel: str) -> FileResponse:
        """GX Data Docs as GX builds them: any file under the one configured root, so every relative link of
        a site (validation pages, static assets) works; nothing outside the root."""
        path = data_docs_file(data_docs_dir, rel)
        if path is None:
            raise HTTPException(status_code=404, detail="no such Data Docs file")
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media)


def _network_routes(app, deps: list, dsn: Callable[[], str], view, base_or_404) -> None:
    """The page's data as JSON: network, bases, deliveries, lead times, the audit trail."""

    @app.get("/api/network", dependencies=deps)
    def api_network() -> dict:
        return view()

    @app.get("/api/bases", dependencies=deps)
    def api_bases() -> list[dict]:
        return view()["bases"]

    @app.get("/api/bases/{base_id}", dependencies=deps)
    def api_base(base_id: str) -> dict:
        return base_or_404(base_id, view())

    @app.get("/api/deliveries", dependencies=deps)
    def api_deliveries() -> list[dict]:
        return view()["deliveries"]

    @app.get("/api/lead-times", dependencies=deps)
    def api_lead_times() -> dict:
        v = view()
        return {
            "distribution": v["lead_time"],
            "bases": [{"id": b["id"], "reference": b["reference"], **(b["lead_time"] or {})} for b in v["bases"]],
        }

    @app.get("/api/audit", dependencies=deps)
    def api_audit(limit: int = 50) -> list[dict]:
        return recent_audit(dsn(), limit)


def _recorded_notice(v: dict, recorded: str | None) -> str | None:
    """The confirmation after the form's redirect, read back from the catalogue (nothing of the URL is echoed)."""
    base_id, _, milestone = (recorded or "").partition(".")
    for b in v["bases"]:
        if b["id"] != base_id:
            continue
        for m in b["milestones"]:
            if m["milestone"] == milestone and m["reached"]:
                return (
                    f"Recorded: {MILESTONE_LABELS[milestone]} of {b['id']} reached on {m['date']}, "
                    f"by {m['recorded_by']}; evidence: {m['evidence'] or '-'}"
                )
    return None


def _catalogue_routes(app, deps: list, dsn: Callable[[], str], view: Callable[[], dict], base_or_404) -> None:
    """The catalogue's published documents: HealthDCAT-AP, small-cell statistics, the EHDS quality label."""
    from fastapi import HTTPException
    from fastapi.responses import JSONResponse

    @app.get("/api/bases/{base_id}/healthdcat", dependencies=deps)
    def api_healthdcat(base_id: str) -> JSONResponse:
        from eds_network.catalogue import healthdcat

        try:
            doc = healthdcat.dataset_jsonld(dsn(), base_id)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"catalogue.base: no base {base_id!r}") from None
        return JSONResponse(doc, media_type="application/ld+json")

    @app.get("/api/bases/{base_id}/statistics", dependencies=deps)
    def api_base_statistics(base_id: str) -> dict:
        """Small-cell protected statistics of one base (suppressed values are null)."""
        b = base_or_404(base_id, view())
        if b["statistics"] is None:
            raise HTTPException(status_code=404, detail=f"catalogue.base_statistics: none yet for {base_id!r}")
        return b["statistics"]

    @app.get("/api/bases/{base_id}/quality-label", dependencies=deps)
    def api_quality_label(base_id: str) -> dict:
        """The EHDS data quality and utility label of a base (pass rates, timeliness, coverage)."""
        from eds_network.catalogue import quality_label

        try:
            lab = quality_label.label(dsn(), base_id)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"catalogue.base: no base {base_id!r}") from None
        if lab is None:
            raise HTTPException(status_code=404, detail=f"catalogue.run: no local run of {base_id!r} yet")
        return lab

    @app.get("/api/catalog/healthdcat", dependencies=deps)
    def api_catalog_healthdcat() -> JSONResponse:
        from eds_network.catalogue import healthdcat

        return JSONResponse(healthdcat.catalog_jsonld(dsn()), media_type="application/ld+json")
