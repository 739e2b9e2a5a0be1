"""Scale benchmark (issue 23): does a platform night cost what it changes, or what the warehouse holds? Not a test:
run by `bench/run.py`.

Two platform warehouses are built (not timed), then the same nights are consolidated and packaged on both:
  small  the local bench's base (2 M MEASUREMENT rows, `bench_local.FULL_SIZES`; quick: 20 k) extracted and
         published once as a signed, manifested batch (PERSON + MEASUREMENT) and consolidated into a fresh
         warehouse (`consolidate.consolidate`), then VACUUM ANALYZE;
  big    a copy of it (`CREATE DATABASE … TEMPLATE`) inflated tenfold by SQL inside the warehouse: copies k=1..9 of
         every person (`omop.person`, `eds_platform.person_site`, `eds_platform.person_digest`, a digest of its
         own) and of every measurement row, person ids moved to a disjoint set (`person_id XOR k << 59`, still a
         63-bit id) and measurement ids to a disjoint range of the site's namespace (`+ k * 10^11`); the
         platform's columns (`_site`, `_batch_id`, `_key_version`) kept, `_seq` drawn anew (the copies are
         rows the warehouse holds, not changes of the night); same rows per person, ten times the persons;
         indexes dropped and rebuilt around the copy, then VACUUM ANALYZE: a warehouse in a steady state.
Both are then marked delivered as built: a `full` package recorded up to their change high-water mark and the
HDH's signed acknowledgement of it in their outbox (the bench stands in for the HDH, as `national.ack` writes it),
so that a night's package is incremental, as every night after the first; and one unmeasured night is run on
each (whatever the platform does once after the build's bulk change is then done before the measured nights).

A night (per rep, a fresh one each time; 20 k changed rows, quick: 200): in a copy of the seeded source (the
seeded database the other benches reuse is left as it is), for a later data interval, 90 % of the rows are
updated (`value_as_number + 1`), 9 % added (new rows of existing patients) and 1 % deleted (the source's deletion
log); the local step extracts PERSON and MEASUREMENT for that interval and publishes the signed batch
(`extract.extract_table`, `publish.publish_batch`). On each warehouse, each step in a fresh child process
(`common.run_child`: its wall time, its CPU time, and its peak RSS, VmHWM of its own address space):
  consolidation  `consolidate.consolidate` of the night's intake prefix (manifest signature and file SHA-256
                 verified, merged in one transaction, ledger, then the statistics phases); the batch must be
                 applied and its rows found in the warehouse; its own per-phase wall and CPU seconds
                 (`Consolidation.timings` / `cpu_timings`) are kept;
  checks         the platform's checks: the sum of consolidation's statistics phases (`CHECK_PHASES`: key
                 versions, linkage statistics, platform checks, duplicate events, unmapped codes), from the
                 same run's timings;
  packaging      `package.package` of the night (incremental since the acknowledged watermark: the night's
                 upserts and deletes); its measurement rows must be the night's published rows.
Beside each child, the CPU seconds of the warehouse's PostgreSQL server (postmaster, its live processes and the
backends it reaped) over the step: the warehouse's own work, which the child's CPU does not show.
The target: the 20 M night's consolidation <= 1.5x the 2 M night's (medians), and every step's peak RSS < 600 MB.
The bench writes a plot of seconds per step against warehouse rows (SVG, our own code) to bench/results/.

Manual use (stack from the environment: EDS_HOME, EDS_PG_PORT, EDS_S3_PORT): run through `bench/run.py --only scale`.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_local  # noqa: E402
from common import RESULTS_DIR, child_report, ratio, run_child, stats  # noqa: E402

from eds_network.core import omop, zones  # noqa: E402
from eds_network.core.config import Network, Platform  # noqa: E402
from eds_network.core.exchange import ACK  # noqa: E402
from eds_network.core.signing import sign_document  # noqa: E402
from eds_network.core.storage import S3Endpoint, delete_prefix, put_json  # noqa: E402
from eds_network.dev.stack import Stack  # noqa: E402
from eds_network.local import extract, publish  # noqa: E402
from eds_network.orchestration.zone_connections import signing_connection_id  # noqa: E402
from eds_network.platform import changes, consolidate, keyversions  # noqa: E402
from eds_network.platform import package as packaging  # noqa: E402

log = logging.getLogger("bench.scale")
SCRIPT = Path(__file__).resolve()
PREFIX = "bench-scale/"
TABLES = ("person", bench_local.TABLE)
COPIES = 10  # the big warehouse: the small one and 9 copies
ID_SHIFT = 10**11  # measurement id of copy k: + k * ID_SHIFT (the site's namespace is 10**12 wide)
PERSON_SHIFT = 59  # person id of copy k: XOR k << 59 (k <= 9 < 16: bits 59-62 of a 63-bit id)
FULL_NIGHT, QUICK_NIGHT = 20_000, 200
SHARES = {"update": 0.90, "insert": 0.09, "delete": 0.01}
# Consolidation's statistics phases (`consolidate._after_batches`; `statistics`: where a merge times its own
# statistics work): the platform's checks. A phase not timed in a run counts 0.
CHECK_PHASES = ("key_versions", "linkage_stats", "platform_checks", "duplicates", "unmapped", "statistics")
STEPS = ("consolidation", "checks", "packaging")
TARGET = 1.5  # the big warehouse's night's consolidation over the small one's, at most


def _db(label: str) -> str:
    return f"bench_scale_wh_{label.lower()}"


def _outbox_prefix(label: str) -> str:
    return f"bench-scale-{label.lower()}/"


def _platform(net: Network, label: str) -> Platform:
    p = net.platform_of(bench_local.BASE_ID)
    return p.model_copy(update={"outbox": p.outbox.model_copy(update={"prefix": _outbox_prefix(label)})})


def _endpoint(stack: Stack) -> S3Endpoint:
    return S3Endpoint(stack.s3_endpoint, *stack.s3_login, verify=stack.s3_verify)


def _platform_resources(stack: Stack, net: Network, platform: Platform, dsn: str) -> consolidate.PlatformResources:
    """What the platform's tasks get: the trust store (members' manifests verified), its level-1 key version, its
    signing key (package manifests signed)."""
    keys = stack.keys(net)
    ep = _endpoint(stack)
    return consolidate.PlatformResources(
        warehouse_dsn=dsn,
        intake=ep,
        outbox=ep,
        level1_key_version=keys[platform.key_connection_id]["extra"]["version"],
        trust=stack.trust(net),
        signing_key=base64.b64decode(keys[signing_connection_id(zones.platform(platform.id))]["password"]),
    )


# -- the server's CPU -----------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def server_cpu_s(stack: Stack) -> float | None:
    """CPU seconds of the stack's PostgreSQL server so far: the postmaster's own and its reaped children's (the
    backends of connections closed since), plus its live processes'. None when /proc cannot tell."""
    try:
        pm = int((stack.pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    f = _stat(pm)
    if f is None:
        return None
    ticks = sum(int(x) for x in f[11:15])
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (c := _stat(int(d.name))) is not None and c[1] == str(pm):
            ticks += int(c[11]) + int(c[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# -- building the warehouses (not timed) ----------------------------------------------------------------


def _template_copy(stack: Stack, source_db: str, name: str) -> str:
    with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(source_db)))
    return stack.dsn(name)


def _vacuum(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


def _columns(conn, schema: str, table: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
            " AND column_name <> %s ORDER BY ordinal_position",
            (schema, table, changes.SEQ_COLUMN),
        )
    ]


def _copy_rows(conn, schema: str, table: str, copies: int, shifted: dict[str, sql.Composable]) -> int:
    """INSERT copies k=1..copies-1 of every row of schema.table, the `shifted` columns computed from k, the
    others as they are; the table's indexes dropped before and rebuilt after (as a bulk load is done)."""
    qname = sql.Identifier(schema, table)
    idx = conn.execute(
        "SELECT i.indexrelid::regclass::text, c.conname, pg_get_indexdef(i.indexrelid),"
        " pg_get_constraintdef(c.oid) FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid"
        " AND c.conrelid = i.indrelid WHERE i.indrelid = %s::regclass",
        (f"{schema}.{table}",),
    ).fetchall()
    for name, con, _, _ in idx:
        if con:
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(qname, sql.Identifier(con)))
        else:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(name)))
    cols = _columns(conn, schema, table)
    n = conn.execute(
        sql.SQL("INSERT INTO {t} ({cols}) SELECT {vals} FROM {t} CROSS JOIN generate_series(1, {last}) AS k").format(
            t=qname,
            cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
            vals=sql.SQL(", ").join(shifted.get(c, sql.Identifier(c)) for c in cols),
            last=sql.Literal(copies - 1),
        )
    ).rowcount
    for _, con, indexdef, condef in idx:
        if con:
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(qname, sql.Identifier(con), sql.SQL(condef))
            )
        else:
            conn.execute(sql.SQL(indexdef))
    return n


