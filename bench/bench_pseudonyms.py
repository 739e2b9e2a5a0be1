"""Pseudonymisation cost (issue 19): level-1 pseudonyms by the RFC 9497 OPRF beside the former HMAC-SHA-256.

Not a test: run by `bench/run.py` (`--only pseudonyms`). On the local benchmark's seeded base (hosp_c resized,
PERSON + MEASUREMENT; 5,600 patients = 2 M measurement rows, `--quick` 56 patients = 20 k rows):

  per new patient  the same linkage identities (every non-objecting patient of `identity.patient`), three ways:
    hmac           the former level-1 pseudonym, `id63(HMAC-SHA-256(level-1 key, linkage identity))`, computed
                   here only as the baseline (the pipeline no longer has it);
    oprf crypto    `oprf.blind` -> `oprf.blind_evaluate` -> `oprf.finalize` per identity, in memory: the
                   cryptography alone, each of the three steps timed;
    oprf round trip the pipeline's own functions, batched as the DAG runs them: the hospital's map emptied, then
                   `keys.evaluate.announce`, `local.level1.blind_new_identities` (blinds kept in the hospital's
                   database, blinded elements posted to the key holder's exchange area on S3),
                   `keys.evaluate.evaluate_request`, `local.level1.finalize_evaluations` (response read back,
                   checked, unblinded into `eds_local.level1_pseudonym`); each party's wall time.
  per night        `extract.extract_table` of MEASUREMENT in a fresh child process, interleaved with a raw
                   `COPY … TO STDOUT` of the same rows (`bench_local`): the step's ratio to raw COPY, and the share
                   of its time (wall and thread CPU, from `TableBatch.timings` / `cpu_timings`) in the
                   pseudonymisation phases: `identities` (identities and map lookup of the batch's patients) and
                   `pseudonymise` (person ids mapped, row ids re-keyed by AES, text emptied or scrubbed). Runs
                   as the DAG's task does, on the map the round trip filled (every patient already evaluated, no
                   evaluator in the step), and once with the map emptied, where the step evaluates its new
                   patients itself batch by batch (`dev.level1.in_process`, the embedded stack's stand-in for
                   the DAG's round trip, which the local bench's item 1 uses on every run).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import bench_local
import psycopg
from common import ratio, run_child, stats

from eds_network.core import oprf
from eds_network.core.crypto import Key, hmac256, id63
from eds_network.core.identity import linkage_identity
from eds_network.core.storage import S3Endpoint, delete_prefix
from eds_network.dev.stack import Stack
from eds_network.keys import evaluate
from eds_network.local import level1
from eds_network.local.migrations import MIGRATIONS

FULL_PATIENTS = bench_local.FULL_SIZES["2M"]
QUICK_PATIENTS = bench_local.QUICK_SIZES["20k"]
PREFIX = "bench-pseudonyms/"
PHASES = ("identities", "pseudonymise")

log = logging.getLogger("bench.pseudonyms")


def _level1_key(stack: Stack, net, platform) -> Key:
    secret = stack.keys(net)[platform.key_connection_id]
    return Key.from_secret(platform.key_connection_id, secret["password"], secret["extra"]["version"])


def _identities(dsn: str) -> list[tuple]:
    """(nir, birth_date, sex, ipp) of every patient the round trip evaluates (objectors excepted)."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT p.nir, p.birth_date, p.sex, p.ipp FROM identity.patient p WHERE NOT EXISTS"
            " (SELECT 1 FROM identity.opposition o WHERE o.person_id = p.person_id) ORDER BY p.person_id"
        ).fetchall()


