"""National transfer to the HDH landing zone, against the embedded S3 endpoint (moto server) and PostgreSQL.

Each test builds a small platform delivery in an outbox (person rows with level-1 ids and sealed transport
tokens, as the mutualised level packages them) under its own prefixes, runs `transfer.transfer_platform` on it,
and asserts on the objects that arrive in the landing zone. Faults are injected with botocore event hooks on
the landing client: an interrupted multipart upload, a racing publisher, a corrupted object, an endpoint that
ignores encryption at rest.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import io
import json
import secrets
import threading
import uuid
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import EndpointConnectionError
from nacl.public import PublicKey, SealedBox

from eds_network import catalogue
from eds_network.core.config import NationalTarget, Platform, load_network
from eds_network.core.crypto import Key
from eds_network.core.errors import IntegrityError, TransferError
from eds_network.core.exchange import MANIFEST, SCHEMA_VERSION, TOKEN_COLUMN
from eds_network.core.signing import sign_document, verify_document
from eds_network.core.storage import S3Endpoint, delete_prefix, list_keys, read_json, sha256_object
from eds_network.national import linkage as nlinkage
from eds_network.national import receipt, transfer
from eds_network.orchestration.zone_connections import signing_connection_id

pytestmark = pytest.mark.integration

NETWORK = load_network()
BUCKET = NETWORK.national.landing_zone.bucket
DAY = dt.date(2026, 3, 1)


@dataclass(frozen=True)
class HookedEndpoint(S3Endpoint):
    """The landing endpoint, with botocore event hooks registered on every client it makes."""

    hooks: tuple = ()

    def client(self):
        c = super().client()
        for event, fn in self.hooks:
            c.meta.events.register(event, fn)
        return c


class Calls:
    """Counts requests per (operation, key): proves what was (not) sent."""

    def __init__(self) -> None:
        self.by_key: Counter = Counter()

    def __call__(self, params, model, **_):
        self.by_key[(model.name, params.get("Key"))] += 1

    def sent(self, key: str) -> int:
        return sum(n for (op, k), n in self.by_key.items() if k == key and op in ("PutObject", "UploadPart"))


def _endpoint(stack, *hooks) -> S3Endpoint:
    return HookedEndpoint(stack.s3_endpoint, *stack.s3_login, hooks=tuple(hooks))


def _resources(stack, landing: S3Endpoint | None = None) -> transfer.NationalResources:
    keys = stack.keys(NETWORK)
    nk = keys[NETWORK.national.key_connection_id]
    box = keys[NETWORK.national.box_key_connection_id]
    plain = S3Endpoint(stack.s3_endpoint, *stack.s3_login)
    return transfer.NationalResources(
        outbox=plain,
        landing=landing or plain,
        national_key=Key.from_secret(NETWORK.national.key_connection_id, nk["password"], nk["extra"]["version"]),
        box_private_key=base64.b64decode(box["password"]),
        box_key_version=box["extra"]["version"],
    )


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def target(tag, stack):
    """The HDH target of one test: its landing zone and the platforms' outboxes under a prefix of its own, deleted
    afterwards (a tampered or half-sent object must not reach a later test's scan of every object)."""
    zone = NETWORK.national.landing_zone.model_copy(update={"prefix": f"t-{tag}/"})
    yield NETWORK.national.model_copy(update={"landing_zone": zone})
    s3 = stack.s3_client()
    for bucket in {zone.bucket, *(p.outbox.bucket for p in NETWORK.platforms)}:
        delete_prefix(s3, bucket, f"t-{tag}/")


def _platform(pid: str, tag: str) -> Platform:
    p = NETWORK.platform(pid)
    return p.model_copy(update={"outbox": p.outbox.model_copy(update={"prefix": f"t-{tag}/"})})


@dataclass
class Outbox:
    level1_ids: set[int]
    sealed: set[str]
    tokens: list[bytes]
    identity_values: set[str]


def _package(
    stack,
    platform: Platform,
    tokens: list[bytes],
    *,
    measurements: int = 2_000,
    seed: int = 0,
    sign_as: str | None = None,
) -> Outbox:
    """A platform delivery as the mutualised level leaves it in its outbox (manifest + `_latest.json`)."""
    rng = np.random.default_rng(seed)
    box = SealedBox(PublicKey(base64.b64decode(stack.keys(NETWORK)["eds_key_national_box"]["extra"]["public_key"])))
    n = len(tokens)
    level1 = [int(x) for x in rng.integers(1 << 40, 1 << 62, size=n)]
    sealed = [base64.b64encode(box.encrypt(t)).decode() for t in tokens]
    nirs = [f"1{rng.integers(10**11, 10**12)}" for _ in range(n)]  # planted: must never reach the landing zone
    person = pa.table(
        {
            "person_id": pa.array(level1, pa.int64()),
            "gender_concept_id": pa.array(rng.choice([8507, 8532], size=n), pa.int32()),
            "year_of_birth": pa.array(rng.integers(1930, 2020, size=n), pa.int32()),
            "person_source_value": pa.array(nirs, pa.string()),
            "_site": pa.array([1] * n, pa.int32()),
            TOKEN_COLUMN: pa.array(sealed, pa.string()),
        }
    )
    measurement = pa.table(
        {
            "measurement_id": pa.array(np.arange(measurements, dtype=np.int64) + 10**12),
            "person_id": pa.array(np.array(level1, dtype=np.int64)[rng.integers(0, n, size=measurements)]),
            "measurement_concept_id": pa.array(rng.integers(3_000_000, 3_000_100, size=measurements), pa.int32()),
            "value_as_number": pa.array(rng.random(measurements)),
        }
    )
    s3 = stack.s3_client()
    bucket, prefix = platform.outbox.bucket, platform.outbox.prefix
    delivery_id = f"{platform.id}__{uuid.uuid4().hex[:16]}"
    tables = {}
    for name, tbl in (("person", person), ("measurement", measurement)):
        buf = io.BytesIO()
        pq.write_table(tbl, buf, compression="zstd")
        body = buf.getvalue()
        sha = hashlib.sha256(body).hexdigest()
        key = f"{prefix}{delivery_id}/{name}.{sha[:16]}.parquet"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        tables[name] = {"key": key, "sha256": sha, "bytes": len(body), "rows": tbl.num_rows}
    manifest_key = f"{prefix}{delivery_id}/{MANIFEST}"
    manifest = {
        "kind": "eds-network/platform-delivery",
        "platform": platform.id,
        "delivery_id": delivery_id,
        "schema_version": SCHEMA_VERSION,
        "key_versions": {},
        "tables": tables,
        "members": [b.id for b in platform.members],
    }
    if sign_as is not None:  # as the platform zone signs it (package.py), with `sign_as`'s key
        seed_b64 = stack.keys(NETWORK)[signing_connection_id(sign_as)]["password"]
        manifest = sign_document(manifest, base64.b64decode(seed_b64), sign_as)
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest).encode())
    s3.put_object(
        Bucket=bucket,
        Key=f"{prefix}_latest.json",
        Body=json.dumps({"delivery_id": delivery_id, "manifest_key": manifest_key}).encode(),
    )
    return Outbox(set(level1), set(sealed), tokens, set(nirs))


