"""The operator page's research projects: `/projects` (HTML) and `/api/projects`, `/api/feasibility` (JSON).

From the catalogue only: each project with its permit, status timeline, lead time permit -> delivery, dataset
sizes and withdrawal notices; the latest feasibility answers as they were published (suppressed counts are null,
shown "suppressed"). Reading a project is audited like every other access to it.
"""

from __future__ import annotations

from collections.abc import Callable

from eds_network.catalogue import projects
from eds_network.ui.render import environment

ACTOR = "operator-page"


def projects_view(dsn: str, *, actor: str = ACTOR) -> dict:
    items = projects.list_projects(dsn, actor=actor)
    for p in items:
        p["lead_time_hours"] = None if p["lead_time_days"] is None else round(p["lead_time_days"] * 24, 2)
        p["live_datasets"] = [d for d in p["datasets"] if d["deleted_at"] is None]
    return {"projects": items, "feasibility": projects.feasibility_answers(dsn, limit=10)}


def render_projects(view: dict, *, static_prefix: str = "/eds/static", api_prefix: str = "/eds/api") -> str:
    return (
        environment()
        .get_template("projects.html")
        .render(view=view, static_prefix=static_prefix, api_prefix=api_prefix)
    )


def project_routes(app, deps: list, dsn: Callable[[], str], prefix: str) -> None:
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import HTMLResponse

    @app.get("/projects", response_class=HTMLResponse, dependencies=deps)
    def projects_page() -> HTMLResponse:
        v = projects_view(dsn())
        return HTMLResponse(render_projects(v, static_prefix=f"{prefix}/static", api_prefix=f"{prefix}/api"))

    @app.get("/api/projects", dependencies=deps)
    def api_projects() -> list[dict]:
        return jsonable_encoder(projects_view(dsn())["projects"])

    @app.get("/api/feasibility", dependencies=deps)
    def api_feasibility() -> list[dict]:
        return jsonable_encoder(projects.feasibility_answers(dsn(), limit=50))
