"""Benchmark of research projects (issue 21): permit-to-dataset time and peak memory of one project extract.

    python bench/bench_projects.py [--quick] [--rows N]     (the embedded stack of $EDS_HOME / $EDS_PG_PORT …)
    make bench / bench/run.py --only projects                (part of `make bench`: target 21 of BENCHMARKS.md)

Builds national tables of their own (a fresh HDH database, its own landing prefix): one platform's delivery of
N measurement rows (default 2,000,000; --quick: 200,000) for N/20 persons, plus conditions, applied as the
national step does; then, per run, in a fresh child process: a project is created and granted, its dataset
extracted (cohort = the persons with one condition, about a third of them; measurement + person permitted) and
delivered into its area. Reported: the permit -> delivered time the catalogue records (the HDH's lead time), the
extract's wall time and the child's peak RSS. Results in bench/results/projects.json; BENCHMARKS.md quotes them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CONCEPT = 4251306
FULL_ROWS, QUICK_ROWS = 2_000_000, 200_000


def _delivery(rows: int) -> dict:
    import numpy as np
    import pyarrow as pa

    persons = max(rows // 20, 10)
    rng = np.random.default_rng(21)
    pid = np.arange(1, persons + 1, dtype=np.int64)
    mp = rng.integers(1, persons + 1, rows, dtype=np.int64)
    days = rng.integers(0, 3650, rows)
    cond_p = pid[rng.random(persons) < 0.33]
    return {
        "person": pa.table(
            {
                "person_id": pa.array(pid),
                "gender_concept_id": pa.array(np.where(pid % 2 == 0, 8532, 8507).astype(np.int64)),
                "year_of_birth": pa.array((1930 + pid % 80).astype(np.int64)),
            }
        ),
        "condition_occurrence": pa.table(
            {
                "condition_occurrence_id": pa.array(np.arange(1, len(cond_p) + 1, dtype=np.int64)),
                "person_id": pa.array(cond_p),
                "condition_concept_id": pa.array(np.full(len(cond_p), CONCEPT, dtype=np.int64)),
                "condition_start_date": pa.array(
                    [dt.date(2018, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 2000, len(cond_p))],
                    pa.date32(),
                ),
            }
        ),
        "measurement": pa.table(
            {
                "measurement_id": pa.array(np.arange(1, rows + 1, dtype=np.int64)),
                "person_id": pa.array(mp),
                "measurement_concept_id": pa.array(rng.choice([3004249, 3012888, 3027018], rows).astype(np.int64)),
                "measurement_date": pa.array((np.datetime64("2016-01-01") + days).astype("datetime64[D]")),
                "value_as_number": pa.array(rng.normal(100, 20, rows)),
            }
        ),
    }


def _world(prefix: str, dbname: str):
    from eds_network import project_cli
    from eds_network.core.config import load_network
    from eds_network.core.storage import S3Endpoint
    from eds_network.dev.stack import Stack
    from eds_network.national import tables
    from eds_network.orchestration import project_tasks

    stack = Stack.default()
    network = load_network()
    zone = network.national.landing_zone.model_copy(update={"prefix": prefix})
    network = network.model_copy(update={"national": network.national.model_copy(update={"landing_zone": zone})})
    national = tables.NationalTables(stack.dsn(dbname), S3Endpoint(stack.s3_endpoint, *stack.s3_login))
    base = project_cli._project_resources(stack, load_network())
    res = project_tasks.ProjectResources(
        base.catalogue_dsn, national, national.landing, base.national_key, base.signing_key
    )
    return stack, network, res


def child(prefix: str, dbname: str) -> None:
    """One permit -> dataset in a fresh process: create, grant, extract + deliver; prints the measurements."""
    from eds_network.catalogue import projects
    from eds_network.core.cohort import Cohort
    from eds_network.orchestration import project_tasks

    stack, network, res = _world(prefix, dbname)
    pid = f"bench-{uuid.uuid4().hex[:8]}"
    cohort = Cohort.model_validate(
        {
            "name": "bench",
            "period": {"start": "2015-01-01", "end": "2027-01-01"},
            "criteria": [{"table": "condition_occurrence", "concepts": [CONCEPT]}],
        }
    )
    tables = {
        "person": ["person_id", "gender_concept_id", "year_of_birth"],
        "measurement": ["measurement_id", "person_id", "measurement_concept_id", "measurement_date", "value_as_number"],
    }
    projects.create(
        res.catalogue_dsn, pid, title="bench", purpose="benchmark", requester="bench", bases=["hosp_a", "hosp_b", "hosp_c"],
        tables=tables, cohort=json.loads(cohort.model_dump_json()), actor="bench",
    )  # fmt: skip
    projects.grant(
        res.catalogue_dsn, pid, permit_reference="B-1", issuer="HDH", expires_on=dt.date(2099, 1, 1), actor="bench"
    )
    t0 = time.perf_counter()
    ds = project_tasks.extract_project(network, res, pid, actor="bench")
    wall = time.perf_counter() - t0
    p = projects.get(res.catalogue_dsn, pid, actor="bench")
    project_tasks.project_extract.delete_area(res.area.client(), network.national.landing_zone.bucket, pid)
    common.child_report(
        extract_s=wall,
        permit_to_delivery_s=p["lead_time_days"] * 86400,
        persons=ds["persons"],
        rows=ds["rows"],
        bytes=ds["bytes"],
    )


def run(*, rows: int, reps: int, quick: bool = False) -> dict:
    """Build the national tables of `rows` measurements, then `reps` permit -> dataset runs in child processes;
    the results (also written to bench/results/projects[-quick].json). `make bench` calls this (`bench/run.py`)."""
    import psycopg
    from psycopg import sql

    from eds_network.dev.landing import land_delivery
    from eds_network.dev.stack import Stack
    from eds_network.national import tables

    prefix, dbname = f"bench-{uuid.uuid4().hex[:8]}/", f"bench_hdh_{uuid.uuid4().hex[:8]}"
    Stack.default().create_database(dbname)
    stack, network, res = _world(prefix, dbname)
    try:
        t0 = time.perf_counter()
        applied = tables.apply_delivery(
            network.national,
            res.national,
            land_delivery(
                network.national, res.national.landing, "idf", _delivery(rows), key_versions={"national": "v1"}
            ),
        )
        setup = time.perf_counter() - t0
        runs = [common.run_child(Path(__file__), prefix, dbname) for _ in range(reps)]
    finally:
        with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
    out = {
        "measurement_rows": rows,
        "national_apply_s": round(setup, 2),
        "applied": {t: v["rows"] for t, v in applied.tables.items()},
        "extract_s": common.stats([r["extract_s"] for r in runs]),
        "permit_to_delivery_s": common.stats([r["permit_to_delivery_s"] for r in runs]),
        "peak_rss_mb": common.stats([r["peak_rss_mb"] for r in runs]),
        "dataset": {k: runs[0][k] for k in ("persons", "rows", "bytes")},
        "machine": common.machine(),
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    out["hours_for_200_projects"] = round(200 * out["permit_to_delivery_s"]["median"] / 3600, 2)
    common.RESULTS_DIR.mkdir(exist_ok=True)
    path = common.RESULTS_DIR / ("projects-quick.json" if quick else "projects.json")
    path.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    rows = args.rows or (QUICK_ROWS if args.quick else FULL_ROWS)
    out = run(rows=rows, reps=1 if args.quick else args.reps, quick=args.quick)
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