def inflate(dsn: str, copies: int) -> dict[str, int]:
    """Copies k=1..copies-1 of every person and measurement row (see the module's docstring). Returns the rows
    added per table."""
    person = sql.SQL("person_id # (k::bigint << {})").format(sql.Literal(PERSON_SHIFT))
    out = {}
    with psycopg.connect(dsn) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        out["person"] = _copy_rows(conn, "omop", "person", copies, {"person_id": person})
        out["person_site"] = _copy_rows(conn, "eds_platform", "person_site", copies, {"person_id": person})
        out["person_digest"] = _copy_rows(
            conn,
            "eds_platform",
            "person_digest",
            copies,
            {"person_id": person, "digest": sql.SQL("sha256(digest || int4send(k))")},
        )
        out[bench_local.TABLE] = _copy_rows(
            conn,
            "omop",
            bench_local.TABLE,
            copies,
            {
                "measurement_id": sql.SQL("measurement_id + k * {}::bigint").format(sql.Literal(ID_SHIFT)),
                "person_id": person,
            },
        )
    return out


def _acknowledge(stack: Stack, net: Network, platform: Platform, delivery_id: str, upto: int) -> None:
    """The HDH's signed acknowledgement of a delivery applied up to `upto` (as `national.ack.acknowledge`)."""
    doc = {
        "kind": "eds-network/hdh-acknowledgement",
        "platform": platform.id,
        "delivery_id": delivery_id,
        "upto_seq": upto,
        "full_requested": False,
        "reason": "",
        "acknowledged_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    key = base64.b64decode(stack.keys(net)[signing_connection_id(zones.NATIONAL)]["password"])
    doc = sign_document(doc, key, zones.NATIONAL)
    put_json(_endpoint(stack).client(), platform.outbox.bucket, f"{platform.outbox.prefix}{ACK}", doc)


def _mark_delivered(stack: Stack, net: Network, label: str, dsn: str) -> int:
    """Record the warehouse as delivered in full up to its high-water mark, and acknowledged. Returns the mark."""
    p = _platform(net, label)
    delete_prefix(_endpoint(stack).client(), p.outbox.bucket, p.outbox.prefix)
    delivery = f"{p.id}__bench-scale-build-{label.lower()}"
    with psycopg.connect(dsn) as conn:
        upto = changes.high_water(conn, list(TABLES))
        transport = keyversions.transport_version(conn, p.id)
        changes.record_package(conn, delivery, "full", None, upto, transport)
    _acknowledge(stack, net, p, delivery, upto)
    return upto


def _count(dsn: str, query: str, params: tuple = ()) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(query, params).fetchone()[0])


