"""`eds` — the operator's command line for the embedded stack and the demo.

eds stack start|stop|status     the embedded PostgreSQL + S3 endpoint (+ Airflow metadata DB migration)
eds seed [--connections FILE]   (re)create the demo hospital sources (Synthea27Nj + generated hospitals), on the
                                embedded stack or on the databases an Airflow connections file names
eds night [--date D]            run one whole network night through Airflow (`airflow dags test`, flow order)
eds summary                     per base and level: rows, files delivered with SHA-256, catalogue stage
eds demo                        stack start + seed + night + summary
eds airflow ARGS…               any Airflow CLI command against the embedded stack
eds check-config [FILE]         validate a network file
eds catalogue upgrade|current|history|revision -m MSG   the catalogue's Alembic migrations
eds catalogue dcat --out DIR [--validate]   one HealthDCAT-AP JSON-LD per base + catalog.jsonld (SHACL check)
eds keys list                   the pseudonymisation key connections and their versions (never the keys)
eds keys rotate --platform ID   new version of a platform's level-1 key (or --national): the next night re-keys
eds leak-scan [--json]          look for the hospitals' identifiers in every output (exit 1 on any hit)
eds quality export --base X     the DQD results JSON of a base's latest local run (or --platform P: mutualised)
eds national tables [--snapshot ID] [--json]   the HDH's Iceberg tables: rows per platform, snapshots (a
                                snapshot id pins what a project saw: --snapshot gives that table's rows then)
eds milestone set BASE MILESTONE [--date D] [--evidence TEXT] [--by WHO]   record (or correct) an onboarding
                                milestone, audited; `correct` refuses one not yet recorded, `unset --reason` withdraws
eds milestone list [BASE]       every base's milestones (date, evidence, who, when) and the deliveries they hold back
eds docs-check [ROOT]           every eds command, make target, path and connection id README.md and docs/ name exists
eds project feasibility|…      research projects (see `eds project -h`, eds_network.project_cli)
eds quality changes --base X [--threshold CHECK=PCT]   checks newly failing / resolved / still failing since the
                                previous night (thresholds re-applied to the stored results, nothing re-run)
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import subprocess
import sys
import time

from eds_network.core.config import load_network
from eds_network.core.errors import EdsError
from eds_network.dev.demo import (  # noqa: F401 (also read as `cli.<name>` by the tests)
    DEMO_NIGHT_END,
    demo_interval,
    run_cluster_night,
    run_night,
    seed_dsns,
    seed_network,
    summary,
    summary_counts,
)

log = logging.getLogger("eds")


def _stack():
    from eds_network.dev.stack import Stack

    return Stack.default()


def cmd_stack(args) -> int:
    s = _stack()
    if args.action == "start":
        s.start(load_network())
        print(f"embedded stack up: PostgreSQL 127.0.0.1:{s.pg_port}, S3 {s.s3_endpoint}, state in {s.root}")
    elif args.action == "stop":
        from eds_network.dev.cluster import Cluster

        Cluster(s).stop()  # the Airflow processes and zone workers first, then the stores they use
        s.stop()
        print(
            "embedded stack stopped: Airflow, S3 endpoint, PostgreSQL (S3 objects were in memory and are gone; "
            "PostgreSQL data stays in .eds/)"
        )
    else:
        for k, v in s.status().items():
            print(f"{k:10s} {'up' if v else 'down'}")
    return 0


def cmd_seed(args) -> int:
    network = load_network()
    night = demo_interval(dt.datetime.fromisoformat(args.night_end)) if args.night_end else demo_interval()
    counts = seed_network(network, night, seed_dsns(network, args.connections))
    for base, tables in counts.items():
        print(f"{base}: " + ", ".join(f"{t}={n}" for t, n in tables.items()))
    return 0


def cmd_night(args) -> int:
    network = load_network()
    if args.cluster:
        from eds_network.dev.cluster import latest_night

        night = demo_interval(dt.datetime.fromisoformat(args.date)) if args.date else latest_night(network)
        states = run_cluster_night(network, night)
        return 0 if set(states.values()) == {"success"} else 1
    end = dt.datetime.fromisoformat(args.date) if args.date else DEMO_NIGHT_END
    results = run_night(network, end)
    return 0 if all(ok for _, ok, _ in results) else 1


def cmd_summary(args) -> int:
    print(summary(load_network()))
    return 0


def cmd_demo(args) -> int:
    network = load_network()
    t0 = time.monotonic()
    print("1/4 starting the embedded stack (PostgreSQL, S3 endpoint, Airflow metadata DB)…", flush=True)
    _stack().start(network)
    if args.cluster:  # the night the scheduler would run now (the latest complete one), on the zones' workers
        from eds_network.dev.cluster import latest_night

        night = latest_night(network)
    else:
        night = demo_interval()
    print("2/4 seeding the hospital sources…", flush=True)
    for base, tables in seed_network(network, night).items():
        print(f"  {base}: {sum(tables.values()):,d} rows in {len(tables)} tables", flush=True)
    how = "the scheduler, one Edge worker per zone" if args.cluster else "Airflow (`airflow dags test`)"
    print(
        f"3/4 running the network night {night[0]:%Y-%m-%d %H:%M} → {night[1]:%Y-%m-%d %H:%M} (Europe/Paris) "
        f"through {how}…",
        flush=True,
    )
    if args.cluster:
        states = run_cluster_night(network, night)
        results = [(dag_id, state == "success", 0.0) for dag_id, state in states.items()]
    else:
        results = run_night(network)
    print("4/4 summary", flush=True)
    print(summary(network))
    print(
        f"\nwhole demo in {time.monotonic() - t0:.0f}s. Operator UI: `make airflow` (http://localhost:8080; page EDS network at /eds/). "
        "Stop everything: `make stop`."
    )
    return 0 if all(ok for _, ok, _ in results) else 1


def cmd_cluster(args) -> int:
    """The embedded cluster: central Airflow (Edge executor, no data connection) + one Edge worker per zone."""
    from eds_network.dev.cluster import Cluster

    network = load_network()
    s = _stack()
    c = Cluster(s, network)
    if args.action == "start":
        s.start(network)
        c.start()
        c.wait_workers()
    elif args.action == "stop":
        c.stop()
        print("cluster stopped (Airflow api-server, scheduler, dag-processor, every zone's Edge worker)")
        return 0
    for w in c.workers():
        print(f"  {w['worker']:24s} {w['state']:12s} queues={w['queues']}  last heartbeat {w['last_heartbeat']}")
    return 0


def cmd_airflow(args) -> int:
    s = _stack()
    return s.airflow(*args.rest, check=False).returncode


def cmd_check_config(args) -> int:
    n = load_network(args.file)
    print(f"ok: {len(n.platforms)} platforms, {len(n.local_bases)} local bases")
    return 0


def _catalogue_dcat(args, dsn: str) -> int:
    """Write the HealthDCAT-AP documents; with --validate, check each against the official shapes."""
    from pathlib import Path

    from eds_network.catalogue import healthdcat, shacl

    if not args.out:
        raise EdsError("eds catalogue dcat needs --out DIR")
    paths = healthdcat.write_documents(dsn, Path(args.out))
    failed = 0
    for path in paths.values():
        line = f"{path}"
        if args.validate:
            report = shacl.validate(path.read_text(encoding="utf-8"))
            failed += not report.conforms
            line += f": {report.summary()}"
        print(line)
    if args.validate:
        print(f"{len(paths) - failed} of {len(paths)} documents conform (HealthDCAT-AP R8 NON_PUBLIC + DCAT-AP 3.0.1)")
    return 1 if failed else 0


def cmd_catalogue(args) -> int:
    from alembic import command

    from eds_network import catalogue

    if args.action == "history":
        command.history(catalogue.alembic_config(), verbose=False)
        return 0
    if args.action == "revision":
        if not args.message:
            raise EdsError("eds catalogue revision needs -m MESSAGE")
        head = catalogue.head_revision() or "0000"
        number = int(head.split("_", 1)[0]) + 1
        slug = "_".join(args.message.lower().split())[:40]
        command.revision(catalogue.alembic_config(), message=args.message, rev_id=f"{number:04d}_{slug}")
        return 0
    from sqlalchemy.exc import OperationalError

    dsn = args.dsn or _stack().dsn("catalogue")
    try:
        return _catalogue_db_action(args, dsn)
    except OperationalError as exc:
        raise EdsError(f"catalogue database unreachable ({exc.orig}); is the stack up (`eds stack start`)?") from None


def _catalogue_db_action(args, dsn: str) -> int:
    from eds_network import catalogue

    if args.action == "dcat":
        return _catalogue_dcat(args, dsn)
    if args.action == "upgrade":
        print(f"catalogue at revision {catalogue.upgrade(dsn, args.revision)}")
    else:
        cur, head = catalogue.current_revision(dsn), catalogue.head_revision()
        print(f"catalogue at revision {cur} (head {head}){'' if cur == head else ': run `eds catalogue upgrade`'}")
    return 0


def cmd_keys(args) -> int:
    from eds_network import catalogue
    from eds_network.dev.keys import rotate_stack_key
    from eds_network.keys import rotation

    network = load_network()
    s = _stack()
    if args.action == "list":
        for conn_id, k in sorted(s.keys(network).items()):
            extra = k.get("extra", {})
            retired = ", ".join(extra.get("retired_versions", [])) or "-"
            print(f"{conn_id:24s} version {extra.get('version', 'v1'):6s} retired: {retired}")
        return 0
    conn_id = rotation.key_connection_for(network, platform=args.platform, national=args.national)
    old, new = rotate_stack_key(s, network, conn_id)
    print(f"{conn_id}: version {old} -> {new}.", end=" ")
    if args.platform:
        print(
            f"The next run of each member of platform {args.platform} publishes a full re-extraction under {new}; "
            f"the platform replaces the {old} rows, retires {old}, and packages again once every member has re-keyed."
        )
    else:
        print(f"The next national transfer delivers every platform's data under level-2 pseudonyms of {new}.")
    try:
        catalogue.record_key_event(
            s.dsn("catalogue"),
            "key.rotated",
            f"key:{conn_id}",
            {"from_version": old, "to_version": new, "platform": args.platform, "national": args.national},
            actor="eds keys rotate",
        )
    except Exception as exc:  # the stack may be down: the rotation itself is done
        print(f"warning: the catalogue audit could not be written ({type(exc).__name__})", file=sys.stderr)
    return 0


def cmd_leak_scan(args) -> int:
    from eds_network.dev import leakscan

    network = load_network()
    report, ids = leakscan.scan_stack(_stack(), network, summary=summary(network))
    print(leakscan.report_json(report) if args.json else report.text())
    if not len(ids):
        print("error: no identity value found in the sources: nothing to look for", file=sys.stderr)
        return 2
    return 0 if report.clean else 1


def _quality_changes(args) -> int:
    """DQD checks newly failing / resolved / still failing on a base's latest night, thresholds re-applicable."""
    import json

    from eds_network.catalogue import quality_trends

    if not args.base:
        raise EdsError("eds quality changes needs --base BASE")
    thresholds = {}
    for t in args.threshold or []:
        key, _, pct = t.rpartition("=")
        try:
            thresholds[key] = float(pct)
        except ValueError:
            raise EdsError(
                f"--threshold {t!r}: expected CHECK=PCT (a check id, checkName:table.column or checkName)"
            ) from None
    doc = quality_trends.changes(_stack().dsn("catalogue"), args.base, thresholds=thresholds)
    print(json.dumps(doc, indent=1, default=str))
    return 0


