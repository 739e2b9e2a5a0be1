"""Signed batch manifests on the real stack: hospital B publishes (signed with its own Ed25519 key), the platform
consolidates; then a forged manifest (hospital A's key and credential, claiming B), a manifest with a bad
signature and a replayed older manifest of B are each refused, named (base, batch, reason), and B's rows in the
warehouse stay exactly as they were."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid

import psycopg
import pytest
from botocore.exceptions import ClientError

from eds_network.core import zones
from eds_network.core.config import load_network
from eds_network.core.exchange import MANIFEST
from eds_network.core.signing import sign_document
from eds_network.core.storage import S3Endpoint, put_json, read_json, s3_client
from eds_network.dev import access, seed
from eds_network.local import extract, publish
from eds_network.orchestration.zone_connections import signing_connection_id
from eds_network.platform import consolidate

pytestmark = [pytest.mark.integration]

B, A = "hosp_c", "hosp_b"  # both members of idf
NET = load_network().resized(B, 40)
PLATFORM = NET.platform("idf")
DAY1 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
DAY2 = DAY1 + dt.timedelta(days=1)


@pytest.fixture(scope="module")
def published(stack, tmp_path_factory):
    """B's source seeded, one batch published under a prefix of its own, consolidated into a new warehouse."""
    src, wh = f"t_sig_src_{uuid.uuid4().hex[:8]}", f"t_sig_wh_{uuid.uuid4().hex[:8]}"
    src_dsn, wh_dsn = stack.create_database(src), stack.create_database(wh)
    seed.seed_base(src_dsn, NET, B, (DAY1, DAY2))
    prefix = f"test-sig-{uuid.uuid4().hex[:8]}/"
    res = stack.local_resources(NET, B, source_dsn=src_dsn, intake_prefix=prefix)
    base = NET.base(B)

    def run() -> tuple[publish.Published, bytes]:
        refs = [extract.extract_table(base, t, DAY1, DAY2, res).ref() for t in base.tables]
        pub = publish.publish_batch(base, DAY1, DAY2, refs, res)
        raw = res.intake.client().get_object(Bucket=res.intake_bucket, Key=pub.manifest_key)["Body"].read()
        return pub, raw

    first, first_raw = run()
    second, second_raw = run()  # a rerun of the interval: a newer version of the same batch
    assert first.manifest_key == second.manifest_key and first_raw != second_raw
    yield {"stack": stack, "res": res, "prefix": prefix, "wh": wh_dsn, "key": second.manifest_key, "old": first_raw}
    with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
        for db in (src, wh):
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def _consolidate(ctx) -> consolidate.Consolidation:
    stack = ctx["stack"]
    ep = S3Endpoint(stack.s3_endpoint, *stack.s3_login)
    res = consolidate.PlatformResources(ctx["wh"], ep, ep, trust=stack.trust(NET))
    return consolidate.consolidate(PLATFORM, PLATFORM.intake.bucket, ctx["prefix"], res)


def _warehouse(ctx) -> dict:
    with psycopg.connect(ctx["wh"]) as conn:
        counts = {
            t: conn.execute(
                f"SELECT count(*), md5(string_agg(x::text, ',' ORDER BY x::text)) FROM omop.{t} x"
            ).fetchone()
            for t in ("person", "visit_occurrence", "condition_occurrence")
        }
        counts["ledger"] = conn.execute("SELECT count(*) FROM eds_platform.ledger WHERE replaced_at IS NULL").fetchone()
    return counts


@pytest.fixture(scope="module")
def loaded(published):
    c = _consolidate(published)
    assert not c.rejected, c.rejected
    assert c.applied
    before = _warehouse(published)
    assert before["person"][0] > 0
    return published, before