def build(stack: Stack, net: Network, patients: int, labels: tuple[str, str]) -> dict:
    """The two warehouses (see the module's docstring). Returns their rows and build seconds."""
    small, big = labels
    src, _, _ = bench_local.source_db(stack, patients)
    base = net.base(bench_local.BASE_ID)
    platform = net.platform_of(base.id)
    res = bench_local.resources(stack, net, src, prefix=f"{PREFIX}build/")
    s3 = res.intake.client()
    delete_prefix(s3, platform.intake.bucket, PREFIX)
    t0 = time.monotonic()
    refs = [extract.extract_table(base, t, *bench_local.INTERVAL, res).ref() for t in TABLES]
    publish.publish_batch(base, *bench_local.INTERVAL, refs, res)
    dsn = stack.create_database(_db(small), drop=True)
    c = consolidate.consolidate(
        platform, platform.intake.bucket, f"{PREFIX}build/", _platform_resources(stack, net, platform, dsn)
    )
    if len(c.applied) != 1:
        raise RuntimeError(f"building the {small} warehouse: consolidation applied {c.applied}, rejected {c.rejected}")
    delete_prefix(s3, platform.intake.bucket, PREFIX)
    _vacuum(dsn)
    built = {small: time.monotonic() - t0}
    t1 = time.monotonic()
    big_dsn = _template_copy(stack, _db(small), _db(big))
    added = inflate(big_dsn, COPIES)
    _vacuum(big_dsn)
    built[big] = time.monotonic() - t1
    out = {}
    for label, d in ((small, dsn), (big, big_dsn)):
        out[label] = {
            "dsn": d,
            "measurement_rows": _count(d, "SELECT count(*) FROM omop.measurement"),
            "persons": _count(d, "SELECT count(*) FROM omop.person"),
            "build_s": round(built[label], 1),
            "delivered_upto": _mark_delivered(stack, net, label, d),
        }
    out[big]["added_rows"] = added
    if out[big]["measurement_rows"] != COPIES * out[small]["measurement_rows"]:
        raise RuntimeError(f"inflated warehouse holds {out[big]['measurement_rows']} rows, not {COPIES}x")
    return out