def cmd_quality(args) -> int:
    import json

    from eds_network import quality

    if args.action == "changes":
        return _quality_changes(args)
    doc = quality.export_dqd(_stack().dsn("catalogue"), base=args.base, platform=args.platform, batch_id=args.batch)
    text = json.dumps(doc, indent=1, default=str)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        print(f"{len(doc['CheckResults'])} check results written to {args.out}")
    else:
        print(text)
    return 0


def cmd_national(args) -> int:
    import json

    from eds_network.core.storage import S3Endpoint
    from eds_network.national import tables

    network = load_network()
    stack = _stack()
    res = tables.NationalTables(
        stack.dsn("hdh"), S3Endpoint(stack.s3_endpoint, *stack.s3_login, verify=stack.s3_verify)
    )
    doc = tables.describe(network.national, res, snapshot_id=args.snapshot)
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    if not doc:
        print("no national table yet (no delivery applied)")
    for t in doc:
        rows = ", ".join(f"{p}={n}" for p, n in t["rows"].items()) or "empty"
        print(f"omop.{t['table']}: snapshot {t['snapshot_id']}  rows {rows}")
        for s in t["snapshots"][-args.last :]:
            print(f"    {s['snapshot_id']}  {s['at']}  {s['operation']:<9} {s['platform']:<12} {s['delivery_id']}")
    return 0


