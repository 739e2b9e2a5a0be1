"""Local level benchmarks (issue #12 items 1-3; targets of #4, #5 and #6). Not a test: run by `bench/run.py`.

Seeds one generated base (hosp_c resized: PERSON + MEASUREMENT only) into a database of its own
(`bench_local_<patients>`, reused by later runs) and measures, interleaved in the same run:

  raw     `COPY (SELECT <OMOP columns> FROM omop.measurement WHERE <interval>) TO STDOUT (FORMAT csv)` drained
          with psycopg: the extraction's own SELECT, the floor of any extraction;
  ours    `extract.extract_table` for MEASUREMENT over an interval covering every row (COPY streamed to Arrow,
          opposition filter, quality checks, level-1 pseudonymisation, Parquet, upload to the intake), each run
          in a fresh child process, as the DAG's task runs it (the hospital's level-1 map filled by one
          unmeasured run first) that reports the step's own phase timings (`TableBatch.timings`) and its
          peak RSS;
  peer    a naive pandas peer: `pd.read_sql` joined to the identity table, objectors dropped, a row-wise
          HMAC (`DataFrame.apply`), ids namespaced, free text emptied, `to_parquet` (child process, peak RSS).

Manual use (stack from the environment: EDS_HOME, EDS_PG_PORT, EDS_S3_PORT):
    .venv/bin/python bench/bench_local.py --profile 5600   # cProfile of one extraction -> bench/results/
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import datetime as dt
import io
import json
import logging
import os
import pstats
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, child_report, ratio, run_child, stats  # noqa: E402

from eds_network.core import copystream, omop
from eds_network.core.config import Network, load_network  # noqa: E402
from eds_network.core.storage import delete_prefix  # noqa: E402
from eds_network.dev import seed  # noqa: E402
from eds_network.dev.stack import Stack  # noqa: E402
from eds_network.local import extract

BASE_ID = "hosp_c"
TABLE = "measurement"
STAMP = (dt.datetime(2025, 3, 1, tzinfo=dt.UTC), dt.datetime(2025, 3, 2, tzinfo=dt.UTC))
INTERVAL = (dt.datetime(2025, 2, 28, tzinfo=dt.UTC), dt.datetime(2025, 3, 3, tzinfo=dt.UTC))
# ~361 MEASUREMENT rows per generated patient: 5,600 patients ~ 2 M rows, 22,400 ~ 8 M rows.
FULL_SIZES = {"2M": 5_600, "8M": 22_400}
QUICK_SIZES = {"20k": 56, "80k": 224}
PREFIX = "bench-local/"
SCRIPT = Path(__file__).resolve()

log = logging.getLogger("bench.local")


def network(patients: int) -> Network:
    return load_network().resized(BASE_ID, patients)


def resources(stack: Stack, net: Network, dsn: str, prefix: str = PREFIX) -> extract.LocalResources:
    return stack.local_resources(net, BASE_ID, source_dsn=dsn, intake_prefix=prefix)


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


def interval_sql(columns: list[str]) -> sql.Composable:
    return sql.SQL("SELECT {cols} FROM omop.{t} WHERE {c} >= {s} AND {c} < {e}").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        t=sql.Identifier(TABLE),
        c=sql.Identifier(omop.CHANGE_COLUMN),
        s=sql.Literal(INTERVAL[0]),
        e=sql.Literal(INTERVAL[1]),
    )


def _proc_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of a process from /proc (the PostgreSQL backend serving a COPY)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def raw_copy(dsn: str, cpu: dict | None = None) -> tuple[float, int]:
    """The extraction's own SELECT through COPY, drained to nothing. Returns (seconds, CSV bytes).

    `cpu`, if given, receives the CPU seconds of this client and of the server backend: on a shared machine
    wall time depends on the neighbours, CPU time much less.
    """
    query = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(interval_sql(omop.table(TABLE).column_names))
    nbytes = 0
    with psycopg.connect(dsn) as conn:
        backend = conn.info.backend_pid
        s0, c0, t0 = _proc_cpu_s(backend), time.process_time(), time.perf_counter()
        with conn.cursor() as cur, cur.copy(query) as copy:
            for chunk in copy:
                nbytes += len(chunk)
        el, c1, s1 = time.perf_counter() - t0, time.process_time(), _proc_cpu_s(backend)
    if cpu is not None:
        cpu["client_cpu_s"] = c1 - c0
        cpu["server_cpu_s"] = (s1 - s0) if s0 is not None and s1 is not None else None
    return el, nbytes


def full_extract(stack: Stack, net: Network, dsn: str, *, as_dag: bool = False) -> tuple[float, extract.TableBatch]:
    """`as_dag`: without the embedded stack's in-process level-1 evaluator, as the DAG's task runs (its map was
    filled by the blind -> evaluate -> finalize tasks before; a patient missing from it is quarantined)."""
    res = resources(stack, net, dsn)
    if as_dag:
        res = dataclasses.replace(res, level1_evaluate=None)
    t0 = time.perf_counter()
    tb = extract.extract_table(net.base(BASE_ID), TABLE, *INTERVAL, res)
    return time.perf_counter() - t0, tb


# -- the naive pandas peer ------------------------------------------------------------------------------


def naive_peer(stack: Stack, net: Network, patients: int, out: Path) -> tuple[float, int]:
    """What a first script would do: one DataFrame, a join to identities, a Python HMAC per row."""
    import pandas as pd
    import sqlalchemy

    from eds_network.core.crypto import Key, hmac256, id63
    from eds_network.local.pseudonymise import DEFAULT_TEXT_ALLOW_LIST, ID_NAMESPACE, linkage_identity

    base = net.base(BASE_ID)
    platform = net.platform_of(BASE_ID)
    secret = stack.keys(net)[platform.key_connection_id]
    key = Key.from_secret(platform.key_connection_id, secret["password"], secret["extra"]["version"])
    spec = omop.table(TABLE)
    site = base.finess or base.id
    engine = sqlalchemy.create_engine(stack.sqlalchemy_url(f"bench_local_{patients}"))
    t0 = time.perf_counter()
    cols = ", ".join(f"m.{c}" for c in spec.column_names)
    query = sqlalchemy.text(
        f"SELECT {cols}, i.nir, i.birth_date, i.sex, i.ipp FROM omop.{TABLE} m "
        f"JOIN identity.patient i USING (person_id) WHERE m.{omop.CHANGE_COLUMN} >= :s AND m.{omop.CHANGE_COLUMN} < :e"
    )
    with engine.connect() as conn:
        df = pd.read_sql(query, conn, params={"s": INTERVAL[0], "e": INTERVAL[1]})
        objectors = set(pd.read_sql(sqlalchemy.text("SELECT person_id FROM identity.opposition"), conn)["person_id"])
    df = df[~df["person_id"].isin(objectors)]

    def pseudonym(r) -> int:
        nir = r["nir"] if isinstance(r["nir"], str) else None  # pandas turns NULL into NaN
        return id63(hmac256(key, linkage_identity(nir, str(r["birth_date"]), r["sex"], r["ipp"], site)))

    df["person_id"] = df.apply(pseudonym, axis=1)
    for c in spec.columns:
        if c.is_id and c.name != "person_id":
            df[c.name] = df[c.name] + base.site_number * ID_NAMESPACE
        elif c.sql_type not in ("bigint", "double precision", "date", "timestamp") and (
            c.name not in DEFAULT_TEXT_ALLOW_LIST
        ):
            df[c.name] = None
    df = df.drop(columns=["nir", "birth_date", "sex", "ipp"])
    df.to_parquet(out)
    el = time.perf_counter() - t0
    engine.dispose()
    return el, len(df)


# -- child processes ------------------------------------------------------------------------------------


def child(argv: list[str]) -> None:
    """`--child extract N [dag]` / `--child peer N`: one measurement in this fresh process, JSON on stdout."""
    logging.basicConfig(level=logging.WARNING)
    kind, patients = argv[0], int(argv[1])
    stack = Stack.default()
    net = network(patients)
    if kind == "extract":
        c0 = time.process_time()  # every thread of this process
        el, tb = full_extract(stack, net, stack.dsn(f"bench_local_{patients}"), as_dag=argv[2:3] == ["dag"])
        child_report(
            seconds=el,
            cpu_s=time.process_time() - c0,
            rows=tb.extracted,
            published=tb.published,
            parquet_bytes=tb.bytes,
            timings=tb.timings,
            cpu_timings=tb.cpu_timings,
        )
    elif kind == "peer":
        out = Path(argv[2])
        c0 = time.process_time()
        el, n = naive_peer(stack, net, patients, out)
        cpu = time.process_time() - c0
        size = out.stat().st_size
        out.unlink()
        child_report(seconds=el, cpu_s=cpu, rows=n, parquet_bytes=size)
    else:
        raise SystemExit(f"unknown child {kind!r}")


def profile(patients: int) -> Path:
    """cProfile of one extraction in this process; the 40 costliest functions by cumulative time."""
    stack = Stack.default()
    net = network(patients)
    dsn = stack.dsn(f"bench_local_{patients}")
    prof = cProfile.Profile()
    prof.enable()
    _, tb = full_extract(stack, net, dsn)
    prof.disable()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"profile_extract_{patients}.txt"
    buf = io.StringIO()
    buf.write(f"extract_table {TABLE}, {tb.extracted} rows, phases (s): {json.dumps(tb.timings)}\n\n")
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(40)
    buf.write("\n")
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
    path.write_text(buf.getvalue())
    return path


# -- the benchmark --------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    import statistics

    return statistics.median(values) if values else 0.0


def _phase_shares(runs: list[dict]) -> dict:
    """Median share of the step's own total per phase, over the runs."""
    phases = sorted({p for r in runs for p in r["timings"] if p != "total"})
    return {
        p: _median([r["timings"].get(p, 0.0) / r["timings"]["total"] for r in runs if r["timings"]["total"]])
        for p in phases
    }