# -- a night --------------------------------------------------------------------------------------------


def night_interval(i: int) -> tuple[dt.datetime, dt.datetime]:
    start = bench_local.INTERVAL[1] + dt.timedelta(days=i)
    return start, start + dt.timedelta(days=1)


def make_night(stack: Stack, net: Network, src: str, i: int, changed: int) -> dict:
    """Change `changed` rows of the source copy `src` inside night i's interval (updates, new rows, deletions),
    then extract and publish the night's signed batch under its own intake prefix. Returns what it holds."""
    start, end = night_interval(i)
    when = start + dt.timedelta(hours=12)
    n_upd, n_new = int(changed * SHARES["update"]), int(changed * SHARES["insert"])
    n_del = changed - n_upd - n_new
    cols = omop.table(bench_local.TABLE).column_names
    with psycopg.connect(src) as conn:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT measurement_id FROM omop.measurement ORDER BY md5(measurement_id::text || %s) LIMIT %s",
                (f"night-{i}", n_upd + n_del + n_new),
            )
        ]
        upd, dele, model = ids[:n_upd], ids[n_upd : n_upd + n_del], ids[n_upd + n_del :]
        conn.execute(
            "UPDATE omop.measurement SET value_as_number = coalesce(value_as_number, 0) + 1, _updated_at = %s"
            " WHERE measurement_id = ANY(%s)",
            (when, upd),
        )
        top = conn.execute("SELECT max(measurement_id) FROM omop.measurement").fetchone()[0]
        conn.execute(  # new measurements of existing patients: rows like existing ones, new ids
            sql.SQL(
                "INSERT INTO omop.measurement ({cols}, _updated_at) SELECT {top} + row_number() OVER "
                "(ORDER BY measurement_id), {rest}, {when} FROM omop.measurement WHERE measurement_id = ANY({ids})"
            ).format(
                cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
                top=sql.Literal(top),
                rest=sql.SQL(", ").join(sql.Identifier(c) for c in cols if c != "measurement_id"),
                when=sql.Literal(when),
                ids=sql.Literal(model),
            )
        )
        conn.execute("DELETE FROM omop.measurement WHERE measurement_id = ANY(%s)", (dele,))
        conn.execute(  # the deletion log's entries, dated inside the night (the trigger dates them now)
            "UPDATE omop._deleted SET deleted_at = %s WHERE table_name = %s AND row_id = ANY(%s)",
            (when, bench_local.TABLE, dele),
        )
    prefix = f"{PREFIX}night-{i}/"
    base = net.base(bench_local.BASE_ID)
    res = bench_local.resources(stack, net, src, prefix=prefix)
    tbs = [extract.extract_table(base, t, start, end, res) for t in TABLES]
    pub = publish.publish_batch(base, start, end, [tb.ref() for tb in tbs], res)
    m = tbs[1]
    return {
        "prefix": prefix,
        "batch_id": extract.batch_id(base.id, start, end),
        "updated": n_upd,
        "inserted": n_new,
        "deleted": n_del,
        "published": m.published,
        "tombstones": m.tombstones,
        "manifest": getattr(pub, "manifest_key", None),
    }


# -- child processes ------------------------------------------------------------------------------------


