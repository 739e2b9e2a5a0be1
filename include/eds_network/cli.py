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
import os
import subprocess
import sys
import time
from zoneinfo import ZoneInfo

from eds_network.core.config import Network, load_network
from eds_network.core.errors import EdsError

log = logging.getLogger("eds")

PARIS = ZoneInfo("Europe/Paris")
# The demo's night: the data interval [2026-11-21 01:00, 2026-11-22 01:00) Europe/Paris. Seeded rows are
# stamped inside it, so one nightly run carries the whole demo data set; fixed so two demos give the same counts.
DEMO_NIGHT_END = dt.datetime(2026, 11, 22, 1, 0, tzinfo=PARIS)


def demo_interval(end: dt.datetime = DEMO_NIGHT_END) -> tuple[dt.datetime, dt.datetime]:
    return end - dt.timedelta(days=1), end


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


def connection_dsn(conn: dict) -> str:
    """The libpq URI of a Postgres connection as Airflow's connections file holds it (host, port, login, …)."""
    from urllib.parse import quote

    if conn.get("conn_type") not in ("postgres", "postgresql"):
        raise EdsError(f"not a PostgreSQL connection: {conn.get('conn_type')!r}")
    auth = quote(conn.get("login") or "", safe="")
    if conn.get("password"):
        auth += ":" + quote(conn["password"], safe="")
    return (
        f"postgresql://{auth}@{conn.get('host') or 'localhost'}:{conn.get('port') or 5432}/{conn.get('schema') or ''}"
    )


def seed_dsns(network: Network, connections: str | None = None) -> dict[str, str]:
    """Where `eds seed` writes: {connection id: DSN} of each base's source and of the catalogue. The embedded
    stack's by default; or any stack's, from an Airflow connections file (JSON, the operator's own, holding
    logins allowed to create the demo schemas: the hospital zones' roles only read)."""
    ids = [network.catalogue_connection_id, *(b.source_connection_id for b in network.local_bases)]
    if connections is None:
        s = _stack()
        return {
            network.catalogue_connection_id: s.dsn("catalogue"),
            **{b.source_connection_id: s.dsn(f"src_{b.id}") for b in network.local_bases},
        }
    import json
    from pathlib import Path

    conns = json.loads(Path(connections).read_text())
    missing = [c for c in ids if c not in conns]
    if missing:
        raise EdsError(f"{connections}: no connection {missing} (the network config's source and catalogue ids)")
    return {c: connection_dsn(conns[c]) for c in ids}


def seed_network(
    network: Network, stamp: tuple[dt.datetime, dt.datetime], dsns: dict[str, str] | None = None
) -> dict[str, dict[str, int]]:
    from eds_network import catalogue
    from eds_network.dev import reference_bases, seed

    dsns = dsns or seed_dsns(network)
    out = {}
    for b in network.local_bases:
        t0 = time.monotonic()
        out[b.id] = seed.seed_base(dsns[b.source_connection_id], network, b.id, stamp)
        log.info("seeded %s: %d rows in %.1fs", b.id, sum(out[b.id].values()), time.monotonic() - t0)
    dsn = dsns[network.catalogue_connection_id]
    catalogue.create_schema(dsn)  # a stack other than the embedded one may not have started yet
    reference_bases.seed_reference_bases(dsn)
    for b in network.local_bases:
        have = catalogue.milestones(dsn, b.id)
        for m in ("contract_signed", "documentation", "preparation"):  # preparation: national gate
            if m not in have:
                catalogue.set_milestone(
                    dsn, b.id, m, dt.date(2026, 1, 15), evidence="demo network", recorded_by="eds seed"
                )
    return out


def cmd_seed(args) -> int:
    network = load_network()
    night = demo_interval(dt.datetime.fromisoformat(args.night_end)) if args.night_end else demo_interval()
    counts = seed_network(network, night, seed_dsns(network, args.connections))
    for base, tables in counts.items():
        print(f"{base}: " + ", ".join(f"{t}={n}" for t, n in tables.items()))
    return 0


