"""Level-1 pseudonyms by an oblivious PRF through the key holder's exchange area (real PostgreSQL and S3).

The hospital blinds, the key holder evaluates, the hospital finalizes into its own map: each patient evaluated
once, the key holder seeing only blinded elements, a spike above the nightly ceiling refused.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid

import psycopg
import pytest

from eds_network.core import oprf
from eds_network.core.config import load_network
from eds_network.core.crypto import Key
from eds_network.core.identity import linkage_identity
from eds_network.core.storage import S3Endpoint, ensure_bucket, list_keys
from eds_network.dev import seed
from eds_network.keys import evaluate as keys
from eds_network.local import level1

pytestmark = pytest.mark.integration

NET = load_network()
BASE = NET.base("hosp_c")
PLATFORM = NET.platform_of(BASE.id)
SITE = BASE.finess or BASE.id
DAY1, DAY2 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC), dt.datetime(2026, 3, 2, tzinfo=dt.UTC)


@pytest.fixture
def world(stack, new_db):
    dsn = new_db()
    seed.seed_base(dsn, NET, BASE.id, (DAY1, DAY2), tables=["person"])
    ep = S3Endpoint(stack.s3_endpoint, *stack.s3_login)
    bucket = PLATFORM.key_holder.exchange.bucket
    ensure_bucket(ep.client(), bucket)
    return {"dsn": dsn, "ep": ep, "bucket": bucket, "prefix": f"test-oprf-{uuid.uuid4().hex[:8]}/"}


def _round_trip(w, key: Key, batch: str, *, already: int = 0, ceiling: int = 10**6) -> dict:
    args = (w["ep"], w["bucket"], w["prefix"])
    keys.announce(*args, base=BASE.id, batch=batch, version=key.version)
    blinded = level1.blind_new_identities(w["dsn"], *args, base=BASE.id, site=SITE, batch=batch)
    server = keys.server_key(key, PLATFORM.id)
    keys.evaluate_request(
        *args, base=BASE.id, batch=batch, key=server, version=key.version, already_tonight=already, ceiling=ceiling
    )
    return {"blinded": blinded, **level1.finalize_evaluations(w["dsn"], *args, base=BASE.id, site=SITE, batch=batch)}


def _identities(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT person_id, nir, birth_date, sex, ipp, last_name, first_name FROM identity.patient p WHERE NOT"
            " EXISTS (SELECT 1 FROM identity.opposition o WHERE o.person_id = p.person_id) ORDER BY person_id"
        ).fetchall()


def test_each_patient_is_evaluated_once_and_gets_the_prf_of_its_identity(world):
    key = Key(secrets.token_bytes(32), "v1", PLATFORM.key_connection_id)
    people = _identities(world["dsn"])
    first = _round_trip(world, key, "b1")
    assert first["blinded"]["blinded"] == first["finalized"] == len(people) > 0
    again = _round_trip(world, key, "b2")
    assert again["finalized"] == 0  # evaluated once: the next night asks for nothing
    server = keys.server_key(key, PLATFORM.id)
    with psycopg.connect(world["dsn"], autocommit=True) as conn:
        got = level1.lookup(conn, "v1", [p[0] for p in people])
        expected = {p[0]: oprf.evaluate(server, linkage_identity(*p[1:5], SITE).encode()) for p in people}
        assert got == expected
        # An identity corrected at the source is evaluated again (and only that one).
        conn.execute("UPDATE identity.patient SET ipp = ipp || 'X' WHERE person_id = %s", (people[0][0],))
        assert level1.current_version(conn) == "v1"
    assert _round_trip(world, key, "b3")["finalized"] == 1
    # A new key version (rotation): every patient is evaluated again, to other pseudonyms.
    rotated = Key(secrets.token_bytes(32), "v2", PLATFORM.key_connection_id)
    assert _round_trip(world, rotated, "b4")["finalized"] == len(people)
    with psycopg.connect(world["dsn"], autocommit=True) as conn:
        after = level1.lookup(conn, "v2", [p[0] for p in people])
        assert not set(after.values()) & set(got.values())
        assert level1.current_version(conn) == "v2"


def test_the_key_holder_sees_only_blinded_elements(world):
    key = Key(secrets.token_bytes(32), "v1", PLATFORM.key_connection_id)
    people = _identities(world["dsn"])
    _round_trip(world, key, "b1")
    s3 = world["ep"].client()
    seen = {k: s3.get_object(Bucket=world["bucket"], Key=k)["Body"].read() for k in list_keys(s3, world["bucket"], "")}
    seen = {k: v for k, v in seen.items() if k.startswith(world["prefix"])}
    assert seen
    everything = b"\n".join(seen.values())
    # No identity value, in any spelling the hospital holds it, and no local person id list.
    for _pid, nir, birth_date, _sex, ipp, last, first in people:
        for value in (nir, ipp, last, first, birth_date.isoformat()):
            if value and len(value) > 4:
                assert value.encode() not in everything
    request_elements = _elements(seen, "request")
    assert len(request_elements) == len(people)
    # Blinded elements are neither the unblinded hash of an identity nor anything the hospital keeps.
    hashed = {oprf.hash_to_group(linkage_identity(*p[1:5], SITE).encode()) for p in people}
    with psycopg.connect(world["dsn"]) as conn:
        kept = {bytes(r[0]) for r in conn.execute("SELECT level1 FROM eds_local.level1_pseudonym")}
    assert not set(request_elements) & hashed
    assert not {e for e in request_elements} & {k[:32] for k in kept}
    # The same identities blinded again give unrelated elements: requests cannot be linked to one another.
    with psycopg.connect(world["dsn"], autocommit=True) as conn:
        again = level1.blind_rows(conn, "other", "v9", SITE)
    assert len(again) == len(people) and not set(again) & set(request_elements)


def _elements(objects: dict[str, bytes], kind: str) -> list[bytes]:
    out = []
    for k, body in sorted(objects.items()):
        if k.rsplit("/", 1)[-1].startswith(f"{kind}.") and k.endswith(".bin"):
            out += [body[i : i + 32] for i in range(0, len(body), 32)]
    return out


def test_a_spike_above_the_nightly_ceiling_is_refused_and_nothing_is_evaluated(world):
    key = Key(secrets.token_bytes(32), "v1", PLATFORM.key_connection_id)
    n = len(_identities(world["dsn"]))
    args = (world["ep"], world["bucket"], world["prefix"])
    keys.announce(*args, base=BASE.id, batch="b1", version="v1")
    level1.blind_new_identities(world["dsn"], *args, base=BASE.id, site=SITE, batch="b1")
    with pytest.raises(keys.EvaluationRefused, match="above the ceiling") as err:
        keys.evaluate_request(
            *args,
            base=BASE.id,
            batch="b1",
            key=keys.server_key(key, PLATFORM.id),
            version="v1",
            already_tonight=5,
            ceiling=n + 4,
        )
    assert err.value.base == BASE.id
    s3 = world["ep"].client()
    assert not [k for k in list_keys(s3, world["bucket"], world["prefix"]) if "response" in k]
    with pytest.raises(Exception, match="no response"):
        level1.finalize_evaluations(world["dsn"], *args, base=BASE.id, site=SITE, batch="b1")


def test_a_request_blinded_under_another_key_version_is_not_evaluated(world):
    args = (world["ep"], world["bucket"], world["prefix"])
    keys.announce(*args, base=BASE.id, batch="b1", version="v1")
    level1.blind_new_identities(world["dsn"], *args, base=BASE.id, site=SITE, batch="b1")
    key = Key(secrets.token_bytes(32), "v2", PLATFORM.key_connection_id)
    with pytest.raises(Exception, match="key rotated during the run"):
        keys.evaluate_request(
            *args,
            base=BASE.id,
            batch="b1",
            key=keys.server_key(key, PLATFORM.id),
            version="v2",
            already_tonight=0,
            ceiling=10**6,
        )