def _tokens(n: int) -> list[bytes]:
    return [secrets.token_bytes(32) for _ in range(n)]


def _landing(stack, target: NationalTarget) -> list[str]:
    return list_keys(stack.s3_client(), BUCKET, target.landing_zone.prefix)


def _manifests(stack, target: NationalTarget) -> list[str]:
    return [k for k in _landing(stack, target) if k.endswith("/" + MANIFEST)]


def _incomplete(stack, prefix: str) -> list[dict]:
    return stack.s3_client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])


ALL_MILESTONES = {b.id: set(catalogue.MILESTONES) for b in NETWORK.local_bases}


# -- 1. interrupted multipart upload, then a retry that resumes ------------------------------------------------
def test_interrupted_multipart_upload_then_retry_leaves_one_verified_copy_and_does_not_resend(
    stack, tag, target, monkeypatch
):
    monkeypatch.setattr(
        transfer,
        "MULTIPART",
        TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20, max_concurrency=1),
    )
    platform = _platform("idf", tag)
    _package(stack, platform, _tokens(40), measurements=1_400_000)  # ~16 MB level-2 file: several parts

    class WorkerDied(Exception):
        pass

    parts = Counter()

    def die_on_second_part(**_):
        parts["n"] += 1
        if parts["n"] == 2:
            raise WorkerDied("the worker died mid-upload")

    def cannot_abort(**_):  # a dead worker aborts nothing: the incomplete upload stays behind
        raise EndpointConnectionError(endpoint_url="landing")

    crashing = _endpoint(
        stack,
        ("before-call.s3.UploadPart", die_on_second_part),
        ("before-call.s3.AbortMultipartUpload", cannot_abort),
    )
    with pytest.raises(TransferError, match="platform idf: upload of .*measurement.* failed"):
        transfer.transfer_platform(platform, target, _resources(stack, crashing), milestones=ALL_MILESTONES)
    assert parts["n"] == 2
    assert _manifests(stack, target) == []
    left = _incomplete(stack, target.landing_zone.prefix)
    assert len(left) == 1 and "/measurement." in left[0]["Key"]
    person_key = next(k for k in _landing(stack, target) if "/person." in k)
    s3 = stack.s3_client()
    before = s3.head_object(Bucket=BUCKET, Key=person_key)

    calls = Calls()
    d = transfer.transfer_platform(
        platform,
        target,
        _resources(stack, _endpoint(stack, ("before-parameter-build.s3", calls))),
        milestones=ALL_MILESTONES,
    )
    assert d.status == "delivered" and d.reused == 1
    # resumed: the person file already there was not sent again, the measurement file was sent once, in parts
    assert calls.sent(person_key) == 0
    after = s3.head_object(Bucket=BUCKET, Key=person_key)
    assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])
    measurement = next(f for f in d.files if f["table"] == "measurement")
    assert calls.by_key[("CreateMultipartUpload", measurement["key"])] == 1
    assert calls.by_key[("UploadPart", measurement["key"])] == -(-measurement["bytes"] // (5 << 20)) >= 3
    # exactly one copy of each file, matching the manifest's SHA-256, and no incomplete upload left
    manifest = read_json(s3, BUCKET, d.manifest_key)
    prefix = d.manifest_key.rsplit("/", 1)[0] + "/"
    assert sorted(_landing(stack, target)) == sorted([d.manifest_key, *(f["key"] for f in manifest["files"])])
    assert sorted(f["table"] for f in manifest["files"]) == ["measurement", "person"]
    for f in manifest["files"]:
        assert sha256_object(s3, BUCKET, f["key"]) == (f["sha256"], f["bytes"])
    assert measurement["bytes"] > 10 << 20
    assert _incomplete(stack, prefix) == []
    assert _incomplete(stack, target.landing_zone.prefix) == []


# -- 2. two concurrent publishers of the same delivery -----------------------------------------------------------
def test_two_concurrent_publishes_give_one_manifest_and_one_already_delivered(stack, tag, target):
    platform = _platform("onco", tag)
    _package(stack, platform, _tokens(30))
    barrier = threading.Barrier(2)
    lock = threading.Lock()
    here = threading.local()

    def meet_before_manifest(params, **_):
        # both publishers have checked that no manifest exists; their conditional writes then go one after
        # the other, so the second one meets the first one's manifest
        if params.get("Key", "").endswith("/" + MANIFEST):
            barrier.wait(timeout=60)
            assert lock.acquire(timeout=60)
            here.holding = True

    def release(**_):
        if getattr(here, "holding", False):
            here.holding = False
            lock.release()

    endpoint = _endpoint(
        stack,
        ("before-parameter-build.s3.PutObject", meet_before_manifest),
        ("after-call.s3.PutObject", release),
    )
    results: list = [None, None]

    def publish(i: int) -> None:
        try:
            results[i] = transfer.transfer_platform(
                platform, target, _resources(stack, endpoint), milestones=ALL_MILESTONES
            )
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            results[i] = exc

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None and not isinstance(r, Exception) for r in results), results
    assert sorted(r.status for r in results) == ["already_delivered", "delivered"]
    assert len({r.delivery_id for r in results}) == 1
    winner = next(r for r in results if r.status == "delivered")
    assert _manifests(stack, target) == [winner.manifest_key]
    data = [k for k in _landing(stack, target) if k.endswith(".parquet")]
    assert sorted(data) == sorted(f["key"] for f in winner.files)
    assert read_json(stack.s3_client(), BUCKET, winner.manifest_key)["files"] == winner.files
    # and a later run of the same delivery is "already delivered" too, without sending anything
    calls = Calls()
    again = transfer.transfer_platform(
        platform,
        target,
        _resources(stack, _endpoint(stack, ("before-parameter-build.s3", calls))),
        milestones=ALL_MILESTONES,
    )
    assert again.status == "already_delivered"
    assert not [k for (op, k) in calls.by_key if op in ("PutObject", "UploadPart", "CreateMultipartUpload")]