def run_night(network: Network, end: dt.datetime = DEMO_NIGHT_END) -> list[tuple[str, bool, float]]:
    """Run every DAG once, level by level, through Airflow (`airflow dags test` records in the metadata DB).

    DAGs of one level run side by side (at most $EDS_NIGHT_PARALLEL, default 4), as the scheduler would run
    them; a level starts when the previous one is done.
    """
    from concurrent.futures import ThreadPoolExecutor

    s = _stack()
    levels = [
        [(b.dag_id, end.isoformat()) for b in network.local_bases],
        # The platform runs at the night's end: it consolidates that night (late members are those missing).
        [(p.dag_id, end.isoformat()) for p in network.platforms],
        [("eds_national", None)],
    ]

    def one(item: tuple[str, str | None]) -> tuple[str, bool, float]:
        dag_id, logical = item
        t0 = time.monotonic()
        res = s.airflow("dags", "test", dag_id, *([logical] if logical else []), check=False, capture=True)
        ok = res.returncode == 0 and "state=failed" not in res.stdout + res.stderr
        el = time.monotonic() - t0
        print(f"  {dag_id:32s} {'ok' if ok else 'FAILED'}  ({el:.0f}s)", flush=True)
        logfile = s.logs / f"{dag_id}.log"  # kept for every run: the night's task logs (keys are masked)
        logfile.parent.mkdir(parents=True, exist_ok=True)
        logfile.write_text(res.stdout + "\n" + res.stderr)
        if not ok:
            print(f"    see {logfile}", flush=True)
        return dag_id, ok, el

    # Register every DAG and Asset once before the parallel runs (concurrent first registrations collide).
    res = s.airflow("dags", "reserialize", check=False, capture=True)
    if res.returncode != 0:
        raise EdsError(f"the DAG folder does not load: {res.stderr.strip()[-1500:]}")
    results: list[tuple[str, bool, float]] = []
    with ThreadPoolExecutor(max_workers=int(os.environ.get("EDS_NIGHT_PARALLEL", "4"))) as pool:
        try:
            for level in levels:
                results += list(pool.map(one, level))
        except BaseException:  # Ctrl-C, SIGTERM (SystemExit), an error: no `airflow dags test` outlives the night
            s.processes.stop("airflow-dags-test")
            raise
    return results


def run_cluster_night(network: Network, night: tuple[dt.datetime, dt.datetime]) -> dict[str, str]:
    """One whole night through the scheduler on the zones' Edge workers (the cluster started if it is not)."""
    from eds_network.dev.cluster import Cluster

    s = _stack()
    c = Cluster(s, network)
    t0 = time.monotonic()
    c.start()
    c.wait_workers()
    print(f"  cluster up ({len(c.zones())} zone workers) in {time.monotonic() - t0:.0f}s", flush=True)
    return c.run_night(night, say=lambda m: print(m, flush=True))


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


COUNTED = ("extracted", "published", "quarantined", "excluded_objection", "tombstones")


def summary_counts(dsn: str) -> dict[str, dict[str, dict[str, int]]]:
    """The summary's row counts: {"<level>:<scope>": {table: {extracted, published, quarantined, ...}}} of the
    latest run of each level and scope (what two ways of running one night must agree on)."""
    from eds_network import catalogue

    return {
        f"{r['level']}:{r['scope_id']}": {t: {k: int(v[k]) for k in COUNTED} for t, v in sorted(r["tables"].items())}
        for r in catalogue.latest_runs(dsn)
    }


