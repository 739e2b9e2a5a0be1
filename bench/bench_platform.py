"""Platform and national benchmarks (issue #12 items 4 and 5). Not a test: run by `bench/run.py`.

Item 4, consolidation: the 2 M MEASUREMENT rows of the local bench are extracted and published once as a
manifested batch in a bench prefix of the platform intake; then, per run, in a fresh warehouse database:
  ours   `consolidate.consolidate` (list manifests, download + SHA-256 verify, COPY into staging, upsert into
         the indexed warehouse table in one transaction, ledger, linkage statistics, cross-site checks);
  raw    `COPY … FROM STDIN (FORMAT csv)` of the same rows (CSV prepared beforehand, not timed) into an
         unindexed table with the same columns: the floor of getting these rows into PostgreSQL.

Item 5, national upload: a file of random (incompressible) bytes, hashed while it is written (not timed, as the
level-2 files of a delivery are: `storage.HashingWriter` in `level2.py`), per run:
  ours   the `transfer` upload path: multipart upload with SSE, the file's SHA-256 (the manifest's; the key is
         named by it) in the metadata and one SHA-256 checksum per part computed while sending
         (`transfer._upload_once`, `core.uploads`), then `landing.verify_upload` (one HEAD: encryption, size,
         and the store's composite checksum of its copy against ours; no read-back);
  raw    boto3 `upload_file` of the same bytes to the same endpoint (default transfer settings).
One unmeasured run of each side, then the measured runs interleaved, each side going first every other run.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_local  # noqa: E402
from common import ratio, stats  # noqa: E402

from eds_network.core import omop, uploads
from eds_network.core.storage import (  # noqa: E402
    HashingWriter,
    delete_prefix,
    download,
    ensure_bucket,
    object_exists,
)
from eds_network.dev.stack import Stack  # noqa: E402
from eds_network.local import extract, publish
from eds_network.national import landing, transfer  # noqa: E402
from eds_network.platform import consolidate

log = logging.getLogger("bench.platform")
PREFIX = "bench-consolidate/"
UPLOAD_PREFIX = "bench-upload/"


def _raw_copy_in(dsn: str, csv_path: Path, columns: list[str]) -> float:
    spec = omop.table(bench_local.TABLE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS raw_measurement")
        conn.execute(
            sql.SQL("CREATE TABLE raw_measurement ({})").format(
                sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(spec.column(c).sql_type)) for c in columns
                )
            )
        )
        stmt = sql.SQL("COPY raw_measurement ({}) FROM STDIN (FORMAT csv)").format(
            sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(stmt) as copy, open(csv_path, "rb") as f:
            while chunk := f.read(1 << 20):
                copy.write(chunk)
        return time.perf_counter() - t0


def run_consolidate(stack: Stack, *, patients: int, reps: int) -> dict:
    net = bench_local.network(patients)
    dsn, rows, _ = bench_local.source_db(stack, patients)
    base = net.base(bench_local.BASE_ID)
    platform = net.platform_of(base.id)
    res = bench_local.resources(stack, net, dsn, prefix=PREFIX)
    s3 = res.intake.client()
    delete_prefix(s3, platform.intake.bucket, PREFIX)
    tb = extract.extract_table(base, bench_local.TABLE, *bench_local.INTERVAL, res)
    publish.publish_batch(base, *bench_local.INTERVAL, [tb.ref()], res)
    columns = omop.table(bench_local.TABLE).column_names
    ours, raw, phases, cpu = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="eds-bench-") as tmp:
        parquet, csv_path = Path(tmp) / "m.parquet", Path(tmp) / "m.csv"
        download(s3, platform.intake.bucket, tb.key, parquet)
        with pacsv.CSVWriter(
            csv_path,
            pq.read_schema(parquet),
            write_options=pacsv.WriteOptions(include_header=False, quoting_style="needed"),
        ) as w:
            for rb in pq.ParquetFile(parquet).iter_batches(batch_size=200_000, columns=columns):
                w.write_batch(rb)
        for i in range(reps):  # interleaved
            wh = stack.create_database("bench_wh", drop=True)
            pres = consolidate.PlatformResources(warehouse_dsn=wh, intake=res.intake, outbox=res.intake)
            t0 = time.perf_counter()
            c = consolidate.consolidate(platform, platform.intake.bucket, PREFIX, pres)
            el = time.perf_counter() - t0
            loaded = next(iter(c.rows.values()), {}).get(bench_local.TABLE)
            if len(c.applied) != 1 or loaded != tb.published:
                raise RuntimeError(f"consolidation applied {c.applied} with {loaded} rows, expected {tb.published}")
            ours.append(el)
            phases.append(c.timings)
            cpu.append(c.cpu_timings)
            raw.append(_raw_copy_in(stack.create_database("bench_raw", drop=True), csv_path, columns))
            log.info("consolidate #%d: %.2fs, raw COPY in %.2fs; phases %s", i + 1, ours[-1], raw[-1], c.timings)
    delete_prefix(s3, platform.intake.bucket, PREFIX)
    so, sr = stats(ours), stats(raw)
    names = list(phases[0])
    return {
        "rows": tb.published,
        "consolidate_s": so,
        "raw_copy_in_s": sr,
        "ratio": ratio(so, sr),
        # The step's own per-phase wall seconds (and CPU seconds of its thread), median over the runs.
        "phase_s_median": {p: round(statistics.median(r.get(p, 0.0) for r in phases), 3) for p in names},
        "phase_cpu_s_median": {
            p: round(statistics.median(r.get(p, 0.0) for r in cpu), 3) for p in names if p != "total"
        },
    }


def run_upload(stack: Stack, *, size_bytes: int, reps: int) -> dict:
    import boto3
    from botocore.config import Config

    # moto assembles a completed multipart upload in Python: on a busy machine CompleteMultipartUpload of 1 GiB
    # takes longer than botocore's default 60 s read timeout, and the retry then fails (upload id gone). Both
    # sides use this same client, with a long timeout and no retry.
    s3 = boto3.client(
        "s3",
        endpoint_url=stack.s3_endpoint,
        aws_access_key_id=stack.s3_login[0],
        aws_secret_access_key=stack.s3_login[1],
        region_name="eu-west-3",
        config=Config(read_timeout=900, retries={"max_attempts": 1}),
    )
    bucket = "bench-upload"
    ensure_bucket(s3, bucket)
    sse = SimpleNamespace(sse_kms_key_id=None)  # what `_upload_once` reads of NationalResources: SSE-S3
    ours, raw = [], []
    with tempfile.TemporaryDirectory(prefix="eds-bench-") as tmp:
        path = Path(tmp) / "blob.bin"
        with HashingWriter(path) as f:
            left = size_bytes
            while left:
                n = min(left, 16 << 20)
                f.write(os.urandom(n))
                left -= n
        sha = f.sha256

        def ours_once(i: int) -> float:
            key = f"{UPLOAD_PREFIX}ours-{i}.bin"
            t0 = time.perf_counter()
            checksum = transfer._upload_once(s3, path, bucket, key, sha, sse, "bench")
            f = {"key": key, "sha256": sha, "bytes": size_bytes, "table": "bench"}
            landing.verify_upload(s3, bucket, f, checksum)
            took = time.perf_counter() - t0
            if (
                not checksum
                or uploads.stored_checksum_matches(object_exists(s3, bucket, key, ChecksumMode="ENABLED"), checksum)
                is not True
            ):
                raise RuntimeError("the store reported no checksum: the upload was verified by a read-back")
            delete_prefix(s3, bucket, UPLOAD_PREFIX)
            return took

        def raw_once(i: int) -> float:
            t0 = time.perf_counter()
            s3.upload_file(str(path), bucket, f"{UPLOAD_PREFIX}raw-{i}.bin")
            took = time.perf_counter() - t0
            delete_prefix(s3, bucket, UPLOAD_PREFIX)
            return took

        # One unmeasured run of each side first (the endpoint's first multipart upload is the slowest), then the
        # measured ones interleaved, each side first every other run (no order bias).
        ours_once(-1), raw_once(-1)
        sides = ((ours, ours_once), (raw, raw_once))
        for i in range(reps):
            for times, run in sides if i % 2 == 0 else sides[::-1]:
                times.append(run(i))
            log.info("upload #%d: ours %.2fs, raw upload_file %.2fs", i + 1, ours[-1], raw[-1])
    so, sr = stats(ours), stats(raw)
    return {
        "bytes": size_bytes,
        "upload_s": so,
        "raw_upload_file_s": sr,
        "ratio": ratio(so, sr),
        "mb_per_s_ours": size_bytes / 1e6 / so["median"],
        "mb_per_s_raw": size_bytes / 1e6 / sr["median"],
        "multipart": {
            "threshold": transfer.MULTIPART.multipart_threshold,
            "chunk": transfer.MULTIPART.multipart_chunksize,
        },
    }


DELIVERY_PREFIX = "bench-deliveries/"


def _national_resources(stack: Stack, net, ep):
    import base64

    from eds_network.core.crypto import Key

    keys = stack.keys(net)
    box, nk = keys[net.national.box_key_connection_id], keys[net.national.key_connection_id]
    return transfer.NationalResources(
        outbox=ep,
        landing=ep,
        national_key=Key.from_secret("n", nk["password"], nk["extra"]["version"]),
        box_private_key=base64.b64decode(box["password"]),
        box_key_version=box["extra"]["version"],
    )


def _night(p, pres, target, hdh, nres, ep, phases: dict | None = None, **kw) -> tuple[float, int, str]:
    """One delivery end to end, timed: package → transfer → receipt → apply → acknowledgement (each phase's
    seconds into `phases`, when given)."""
    from eds_network.national import ack, receipt
    from eds_network.national import tables as national_tables
    from eds_network.platform import package as packaging

    phases = {} if phases is None else phases
    t0 = last = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        phases[name] = round(now - last, 2)
        last = now

    pkg = packaging.package(p, pres, {}, **kw)
    lap("package")
    d = transfer.transfer_platform(p, target, nres)
    lap("transfer")
    receipt.receipt(target, ep, d.delivery_id)
    lap("receipt")
    applied = national_tables.apply_delivery(target, hdh, d.delivery_id)
    lap("apply")
    ack.acknowledge(p, ep, hdh.dsn, applied.ref())
    lap("acknowledge")
    if applied.status != "applied":
        raise RuntimeError(f"{pkg.kind} delivery not applied: {applied.status}")
    return time.perf_counter() - t0, int(pkg.ref()["bytes"]), pkg.kind


def run_deliveries(stack: Stack, *, patients: int, reps: int, change: float = 0.001) -> dict:
    """Issue 20: the cost of a night with `change` of the rows changed (updates, and a tenth as many deletions)
    against a full delivery of the same warehouse, end to end: package in the outbox → transfer (level-2
    pseudonyms, upload, verify) → receipt → apply to the national Iceberg tables → acknowledgement. Per rep, on a
    warehouse of its own: night 1 (full, creates the tables), then timed: an incremental night after the changes,
    and a forced full night. Bytes: the package's files."""
    import uuid

    from eds_network.core.storage import S3Endpoint
    from eds_network.national import tables as national_tables

    net = bench_local.network(patients)
    dsn, _, _ = bench_local.source_db(stack, patients)
    base = net.base(bench_local.BASE_ID)
    platform = net.platform_of(base.id)
    res = bench_local.resources(stack, net, dsn, prefix=DELIVERY_PREFIX)
    s3 = res.intake.client()
    delete_prefix(s3, platform.intake.bucket, DELIVERY_PREFIX)
    refs = [extract.extract_table(base, t, *bench_local.INTERVAL, res).ref() for t in ("person", bench_local.TABLE)]
    publish.publish_batch(base, *bench_local.INTERVAL, refs, res)
    ep = S3Endpoint(stack.s3_endpoint, *stack.s3_login)
    nres = _national_resources(stack, net, ep)
    full_s, inc_s, full_b, inc_b, changed, rows = [], [], [], [], 0, 0
    inc_phases: list[dict] = []
    full_phases: list[dict] = []
    for i in range(reps):
        tag = uuid.uuid4().hex[:8]
        p = platform.model_copy(
            update={"outbox": platform.outbox.model_copy(update={"prefix": f"bench-deliveries-{tag}/"})}
        )
        zone = net.national.landing_zone.model_copy(update={"prefix": f"bench-deliveries-{tag}/"})
        target = net.national.model_copy(update={"landing_zone": zone})
        wh = stack.create_database("bench_deliv_wh", drop=True)
        pres = consolidate.PlatformResources(warehouse_dsn=wh, intake=ep, outbox=ep)
        c = consolidate.consolidate(platform, platform.intake.bucket, DELIVERY_PREFIX, pres)
        if len(c.applied) != 1:
            raise RuntimeError(f"consolidation applied {c.applied}")
        hdh = national_tables.NationalTables(stack.create_database("bench_deliv_hdh", drop=True), ep)

        def night(**kw):
            return _night(p, pres, target, hdh, nres, ep, **kw)  # noqa: B023 (called in this iteration)

        night()  # the first delivery: full, creates the national tables
        with psycopg.connect(wh) as conn:
            rows = conn.execute(sql.SQL("SELECT count(*) FROM omop.{}").format(sql.Identifier(bench_local.TABLE)))
            rows = rows.fetchone()[0]
            n = max(1, int(rows * change))
            conn.execute(
                "UPDATE omop.measurement SET value_as_number = coalesce(value_as_number, 0) + 1 WHERE measurement_id"
                " IN (SELECT measurement_id FROM omop.measurement ORDER BY md5(measurement_id::text) LIMIT %s)",
                (n,),
            )
            conn.execute(
                "DELETE FROM omop.measurement WHERE measurement_id IN (SELECT measurement_id FROM omop.measurement "
                "ORDER BY md5(measurement_id::text) DESC LIMIT %s)",
                (max(1, n // 10),),
            )
            changed = n + max(1, n // 10)
        inc_phases.append({})
        el, b, kind = night(phases=inc_phases[-1])
        if kind != "incremental":
            raise RuntimeError(f"expected an incremental delivery, got {kind}")
        inc_s.append(el)
        inc_b.append(b)
        full_phases.append({})
        el, b, kind = night(phases=full_phases[-1], full=True)
        full_s.append(el)
        full_b.append(b)
        log.info(
            "deliveries #%d: incremental %.2fs %d B, full %.2fs %d B (%d rows, %d changed)",
            i + 1,
            inc_s[-1],
            inc_b[-1],
            full_s[-1],
            full_b[-1],
            rows,
            changed,
        )
        for prefix in (p.outbox.prefix, zone.prefix):
            delete_prefix(ep.client(), p.outbox.bucket if prefix == p.outbox.prefix else zone.bucket, prefix)
    delete_prefix(s3, platform.intake.bucket, DELIVERY_PREFIX)
    si, sf = stats(inc_s), stats(full_s)
    return {
        "rows": rows,
        "changed_rows": changed,
        "incremental_s": si,
        "full_s": sf,
        "incremental_bytes": int(sorted(inc_b)[len(inc_b) // 2]),
        "full_bytes": int(sorted(full_b)[len(full_b) // 2]),
        "time_ratio": ratio(si, sf),
        "bytes_ratio": sorted(inc_b)[len(inc_b) // 2] / sorted(full_b)[len(full_b) // 2],
        # seconds per phase (package, transfer, receipt, apply, acknowledge), one dict per run
        "incremental_phases": inc_phases,
        "full_phases": full_phases,
    }