# -- 3. an object corrupted between upload and verification -----------------------------------------------------
def test_a_corrupted_object_fails_verification_names_platform_and_file_and_no_manifest_is_written(
    stack, tag, target, monkeypatch
):
    platform = _platform("idf", tag)
    _package(stack, platform, _tokens(25))
    real_verify = transfer.verify_upload
    corrupted: list[str] = []

    def corrupt_then_verify(s3, bucket, f, checksum, **kw):
        if f["table"] == "measurement" and not corrupted:
            # same key, same metadata, encrypted: only the bytes differ
            s3.put_object(
                Bucket=bucket,
                Key=f["key"],
                Body=b"PAR1 not what was sent",
                Metadata={"sha256": f["sha256"]},
                ServerSideEncryption="AES256",
            )
            corrupted.append(f["key"])
        return real_verify(s3, bucket, f, checksum, **kw)

    monkeypatch.setattr(transfer, "verify_upload", corrupt_then_verify)
    with pytest.raises(IntegrityError) as err:
        transfer.transfer_platform(platform, target, _resources(stack), milestones=ALL_MILESTONES)
    msg = str(err.value)
    assert "platform idf" in msg and corrupted[0] in msg and "table=measurement" in msg
    assert _manifests(stack, target) == []
    assert corrupted[0] not in _landing(stack, target)  # the bad object is removed: a retry sends it again

    monkeypatch.setattr(transfer, "verify_upload", real_verify)
    d = transfer.transfer_platform(platform, target, _resources(stack), milestones=ALL_MILESTONES)
    assert d.status == "delivered" and d.reused == 1
    s3 = stack.s3_client()
    for f in read_json(s3, BUCKET, d.manifest_key)["files"]:
        assert sha256_object(s3, BUCKET, f["key"]) == (f["sha256"], f["bytes"])


