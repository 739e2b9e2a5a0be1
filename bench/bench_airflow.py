"""Airflow-side benchmarks (issue #12 items 6 and 7). Not a test: run by `bench/run.py`.

Item 6, DAG folder parse time with N configured bases: a network file with N generated bases (20 per platform)
is written beside the results and handed to the DAG files through $EDS_NETWORK_CONFIG (what
`config.load_network()` honours). Per run, a fresh interpreter builds a `DagBag` of `dags/` (what the DAG
processor does); it reports the time to import Airflow, the DagBag parse wall time and the per-file parse
durations Airflow itself records (`DagBag.dagbag_stats`, what `airflow dags report` prints).

Item 7, a full demo network night: the default demo network seeded on the bench stack (`eds seed`), then
`cli.run_night` (what `eds night` runs: every DAG through `airflow dags test`, level by level).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, RESULTS_DIR, stats  # noqa: E402

from eds_network.core.config import load_network  # noqa: E402
from eds_network.dev.stack import Stack  # noqa: E402

log = logging.getLogger("bench.airflow")
PER_PLATFORM = 20

_PARSE = r"""
import json, sys, time
t0 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
t1, c1 = time.perf_counter(), time.process_time()
bag = DagBag(dag_folder=sys.argv[1])
t2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({
    "import_airflow_s": t1 - t0,
    "dagbag_s": t2 - t1,
    "dagbag_cpu_s": c2 - c1,
    "dags": len(bag.dags),
    "import_errors": {k: v[-300:] for k, v in bag.import_errors.items()},
    "files": {s.file: s.duration.total_seconds() for s in bag.dagbag_stats},
}))
"""


def network_file(n_bases: int, path: Path) -> Path:
    """The demo network grown to `n_bases` generated bases, 20 per platform (valid for `load_network`)."""
    raw = load_network().model_dump(mode="json", exclude_defaults=True)  # as a person would write it
    template_platform = raw["platforms"][0]
    template_base = next(
        m for m in template_platform["members"] if m.get("seed", {}).get("source", "generated") == "generated"
    )
    platforms = []
    for p in range((n_bases + PER_PLATFORM - 1) // PER_PLATFORM):
        pid = f"pf{p:03d}"
        members = []
        for j in range(min(PER_PLATFORM, n_bases - p * PER_PLATFORM)):
            bid = f"{pid}_b{j:02d}"
            m = {k: v for k, v in template_base.items() if k not in ("platform", "asset_uri")}
            m.update(
                id=bid,
                label=f"Bench base {bid}",
                site_number=j + 1,
                finess=f"{(p * 100 + j) % 10**9:09d}",
                source_connection_id=f"eds_src_{bid}",
                seed={**template_base["seed"], "shared_with": []},
            )
            members.append(m)
        platforms.append(
            {
                **{k: v for k, v in template_platform.items() if k != "members"},
                "id": pid,
                "label": f"Bench platform {pid}",
                "warehouse_connection_id": f"eds_wh_{pid}",
                "key_connection_id": f"eds_key_l1_{pid}",
                "intake": {**template_platform["intake"], "bucket": f"eds-intake-{pid.replace('_', '-')}"},
                "outbox": {**template_platform["outbox"], "bucket": f"eds-outbox-{pid.replace('_', '-')}"},
                "members": members,
            }
        )
    raw["platforms"] = platforms
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    net = load_network(path)
    assert len(net.local_bases) == n_bases
    return path


def run_dagparse(stack: Stack, *, n_bases: int, reps: int) -> dict:
    cfg = network_file(n_bases, RESULTS_DIR / f"network_{n_bases}_bases.yaml")
    env = {**os.environ, **stack.airflow_env(), "EDS_NETWORK_CONFIG": str(cfg)}
    runs = []
    for i in range(reps):
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", _PARSE, str(REPO / "dags")], env=env, capture_output=True, text=True, check=True
        )
        rep = json.loads(out.stdout.strip().splitlines()[-1])
        rep["process_wall_s"] = time.perf_counter() - t0
        if rep["import_errors"]:
            raise RuntimeError(f"DAG import errors with {n_bases} bases: {rep['import_errors']}")
        runs.append(rep)
        log.info("dag parse #%d (%d bases): DagBag %.2fs, process %.2fs, %d DAGs",
                 i + 1, n_bases, rep["dagbag_s"], rep["process_wall_s"], rep["dags"])  # fmt: skip
    files = sorted(runs[0]["files"])
    return {
        "bases": n_bases,
        "dags": runs[0]["dags"],
        "dagbag_s": stats([r["dagbag_s"] for r in runs]),
        "dagbag_cpu_s": stats([r["dagbag_cpu_s"] for r in runs]),
        "process_wall_s": stats([r["process_wall_s"] for r in runs]),
        "import_airflow_s": stats([r["import_airflow_s"] for r in runs]),
        "per_file_s": {Path(f).name: stats([r["files"][f] for r in runs]) for f in files},
    }


def run_night(stack: Stack, *, reps: int) -> dict:
    """A whole demo night on the default demo size: seed once, then `eds night` `reps` times."""
    from eds_network import cli

    net = load_network()
    t0 = time.perf_counter()
    counts = cli.seed_network(net, cli.demo_interval())
    seed_s = time.perf_counter() - t0
    import resource

    walls, cpus, per_dag, ok = [], [], [], True
    for i in range(reps):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        results = cli.run_night(net)
        walls.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU of every Airflow process the night ran (children, waited for); PostgreSQL and S3 not included.
        cpus.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
        per_dag.append({d: round(s, 1) for d, _, s in results})
        ok = ok and all(good for _, good, _ in results)
        log.info("night #%d: %.0fs, %s", i + 1, walls[-1], "ok" if ok else "FAILED")
    return {
        "bases": len(net.local_bases),
        "source_rows": sum(sum(t.values()) for t in counts.values()),
        "seed_s": seed_s,
        "night_s": stats(walls),
        "airflow_processes_cpu_s": stats(cpus),
        "per_dag_s": per_dag,
        "all_ok": ok,
        "parallel": int(os.environ.get("EDS_NIGHT_PARALLEL", "4")),
    }
