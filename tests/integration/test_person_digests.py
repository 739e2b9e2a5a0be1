"""The full digest beside every 63-bit person id, under uniqueness constraints at the platform and at national:
a forced collision (a truncated-id function injected) is refused with a clear error, never merged.

Real PostgreSQL (the platform warehouse's `eds_platform.person_digest`, the national `eds_national.person_digest`)
and, for the national level, a real transfer through the S3 endpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets

import psycopg
import pytest
import test_transfer as tt  # the national transfer's test helpers and fixtures (tests/integration/)
from psycopg import sql

from eds_network.core import digests
from eds_network.core.errors import IntegrityError
from eds_network.national import level2, transfer
from eds_network.platform import merge
from eds_network.platform.migrations import MIGRATIONS

tag, target = tt.tag, tt.target  # fixtures


def tiny(digest: bytes) -> int:
    """A truncated-id function (2 bits instead of 63): collisions guaranteed among a handful of patients."""
    return 1 + digest[0] % 4


def distinct_tiny(n: int) -> list[bytes]:
    """n random digests whose tiny ids are all different (n <= 4)."""
    out: dict[int, bytes] = {}
    while len(out) < n:
        d = secrets.token_bytes(32)
        out.setdefault(tiny(d), d)
    return list(out.values())


def colliding(with_id: int, avoid: set[bytes]) -> bytes:
    while True:
        d = secrets.token_bytes(32)
        if tiny(d) == with_id and d not in avoid:
            return d


def _registry(conn) -> list[tuple]:
    return conn.execute("SELECT person_id, digest FROM eds_platform.person_digest ORDER BY 1").fetchall()


def _never_quotes(message: str, values) -> None:
    for v in values:
        assert v.hex() not in message and str(tiny(v)) + " " not in message.split(":")[-1]


def test_the_registry_refuses_two_digests_for_one_id_and_two_ids_for_one_digest(fresh_db):
    MIGRATIONS.upgrade(fresh_db)  # the warehouse's schemas, its person-digest registry among them
    with psycopg.connect(fresh_db) as conn:
        first = distinct_tiny(3)
        pairs = [(tiny(d), d) for d in first]
        assert digests.register_pairs(conn, "eds_platform", pairs, zone="platform", base="hosp_a") == 3
        conn.commit()
        # The same patients again (another night, another site): nothing new, nothing refused.
        assert digests.register_pairs(conn, "eds_platform", pairs, zone="platform", base="hosp_b") == 0
        conn.commit()
        before = _registry(conn)

        # Across batches: another patient (another digest) whose truncated id is an existing one.
        other = colliding(tiny(first[0]), set(first))
        with pytest.raises(IntegrityError, match="person id collision.*two different digests.*never merged") as e:
            digests.register_pairs(conn, "eds_platform", [(tiny(other), other)], zone="platform", base="hosp_c")
        conn.rollback()
        assert "base=hosp_c" in str(e.value) and "table=person" in str(e.value)
        _never_quotes(str(e.value), [other, first[0]])
        assert _registry(conn) == before

        # One digest given another id (a producer truncating differently): refused.
        with pytest.raises(IntegrityError, match="digests given two different person ids"):
            digests.register_pairs(conn, "eds_platform", [(10**15, first[1])], zone="platform")
        conn.rollback()

        # Within one batch: both kinds.
        a = colliding(4, set())
        b = colliding(4, {a})
        with pytest.raises(IntegrityError, match="two different digests"):
            digests.register_pairs(conn, "eds_platform", [(4, a), (4, b)], zone="platform")
        conn.rollback()
        with pytest.raises(IntegrityError, match="two different person ids"):
            digests.register_pairs(conn, "eds_platform", [(77, a), (78, a)], zone="platform")
        conn.rollback()
        assert _registry(conn) == before

        # The constraints themselves hold even when the check is skipped (a concurrent writer).
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO eds_platform.person_digest (person_id, digest) VALUES (%s, %s)", (tiny(other), other)
            )
        conn.rollback()
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO eds_platform.person_digest (person_id, digest) VALUES (%s, %s)", (999, first[2]))
        conn.rollback()


def _stage(conn, rows: list[tuple[int, str | None]]) -> sql.Identifier:
    stage = sql.Identifier("stage_person")
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(stage))
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} (person_id bigint, {} text)").format(stage, sql.Identifier(merge.DIGEST))
    )
    for pid, hexd in rows:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(stage), (pid, hexd))
    return stage


def test_the_platform_merge_checks_the_hex_digest_of_each_staged_person(fresh_db):
    """The warehouse side: the local person file's `_person_digest` (hex), decoded and checked as staged."""
    first = distinct_tiny(2)
    MIGRATIONS.upgrade(fresh_db)  # the warehouse's schemas, its person-digest registry among them
    with psycopg.connect(fresh_db) as conn:
        merge._register_digests(conn, _stage(conn, [(tiny(d), d.hex()) for d in first]), "hosp_a")
        conn.commit()
        other = colliding(tiny(first[0]), set(first))
        with pytest.raises(IntegrityError, match=r"\[base=hosp_b table=person column=person_id\] platform: person id"):
            merge._register_digests(conn, _stage(conn, [(tiny(other), other.hex())]), "hosp_b")
        conn.rollback()
        # A person row without a (well-formed) digest cannot be checked: refused too.
        with pytest.raises(IntegrityError, match="carry no digest"):
            merge._register_digests(conn, _stage(conn, [(12345, None)]), "hosp_b")
        conn.rollback()
        with pytest.raises(IntegrityError, match="carry no digest"):
            merge._register_digests(conn, _stage(conn, [(12345, "not-hex")]), "hosp_b")
        conn.rollback()
        assert len(_registry(conn)) == 2