def _put_and_consolidate(ctx, key: str, doc_or_raw) -> dict[str, str]:
    s3 = ctx["res"].intake.client()
    if isinstance(doc_or_raw, bytes):
        s3.put_object(Bucket=ctx["res"].intake_bucket, Key=key, Body=doc_or_raw)
    else:
        put_json(s3, ctx["res"].intake_bucket, key, doc_or_raw)
    try:
        return _consolidate(ctx).rejected
    finally:
        if key != ctx["key"]:
            s3.delete_object(Bucket=ctx["res"].intake_bucket, Key=key)


def _key_of(stack, base_id: str) -> bytes:
    return base64.b64decode(stack.keys(NET)[signing_connection_id(zones.local(base_id))]["password"])


def test_hospital_a_credential_cannot_write_in_b_prefix(stack):
    login = access.s3_logins(stack)[zones.local(A)]
    s3 = s3_client(stack.s3_endpoint, login.login, login.password, "eu-west-3")
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=PLATFORM.intake.bucket, Key=f"{PLATFORM.intake.prefix}{B}/forged/{MANIFEST}", Body=b"{}")
    assert info.value.response["Error"]["Code"] == "AccessDenied"


def test_forged_manifest_signed_by_a_claiming_b_is_refused(loaded):
    ctx, before = loaded
    good = read_json(ctx["res"].intake.client(), ctx["res"].intake_bucket, ctx["key"])
    body = {k: v for k, v in good.items() if k != "signature"}
    forged = sign_document(
        {**body, "published_at": dt.datetime.now(dt.UTC).isoformat()}, _key_of(ctx["stack"], A), zones.local(B)
    )
    # in B's prefix (only a store bypass could put it there): not B's signature
    key = f"{ctx['prefix']}{B}/{good['batch_id']}x/{MANIFEST}"
    rejected = _put_and_consolidate(ctx, key, {**forged, "batch_id": good["batch_id"] + "x"})
    assert len(rejected) == 1
    reason = next(iter(rejected.values()))
    assert f"base={B}" in reason and good["batch_id"] + "x" in reason and "signature" in reason, reason
    # in A's own prefix, signed by A, but claiming to be B (site, base): refused on the claim
    claim = sign_document(
        {**body, "published_at": dt.datetime.now(dt.UTC).isoformat()}, _key_of(ctx["stack"], A), zones.local(A)
    )
    rejected = _put_and_consolidate(ctx, f"{ctx['prefix']}{A}/{good['batch_id']}/{MANIFEST}", claim)
    reason = next(iter(rejected.values()))
    assert f"base={A}" in reason and "does not match the network config" in reason, reason
    assert _warehouse(ctx) == before


def test_bad_signature_is_refused(loaded):
    ctx, before = loaded
    raw = ctx["res"].intake.client().get_object(Bucket=ctx["res"].intake_bucket, Key=ctx["key"])["Body"].read()
    doc = json.loads(raw)
    tampered = {**doc, "failed_tables": ["person"]}  # any change breaks B's signature
    try:
        rejected = _put_and_consolidate(ctx, ctx["key"], tampered)
        reason = rejected[doc["batch_id"]]
        assert "bad signature" in reason and f"base={B}" in reason, reason
        assert _warehouse(ctx) == before
    finally:
        ctx["res"].intake.client().put_object(Bucket=ctx["res"].intake_bucket, Key=ctx["key"], Body=raw)
    assert not _consolidate(ctx).rejected  # the genuine one is still accepted (already applied: skipped)


def test_replayed_older_manifest_is_refused(loaded):
    ctx, before = loaded
    raw = ctx["res"].intake.client().get_object(Bucket=ctx["res"].intake_bucket, Key=ctx["key"])["Body"].read()
    old = json.loads(ctx["old"])
    try:
        rejected = _put_and_consolidate(ctx, ctx["key"], ctx["old"])  # the first version, validly signed by B
        reason = rejected[old["batch_id"]]
        assert "replayed or older" in reason and f"base={B}" in reason, reason
        assert _warehouse(ctx) == before
    finally:
        ctx["res"].intake.client().put_object(Bucket=ctx["res"].intake_bucket, Key=ctx["key"], Body=raw)
