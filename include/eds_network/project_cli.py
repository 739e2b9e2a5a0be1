"""`eds project …` — research projects on the embedded stack (the `eds` command line's project part).

eds project feasibility --cohort FILE [--k 11] [--json]   patients matching a cohort per base, per platform and
                                network-wide (national pseudonym), small cells suppressed (primary + secondary)
eds project create ID --cohort FILE --bases B,.. --tables T:c1,c2 [--tables …] --title … --purpose … --requester …
                                record a request (its concept sets resolved with their descendants now)
eds project grant ID --permit REF --issuer WHO --expires YYYY-MM-DD   record the data permit
eds project list | show ID [--json]   projects with their timeline, lead time permit -> delivery, dataset sizes
eds project extract ID [--pins JSON] [--airflow]   the project dataset from the national tables (current snapshots
                                unless pinned) into projects/<ID>/ (--airflow: through the eds_project_extract DAG)
eds project expire [--today D]  delete the datasets of expired permits (nothing left under their area), record it
eds project close ID [--reason TEXT]   close a project: its datasets deleted (nothing left under its area), the
                                closure and the deletion on its timeline
eds project withdrawals         notices for patients of delivered datasets who left the national tables (objection)
eds project area ID             a read-only S3 login for the project's area (embedded stack: one moto IAM user)
"""

from __future__ import annotations

import argparse
import json


def _stack():
    from eds_network.dev.stack import Stack

    return Stack.default()


def _resources(stack, network):
    from eds_network.core.storage import S3Endpoint
    from eds_network.national.tables import NationalTables

    warehouses = {p.id: stack.dsn(f"wh_{p.id}") for p in network.platforms}
    national = NationalTables(stack.dsn("hdh"), S3Endpoint(stack.s3_endpoint, *stack.s3_login))
    return warehouses, national


def show(v: int | None, k: int) -> str:
    return "suppressed" if v is None else str(v)


def format_feasibility(answer: dict) -> str:
    k = answer["k"]
    lines = [f"feasibility of cohort {answer['cohort']!r} (k = {k}; 'suppressed': under {k}, or hidden so that no"]
    lines.append("suppressed count follows from the published ones)")
    for p, n in answer["platforms"].items():
        lines.append(f"  platform {p}: {show(n, k)}")
        for b, m in answer["bases"].get(p, {}).items():
            lines.append(f"    base {b}: {show(m, k)}")
    lines.append(f"  network (each patient once, national pseudonym): {show(answer['network'], k)}")
    return "\n".join(lines)


def cmd_feasibility(args) -> int:
    from eds_network.core.cohort import load_cohort
    from eds_network.core.config import load_network
    from eds_network.orchestration import project_tasks

    network = load_network()
    cohort = load_cohort(args.cohort)
    stack = _stack()
    warehouses, national = _resources(stack, network)
    answer = project_tasks.feasibility(network, warehouses, national, cohort, k=args.k)
    from eds_network.catalogue import projects

    projects.record_feasibility(stack.dsn("catalogue"), cohort.model_dump(mode="json"), answer, actor=_actor())
    if args.json:
        print(json.dumps(answer, indent=1, sort_keys=True))
    else:
        print(format_feasibility(answer))
    return 0


def _project_resources(stack, network):
    import base64

    from eds_network.core.crypto import Key
    from eds_network.core.zones import NATIONAL
    from eds_network.orchestration import project_tasks
    from eds_network.orchestration.zone_connections import signing_connection_id

    _, national = _resources(stack, network)
    keys = stack.keys(network)
    nk = keys[network.national.key_connection_id]
    return project_tasks.ProjectResources(
        catalogue_dsn=stack.dsn("catalogue"),
        national=national,
        area=national.landing,
        national_key=Key.from_secret(network.national.key_connection_id, nk["password"], nk["extra"]["version"]),
        signing_key=base64.b64decode(keys[signing_connection_id(NATIONAL)]["password"]),
    )


