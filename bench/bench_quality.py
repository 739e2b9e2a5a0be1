"""The Arrow quality engine on a large synthetic MEASUREMENT batch (was a wall-clock assertion in the unit tests).

Not a test: run by hand, it prints the seconds of one `quality.check_batch` on `--rows` rows (suites loaded
first) and exits non-zero when that is over `--budget` seconds. Figures belong in BENCHMARKS.md.
    .venv/bin/python bench/bench_quality.py --rows 1000000 --budget 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

import numpy as np
import pyarrow as pa

from eds_network.core import omop
from eds_network.quality import check_batch

GLUCOSE, MMOL, LAB = 3013721, 8645, 32817


def batch(n: int) -> pa.Table:
    rng = np.random.default_rng(0)
    given = {
        "measurement_id": np.arange(1, n + 1),
        "person_id": rng.integers(1, 4, n),
        "measurement_concept_id": np.full(n, GLUCOSE),
        "measurement_date": [dt.date(2021, 3, 1)] * n,
        "measurement_type_concept_id": np.full(n, LAB),
        "unit_concept_id": np.full(n, MMOL),
        "value_as_number": rng.normal(5, 1, n),
    }
    cols = {c.name: pa.array(given.get(c.name, [None] * n), c.arrow_type) for c in omop.table("measurement").columns}
    return pa.table(cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds")
    args = ap.parse_args()
    data = batch(args.rows)
    known = pa.array([1, 2, 3])
    check_batch("bench", "measurement", data[:10], known_person_ids=known)  # suites parsed once per process
    started = time.perf_counter()
    q = check_batch("bench", "measurement", data, known_person_ids=known)
    seconds = time.perf_counter() - started
    print(f"arrow engine: {q.rows} rows in {seconds:.2f} s (budget {args.budget:g} s)")
    sys.exit(0 if seconds <= args.budget else 1)


if __name__ == "__main__":
    main()
