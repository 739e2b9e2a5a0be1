"""Shared helpers of the benchmarks: statistics, child processes with their peak RSS, machine description."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS_DIR = BENCH / "results"  # git-ignored scratch (quick runs, profiles)


def stats(xs: list[float]) -> dict:
    """Median, min, max and every run (>= 1 run; a full `make bench` takes >= 3)."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": [round(x, 4) for x in xs]}


def ratio(a: dict, b: dict) -> float:
    """median(a) / median(b)."""
    return a["median"] / b["median"] if b["median"] else float("inf")


def run_child(script: Path, *args: str, env: dict | None = None) -> dict:
    """Run `script --child args…` in a fresh interpreter; returns the JSON object it prints last.

    The child reports its own peak RSS (`ru_maxrss` of RUSAGE_SELF, i.e. VmHWM): a fresh process per
    measurement, so a run never inherits the heap of the previous one.
    """
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(script), "--child", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if out.returncode != 0:
        raise RuntimeError(f"{script.name} --child {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    rep = json.loads(out.stdout.strip().splitlines()[-1])
    rep["process_wall_s"] = time.perf_counter() - t0
    return rep


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux: ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_report(**values) -> None:
    """What a child prints last: its measurements plus its peak RSS."""
    print(json.dumps({**values, "peak_rss_mb": peak_rss_mb()}, default=str), flush=True)


def _cpuinfo() -> dict:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"model": model or platform.processor(), "logical_cpus": os.cpu_count()}


def _meminfo() -> dict:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, v = line.split(":", 1)
            if k in ("MemTotal", "MemAvailable", "SwapTotal"):
                out[k] = f"{int(v.split()[0]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return out


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine(pg_version: str | None = None) -> dict:
    """Where the numbers come from: CPU, memory, load (contention), versions."""
    cpu = _cpuinfo()
    versions = {"python": platform.python_version()}
    for dist in ("apache-airflow", "pyarrow", "psycopg", "pandas", "boto3", "moto", "pynacl"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    if pg_version:
        versions["postgresql"] = pg_version
    return {
        "cpu": cpu,
        "memory": _meminfo(),
        "platform": platform.platform(),
        "versions": versions,
        "load_average_at_start": load_average(),
    }
