"""A 63-bit person-id collision across sites reaches the platform's merge: the batch is refused, never merged.

Real extraction of two hospitals (the `world` fixture: hosp_b and hosp_c published by `extract` + `publish`), then
hosp_c's person file is rewritten as a truncated-id function would have made it: one of its patients gets the
63-bit id of a different hosp_b patient (two linkage identities, one id), or keeps its id but carries the digest of
a hosp_b patient (one digest, two ids). The platform consolidates both batches into a fresh warehouse.
"""

from __future__ import annotations

import hashlib
import io
import uuid

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_bad_inputs import BASE, NET, OTHER, _copy_batches, _edit_manifest

from eds_network.core import digests
from eds_network.core.storage import S3Endpoint
from eds_network.platform import consolidate

pytestmark = pytest.mark.integration


def _person_table(s3, bucket: str, manifest: dict) -> pa.Table:
    key = manifest["tables"]["person"]["key"]
    return pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


def _rewrite_person(m, s3, bucket, fn) -> None:
    entry = m["tables"]["person"]
    t = fn(pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=entry["key"])["Body"].read())))
    buf = io.BytesIO()
    pq.write_table(t, buf)
    entry["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    entry["bytes"] = len(buf.getvalue())
    s3.put_object(Bucket=bucket, Key=entry["key"], Body=buf.getvalue())


def _run(stack, world, change) -> tuple[consolidate.Consolidation, str, tuple]:
    p = NET.platform(BASE.platform)
    s3 = stack.s3_client()
    prefix = f"test-collide-{uuid.uuid4().hex[:8]}/"
    _copy_batches(s3, p.intake.bucket, world["prefix"], prefix)
    other_key = prefix + world["published"][OTHER.id].manifest_key[len(world["prefix"]) :]
    bad_key = prefix + world["published"][BASE.id].manifest_key[len(world["prefix"]) :]
    from eds_network.core.storage import read_json

    theirs = _person_table(s3, p.intake.bucket, read_json(s3, p.intake.bucket, other_key))
    ours = _person_table(s3, p.intake.bucket, read_json(s3, p.intake.bucket, bad_key))
    shared = set(theirs.column(digests.DIGEST_COLUMN).to_pylist()) & set(ours.column(digests.DIGEST_COLUMN).to_pylist())
    # a hosp_b patient who is not also treated at hosp_c (a different person), and one hosp_c patient of the same kind
    victim = next(i for i, d in enumerate(theirs.column(digests.DIGEST_COLUMN).to_pylist()) if d not in shared)
    target = next(i for i, d in enumerate(ours.column(digests.DIGEST_COLUMN).to_pylist()) if d not in shared)
    v_id = theirs.column("person_id")[victim].as_py()
    v_digest = theirs.column(digests.DIGEST_COLUMN)[victim].as_py()
    _edit_manifest(
        s3, p.intake.bucket, bad_key, lambda m, s3, b: _rewrite_person(m, s3, b, change(target, v_id, v_digest))
    )
    wh = world["empty"]()
    ep = S3Endpoint(stack.s3_endpoint, *stack.s3_login)
    version = stack.keys(NET)[p.key_connection_id]["extra"]["version"]
    c = consolidate.consolidate(
        p, p.intake.bucket, prefix, consolidate.PlatformResources(wh, ep, ep, level1_key_version=version)
    )
    return c, wh, (v_id, v_digest)


def _set(t: pa.Table, column: str, row: int, value) -> pa.Table:
    col = t.column(column).combine_chunks()
    mask = pa.array([i == row for i in range(len(col))])
    return t.set_column(t.column_names.index(column), column, pc.if_else(mask, pa.scalar(value, col.type), col))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("two digests, one id", "person ids given by two different digests"),
        ("one digest, two ids", "digests given two different person ids"),
    ],
)
def test_a_person_id_collision_across_sites_refuses_the_batch_and_merges_nothing(stack, world, case, message):
    def change(row, v_id, v_digest):
        if case == "two digests, one id":  # a truncated-id function gave hosp_c's patient hosp_b's patient's id
            return lambda t: _set(t, "person_id", row, v_id)
        return lambda t: _set(t, digests.DIGEST_COLUMN, row, v_digest)

    c, wh, (v_id, v_digest) = _run(stack, world, change)
    bad = world["published"][BASE.id].batch_id
    assert c.applied == [world["published"][OTHER.id].batch_id]
    assert list(c.rejected) == [bad]
    reason = c.rejected[bad]
    assert f"base={BASE.id}" in reason and "table=person" in reason and message in reason, reason
    assert "never merged" in reason and str(v_id) not in reason and v_digest not in reason
    with psycopg.connect(wh) as conn:
        # hosp_b's patient is still one patient, with its own digest; nothing of hosp_c merged
        held = conn.execute(
            "SELECT encode(digest, 'hex') FROM eds_platform.person_digest WHERE person_id = %s", (v_id,)
        ).fetchall()
        assert held == [(v_digest,)]
        assert {r[0] for r in conn.execute("SELECT DISTINCT base_id FROM eds_platform.person_site")} == {OTHER.id}
        n_person = conn.execute("SELECT count(*) FROM omop.person").fetchone()[0]
        n_digest = conn.execute("SELECT count(*) FROM eds_platform.person_digest").fetchone()[0]
        assert n_person == n_digest > 0