# -- 4. TLS ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    ["http://10.20.30.40:9000", "http://hdh-landing.example.org", "http://localhost.example.org:9000"],
)
def test_a_plain_http_endpoint_that_is_not_loopback_is_refused_before_anything_is_sent(stack, tag, target, url):
    platform = _platform("idf", tag)
    calls = Calls()
    endpoint = HookedEndpoint(url, "k", "s", hooks=(("before-parameter-build.s3", calls),))
    res = _resources(stack, endpoint)
    with pytest.raises(TransferError, match=r"HDH landing zone: endpoint http://\S+ is not TLS") as err:
        transfer.transfer_platform(platform, target, res, milestones=ALL_MILESTONES)
    assert "loopback address only" in str(err.value)
    with pytest.raises(TransferError, match="not TLS"):
        nlinkage.national_linkage(target, endpoint, [])
    assert not calls.by_key


def test_loopback_http_is_accepted_only_when_explicitly_allowed(stack, tag, target):
    platform = _platform("onco", tag)
    _package(stack, platform, _tokens(10))
    strict = target.model_copy(update={"allow_plain_http_loopback": False})
    with pytest.raises(TransferError, match="is not TLS; only https:// is accepted"):
        transfer.transfer_platform(platform, strict, _resources(stack), milestones=ALL_MILESTONES)
    assert _landing(stack, target) == []
    assert target.allow_plain_http_loopback
    d = transfer.transfer_platform(platform, target, _resources(stack), milestones=ALL_MILESTONES)
    assert d.status == "delivered"
    # https is always accepted, loopback or not
    S3Endpoint("https://hdh.example.org", None, None).require_tls(allow_loopback_http=False, what="x")