def test_a_local_person_file_carries_the_first_half_of_the_level1_output_beside_the_id():
    import pyarrow as pa
    from nacl.public import PrivateKey

    from eds_network.core.crypto import Key, id63
    from eds_network.local.pseudonymise import PersonMap, level1_batch

    prf = hashlib.sha512(b"a level-1 output").digest()
    m = PersonMap(Key(b"t" * 32, "v1", "transport"), bytes(PrivateKey.generate().public_key), "750000001")
    m.add([(7, None, "1980-01-01", "1", "IPP7", prf)])
    out = level1_batch(pa.table({"person_id": pa.array([7], pa.int64())}), "person", m, 1)
    d = bytes.fromhex(out.column(digests.DIGEST_COLUMN)[0].as_py())
    assert d == prf[:32] and id63(d) == out.column("person_id")[0].as_py()
    assert prf[32:].hex() not in out.to_pandas().to_csv()  # the hidden half never leaves


def test_national_refuses_a_delivery_whose_level2_ids_collide_with_an_earlier_delivery(
    stack,
    tag,
    target,
    fresh_db,
    monkeypatch,
):
    """Two platforms, different patients; an injected truncation gives the second delivery's patients the ids of
    the first's: the registry (real PostgreSQL) refuses the second delivery before anything is sent."""
    counter = {"n": 0}

    def per_delivery(sealed, ids, key, private, **kw):  # ids 1..n in each delivery: unique within, colliding across
        order: dict[bytes, int] = {}

        def trunc(d: bytes) -> int:
            return order.setdefault(d, len(order) + 1)

        counter["n"] += 1
        return level2.national_person_digests(sealed, ids, key, private, truncate=trunc)

    monkeypatch.setattr(transfer, "national_person_digests", per_delivery)
    res = dataclasses.replace(tt._resources(stack), registry_dsn=fresh_db)
    idf = tt._platform("idf", tag)
    tt._package(stack, idf, tt._tokens(5), measurements=20)
    assert transfer.transfer_platform(idf, target, res, milestones=tt.ALL_MILESTONES).status == "delivered"
    with psycopg.connect(fresh_db) as conn:
        held = conn.execute("SELECT count(*) FROM eds_national.person_digest").fetchone()[0]
    assert held == 5

    second = tt._platform(transfer_platforms()[1].id, tag)
    tt._package(stack, second, tt._tokens(5), measurements=20)
    landing_before = set(_landing_keys(stack, target))
    with pytest.raises(IntegrityError, match=r"national \(platform .*\): person id collision: 5 person ids"):
        transfer.transfer_platform(second, target, res, milestones=tt.ALL_MILESTONES)
    assert set(_landing_keys(stack, target)) == landing_before  # nothing of the refused delivery was sent
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM eds_national.person_digest").fetchone()[0] == 5
    assert counter["n"] == 2


def transfer_platforms():
    from eds_network.core.config import load_network

    return load_network().platforms


def _landing_keys(stack, target):
    from eds_network.core.storage import list_keys

    return list_keys(stack.s3_client(), target.landing_zone.bucket, target.landing_zone.prefix)
