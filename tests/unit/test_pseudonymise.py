"""Keyed pseudonyms: linkable within a platform, unlinkable across platforms, linkable again only nationally."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

import pyarrow as pa
import pytest
from nacl.public import PrivateKey

from eds_network.errors import EdsError
from eds_network.pseudonymise import (
    TOKEN_COLUMN,
    Key,
    PersonMap,
    level1_batch,
    linkage_identity,
    national_person_ids,
    nir_is_valid,
    normalise,
)


def _key(name: str) -> Key:
    return Key(secrets.token_bytes(32), "v1", name)


def _nir(body13: str) -> str:
    return body13 + f"{97 - int(body13) % 97:02d}"


NIR = _nir("1841276451089")
BOX = PrivateKey.generate()
TRANSPORT = _key("transport")


def _map(platform_key: Key, site: str, person_id: int, nir: str | None, ipp: str) -> PersonMap:
    m = PersonMap(platform_key, TRANSPORT, bytes(BOX.public_key), site=site)
    m.add([(person_id, nir, dt.date(1984, 12, 3), "M", ipp)])
    return m


def test_nir_key_is_checked():
    assert nir_is_valid(NIR)
    assert not nir_is_valid(NIR[:-2] + f"{(int(NIR[-2:]) + 1) % 100:02d}")
    assert not nir_is_valid(None)
    assert nir_is_valid(_corsica())


def _corsica() -> str:
    body = "169052A123456"
    num = int(body.replace("2A", "19"))
    return body + f"{97 - num % 97:02d}"


def test_normalisation_ignores_case_accents_and_spaces():
    assert normalise(" Hélène  n'diaye ") == normalise("HELENE N'DIAYE")


def test_invalid_nir_falls_back_to_a_site_scoped_identity():
    bad = NIR[:-2] + "00" if NIR[-2:] != "00" else NIR[:-2] + "01"
    assert linkage_identity(bad, "1984-12-03", "M", "0100000001", "750000001").startswith("SITE|")
    assert linkage_identity(NIR, "1984-12-03", "M", "0100000001", "750000001").startswith("NIR|")


def test_same_patient_same_platform_two_hospitals_same_level1_id():
    k = _key("idf")
    a = _map(k, "750000001", 7, NIR, "0100000007")
    b = _map(k, "750000002", 42, NIR, "0200000042")
    assert a.map_ids(pa.array([7])).to_pylist() == b.map_ids(pa.array([42])).to_pylist()


def test_same_patient_two_platforms_different_level1_ids():
    a = _map(_key("idf"), "750000001", 7, NIR, "0100000007")
    b = _map(_key("onco"), "690000004", 7, NIR, "0100000007")
    assert a.map_ids(pa.array([7])).to_pylist() != b.map_ids(pa.array([7])).to_pylist()


def test_site_scoped_identity_never_links_across_sites():
    k = _key("idf")
    a = _map(k, "750000001", 7, None, "0000000007")
    b = _map(k, "750000002", 7, None, "0000000007")
    assert a.map_ids(pa.array([7])).to_pylist() != b.map_ids(pa.array([7])).to_pylist()


def test_national_id_is_the_same_across_platforms_while_sealed_tokens_differ():
    nat = _key("national")
    a = _map(_key("idf"), "750000001", 7, NIR, "0100000007")
    b = _map(_key("onco"), "690000004", 3, NIR, "0300000003")
    ta = a.sealed_tokens(pa.array([7, 7]))
    tb = b.sealed_tokens(pa.array([3]))
    assert len({*ta.to_pylist(), *tb.to_pylist()}) == 3  # randomised: nothing to link on at the platforms
    la = a.map_ids(pa.array([7]))
    lb = b.map_ids(pa.array([3]))
    ma = national_person_ids(ta.slice(0, 1), la, nat, bytes(BOX))
    mb = national_person_ids(tb, lb, nat, bytes(BOX))
    assert ma[la[0].as_py()] == mb[lb[0].as_py()]
    assert ma[la[0].as_py()] != la[0].as_py()


def test_wrong_national_private_key_is_a_clear_error():
    a = _map(_key("idf"), "750000001", 7, NIR, "0100000007")
    with pytest.raises(EdsError, match="cannot be opened with the national key"):
        national_person_ids(
            a.sealed_tokens(pa.array([7])), a.map_ids(pa.array([7])), _key("n"), bytes(PrivateKey.generate())
        )


def test_person_batch_loses_identifiers_and_full_birth_date():
    m = _map(_key("idf"), "750000001", 7, NIR, "0100000007")
    batch = pa.table(
        {
            "person_id": pa.array([7], pa.int64()),
            "year_of_birth": [1984],
            "month_of_birth": [12],
            "day_of_birth": [3],
            "birth_datetime": pa.array([dt.datetime(1984, 12, 3)], pa.timestamp("us")),
            "person_source_value": ["3f8a-uuid"],
            "gender_source_value": ["M"],
            "race_source_value": ["white"],
            "location_id": pa.array([12], pa.int64()),
            "care_site_id": pa.array([5], pa.int64()),
        }
    )
    out = level1_batch(batch, "person", m, site_number=3).to_pylist()[0]
    assert out["year_of_birth"] == 1984
    for col in (
        "month_of_birth",
        "day_of_birth",
        "birth_datetime",
        "person_source_value",
        "location_id",
        "race_source_value",
    ):
        assert out[col] is None, col
    assert out["gender_source_value"] == "M"
    assert out["care_site_id"] == 3 * 10**12 + 5
    assert out["person_id"] != 7 and out[TOKEN_COLUMN]


def test_negative_or_huge_ids_cannot_be_namespaced():
    m = _map(_key("idf"), "750000001", 7, NIR, "0100000007")
    batch = pa.table({"visit_occurrence_id": pa.array([-1], pa.int64()), "person_id": pa.array([7], pa.int64())})
    with pytest.raises(EdsError, match="visit_occurrence_id"):
        level1_batch(batch, "visit_occurrence", m, site_number=1)


def test_dictionary_attack_recovers_unkeyed_hashes_but_not_our_pseudonyms():
    # Every NIR of one birth month/department (a realistic attacker's enumeration, scaled down).
    candidates = [_nir(f"18412764510{i:02d}") for i in range(100)]
    planted = candidates[17]
    m = _map(_key("idf"), "750000001", 1, planted, "0100000001")
    ours = m.map_ids(pa.array([1])).to_pylist()[0]
    unkeyed = hashlib.sha256(planted.encode()).hexdigest()
    table = {hashlib.sha256(c.encode()).hexdigest(): c for c in candidates}
    assert table.get(unkeyed) == planted  # the unkeyed hash falls at once
    # Without the key, hashing the same candidates (with birth date and sex) never reproduces our id.
    guesses = {
        int.from_bytes(hashlib.sha256(linkage_identity(c, "1984-12-03", "M", "", "").encode()).digest()[:8], "big")
        & ((1 << 63) - 1)
        for c in candidates
    }
    assert ours not in guesses


def test_key_repr_never_shows_the_secret():
    k = _key("idf")
    assert k.secret.hex() not in repr(k)
    with pytest.raises(EdsError, match="shorter than 256 bits"):
        Key.from_secret("k", "ab" * 8, "v1")