# -- 5. encryption at rest ---------------------------------------------------------------------------------------
def test_every_landing_object_is_encrypted_at_rest(stack, tag, target):
    refs = []
    for pid in ("idf", "onco"):
        _package(stack, _platform(pid, tag), _tokens(20))
        d = transfer.transfer_platform(_platform(pid, tag), target, _resources(stack), milestones=ALL_MILESTONES)
        receipt.receipt(target, _resources(stack).landing, d.delivery_id)
        refs.append(d.ref())
    nlinkage.national_linkage(target, _resources(stack).landing, refs)
    s3 = stack.s3_client()
    keys = _landing(stack, target)
    assert any(k.endswith("_receipt.json") for k in keys) and any("/linkage/" in k for k in keys)
    for k in keys:
        assert s3.head_object(Bucket=BUCKET, Key=k).get("ServerSideEncryption") in ("AES256", "aws:kms"), k


def test_an_endpoint_that_does_not_honour_encryption_is_refused_and_nothing_unencrypted_stays(stack, tag, target):
    platform = _platform("onco", tag)
    _package(stack, platform, _tokens(20))

    def drop_encryption(params, **_):  # an endpoint that silently ignores the encryption request
        params.pop("ServerSideEncryption", None)
        params.pop("SSEKMSKeyId", None)

    endpoint = _endpoint(
        stack,
        ("before-parameter-build.s3.PutObject", drop_encryption),
        ("before-parameter-build.s3.CreateMultipartUpload", drop_encryption),
    )
    with pytest.raises(TransferError, match="platform onco: .* did not apply encryption at rest"):
        transfer.transfer_platform(platform, target, _resources(stack, endpoint), milestones=ALL_MILESTONES)
    assert _manifests(stack, target) == []
    s3 = stack.s3_client()
    unencrypted = [
        k for k in _landing(stack, target) if s3.head_object(Bucket=BUCKET, Key=k).get("ServerSideEncryption") is None
    ]
    assert unencrypted == []


# -- 6. lifecycle rule -------------------------------------------------------------------------------------------
def test_the_landing_bucket_aborts_stale_incomplete_multipart_uploads_and_keeps_other_rules(stack, tag, target):
    s3 = stack.s3_client()
    other = {"ID": f"other-{tag}", "Filter": {"Prefix": "scratch/"}, "Status": "Enabled", "Expiration": {"Days": 30}}
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": [other]})
    platform = _platform("idf", tag)
    _package(stack, platform, _tokens(10))
    transfer.transfer_platform(platform, target, _resources(stack), milestones=ALL_MILESTONES)
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]}
    assert rules[transfer.LIFECYCLE_RULE_ID]["Status"] == "Enabled"
    assert rules[transfer.LIFECYCLE_RULE_ID]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert rules[other["ID"]]["Expiration"] == {"Days": 30}
    # idempotent: a second call changes nothing
    assert transfer.ensure_abort_lifecycle(s3, BUCKET)
    assert len(s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]) == 2


