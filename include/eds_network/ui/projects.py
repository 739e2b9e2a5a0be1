"""The operator page's research projects: `/projects` (HTML) and `/api/projects`, `/api/feasibility` (JSON);
one project's view `/projects/<id>` (HTML) and `/api/projects/<id>` (JSON).

From the catalogue only: each project with its permit, status timeline, lead time permit -> delivery, dataset
sizes and withdrawal notices; the latest feasibility answers as they were published (suppressed counts are null,
shown "suppressed"). One project's view adds what the permit allows (bases, tables and columns, cohort, period),
every timeline event with its actor and details, and each dataset (pins, rows per table, persons, size, its
deletion and why). Reading a project is audited like every other access to it. `/projects` also holds the
feasibility form (`ui/feasibility_form.py`) and the questions asked with it, requested -> answered.
"""

# No `from __future__ import annotations`: FastAPI must see the route parameters' types (Request) as objects.

from collections.abc import Callable

from eds_network.catalogue import feasibility_requests, projects
from eds_network.ui.render import environment

ACTOR = "operator-page"


def projects_view(dsn: str, *, actor: str = ACTOR) -> dict:
    items = projects.list_projects(dsn, actor=actor)
    for p in items:
        p["lead_time_hours"] = None if p["lead_time_days"] is None else round(p["lead_time_days"] * 24, 2)
        p["live_datasets"] = [d for d in p["datasets"] if d["deleted_at"] is None]
    return {
        "projects": items,
        "feasibility": projects.feasibility_answers(dsn, limit=10),
        "requests": feasibility_requests.requests(dsn, limit=20),
    }


def feasibility_form(prefix: str, *, csrf_token: str = "", error=None, notice=None) -> dict:
    """What the feasibility form needs: where it posts, its anti-forgery token, the criterion tables, a message."""
    from eds_network.core.cohort import EVENT_COLUMNS

    return {
        "action": f"{prefix}/projects/feasibility",
        "csrf_token": csrf_token,
        "error": error,
        "notice": notice,
        "tables": sorted(EVENT_COLUMNS),
    }


def project_view(dsn: str, project_id: str, *, actor: str = ACTOR, today=None) -> dict:
    """One project as its page shows it (the read is audited); ProjectError when it is not in the catalogue."""
    import datetime as dt

    p = projects.get(dsn, project_id, actor=actor)
    today = today or dt.date.today()
    p["lead_time_hours"] = None if p["lead_time_days"] is None else round(p["lead_time_days"] * 24, 2)
    p["live_datasets"] = [d for d in p["datasets"] if d["deleted_at"] is None]
    expires = p["permit_expires_on"]
    p["days_to_expiry"] = None if expires is None or p["status"] in ("closed", "expired") else (expires - today).days
    cohort = p["cohort"]
    p["criteria"] = [
        {"table": c["table"], "concepts": len(c.get("concepts", ())), "descendants": c.get("descendants", True)}
        for c in cohort.get("criteria", [])
    ]
    p["filters"] = {k: cohort.get(k) for k in ("age_min", "age_max", "sex") if cohort.get(k) not in (None, [], ())}
    return p


def render_project(p: dict, *, static_prefix: str = "/eds/static", api_prefix: str = "/eds/api") -> str:
    return environment().get_template("project.html").render(p=p, static_prefix=static_prefix, api_prefix=api_prefix)


def render_projects(
    view: dict, *, static_prefix: str = "/eds/static", api_prefix: str = "/eds/api", form: dict | None = None
) -> str:
    return (
        environment()
        .get_template("projects.html")
        .render(view=view, static_prefix=static_prefix, api_prefix=api_prefix, form=form)
    )


def project_routes(app, deps: list, dsn: Callable[[], str], prefix: str, recorder=None, trigger=None) -> None:
    """The project pages and their JSON; the feasibility form (`recorder` names who asks, `trigger` starts the
    DAG run of a question)."""
    from fastapi import Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import HTMLResponse

    from eds_network.ui.feasibility_form import feasibility_routes
    from eds_network.ui.forms import SESSION_COOKIE, csrf_token

    def page(request: Request, status: int = 200, error=None, notice=None) -> HTMLResponse:
        form = feasibility_form(prefix, csrf_token=csrf_token(request.cookies.get(SESSION_COOKIE)), error=error)
        form["notice"] = notice
        v = projects_view(dsn())
        html = render_projects(v, static_prefix=f"{prefix}/static", api_prefix=f"{prefix}/api", form=form)
        return HTMLResponse(html, status_code=status)

    @app.get("/projects", response_class=HTMLResponse, dependencies=deps)
    def projects_page(request: Request, asked: int | None = None) -> HTMLResponse:
        notice = None if asked is None else f"Question {asked} recorded: its answer appears below once the DAG ran."
        return page(request, notice=notice)

    feasibility_routes(app, deps, dsn, prefix, recorder, trigger, page)

    @app.get("/api/projects", dependencies=deps)
    def api_projects() -> list[dict]:
        return jsonable_encoder(projects_view(dsn())["projects"])

    def one(project_id: str) -> dict:
        from fastapi import HTTPException

        if not projects.PROJECT_ID.match(project_id):
            raise HTTPException(status_code=404, detail="catalogue.project: not a project id")
        try:
            return project_view(dsn(), project_id)
        except projects.ProjectError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None

    @app.get("/projects/{project_id}", response_class=HTMLResponse, dependencies=deps)
    def project_page(project_id: str) -> HTMLResponse:
        p = one(project_id)
        return HTMLResponse(render_project(p, static_prefix=f"{prefix}/static", api_prefix=f"{prefix}/api"))

    @app.get("/api/projects/{project_id}", dependencies=deps)
    def api_project(project_id: str) -> dict:
        return jsonable_encoder(one(project_id))

    @app.get("/api/feasibility", dependencies=deps)
    def api_feasibility() -> list[dict]:
        return jsonable_encoder(projects.feasibility_answers(dsn(), limit=50))