def _actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


def _tables_arg(values: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for v in values:
        table, _, cols = v.partition(":")
        out[table.strip()] = [c.strip() for c in cols.split(",") if c.strip()]
    return out


def format_project(p: dict) -> str:
    lead = "-" if p["lead_time_days"] is None else f"{p['lead_time_days'] * 24:.2f} h"
    lines = [
        f"{p['id']}  {p['status']}  permit {p['permit_reference'] or '-'} ({p['permit_issuer'] or '-'}), expires "
        f"{p['permit_expires_on'] or '-'}; lead time permit -> delivery {lead}; dataset {p['dataset_bytes']:,d} bytes;"
        f" {p['withdrawal_notices']} withdrawal notices",
        f"  {p['title']}: {p['purpose']} (requested by {p['requester']})",
        f"  bases {', '.join(p['bases'])}; tables " + "; ".join(f"{t}({', '.join(c)})" for t, c in p["tables"].items()),
    ]
    for e in p["timeline"]:
        lines.append(f"    {e['at']:%Y-%m-%d %H:%M:%S}  {e['status']:<15} {e['actor']}")
    for d in p["datasets"]:
        state = f"deleted {d['deleted_at']:%Y-%m-%d %H:%M}" if d["deleted_at"] else "live"
        lines.append(f"    dataset {d['extract_id']}: {d['persons']} persons, {d['bytes']:,d} bytes, {state}")
    return "\n".join(lines)


def _cmd_extract(args, network, stack, dsn: str, actor) -> int:
    """`eds project extract`: in process, or through the DAG (`--airflow`, `airflow dags test`)."""
    from eds_network.catalogue import projects
    from eds_network.orchestration import project_tasks

    pins = {t: int(s) for t, s in json.loads(args.pins).items()} if args.pins else None
    if args.airflow:
        conf = {"project_id": args.id, "pins": json.dumps(pins) if pins else ""}
        res = stack.airflow("dags", "test", "eds_project_extract", "-c", json.dumps(conf), check=False, capture=True)
        ok = res.returncode == 0 and "state=failed" not in res.stdout + res.stderr
        print(f"eds_project_extract {'ok' if ok else 'FAILED'}")
        if not ok:
            print((res.stdout + res.stderr)[-4000:])
            return 1
        print(format_project(projects.get(dsn, args.id, actor=actor)))
        return 0
    out = project_tasks.extract_project(network, _project_resources(stack, network), args.id, actor=actor, pins=pins)
    print(json.dumps(out, indent=1, sort_keys=True))
    return 0


def cmd_project(args) -> int:
    import datetime as dt

    from eds_network.catalogue import projects
    from eds_network.core.cohort import load_cohort
    from eds_network.core.config import load_network
    from eds_network.orchestration import project_tasks

    network = load_network()
    stack = _stack()
    dsn = stack.dsn("catalogue")
    actor = _actor()
    if args.project_cmd == "create":
        warehouses, _ = _resources(stack, network)
        p = project_tasks.create_project(
            network,
            dsn,
            warehouses,
            args.id,
            cohort=load_cohort(args.cohort),
            tables=_tables_arg(args.tables),
            bases=[b.strip() for b in args.bases.split(",") if b.strip()],
            title=args.title,
            purpose=args.purpose,
            requester=args.requester,
            actor=actor,
        )
        print(format_project(p))
    elif args.project_cmd == "grant":
        projects.grant(
            dsn,
            args.id,
            permit_reference=args.permit,
            issuer=args.issuer,
            expires_on=dt.date.fromisoformat(args.expires),
            actor=actor,
        )
        print(format_project(projects.get(dsn, args.id, actor=actor)))
    elif args.project_cmd in ("list", "show"):
        items = (
            projects.list_projects(dsn, actor=actor)
            if args.project_cmd == "list"
            else [projects.get(dsn, args.id, actor=actor)]
        )
        if args.json:
            print(json.dumps(items, indent=1, default=str))
        else:
            print("\n".join(format_project(p) for p in items) or "no project")
    elif args.project_cmd == "extract":
        return _cmd_extract(args, network, stack, dsn, actor)
    elif args.project_cmd == "expire":
        today = dt.date.fromisoformat(args.today) if args.today else None
        done = project_tasks.expire_due(network, _project_resources(stack, network), actor=actor, today=today)
        print(json.dumps(done, indent=1) if done else "no permit expired")
    elif args.project_cmd == "close":
        done = project_tasks.close_project(
            network, _project_resources(stack, network), args.id, actor=actor, reason=args.reason or "project closed"
        )
        print(json.dumps(done, indent=1))
        print(format_project(projects.get(dsn, args.id, actor=actor)))
    elif args.project_cmd == "withdrawals":
        print(json.dumps(project_tasks.withdrawal_notices(network, _project_resources(stack, network), actor=actor)))
    elif args.project_cmd == "area":
        from eds_network.dev.project_access import project_area_login

        login = project_area_login(stack, network, args.id)
        print(
            json.dumps({"endpoint_url": stack.s3_endpoint, "access_key": login.login, "prefix": f"projects/{args.id}/"})
        )
    return 0


ACTIONS = ("feasibility", "create", "grant", "list", "show", "extract", "expire", "close", "withdrawals", "area")
# action -> the options it requires
REQUIRED = {
    "feasibility": ("cohort",),
    "create": ("id", "cohort", "bases", "tables", "title", "purpose", "requester"),
    "grant": ("id", "permit", "issuer", "expires"),
    "show": ("id",),
    "extract": ("id",),
    "close": ("id",),
    "area": ("id",),
}


def cmd(args) -> int:
    missing = [o for o in REQUIRED.get(args.project_cmd, ()) if not getattr(args, o)]
    if missing:
        print(
            f"error: eds project {args.project_cmd} needs " + ", ".join(o if o == "id" else f"--{o}" for o in missing)
        )
        return 2
    return cmd_feasibility(args) if args.project_cmd == "feasibility" else cmd_project(args)


def add_parser(sub) -> None:
    pr = sub.add_parser(
        "project",
        help="research projects: feasibility, permits, project datasets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pr.add_argument("project_cmd", choices=ACTIONS, metavar="action", help=", ".join(ACTIONS))
    pr.add_argument("id", nargs="?", help="the project id (create, grant, show, extract, close, area)")
    pr.add_argument("--cohort", help="feasibility, create: cohort file (JSON or YAML, see eds_network.core.cohort)")
    pr.add_argument("--k", type=int, default=11, help="feasibility: small-cell threshold (default 11)")
    pr.add_argument("--json", action="store_true", help="feasibility, list, show: machine-readable output")
    pr.add_argument("--bases", help="create: comma-separated base ids")
    pr.add_argument("--tables", action="append", help="create: TABLE:col1,col2 (repeatable): the columns allowed")
    pr.add_argument("--title", help="create: the project's title")
    pr.add_argument("--purpose", help="create: the purpose the permit is for")
    pr.add_argument("--requester", help="create: who asks (no contact detail)")
    pr.add_argument("--permit", help="grant: the permit reference")
    pr.add_argument("--issuer", help="grant: the health data access body that issued it")
    pr.add_argument("--expires", help="grant: expiry date (YYYY-MM-DD)")
    pr.add_argument("--pins", help="extract: JSON {table: snapshot id} (default: the current snapshots)")
    pr.add_argument("--airflow", action="store_true", help="extract: run the eds_project_extract DAG through Airflow")
    pr.add_argument("--reason", help="close: why the project is closed (kept on its timeline)")
    pr.add_argument("--today", help="expire: the date to judge expiry by (default today)")
    pr.set_defaults(fn=cmd)
