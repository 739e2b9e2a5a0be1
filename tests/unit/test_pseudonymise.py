"""Keyed pseudonyms: linkable within a platform, unlinkable across platforms, linkable again only nationally."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

import pyarrow as pa
import pytest
from nacl.public import PrivateKey

from eds_network.core import rowids
from eds_network.core.crypto import Key
from eds_network.core.errors import EdsError
from eds_network.core.exchange import TOKEN_COLUMN
from eds_network.dev.level1 import KeyedPersonMap
from eds_network.local.pseudonymise import PersonMap, level1_batch, linkage_identity, nir_is_valid, normalise
from eds_network.national.level2 import national_person_ids


def _key(name: str) -> Key:
    return Key(secrets.token_bytes(32), "v1", name)


def _nir(body13: str) -> str:
    return body13 + f"{97 - int(body13) % 97:02d}"


NIR = _nir("1841276451089")
BOX = PrivateKey.generate()
TRANSPORT = _key("transport")


def _map(platform_key: Key, site: str, person_id: int, nir: str | None, ipp: str) -> PersonMap:
    m = KeyedPersonMap(platform_key, TRANSPORT, bytes(BOX.public_key), site=site)
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
    assert out["care_site_id"] == rowids.rekey(pa.array([5], pa.int64()), m.row_key, "level1-row")[0].as_py() != 5
    assert out["person_id"] != 7 and out[TOKEN_COLUMN]


def test_negative_or_huge_ids_cannot_be_namespaced():
    m = _map(_key("idf"), "750000001", 7, NIR, "0100000007")
    batch = pa.table({"visit_occurrence_id": pa.array([-1], pa.int64()), "person_id": pa.array([7], pa.int64())})
    with pytest.raises(EdsError, match="visit_occurrence_id"):
        level1_batch(batch, "visit_occurrence", m, site_number=1)


# Planted patients: (sex, birth date, département + commune of birth, order number). An attacker who knows
# everything but the order number (sex and birth date are in the data, the birthplace is guessable) enumerates
# every plausible NIR: 999 order numbers, each with its control key.
PLANTED = [
    ("1", dt.date(1984, 12, 3), "76451", 89),
    ("2", dt.date(1971, 2, 17), "75112", 412),
    ("1", dt.date(2001, 7, 30), "2A004", 7),
    ("2", dt.date(1958, 10, 9), "69383", 998),
    ("1", dt.date(1990, 5, 21), "13055", 250),
]


def _nir_of(sex: str, born: dt.date, place: str, order: int) -> str:
    body = f"{sex}{born:%y%m}{place}{order:03d}"
    num = int(body.replace("2A", "19").replace("2B", "18"))
    return body + f"{97 - num % 97:02d}"


def test_dictionary_attack_recovers_every_unkeyed_nir_hash_and_none_of_our_pseudonyms():
    def id63_sha(text: str) -> int:
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & ((1 << 63) - 1)

    assert all(nir_is_valid(_nir_of(*p)) for p in PLANTED)  # linked on the NIR: the attack's target
    nat = _key("national")
    m = KeyedPersonMap(_key("idf"), TRANSPORT, bytes(BOX.public_key), site="750000001")
    m.add(
        (i, _nir_of(sex, born, place, order), born, "M" if sex == "1" else "F", f"IPP{i}")
        for i, (sex, born, place, order) in enumerate(PLANTED)
    )
    local = pa.array(range(len(PLANTED)), pa.int64())
    level1 = m.map_ids(local)
    level2 = national_person_ids(m.sealed_tokens(local), level1, nat, bytes(BOX))
    ours = set(level1.to_pylist()) | set(level2.values())  # everything that leaves a hospital or the platform
    unkeyed = {id63_sha(_nir_of(*p)): i for i, p in enumerate(PLANTED)}  # a naive peer: SHA-256 of the NIR

    recovered_unkeyed, recovered_ours, tried = set(), set(), 0
    for i, (sex, born, place, _) in enumerate(PLANTED):
        for order in range(1, 1000):
            nir = _nir_of(sex, born, place, order)
            tried += 1
            if unkeyed.get(id63_sha(nir)) == i:
                recovered_unkeyed.add(i)
            # every unkeyed spelling an attacker could try against our output
            guesses = {id63_sha(nir), id63_sha(linkage_identity(nir, str(born), "M" if sex == "1" else "F", "", ""))}
            if guesses & ours:
                recovered_ours.add(i)
    assert tried == 999 * len(PLANTED) and m.site_scoped == 0
    assert recovered_unkeyed == set(range(len(PLANTED)))  # without a key, every planted NIR falls
    assert recovered_ours == set()  # with the key, none does


def test_key_repr_never_shows_the_secret():
    k = _key("idf")
    assert k.secret.hex() not in repr(k)
    with pytest.raises(EdsError, match="shorter than 256 bits"):
        Key.from_secret("k", "ab" * 8, "v1")