# -- 7. milestone gating -----------------------------------------------------------------------------------------
def test_a_platform_is_delivered_only_when_every_member_has_contract_and_preparation(stack, tag, target, fresh_db):
    catalogue.create_schema(fresh_db)
    catalogue.register_network(fresh_db, NETWORK)
    platform = _platform("idf", tag)
    _package(stack, platform, _tokens(15))
    members = [b.id for b in platform.members]
    for b in members:
        catalogue.set_milestone(fresh_db, b, "contract_signed", DAY, evidence="t", recorded_by="t")
    for b in members[:-1]:
        catalogue.set_milestone(fresh_db, b, "preparation", DAY, evidence="t", recorded_by="t")

    def reached():
        return {b: set(catalogue.milestones(fresh_db, b)) for b in members}

    d = transfer.transfer_platform(platform, target, _resources(stack), milestones=reached())
    assert d.status == "skipped" and d.skipped == {members[-1]: ["preparation"]}
    assert _landing(stack, target) == []
    catalogue.record_skipped_delivery(
        fresh_db, platform_id=platform.id, source_delivery=d.source_delivery, skipped=d.skipped
    )
    run = next(r for r in catalogue.latest_runs(fresh_db) if r["level"] == "national")
    assert (run["scope_id"], run["status"]) == ("idf", "skipped")
    assert run["details"]["missing_milestones"] == {members[-1]: ["preparation"]}
    with catalogue.engine(fresh_db).connect() as conn:
        audits = conn.execute(
            catalogue.audit_t.select().where(catalogue.audit_t.c.action == "delivery.skipped")
        ).fetchall()
    assert [(a.object, a.details["missing_milestones"]) for a in audits] == [(f"base:{members[-1]}", ["preparation"])]
    # a base unknown to the catalogue lacks both milestones
    assert transfer.delivery_gate(["nowhere"], {}) == {"nowhere": ["contract_signed", "preparation"]}

    catalogue.set_milestone(fresh_db, members[-1], "preparation", DAY, evidence="t", recorded_by="t")
    d = transfer.transfer_platform(platform, target, _resources(stack), milestones=reached())
    assert d.status == "delivered"
    assert len(_manifests(stack, target)) == 1
    # the receipt task records the delivering run; a later run finding it already delivered makes it latest again
    catalogue.record_run(fresh_db, level="national", scope_id="idf", batch_id=d.delivery_id, status="success")
    catalogue.record_skipped_delivery(fresh_db, platform_id="idf", source_delivery="later", skipped={"x": ["y"]})
    again = transfer.transfer_platform(platform, target, _resources(stack), milestones=reached())
    assert (again.status, again.delivery_id) == ("already_delivered", d.delivery_id)
    assert catalogue.record_already_delivered(fresh_db, platform_id="idf", delivery_id=again.delivery_id)
    run = next(r for r in catalogue.latest_runs(fresh_db) if r["level"] == "national")
    assert (run["status"], run["batch_id"]) == ("success", d.delivery_id)


