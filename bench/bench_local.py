"""Benchmark of the local level's extraction against a raw COPY of the same rows (run manually, not a test).

    EDS_HOME=/tmp/eds-bench EDS_PG_PORT=57432 EDS_S3_PORT=57900 .venv/bin/python bench/bench_local.py [--quick]

Seeds one generated base (hosp_c resized: PERSON + MEASUREMENT only) into a database of its own on the
embedded stack given by the environment (EDS_HOME, EDS_PG_PORT, EDS_S3_PORT; started if needed), then
measures, 3 repetitions each, in the same process:

  (a) raw   `COPY (SELECT <OMOP columns> FROM omop.measurement WHERE <interval>) TO STDOUT (FORMAT csv)`
            drained with psycopg (the same SELECT as the extraction: the floor of any extraction);
  (b) full  `extract.extract_table` for MEASUREMENT over an interval covering every row: COPY streamed to
            Arrow, opposition filter, quality checks, level-1 pseudonymisation, Parquet, upload to S3.

and the peak RSS of (b) in a fresh subprocess (ru_maxrss). Sizes: ~2M rows (5,600 patients) and ~8M rows
(22,400 patients; skipped with --quick). A seeded database is reused by later runs (`bench_local_<n>`).
Writes bench/results/local.json and prints a markdown table. Target: median(b) / median(a) <= 2.0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

from eds_network import extract, omop, seed
from eds_network.config import Network, load_network
from eds_network.stack import Stack
from eds_network.storage import delete_prefix

BASE_ID = "hosp_c"
TABLE = "measurement"
STAMP = (dt.datetime(2025, 3, 1, tzinfo=dt.UTC), dt.datetime(2025, 3, 2, tzinfo=dt.UTC))
INTERVAL = (dt.datetime(2025, 2, 28, tzinfo=dt.UTC), dt.datetime(2025, 3, 3, tzinfo=dt.UTC))
SIZES = {"2M": 5_600, "8M": 22_400}
REPS = 3
PREFIX = "bench-local/"
RESULTS = Path(__file__).resolve().parent / "results" / "local.json"

log = logging.getLogger("bench_local")


def network(patients: int) -> Network:
    return load_network().resized(BASE_ID, patients)


def resources(stack: Stack, net: Network, dsn: str) -> extract.LocalResources:
    return stack.local_resources(net, BASE_ID, source_dsn=dsn, intake_prefix=PREFIX)


def source_db(stack: Stack, patients: int) -> tuple[str, int, float | None]:
    """The seeded database for `patients` (seeded on first use). Returns (dsn, measurement rows, seed s)."""
    dsn = stack.create_database(f"bench_local_{patients}")
    with psycopg.connect(dsn) as conn:
        done = conn.execute("SELECT to_regclass('omop.measurement') IS NOT NULL").fetchone()[0] and (
            conn.execute("SELECT count(*) FROM omop.person").fetchone()[0] == patients
        )
        if done:
            return dsn, conn.execute("SELECT count(*) FROM omop.measurement").fetchone()[0], None
    t0 = time.monotonic()
    counts = seed.seed_base(dsn, network(patients), BASE_ID, STAMP, tables=["person", TABLE])
    return dsn, counts[TABLE], time.monotonic() - t0


def raw_copy(dsn: str) -> tuple[float, int]:
    """(a): the extraction's own SELECT, through COPY, drained to nothing."""
    columns = omop.table(TABLE).column_names
    query = sql.SQL("COPY (SELECT {cols} FROM omop.{t} WHERE {c} >= {s} AND {c} < {e}) TO STDOUT (FORMAT csv)").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        t=sql.Identifier(TABLE),
        c=sql.Identifier(omop.CHANGE_COLUMN),
        s=sql.Literal(INTERVAL[0]),
        e=sql.Literal(INTERVAL[1]),
    )
    t0 = time.perf_counter()
    nbytes = 0
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(query) as copy, open(os.devnull, "wb") as null:
        for chunk in copy:
            null.write(chunk)
            nbytes += len(chunk)
    return time.perf_counter() - t0, nbytes