def summary(network: Network) -> str:
    from eds_network import catalogue
    from eds_network.catalogue import lead_time

    dsn = _stack().dsn("catalogue")
    runs = catalogue.latest_runs(dsn)
    lines = ["", "eds-network — summary of the last night", "=" * 100]
    hdr = (
        f"{'level':11s} {'scope':10s} {'status':8s} {'extracted':>10s} {'published':>10s} {'quarantined':>11s} "
        f"{'excl.obj.':>9s} {'tombst.':>7s}  stage"
    )
    lines.append(hdr)
    lines.append("-" * 100)
    order = {"local": 0, "mutualised": 1, "national": 2}
    for r in sorted(runs, key=lambda r: (order[r["level"]], r["scope_id"])):
        tot = {
            k: sum(t[k] for t in r["tables"].values())
            for k in ("extracted", "published", "quarantined", "excluded_objection", "tombstones")
        }
        stage = catalogue.stage(catalogue.milestones(dsn, r["scope_id"])) if r["level"] == "local" else ""
        lines.append(
            f"{r['level']:11s} {r['scope_id']:10s} {r['status']:8s} {tot['extracted']:>10,d} "
            f"{tot['published']:>10,d} {tot['quarantined']:>11,d} {tot['excluded_objection']:>9,d} "
            f"{tot['tombstones']:>7,d}  {stage}"
        )
        if r["level"] == "mutualised":
            link = (r["details"] or {}).get("linkage", {})
            lines.append(
                f"{'':11s} linkage: {link.get('persons', 0)} persons, {link.get('persons_multi_site', 0)}"
                f" seen at 2+ sites, overlap {link.get('overlap', {})}"
            )
            late = {b: s for b, s in ((r["details"] or {}).get("arrivals") or {}).items() if s != "arrived"}
            if late:
                lines.append(f"{'':11s} members not arrived on time: {late}")
    lines += _standardisation_lines(dsn)
    lines.append("")
    lines.append("onboarding (catalogue milestones; lead time = contract signed → available)")
    lines.append("-" * 100)
    for r in lead_time.lead_times(dsn):
        when = (
            f"{r['days']} days"
            if r["days"] is not None
            else f"{r['elapsed_days']} days so far"
            if r["elapsed_days"] is not None
            else "-"
        )
        kind = "reference" if r["reference"] else f"platform {r['platform_id']}"
        lines.append(f"{r['base_id']:14s} {r['stage']:17s} {when:>18s}  {kind:14s} {r['label']}")
    d = lead_time.distribution(dsn)
    lines.append(
        f"lead time vs the {d['target_days']}-day (7-month) target: {d['within_target']} within, "
        f"{d['over_target']} over, {d['pending']} pending; median {d['median_days']} days"
    )
    lines.append("")
    lines.append("national deliveries (HDH landing zone)")
    lines.append("-" * 100)
    for d in catalogue.deliveries(dsn):
        receipt = (d["receipt"] or {}).get("status", "-")
        lines.append(
            f"{d['id']}  platform={d['platform_id']}  status={d['status']}  receipt={receipt}  "
            f"{d['bytes'] or 0:,d} bytes"
        )
        for f in d["files"] or []:
            lines.append(f"    {f['key']:70s} rows={f['rows']:>7,d}  sha256={f['sha256']}")
    return "\n".join(lines)


def _standardisation_lines(dsn: str) -> list[str]:
    """Unmapped-concept rate (and unknown units, duplicate events) per platform, base and table."""
    from eds_network import catalogue

    stats = catalogue.platform_stats(dsn)
    if not stats:
        return []
    lines = [
        "",
        "standardisation at the platforms (concepts not mapped to a standard concept, units not UCUM, "
        "events also reported by another site)",
        "-" * 100,
        f"{'platform':9s} {'base':10s} {'table':22s} {'rows':>9s} {'unmapped':>9s} {'rate':>7s} "
        f"{'units?':>7s} {'dupl.':>6s}",
    ]
    for s in stats:
        lines.append(
            f"{s['platform_id']:9s} {s['base_id']:10s} {s['table_name']:22s} {s['rows']:>9,d} "
            f"{s['unmapped_concepts']:>9,d} {s['unmapped_rate']:>7.2%} {s['unmapped_units']:>7,d} "
            f"{s['duplicate_events']:>6,d}"
        )
    return lines


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