# -- 8 and 9. national linkage; nothing identifying or level-1 in the landing zone ------------------------------
def test_shared_persons_per_platform_pair_are_stated_and_recorded(stack, tag, target, fresh_db):
    shared = _tokens(12)
    idf = _package(stack, _platform("idf", tag), shared + _tokens(40), seed=1)
    onco = _package(stack, _platform("onco", tag), _tokens(25) + shared, seed=2)
    res = _resources(stack)
    refs = [
        transfer.transfer_platform(_platform(p, tag), target, res, milestones=ALL_MILESTONES).ref()
        for p in ("idf", "onco")
    ]
    assert [r["status"] for r in refs] == ["delivered", "delivered"]
    summary = nlinkage.national_linkage(target, res.landing, refs)
    assert summary["persons"] == {"idf": 52, "onco": 37}
    assert [(p["platforms"], p["shared_persons"]) for p in summary["pairs"]] == [(["idf", "onco"], 12)]
    stored = read_json(stack.s3_client(), BUCKET, summary["summary_key"])
    assert stored["pairs"] == summary["pairs"]
    assert stored["deliveries"] == {r["platform"]: r["delivery_id"] for r in refs}
    catalogue.create_schema(fresh_db)
    assert catalogue.record_national_linkage(fresh_db, summary) == 1
    assert catalogue.record_national_linkage(fresh_db, summary) == 1  # rerun: same rows
    rows = catalogue.national_linkage(fresh_db)
    assert [(r["platform_a"], r["platform_b"], r["shared_persons"]) for r in rows] == [("idf", "onco", 12)]
    assert rows[0]["delivery_a"] == refs[0]["delivery_id"]
    # a single platform delivered (the other skipped): nothing to link, no summary object
    alone = nlinkage.national_linkage(target, res.landing, [refs[0], {"platform": "onco", "status": "skipped"}])
    assert alone["summary_key"] is None and alone["pairs"] == []
    assert [k for k in _landing(stack, target) if "/linkage/" in k] == [summary["summary_key"]]

    # 9: the landing zone holds no level-1 id, no transport token (sealed or open), no identity value
    s3 = stack.s3_client()
    national_ids: set[int] = set()
    texts: dict[str, str] = {}
    for k in _landing(stack, target):
        body = s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()
        if k.endswith(".parquet"):
            tbl = pq.read_table(io.BytesIO(body))
            assert not set(tbl.column_names) & transfer.FORBIDDEN_COLUMNS, k
            if "person_id" in tbl.column_names:
                national_ids |= set(tbl.column("person_id").to_pylist())
            buf = io.BytesIO()
            pacsv.write_csv(tbl, buf)
            texts[k] = buf.getvalue().decode()
        else:
            texts[k] = body.decode()
    assert len(national_ids) == 52 + 37 - 12
    level1 = idf.level1_ids | onco.level1_ids
    assert not national_ids & level1
    forbidden = (
        {str(i) for i in level1}
        | idf.sealed
        | onco.sealed
        | {t.hex() for t in shared}
        | idf.identity_values
        | onco.identity_values
    )
    hits = [(k, v) for k, text in texts.items() for v in forbidden if v in text]
    assert hits == []
    # the scan is not vacuous: a level-1 id planted in one object is found
    planted = {**texts, "x": texts[summary["summary_key"]] + str(min(level1))}
    assert [k for k, text in planted.items() for v in forbidden if v in text] == ["x"]


# -- signed package manifests, the HDH zone's receipt ---------------------------------------------------------------
def test_a_package_manifest_not_signed_by_its_platform_is_refused(stack, tag, target):
    platform = _platform("idf", tag)
    res = dataclasses.replace(_resources(stack), trust=stack.trust(NETWORK))
    for sign_as in (None, "platform:onco", "local:hosp_a"):  # unsigned, another platform, a member hospital
        _package(stack, platform, _tokens(5), sign_as=sign_as)
        with pytest.raises(IntegrityError, match="not signed|bad signature"):
            transfer.transfer_platform(platform, target, res, milestones=ALL_MILESTONES)
        assert _landing(stack, target) == []
    _package(stack, platform, _tokens(5), sign_as="platform:idf")
    assert transfer.transfer_platform(platform, target, res, milestones=ALL_MILESTONES).status == "delivered"


def test_the_hdh_receipt_is_signed_and_a_tampered_landing_object_makes_it_refuse(stack, tag, target):
    platform = _platform("onco", tag)
    res = dataclasses.replace(_resources(stack), trust=stack.trust(NETWORK))
    _package(stack, platform, _tokens(8), sign_as="platform:onco")
    d = transfer.transfer_platform(platform, target, res, milestones=ALL_MILESTONES)
    national_key = base64.b64decode(stack.keys(NETWORK)[signing_connection_id("national")]["password"])
    ok = receipt.receipt(target, res.landing, d.delivery_id, signing_key=national_key)
    assert ok["status"] == "accepted", ok
    verify_document(ok, stack.trust(NETWORK)["national"], what="receipt")
    s3 = stack.s3_client()
    victim = next(k for k in _landing(stack, target) if k.endswith(".parquet"))
    body = s3.get_object(Bucket=BUCKET, Key=victim)["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=victim, Body=body[:-1] + bytes([body[-1] ^ 1]), ServerSideEncryption="AES256")
    bad = receipt.receipt(target, res.landing, d.delivery_id, signing_key=national_key)
    assert bad["status"] == "rejected" and any(victim in p for p in bad["problems"]), bad