def _clear_map(dsn: str) -> None:
    """Forget every level-1 pseudonym of the hospital: its patients are new again."""
    MIGRATIONS.ensure(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM eds_local.level1_pending")
        conn.execute("DELETE FROM eds_local.level1_pseudonym")
        conn.execute("DELETE FROM eds_local.level1_state")


def hmac_baseline(key: Key, rows: list[tuple], site: str) -> float:
    t0 = time.perf_counter()
    for nir, birth_date, sex, ipp in rows:
        id63(hmac256(key, linkage_identity(nir, birth_date, sex, ipp, site)))
    return time.perf_counter() - t0


def oprf_crypto(server: oprf.ServerKey, rows: list[tuple], site: str) -> dict[str, float]:
    """Seconds of each OPRF step over every identity, in memory (identity strings built in `blind`'s time)."""
    t0 = time.perf_counter()
    inputs = [linkage_identity(nir, bd, sex, ipp, site).encode() for nir, bd, sex, ipp in rows]
    blinded = [oprf.blind(x) for x in inputs]
    t1 = time.perf_counter()
    evaluated = [oprf.blind_evaluate(server, b) for _, b in blinded]
    t2 = time.perf_counter()
    for x, (r, _), e in zip(inputs, blinded, evaluated, strict=True):
        oprf.finalize(x, r, e)
    t3 = time.perf_counter()
    return {"blind": t1 - t0, "evaluate": t2 - t1, "finalize": t3 - t2, "total": t3 - t0}


def round_trip(stack: Stack, net, dsn: str, key: Key, *, rep: int) -> dict[str, float | int]:
    """The DAG's blind -> evaluate -> finalize on an emptied map, through the key holder's exchange area."""
    platform = net.platform_of(bench_local.BASE_ID)
    base = net.base(bench_local.BASE_ID)
    site = base.finess or base.id
    exchange = S3Endpoint(stack.s3_endpoint, *stack.s3_login, verify=stack.s3_verify)
    bucket = platform.key_holder.exchange.bucket
    batch = f"bench-{rep}"
    server = evaluate.server_key(key, platform.id)
    _clear_map(dsn)
    t0 = time.perf_counter()
    evaluate.announce(exchange, bucket, PREFIX, base=base.id, batch=batch, version=key.version)
    t1 = time.perf_counter()
    blinded = level1.blind_new_identities(dsn, exchange, bucket, PREFIX, base=base.id, site=site, batch=batch)
    t2 = time.perf_counter()
    done = evaluate.evaluate_request(
        exchange, bucket, PREFIX, base=base.id, batch=batch, key=server, version=key.version,
        already_tonight=0, ceiling=10**9,
    )  # fmt: skip
    t3 = time.perf_counter()
    final = level1.finalize_evaluations(dsn, exchange, bucket, PREFIX, base=base.id, site=site, batch=batch)
    t4 = time.perf_counter()
    if not blinded["blinded"] == done["evaluated"] == final["finalized"]:
        raise RuntimeError(f"round trip lost patients: {blinded}, {done}, {final}")
    with psycopg.connect(dsn) as conn:
        mapped = conn.execute("SELECT count(*) FROM eds_local.level1_pseudonym").fetchone()[0]
    return {
        "patients": final["finalized"],
        "mapped": mapped,
        "announce": t1 - t0,
        "blind": t2 - t1,
        "evaluate": t3 - t2,
        "finalize": t4 - t3,
        "total": t4 - t0,
    }


def _extract_child(patients: int, *, as_dag: bool) -> dict:
    rep = run_child(bench_local.SCRIPT, "extract", str(patients), *(["dag"] if as_dag else []))
    t, c = rep["timings"], rep["cpu_timings"]
    rep["pseudonym_s"] = sum(t.get(p, 0.0) for p in PHASES)
    rep["pseudonym_cpu_s"] = sum(c.get(p, 0.0) for p in PHASES)
    rep["pseudonym_share"] = rep["pseudonym_s"] / t["total"] if t.get("total") else 0.0
    rep["pseudonym_cpu_share"] = rep["pseudonym_cpu_s"] / rep["cpu_s"] if rep.get("cpu_s") else 0.0
    return rep


def _night(children: list[dict]) -> dict:
    return {
        "extract_s": stats([c["seconds"] for c in children]),
        "extract_cpu_s": stats([c["cpu_s"] for c in children]),
        "pseudonym_s": stats([c["pseudonym_s"] for c in children]),
        "pseudonym_cpu_s": stats([c["pseudonym_cpu_s"] for c in children]),
        "pseudonym_share": stats([c["pseudonym_share"] for c in children]),
        "pseudonym_cpu_share": stats([c["pseudonym_cpu_share"] for c in children]),
        "phase_seconds": [c["timings"] for c in children],
        "phase_cpu_seconds": [c["cpu_timings"] for c in children],
    }


def run(stack: Stack, *, quick: bool, reps: int) -> dict:
    patients = QUICK_PATIENTS if quick else FULL_PATIENTS
    net = bench_local.network(patients)
    platform = net.platform_of(bench_local.BASE_ID)
    base = net.base(bench_local.BASE_ID)
    site = base.finess or base.id
    dsn, rows, seeded_s = bench_local.source_db(stack, patients)
    key = _level1_key(stack, net, platform)
    server = evaluate.server_key(key, platform.id)
    idents = _identities(dsn)
    n = len(idents)
    log.info("pseudonyms: %d patients (%d evaluated), %d measurement rows (seed %s)", patients, n, rows,
             f"{seeded_s:.0f}s" if seeded_s else "reused")  # fmt: skip

    # (a) per new patient: HMAC baseline, OPRF in memory, OPRF round trip of the pipeline (interleaved).
    hm, crypto, trips = [], [], []
    for i in range(reps):
        hm.append(hmac_baseline(key, idents, site))
        crypto.append(oprf_crypto(server, idents, site))
        trips.append(round_trip(stack, net, dsn, key, rep=i))
        log.info("pseudonyms #%d: %d patients, HMAC %.3fs, OPRF in memory %.2fs, round trip %.2fs (blind %.2f,"
                 " evaluate %.2f, finalize %.2f)", i + 1, n, hm[-1], crypto[-1]["total"], trips[-1]["total"],
                 trips[-1]["blind"], trips[-1]["evaluate"], trips[-1]["finalize"])  # fmt: skip
    if trips[-1]["patients"] != n:
        raise RuntimeError(f"the round trip evaluated {trips[-1]['patients']} patients, the bench counted {n}")

    def per_patient_us(xs: list[float]) -> dict:
        return stats([1e6 * x / n for x in xs])

    hmac_us = per_patient_us(hm)
    per_patient = {
        "hmac_us": hmac_us,
        "oprf_crypto_us": {k: per_patient_us([c[k] for c in crypto]) for k in crypto[0]},
        "round_trip_us": {
            k: per_patient_us([t[k] for t in trips]) for k in ("announce", "blind", "evaluate", "finalize", "total")
        },
    }
    per_patient["crypto_over_hmac"] = ratio(per_patient["oprf_crypto_us"]["total"], hmac_us)
    per_patient["round_trip_over_hmac"] = ratio(per_patient["round_trip_us"]["total"], hmac_us)

    # (b, c) per night: the step with the map filled (every patient known) vs raw COPY, interleaved; then once
    # with the map emptied (every patient new, evaluated by the step itself).
    bench_local.raw_copy(dsn)  # warm
    raw, raw_cpu, warm = [], [], []
    for i in range(reps):
        cpu: dict = {}
        raw.append(bench_local.raw_copy(dsn, cpu)[0])
        raw_cpu.append(cpu)
        warm.append(_extract_child(patients, as_dag=True))
        if warm[-1]["rows"] != rows:
            raise RuntimeError(f"extract_table saw {warm[-1]['rows']} rows, the source holds {rows}")
        log.info("pseudonyms night #%d: raw COPY %.2fs, extract_table %.2fs, pseudonym phases %.2fs (%.0f %%)",
                 i + 1, raw[-1], warm[-1]["seconds"], warm[-1]["pseudonym_s"], 100 * warm[-1]["pseudonym_share"])  # fmt: skip
    _clear_map(dsn)
    cold = [_extract_child(patients, as_dag=False)]
    log.info("pseudonyms first night: extract_table %.2fs, pseudonym phases %.2fs (%.0f %%)", cold[0]["seconds"],
             cold[0]["pseudonym_s"], 100 * cold[0]["pseudonym_share"])  # fmt: skip
    if warm[-1]["published"] != cold[0]["published"]:  # the filled map left no patient out
        raise RuntimeError(f"{warm[-1]['published']} rows published from the filled map, {cold[0]['published']} by"
                           " the step evaluating its own patients")  # fmt: skip
    res = stack.local_resources(net, bench_local.BASE_ID, source_dsn=dsn, intake_prefix=bench_local.PREFIX)
    delete_prefix(res.intake.client(), platform.intake.bucket, bench_local.PREFIX)
    exchange = S3Endpoint(stack.s3_endpoint, *stack.s3_login, verify=stack.s3_verify)
    delete_prefix(exchange.client(), platform.key_holder.exchange.bucket, PREFIX)

    night = _night(warm)
    raw_s = stats(raw)
    night["raw_copy_s"] = raw_s
    night["ratio_extract_over_raw"] = ratio(night["extract_s"], raw_s)
    # CPU seconds, as the local bench counts them: on a shared machine wall time depends on the neighbours, CPU
    # time much less. Both sides run the same COPY on the server, measured on the raw side's backend.
    server = stats([c["server_cpu_s"] or 0.0 for c in raw_cpu])
    night["raw_copy_cpu_s"] = stats([c["client_cpu_s"] + (c["server_cpu_s"] or 0.0) for c in raw_cpu])
    night["extract_cpu_with_server_s"] = stats([c["cpu_s"] + server["median"] for c in warm])
    night["cpu_ratio_extract_over_raw"] = ratio(night["extract_cpu_with_server_s"], night["raw_copy_cpu_s"])
    first = _night(cold)
    first["ratio_extract_over_raw"] = ratio(first["extract_s"], raw_s)
    first["cpu_ratio_extract_over_raw"] = ratio(
        stats([c["cpu_s"] + server["median"] for c in cold]), night["raw_copy_cpu_s"]
    )
    # The former HMAC's share of the same night: one HMAC per patient of the night (the map makes the OPRF's
    # per-night cost a lookup; the HMAC was recomputed every night).
    hmac_night_s = hmac_us["median"] * n / 1e6
    return {
        "table": bench_local.TABLE,
        "patients": patients,
        "evaluated_patients": n,
        "rows": rows,
        "seed_seconds": seeded_s,
        "part_elements": level1.OPRF_PART_ELEMENTS,
        "round_trip_mapped": trips[-1]["mapped"],
        "per_new_patient": per_patient,
        "night": night,
        "first_night": first,
        "hmac_night_s": hmac_night_s,
        "hmac_night_share": hmac_night_s / night["extract_s"]["median"],
        "round_trip_night_s": per_patient["round_trip_us"]["total"]["median"] * n / 1e6,
    }


if __name__ == "__main__":  # pragma: no cover - run through bench/run.py
    raise SystemExit(f"run the benchmarks with bench/run.py --only pseudonyms ({Path(__file__).name})")
