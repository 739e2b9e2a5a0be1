"""The benchmark harness (`make bench`) cannot rot: its quick mode of the local benchmark runs end to end.

No timing is asserted (timings belong to bench/, never to tests); the test checks that every number the
report needs is measured and consistent.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.bench_modules import load_bench


@pytest.fixture(scope="module")
def quick_local(stack):
    run = load_bench("run")
    return run, run.run(["local"], quick=True, stack=stack)


def test_quick_local_bench_measures_every_reported_number(stack, quick_local):
    run, doc = quick_local
    local = doc["results"]["local"]
    bench_local = load_bench("bench_local")
    for label, patients in bench_local.QUICK_SIZES.items():
        s = local["sizes"][label]
        with psycopg.connect(stack.dsn(f"bench_local_{patients}")) as conn:
            assert s["rows"] == conn.execute("SELECT count(*) FROM omop.measurement").fetchone()[0] > 0
        assert s["raw_copy_s"]["median"] > 0 and s["extract_s"]["median"] > 0
        assert s["csv_bytes"] > 0 and s["parquet_bytes"] > 0
        # The step's own timer saw every phase, and the phases add up to no more than its total.
        timings = s["phase_seconds"][0]
        assert {"stream", "quality", "pseudonymise", "parquet", "upload"} <= set(timings)
        assert sum(v for k, v in timings.items() if k != "total") <= timings["total"] * 1.01
        assert 0 < s["quality_share"] < 1
        assert s["peak_rss_mb"]["median"] > 50  # a real child process with pyarrow loaded, not this one
    peer = local["peer"]
    small = local["sizes"][peer["size"]]
    assert 0 < peer["rows"] <= small["rows"] and peer["peer_s"]["median"] > 0
    assert peer["peer_peak_rss_mb"]["median"] > 0
    assert local["rss"]["growth"] > 0
    # The report renders every target of the local benchmark and the document is plain JSON.
    table = run.markdown(doc)
    for item in ("1. local pipeline", "1b. share of the step in quality checks", "2. local pipeline vs naive",
                 "3. peak RSS"):  # fmt: skip
        assert item in table
    assert json.loads(json.dumps(doc, default=str))["mode"] == "quick"


def test_quick_pseudonym_bench_measures_oprf_beside_hmac(stack):
    """Issue 19's bench (quick size): the OPRF round trip evaluated every patient once, beside the HMAC baseline,
    and the night's pseudonym phases were seen by the step's own timer."""
    run = load_bench("run")
    doc = run.run(["pseudonyms"], quick=True, stack=stack)
    ps = doc["results"]["pseudonyms"]
    assert "error" not in ps, ps.get("error")
    with psycopg.connect(stack.dsn(f"bench_local_{ps['patients']}")) as conn:
        assert ps["rows"] == conn.execute("SELECT count(*) FROM omop.measurement").fetchone()[0] > 0
        evaluated = conn.execute("SELECT count(*) FROM eds_local.level1_pseudonym").fetchone()[0]
    # every non-objecting patient went through the round trip into the hospital's map, once; the first night's
    # step then evaluated (again, on an emptied map) only the patients its rows refer to
    pp = ps["per_new_patient"]
    assert 0 < ps["evaluated_patients"] <= ps["patients"] and ps["round_trip_mapped"] == ps["evaluated_patients"]
    assert 0 < evaluated <= ps["evaluated_patients"]
    assert pp["hmac_us"]["median"] > 0 and pp["round_trip_us"]["total"]["median"] > 0
    assert {"blind", "evaluate", "finalize"} <= set(pp["oprf_crypto_us"]) and set(pp["round_trip_us"]) >= {"blind"}
    night = ps["night"]
    for timings in night["phase_seconds"] + ps["first_night"]["phase_seconds"]:
        assert {"identities", "pseudonymise"} <= set(timings)
    assert 0 < night["pseudonym_share"]["median"] < 1 and night["raw_copy_s"]["median"] > 0
    table = run.markdown(doc)
    for item in ("19a. level-1 pseudonym per new patient", "19b. per night", "19c. local step"):
        assert item in table