def cmd_docs_check(args) -> int:
    from pathlib import Path

    from eds_network.core.config import REPO_ROOT
    from eds_network.dev import docscheck

    return docscheck.run(Path(args.root) if args.root else REPO_ROOT, build_parser())


def build_parser() -> argparse.ArgumentParser:
    """The `eds` command tree (also read by the docs check, `eds_network.dev.docscheck`)."""
    p = argparse.ArgumentParser(prog="eds", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("stack")
    st.add_argument("action", choices=["start", "stop", "status"])
    st.set_defaults(fn=cmd_stack)
    sd = sub.add_parser("seed", help="(re)create the demo hospital sources (the embedded stack's, or any stack's)")
    sd.add_argument(
        "--connections", metavar="FILE",
        help="an Airflow connections file (JSON) naming the sources and the catalogue (default: the embedded stack)",
    )  # fmt: skip
    sd.add_argument("--night-end", help="the rows' changes are stamped in the night ending then (ISO 8601)")
    sd.set_defaults(fn=cmd_seed)
    nt = sub.add_parser("night")
    nt.add_argument("--date", help="end of the data interval (ISO 8601), default the demo night")
    nt.add_argument(
        "--cluster", action="store_true",
        help="through the scheduler on the zones' Edge workers (default night: the latest complete one)",
    )  # fmt: skip
    nt.set_defaults(fn=cmd_night)
    sub.add_parser("summary").set_defaults(fn=cmd_summary)
    dm = sub.add_parser("demo")
    dm.add_argument("--cluster", action="store_true", help="the night through the scheduler on per-zone Edge workers")
    dm.set_defaults(fn=cmd_demo)
    cl = sub.add_parser("cluster", help="central Airflow + one Edge worker per trust zone, each with its own secrets")
    cl.add_argument("action", choices=["start", "stop", "workers"])
    cl.set_defaults(fn=cmd_cluster)
    af = sub.add_parser("airflow")
    af.add_argument("rest", nargs=argparse.REMAINDER)
    af.set_defaults(fn=cmd_airflow)
    cc = sub.add_parser("check-config")
    cc.add_argument("file", nargs="?")
    cc.set_defaults(fn=cmd_check_config)
    ca = sub.add_parser("catalogue", help="the catalogue's Alembic migrations and its HealthDCAT-AP export")
    ca.add_argument("action", choices=["upgrade", "current", "history", "revision", "dcat"])
    ca.add_argument("revision", nargs="?", default="head", help="target of upgrade (default head)")
    ca.add_argument("-m", "--message", help="revision: what the new migration does")
    ca.add_argument("--dsn", help="catalogue database (default: the embedded stack's)")
    ca.add_argument("--out", help="dcat: the folder to write the JSON-LD documents to")
    ca.add_argument("--validate", action="store_true", help="dcat: validate each document with pySHACL")
    ca.set_defaults(fn=cmd_catalogue)
    ky = sub.add_parser("keys")
    ky.add_argument("action", choices=["list", "rotate"])
    ky.add_argument("--platform", help="rotate this platform's level-1 key")
    ky.add_argument("--national", action="store_true", help="rotate the national (level-2) key")
    ky.set_defaults(fn=cmd_keys)
    ls = sub.add_parser("leak-scan", help="scan every output of the embedded stack for direct identifiers")
    ls.add_argument("--json", action="store_true", help="machine-readable report")
    ls.set_defaults(fn=cmd_leak_scan)
    na = sub.add_parser("national", help="the HDH's national Iceberg tables")
    na.add_argument("action", choices=["tables"])
    na.add_argument("--snapshot", type=int, help="rows per platform as of this snapshot id (time travel)")
    na.add_argument("--last", type=int, default=5, help="snapshots listed per table (default 5)")
    na.add_argument("--json", action="store_true", help="machine-readable listing")
    na.set_defaults(fn=cmd_national)
    from eds_network import milestone_cli, project_cli

    milestone_cli.add_parser(sub)
    dc = sub.add_parser("docs-check", help="every command, make target, path and connection id the docs name exists")
    dc.add_argument("root", nargs="?", help="the checkout to check (default this one)")
    dc.set_defaults(fn=cmd_docs_check)
    project_cli.add_parser(sub)
    qa = sub.add_parser("quality", help="data quality results (DQD-compatible JSON)")
    qa.add_argument("action", choices=["export", "changes"])
    who = qa.add_mutually_exclusive_group(required=True)
    who.add_argument("--base", help="a local base: its latest local run")
    who.add_argument("--platform", help="a platform: its latest mutualised checks")
    qa.add_argument("--batch", help="a batch id instead of the latest")
    qa.add_argument("--threshold", action="append", help="changes: re-apply a threshold, CHECK=PCT (repeatable)")
    qa.add_argument("--out", help="write to this file instead of stdout")
    qa.set_defaults(fn=cmd_quality)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = build_parser()
    args = p.parse_args(argv)
    from eds_network.dev.processes import terminate_on_sigterm

    terminate_on_sigterm()  # SIGTERM unwinds like Ctrl-C: the children this command started are ended
    try:
        return args.fn(args)
    except EdsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
