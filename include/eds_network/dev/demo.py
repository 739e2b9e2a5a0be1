"""The demo network's night, end to end on the embedded stack: seed the hospitals, run every DAG through Airflow
level by level, summarise from the catalogue (`eds seed`, `eds night`, `eds summary`, `eds demo`)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from zoneinfo import ZoneInfo

from eds_network.core.config import Network
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