def _milestone_dsn(args) -> str:
    """--dsn, else $EDS_CATALOGUE_DSN, else in a deployment ($EDS_DEPLOYMENT, e.g. compose's airflow-cli) the
    Airflow connection of the catalogue, else the embedded stack's catalogue."""
    if args.dsn or os.environ.get("EDS_CATALOGUE_DSN"):
        return args.dsn or os.environ["EDS_CATALOGUE_DSN"]
    if os.environ.get("EDS_DEPLOYMENT"):
        from eds_network.orchestration.connections import catalogue_dsn

        return catalogue_dsn(load_network())
    return _stack().dsn("catalogue")


def _print_milestones(dsn: str, base: str | None) -> None:
    from eds_network.catalogue import milestone_records as mr

    for b in mr.listing(dsn, base):
        print(f"{b['base']}  (stage: {b['stage']})")
        for m in b["milestones"]:
            if m["reached_on"] is None:
                print(f"    {m['milestone']:17s} not reached")
                continue
            when = (m["recorded_at"] or "")[:16].replace("T", " ")
            print(
                f"    {m['milestone']:17s} {m['reached_on']}  by {m['recorded_by']} at {when}"
                f"  evidence: {m['evidence'] or '-'}"
            )
    for h in mr.held_deliveries(dsn):
        state = "the next national run delivers" if h["unblocked"] else "still held"
        lacks = "; ".join(f"{b['base']} lacks {', '.join(b['missing'] or b['recorded'])}" for b in h["bases"])
        print(f"held back: platform {h['platform']} delivery {h['source_delivery']}: {lacks} ({state})")


def cmd_milestone(args) -> int:
    """Record, correct, withdraw or list onboarding milestones in the catalogue (audited, who and when)."""
    import getpass

    from sqlalchemy.exc import OperationalError

    from eds_network.catalogue import milestone_records as mr

    dsn = _milestone_dsn(args)
    who = args.by or getpass.getuser()
    try:
        if args.action == "list":
            _print_milestones(dsn, args.base)
            return 0
        if not args.milestone:
            raise EdsError(f"eds milestone {args.action} needs BASE MILESTONE")
        if args.action == "unset":
            mr.unset(dsn, args.base, args.milestone, reason=args.reason or "", recorded_by=who)
            print(f"{args.base}: {args.milestone} withdrawn (audited: milestone.unset by {who})")
            return 0
        out = mr.record(
            dsn,
            args.base,
            args.milestone,
            mr.parse_date(args.date, base=args.base),
            evidence=args.evidence,
            recorded_by=who,
            correct=args.action == "correct",
        )
    except OperationalError as exc:
        raise EdsError(f"catalogue database unreachable ({exc.orig}); is the stack up (`eds stack start`)?") from None
    print(f"{out['base']}: {out['milestone']} reached on {out['reached_on']} ({out['action']} by {who})")
    return 0


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
    ms = sub.add_parser("milestone", help="record, correct, withdraw or list onboarding milestones (audited)")
    ms.add_argument("action", choices=["set", "correct", "unset", "list"])
    ms.add_argument("base", nargs="?", help="the base id (list: optional)")
    ms.add_argument(
        "milestone", nargs="?", help="contract_signed, documentation, preparation, transfer_channel, available"
    )
    ms.add_argument("--date", help="the day it was reached, YYYY-MM-DD (default today; never in the future)")
    ms.add_argument("--evidence", help="a document reference or URL proving it (no personal data)")
    ms.add_argument("--by", help="who records it (default: your login name)")
    ms.add_argument("--reason", help="unset: why the milestone is withdrawn (required)")
    ms.add_argument(
        "--dsn",
        help="catalogue database (default: $EDS_CATALOGUE_DSN; with $EDS_DEPLOYMENT the eds_catalogue connection; "
        "else the embedded stack's)",
    )
    ms.set_defaults(fn=cmd_milestone)
    dc = sub.add_parser("docs-check", help="every command, make target, path and connection id the docs name exists")
    dc.add_argument("root", nargs="?", help="the checkout to check (default this one)")
    dc.set_defaults(fn=cmd_docs_check)
    from eds_network import project_cli

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