def run(stack: Stack, *, quick: bool, reps: int, big_reps: int, peer_reps: int) -> dict:
    """Items 1 (ours vs raw COPY, quality share), 2 (ours vs the pandas peer), 3 (peak RSS, small vs big)."""
    sizes = QUICK_SIZES if quick else FULL_SIZES
    (small_label, small), (big_label, big) = sizes.items()
    out: dict = {
        "table": TABLE,
        "block_size": copystream.COPY_BLOCK,
        "staging_compression": extract.STAGING_COMPRESSION,
    }
    per_size: dict[str, dict] = {}
    for label, patients in sizes.items():
        net = network(patients)
        dsn, rows, seeded_s = source_db(stack, patients)
        log.info("%s: %d patients, %d %s rows (seed %s)", label, patients, rows, TABLE,
                 f"{seeded_s:.0f}s" if seeded_s else "reused")  # fmt: skip
        raw_copy(dsn)  # warm: both sides read from shared buffers / the page cache
        # One unmeasured run with the stack's in-process level-1 evaluator fills the hospital's map (as the DAG's
        # blind -> evaluate -> finalize tasks do before extraction); the measured runs then extract as the DAG's
        # task does, without an evaluator in the step (issue 19's bench, 19c).
        run_child(SCRIPT, "extract", str(patients))
        raw_s, ours_s, children, raw_cpu = [], [], [], []
        nbytes = 0
        for i in range(
            reps if label == small_label else big_reps
        ):  # interleaved, so that a burst of contention hits both sides alike
            cpu: dict = {}
            el, nbytes = raw_copy(dsn, cpu)
            raw_s.append(el)
            raw_cpu.append(cpu)
            rep = run_child(SCRIPT, "extract", str(patients), "dag")
            if rep["rows"] != rows:
                raise RuntimeError(f"extract_table saw {rep['rows']} rows, the source holds {rows}")
            children.append(rep)
            ours_s.append(rep["seconds"])
            log.info("%s #%d: raw COPY %.2fs, extract_table %.2fs (quality %.2fs), peak RSS %.0f MB",
                     label, i + 1, el, rep["seconds"], rep["timings"].get("quality", 0), rep["peak_rss_mb"])  # fmt: skip
        sa, sb = stats(raw_s), stats(ours_s)
        shares = _phase_shares(children)
        # CPU seconds: what the neighbours on a shared machine do not change much. The server side of both
        # is the same COPY; its CPU is measured on the raw side (the backend of that connection).
        server = stats([c["server_cpu_s"] or 0.0 for c in raw_cpu])
        cpu_raw = stats([c["client_cpu_s"] + (c["server_cpu_s"] or 0.0) for c in raw_cpu])
        cpu_ours = stats([c["cpu_s"] + server["median"] for c in children])
        per_size[label] = {
            "patients": patients,
            "rows": rows,
            "seed_seconds": seeded_s,
            "csv_bytes": nbytes,
            "parquet_bytes": children[-1]["parquet_bytes"],
            "raw_copy_s": sa,
            "extract_s": sb,
            "ratio_extract_over_raw": ratio(sb, sa),
            "raw_copy_cpu_s": cpu_raw,
            "raw_copy_server_cpu_s": server,
            "extract_cpu_s": cpu_ours,
            "cpu_ratio_extract_over_raw": ratio(cpu_ours, cpu_raw),
            "rows_per_s_raw": rows / sa["median"],
            "rows_per_s_extract": rows / sb["median"],
            "phase_seconds": [c["timings"] for c in children],
            "children_cpu": [{"cpu_s": c["cpu_s"]} for c in children],
            "phase_share_median": shares,
            "quality_share": shares.get("quality", 0.0),
            # The checks' own cost: CPU of the step's thread in the quality phase over the CPU of the whole
            # process (all threads). The wall share above also counts the time the checks' many short Arrow
            # kernels wait to get the GIL and a core back from the reader, parser and writer threads.
            "quality_cpu_share": _median(
                [c["cpu_timings"].get("quality", 0.0) / c["cpu_s"] for c in children if c.get("cpu_s")]
            ),
            "phase_cpu_s_median": {
                p: _median([c["cpu_timings"].get(p, 0.0) for c in children])
                for p in sorted({p for c in children for p in c.get("cpu_timings", {})})
            },
            "rest_cpu_s_median": _median(  # other threads + set-up
                [c["cpu_s"] - sum(c["cpu_timings"].values()) for c in children if c.get("cpu_timings")]
            ),
            "peak_rss_mb": stats([c["peak_rss_mb"] for c in children]),
        }
        delete_prefix(resources(stack, net, dsn).intake.client(), net.platform_of(BASE_ID).intake.bucket, PREFIX)
    out["sizes"] = per_size

    # Item 2: the naive peer on the small size, in child processes (it needs GBs at 2 M rows).
    s = per_size[small_label]
    peer_s, peer_rss, peer_cpu = [], [], []
    tmp = RESULTS_DIR / "peer.parquet"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for i in range(peer_reps):
        rep = run_child(SCRIPT, "peer", str(small), str(tmp))
        peer_s.append(rep["seconds"])
        peer_rss.append(rep["peak_rss_mb"])
        peer_cpu.append(rep["cpu_s"])
        log.info("%s peer #%d: %.1fs, peak RSS %.0f MB, %d rows", small_label, i + 1, rep["seconds"],
                 rep["peak_rss_mb"], rep["rows"])  # fmt: skip
    sp = stats(peer_s)
    out["peer"] = {
        "size": small_label,
        "rows": s["rows"],
        "peer_s": sp,
        "peer_peak_rss_mb": stats(peer_rss),
        "speedup_ours_vs_peer": ratio(sp, s["extract_s"]),
        "peer_client_cpu_s": stats(peer_cpu),
        "cpu_speedup_ours_vs_peer": ratio(stats(peer_cpu), stats([c["cpu_s"] for c in s["children_cpu"]])),
        "peer_over_raw_copy": ratio(sp, s["raw_copy_s"]),
    }
    # Item 3: peak RSS, small vs big.
    a, b = per_size[small_label]["peak_rss_mb"], per_size[big_label]["peak_rss_mb"]
    out["rss"] = {
        "small": small_label,
        "big": big_label,
        "small_mb": a,
        "big_mb": b,
        "growth": ratio(b, a),
        "max_mb": max(a["max"], b["max"]),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--profile", type=int, metavar="PATIENTS", help="cProfile one extraction of a seeded size")
    args = ap.parse_args()
    if args.child:
        child(args.child)
    elif args.profile:
        logging.basicConfig(level=logging.WARNING)
        print(profile(args.profile))
    else:
        ap.error("run the benchmarks with bench/run.py (or `make bench`)")


if __name__ == "__main__":
    os.environ.setdefault("EDS_HOME", str(Path(__file__).resolve().parents[1] / ".eds-bench"))
    main()