def full_extract(stack: Stack, net: Network, dsn: str) -> tuple[float, extract.TableBatch]:
    """(b): extract_table, everything included (quality, pseudonymisation, Parquet, upload)."""
    res = resources(stack, net, dsn)
    t0 = time.perf_counter()
    tb = extract.extract_table(net.base(BASE_ID), TABLE, *INTERVAL, res)
    return time.perf_counter() - t0, tb


def child(patients: int) -> None:
    """Subprocess mode: one extraction, then report this process's peak RSS."""
    stack = Stack.default()
    dsn = stack.dsn(f"bench_local_{patients}")
    el, tb = full_extract(stack, network(patients), dsn)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": el, "rows": tb.extracted, "peak_rss_kb": peak_kb}))


def stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}


def bench_size(stack: Stack, label: str, patients: int) -> dict:
    net = network(patients)
    dsn, rows, seeded_s = source_db(stack, patients)
    log.info("%s: %d patients, %d %s rows (seed %s)", label, patients, rows, TABLE,
             f"{seeded_s:.0f}s" if seeded_s else "reused")  # fmt: skip
    raw_copy(dsn)  # warm the cache: both measurements read from shared buffers / page cache
    a, b = [], []
    nbytes = 0
    tb = None
    for i in range(REPS):
        el, nbytes = raw_copy(dsn)
        a.append(el)
        log.info("%s (a) raw COPY #%d: %.2fs", label, i + 1, el)
    for i in range(REPS):
        el, tb = full_extract(stack, net, dsn)
        b.append(el)
        log.info("%s (b) extract_table #%d: %.2fs", label, i + 1, el)
    assert tb is not None and tb.extracted == rows
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(patients)], check=True, capture_output=True, text=True
    )
    rep = json.loads(out.stdout.strip().splitlines()[-1])
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    delete_prefix(resources(stack, net, dsn).intake.client(), net.platform("idf").intake.bucket, PREFIX)
    sa, sb = stats(a), stats(b)
    return {
        "label": label,
        "patients": patients,
        "rows": rows,
        "csv_bytes": nbytes,
        "parquet_bytes": tb.bytes,
        "published": tb.published,
        "quarantined": tb.quarantined,
        "excluded_objection": tb.excluded_objection,
        "seed_seconds": seeded_s,
        "raw_copy_s": sa,
        "extract_s": sb,
        "ratio_b_over_a": sb["median"] / sa["median"],
        "rows_per_s_raw": rows / sa["median"],
        "rows_per_s_extract": rows / sb["median"],
        "extract_peak_rss_mb": rep["peak_rss_kb"] / 1024,
        "children_max_rss_mb": max(children_kb, before) / 1024,
        "subprocess_extract_s": rep["seconds"],
    }


def markdown(results: list[dict]) -> str:
    lines = [
        "| rows | (a) raw COPY s, median [min-max] | (b) extract_table s, median [min-max] | b/a | "
        "rows/s (b) | peak RSS (b) |",
        "| ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        a, b = r["raw_copy_s"], r["extract_s"]
        lines.append(
            f"| {r['rows']:,} | {a['median']:.2f} [{a['min']:.2f}-{a['max']:.2f}] | "
            f"{b['median']:.2f} [{b['min']:.2f}-{b['max']:.2f}] | {r['ratio_b_over_a']:.2f} | "
            f"{r['rows_per_s_extract']:,.0f} | {r['extract_peak_rss_mb']:,.0f} MB |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2M rows only (skip 8M)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if args.child:
        child(args.child)
        return
    log.setLevel(logging.INFO)
    t0 = time.monotonic()
    stack = Stack.default()
    stack.start(load_network(), migrate=False)
    sizes = {"2M": SIZES["2M"]} if args.quick else SIZES
    results = [bench_size(stack, label, n) for label, n in sizes.items()]
    doc = {
        "bench": "local extraction vs raw COPY",
        "table": TABLE,
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "block_size": extract.BLOCK_SIZE,
        "repetitions": REPS,
        "target_ratio": 2.0,
        "results": results,
        "total_seconds": time.monotonic() - t0,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2))
    print(markdown(results))
    print(f"\n{RESULTS} written in {doc['total_seconds']:.0f}s")


if __name__ == "__main__":
    main()