def vm_hwm_mb() -> float:
    """This process's peak RSS (VmHWM of its own address space). Not `ru_maxrss`: Linux carries the parent's
    high-water mark over fork + exec into it, so a child of a large parent would report the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(argv: list[str]) -> None:
    """`--child consolidate PATIENTS LABEL PREFIX` / `--child package PATIENTS LABEL`: one step, JSON on stdout."""
    logging.basicConfig(level=logging.WARNING)
    kind, patients, label = argv[0], int(argv[1]), argv[2]
    stack = Stack.default()
    net = bench_local.network(patients)
    p = _platform(net, label)
    pres = _platform_resources(stack, net, p, stack.dsn(_db(label)))
    c0 = time.process_time()  # every thread of this process
    t0 = time.perf_counter()
    if kind == "consolidate":
        c = consolidate.consolidate(p, p.intake.bucket, argv[3], pres)
        el = time.perf_counter() - t0
        child_report(
            seconds=el,
            cpu_s=time.process_time() - c0,
            applied=c.applied,
            rejected=c.rejected,
            rows=c.rows,
            timings=c.timings,
            cpu_timings=c.cpu_timings,
            vm_hwm_mb=vm_hwm_mb(),
        )
    elif kind == "package":
        pkg = packaging.package(p, pres, {})
        el = time.perf_counter() - t0
        child_report(seconds=el, cpu_s=time.process_time() - c0, vm_hwm_mb=vm_hwm_mb(), **pkg.ref())
    else:
        raise SystemExit(f"unknown child {kind!r}")


def _step(stack: Stack, *args: str) -> dict:
    s0 = server_cpu_s(stack)
    rep = run_child(SCRIPT, *args)
    s1 = server_cpu_s(stack)
    rep["server_cpu_s"] = (s1 - s0) if s0 is not None and s1 is not None else None
    return rep


def run_night(stack: Stack, net: Network, patients: int, label: str, night: dict) -> dict:
    """Consolidate then package one night on one warehouse, each in a child process; checks that it landed."""
    dsn = stack.dsn(_db(label))
    c = _step(stack, "consolidate", str(patients), label, night["prefix"])
    if c["applied"] != [night["batch_id"]]:
        raise RuntimeError(f"{label}: the night's batch was not applied: {c['applied']}, rejected {c['rejected']}")
    landed = _count(dsn, "SELECT count(*) FROM omop.measurement WHERE _batch_id = %s", (night["batch_id"],))
    if landed != night["published"]:
        raise RuntimeError(f"{label}: {landed} rows of the night's batch in the warehouse, {night['published']} sent")
    p = _step(stack, "package", str(patients), label)
    if p["kind"] != "incremental" or p["rows"].get(bench_local.TABLE) != night["published"]:
        raise RuntimeError(f"{label}: package {p['kind']} of {p['rows']} rows, {night['published']} changed")
    with psycopg.connect(dsn) as conn:
        upto = conn.execute(
            "SELECT upto_seq FROM eds_platform.packaged WHERE delivery_id = %s", (p["delivery_id"],)
        ).fetchone()[0]
    _acknowledge(stack, net, _platform(net, label), p["delivery_id"], upto)
    checks = {ph: c["timings"].get(ph, 0.0) for ph in CHECK_PHASES}
    checks_cpu = {ph: c["cpu_timings"].get(ph, 0.0) for ph in CHECK_PHASES}
    return {
        "consolidation": {
            "seconds": c["seconds"],
            "cpu_s": c["cpu_s"],
            "server_cpu_s": c["server_cpu_s"],
            "peak_rss_mb": c["vm_hwm_mb"],
        },
        "checks": {"seconds": sum(checks.values()), "cpu_s": sum(checks_cpu.values()), "phases": checks},
        "packaging": {
            "seconds": p["seconds"],
            "cpu_s": p["cpu_s"],
            "server_cpu_s": p["server_cpu_s"],
            "peak_rss_mb": p["vm_hwm_mb"],
            "bytes": p["bytes"],
            "rows": p["rows"],
            "deleted": p["deleted"],
        },
        "timings": c["timings"],
        "cpu_timings": c["cpu_timings"],
        "landed": landed,
    }


# -- the plot -------------------------------------------------------------------------------------------


def svg_plot(
    points: dict[str, list[tuple[float, float]]], title: str, path: Path, dashed: tuple[str, ...] = ()
) -> Path:
    """A line plot (x: warehouse rows, y: seconds), one line per series (those named in `dashed`: dashed, no
    markers), with axes, ticks, labels and a legend."""
    import math

    w, h, left, right, top, bottom = 700, 400, 70, 230, 40, 55
    xs = [x for pts in points.values() for x, _ in pts]
    ys = [y for pts in points.values() for _, y in pts]
    x_max = max(xs) * 1.05
    y_top = max(ys) * 1.15 or 1.0
    y_step = 10 ** math.floor(math.log10(y_top / 5)) if y_top > 0 else 1.0
    for m in (1, 2, 2.5, 5, 10):
        if y_top / (m * y_step) <= 6:
            y_step *= m
            break
    y_max = math.ceil(y_top / y_step) * y_step
    x_step = 10 ** math.floor(math.log10(x_max / 5))
    for m in (1, 2, 2.5, 5, 10):
        if x_max / (m * x_step) <= 6:
            x_step *= m
            break
    pw, ph = w - left - right, h - top - bottom

    def px(x: float) -> float:
        return left + pw * x / x_max

    def py(y: float) -> float:
        return top + ph * (1 - y / y_max)

    def rows(x: float) -> str:
        return f"{x / 1e6:g} M" if x >= 1e6 else f"{x / 1e3:g} k" if x >= 1e3 else f"{x:g}"

    colours = ["#1f77b4", "#d62728", "#2ca02c", "#7f7f7f"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{left + pw / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>',
    ]
    n = 0
    while n * y_step <= y_max + 1e-9:
        y = n * y_step
        out.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{left + pw}" y2="{py(y):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
        n += 1
    n = 0
    while n * x_step <= x_max + 1e-9:
        x = n * x_step
        out.append(f'<line x1="{px(x):.1f}" y1="{top + ph}" x2="{px(x):.1f}" y2="{top + ph + 5}" stroke="black"/>')
        out.append(f'<text x="{px(x):.1f}" y="{top + ph + 18}" text-anchor="middle">{rows(x)}</text>')
        n += 1
    out += [
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="black"/>',
        f'<text x="{left + pw / 2}" y="{h - 12}" text-anchor="middle">warehouse MEASUREMENT rows</text>',
        f'<text x="16" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 16 {top + ph / 2})">'
        "seconds (median)</text>",
    ]
    for i, (name, pts) in enumerate(points.items()):
        c = colours[i % len(colours)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{c}" stroke-width="2"/>')
        dash = ' stroke-dasharray="6 4"' if name in dashed else ""
        out[-1] = out[-1].replace("/>", f"{dash}/>")
        for x, y in pts if not dash else ():
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{c}"/>')
        ly = top + 10 + 20 * i
        out.append(f'<line x1="{left + pw + 15}" y1="{ly}" x2="{left + pw + 40}" y2="{ly}" stroke="{c}" '
                   f'stroke-width="2"{dash}/>')  # fmt: skip
        out.append(f'<text x="{left + pw + 46}" y="{ly + 4}">{name}</text>')
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


# -- the benchmark --------------------------------------------------------------------------------------


def _med(runs: list[dict], step: str, key: str) -> dict | None:
    vals = [r[step][key] for r in runs if r[step].get(key) is not None]
    return stats(vals) if vals else None


def run(stack: Stack, *, quick: bool, reps: int) -> dict:
    sizes = bench_local.QUICK_SIZES if quick else bench_local.FULL_SIZES
    small_label, patients = next(iter(sizes.items()))
    big_label = "200k" if quick else "20M"
    labels = (small_label, big_label)
    changed = QUICK_NIGHT if quick else FULL_NIGHT
    net = bench_local.network(patients)
    platform = net.platform_of(bench_local.BASE_ID)
    s3 = _endpoint(stack).client()
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    nights = []
    try:
        t0 = time.monotonic()
        whs = build(stack, net, patients, labels)
        build_s = time.monotonic() - t0
        log.info("scale: warehouses built in %.0fs: %s", build_s,
                 {k: (v["measurement_rows"], v["persons"]) for k, v in whs.items()})  # fmt: skip
        src = _template_copy(stack, f"bench_local_{patients}", "bench_scale_src")
        # One unmeasured night first on each warehouse: whatever the platform does once after a bulk change
        # (statistics of the rows the build added, caches, the first autovacuum) is done before the nights
        # measured, which are then the nights of a warehouse in its steady state.
        warm = make_night(stack, net, src, 0, changed)
        for label in labels:
            run_night(stack, net, patients, label, warm)
        delete_prefix(s3, platform.intake.bucket, warm["prefix"])
        t1 = time.monotonic()
        for i in range(1, reps + 1):
            night = make_night(stack, net, src, i, changed)
            nights.append(night)
            order = labels if i % 2 == 0 else labels[::-1]  # interleaved: contention hits both sizes alike
            for label in order:
                r = run_night(stack, net, patients, label, night)
                runs[label].append(r)
                log.info(
                    "scale %s night %d: consolidation %.2fs (checks %.2fs), packaging %.2fs; RSS %.0f / %.0f MB",
                    *(label, i, r["consolidation"]["seconds"], r["checks"]["seconds"]),
                    *(r["packaging"]["seconds"], r["consolidation"]["peak_rss_mb"], r["packaging"]["peak_rss_mb"]),
                )
            delete_prefix(s3, platform.intake.bucket, night["prefix"])
        nights_s = time.monotonic() - t1
    finally:  # the intake and outbox prefixes, and the databases (GBs at full size): nothing left behind
        delete_prefix(s3, platform.intake.bucket, PREFIX)
        for label in labels:
            delete_prefix(s3, platform.outbox.bucket, _outbox_prefix(label))
        with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
            for db in ["bench_scale_src", *map(_db, labels)]:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
    out: dict = {"night_changed_rows": changed, "shares": SHARES, "check_phases": list(CHECK_PHASES), "sizes": {}}
    for label in labels:
        rs = runs[label]
        per = {
            "measurement_rows": whs[label]["measurement_rows"],
            "persons": whs[label]["persons"],
            "build_s": whs[label]["build_s"],
        }
        for step in STEPS:
            per[step] = {k: _med(rs, step, k) for k in ("seconds", "cpu_s", "server_cpu_s", "peak_rss_mb")}
            per[step] = {k: v for k, v in per[step].items() if v is not None}
        names = list(rs[0]["timings"])
        per["phase_s_median"] = {p: round(statistics.median(r["timings"].get(p, 0.0) for r in rs), 3) for p in names}
        per["phase_cpu_s_median"] = {
            p: round(statistics.median(r["cpu_timings"].get(p, 0.0) for r in rs), 3) for p in names if p != "total"
        }
        per["nights"] = rs
        out["sizes"][label] = per
    a, b = out["sizes"][small_label], out["sizes"][big_label]
    out["small"], out["big"] = small_label, big_label
    out["ratio"] = {step: ratio(b[step]["seconds"], a[step]["seconds"]) for step in STEPS}
    out["max_peak_rss_mb"] = max(
        s[step]["peak_rss_mb"]["max"] for s in out["sizes"].values() for step in ("consolidation", "packaging")
    )
    out["nights"] = [{k: v for k, v in n.items() if k != "manifest"} for n in nights]
    out["build_s"] = round(build_s, 1)
    out["nights_s"] = round(nights_s, 1)
    plot = RESULTS_DIR / ("scale-quick.svg" if quick else "scale.svg")
    series = {
        step: [(out["sizes"][lb]["measurement_rows"], out["sizes"][lb][step]["seconds"]["median"]) for lb in labels]
        for step in STEPS
    }
    (x0, y0), (x1, _) = series["consolidation"]
    target = f"target ≤ {TARGET:g}x ({small_label})"
    series[target] = [(x0, y0), (x1, TARGET * y0)]
    svg_plot(series, f"A night of {changed:,} changed rows, by warehouse size", plot, dashed=(target,))
    out["plot"] = str(plot.relative_to(SCRIPT.parents[1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
    else:
        ap.error("run the benchmarks with bench/run.py --only scale (or `make bench BENCH_ONLY=scale`)")


if __name__ == "__main__":
    os.environ.setdefault("EDS_HOME", str(Path(__file__).resolve().parents[1] / ".eds-bench"))
    main()
