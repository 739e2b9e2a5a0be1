"""Date shifting, generalisation and removal rules, key versions: the parts of pseudonymisation a platform configures."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from nacl.public import PrivateKey

from eds_network.core import rowids
from eds_network.core.config import DEFAULT_CONFIG, load_network
from eds_network.core.crypto import Key
from eds_network.core.errors import ConfigError, EdsError
from eds_network.dev.keys import rotate_stack_key
from eds_network.dev.level1 import KeyedPersonMap
from eds_network.keys import rotation
from eds_network.local import pseudonymise
from eds_network.local.pseudonymise import (
    DEFAULT_TEXT_ALLOW_LIST,
    PersonMap,
    generalise_postcode,
    level1_batch,
    policy_fingerprint,
)

BOX = PrivateKey.generate()


def _key(name: str, version: str = "v1") -> Key:
    return Key(secrets.token_bytes(32), version, name)


def _nir(body13: str) -> str:
    return body13 + f"{97 - int(body13) % 97:02d}"


PLATFORM = _key("idf")
TRANSPORT = _key("transport")
DATE_SHIFT = _key("date_shift")


def _persons(
    n: int,
    *,
    shift: int,
    key: Key = PLATFORM,
    site: str = "750000001",
    transport: Key = TRANSPORT,
    shift_key: Key = DATE_SHIFT,
) -> PersonMap:
    m = KeyedPersonMap(
        key, transport, bytes(BOX.public_key), site=site, date_shift_days=shift, date_shift_key=shift_key
    )
    m.add([(i, _nir(f"18412764510{i:02d}"), dt.date(1984, 12, 3), "M", f"IPP{i}") for i in range(1, n + 1)])
    return m


def _visits(person_ids: list[int], starts: list[dt.datetime], lengths_h: list[int]) -> pa.Table:
    return pa.table(
        {
            "visit_occurrence_id": pa.array(range(1, len(person_ids) + 1), pa.int64()),
            "person_id": pa.array(person_ids, pa.int64()),
            "visit_concept_id": pa.array([9201] * len(person_ids), pa.int64()),
            "visit_start_date": pa.array([s.date() for s in starts], pa.date32()),
            "visit_start_datetime": pa.array(starts, pa.timestamp("us")),
            "visit_end_date": pa.array(
                [(s + dt.timedelta(hours=h)).date() for s, h in zip(starts, lengths_h, strict=True)]
            ),
            "visit_end_datetime": pa.array(
                [s + dt.timedelta(hours=h) for s, h in zip(starts, lengths_h, strict=True)], pa.timestamp("us")
            ),
            "visit_type_concept_id": pa.array([32817] * len(person_ids), pa.int64()),
        }
    )


# -- date shifting -------------------------------------------------------------------------------------------


def test_date_shift_keeps_each_patients_order_and_intervals_across_tables():
    m = _persons(2, shift=30)
    t0 = dt.datetime(2024, 3, 1, 8, 0)
    starts = [t0, t0 + dt.timedelta(days=3, hours=5), t0 + dt.timedelta(days=40), t0 + dt.timedelta(days=1)]
    visits = _visits([1, 1, 1, 2], starts, [2, 30, 200, 5])
    out = level1_batch(visits, "visit_occurrence", m, site_number=1).to_pylist()
    meas = pa.table(
        {
            "measurement_id": pa.array([1, 2], pa.int64()),
            "person_id": pa.array([1, 2], pa.int64()),
            "measurement_concept_id": pa.array([3004410, 3004410], pa.int64()),
            "measurement_date": pa.array([dt.date(2024, 3, 2), dt.date(2024, 3, 2)], pa.date32()),
            "measurement_datetime": pa.array([dt.datetime(2024, 3, 2, 9), None], pa.timestamp("us")),
            "measurement_type_concept_id": pa.array([32817, 32817], pa.int64()),
        }
    )
    mout = level1_batch(meas, "measurement", m, site_number=1).to_pylist()
    shift = {}
    for src, row in zip(visits.to_pylist(), out, strict=True):
        d = row["visit_start_datetime"] - src["visit_start_datetime"]
        assert d.seconds == 0 and d.days != 0 and abs(d.days) <= 30
        # every date/datetime column of the row moves by the same whole number of days
        assert row["visit_end_datetime"] - src["visit_end_datetime"] == d
        assert row["visit_start_date"] - src["visit_start_date"] == d
        assert row["visit_end_date"] - src["visit_end_date"] == d
        assert shift.setdefault(src["person_id"], d) == d  # one offset per patient
    # intervals and order of patient 1's events preserved
    p1 = [r["visit_start_datetime"] for r in out[:3]]
    assert [b - a for a, b in zip(p1, p1[1:], strict=False)] == [
        b - a for a, b in zip(starts[:3], starts[1:3], strict=False)
    ]
    # the same patient's offset in another table
    assert mout[0]["measurement_date"] - dt.date(2024, 3, 2) == shift[1]
    assert mout[0]["measurement_datetime"] - dt.datetime(2024, 3, 2, 9) == shift[1]
    assert mout[1]["measurement_datetime"] is None and mout[1]["measurement_date"] - dt.date(2024, 3, 2) == shift[2]
    # ids, concepts untouched by the shift
    assert [r["visit_concept_id"] for r in out] == [9201] * 4


def test_date_offsets_differ_between_patients_and_stay_in_range():
    m = _persons(60, shift=15)
    days = m.shift_days(pa.array(range(1, 61), pa.int64())).to_pylist()
    assert all(1 <= abs(d) <= 15 for d in days)
    assert len(set(days)) > 15  # spread over the range, not one offset for all
    assert min(days) < 0 < max(days)


def test_date_offsets_are_stable_across_nights_sites_and_key_rotations_and_come_from_their_own_key():
    ids = pa.array(range(1, 21), pa.int64())
    night1 = _persons(20, shift=15).shift_days(ids).to_pylist()
    night2 = _persons(20, shift=15, site="750000002").shift_days(ids).to_pylist()  # another night, another site
    assert night1 == night2
    # a rotation of the level-1 key or of the transport key leaves every offset as it was (new ids, same shift:
    # the two versions of a patient's rows cannot be differenced to learn the offset) ...
    assert _persons(20, shift=15, key=_key("idf", "v2")).shift_days(ids).to_pylist() == night1
    assert _persons(20, shift=15, transport=_key("transport", "v2")).shift_days(ids).to_pylist() == night1
    # ... the dedicated date-shift key alone decides them
    assert _persons(20, shift=15, shift_key=_key("date_shift", "v2")).shift_days(ids).to_pylist() != night1


def test_date_shifting_needs_the_date_shift_key_and_its_version_is_in_the_policy_fingerprint():
    with pytest.raises(EdsError, match="no date-shift key"):
        PersonMap(TRANSPORT, bytes(BOX.public_key), "750000001", date_shift_days=10)
    PersonMap(TRANSPORT, bytes(BOX.public_key), "750000001", date_shift_days=0)  # off: no key needed

    def fp(days, version):
        return policy_fingerprint(
            "v1", date_shift_days=days, keep_birth_month=False, allow_text=DEFAULT_TEXT_ALLOW_LIST,
            date_shift_version=version,
        )  # fmt: skip

    assert fp(10, "v1") != fp(10, "v2")  # a new date-shift key re-extracts everything
    assert fp(0, "v1") == fp(0, "v2") == fp(0, None)  # shifting off: the key does not matter


def test_only_hospitals_of_a_shifting_platform_resolve_the_date_shift_key(tmp_path):
    from eds_network.orchestration import zone_connections

    off = load_network()
    assert not any(
        g.conn_id == off.date_shift_key_connection_id
        for b in off.local_bases
        for g in zone_connections._grants(off, f"local:{b.id}")
    )
    on = load_network(_config(tmp_path, {"date_shift_days": 30}))
    granted = {
        b.id
        for b in on.local_bases
        if any(g.conn_id == on.date_shift_key_connection_id for g in zone_connections._grants(on, f"local:{b.id}"))
    }
    assert granted == {b.id for b in on.platform("idf").members}  # hosp_d's platform does not shift
    for zone in ("platform:idf", "keys:idf", "national"):
        assert all(g.conn_id != on.date_shift_key_connection_id for g in zone_connections._grants(on, zone))


def test_date_shift_off_by_default_changes_nothing():
    assert load_network().platform("idf").pseudonymisation.date_shift_days == 0
    t0 = dt.datetime(2024, 3, 1, 8, 0)
    visits = _visits([1, 2], [t0, t0], [3, 4])
    off = level1_batch(visits, "visit_occurrence", _persons(2, shift=0), site_number=1)
    for c in ("visit_start_date", "visit_start_datetime", "visit_end_date", "visit_end_datetime"):
        assert off.column(c).equals(visits.column(c)), c


# -- generalisation and removal ------------------------------------------------------------------------------


def _person_batch() -> pa.Table:
    return pa.table(
        {
            "person_id": pa.array([1], pa.int64()),
            "gender_concept_id": pa.array([8507], pa.int64()),
            "year_of_birth": pa.array([1984], pa.int64()),
            "month_of_birth": pa.array([12], pa.int64()),
            "day_of_birth": pa.array([3], pa.int64()),
            "birth_datetime": pa.array([dt.datetime(1984, 12, 3)], pa.timestamp("us")),
            "location_id": pa.array([12], pa.int64()),
            "person_source_value": ["DUPONT Jean"],
            "race_source_value": ["free text"],
        }
    )


def test_birth_date_is_the_year_only_unless_the_platform_keeps_the_month():
    m = _persons(1, shift=20)
    year_only = level1_batch(_person_batch(), "person", m, site_number=1).to_pylist()[0]
    assert (year_only["year_of_birth"], year_only["month_of_birth"], year_only["day_of_birth"]) == (1984, None, None)
    assert year_only["birth_datetime"] is None and year_only["location_id"] is None
    with_month = level1_batch(_person_batch(), "person", m, site_number=1, keep_birth_month=True).to_pylist()[0]
    assert (with_month["year_of_birth"], with_month["month_of_birth"], with_month["day_of_birth"]) == (1984, 12, None)
    assert with_month["birth_datetime"] is None  # never the full date, and never shifted back into existence


def test_text_allow_list_is_configurable_but_never_lets_names_through():
    m = _persons(1, shift=0)
    out = level1_batch(
        _person_batch(), "person", m, site_number=1, allow_text=DEFAULT_TEXT_ALLOW_LIST | {"race_source_value"}
    ).to_pylist()[0]
    assert out["race_source_value"] == "free text"
    forced = level1_batch(
        _person_batch(), "person", m, site_number=1, allow_text=DEFAULT_TEXT_ALLOW_LIST | {"person_source_value"}
    ).to_pylist()[0]
    assert forced["person_source_value"] is None
    drug = pa.table(
        {
            "drug_exposure_id": pa.array([1], pa.int64()),
            "person_id": pa.array([1], pa.int64()),
            "sig": ["prendre 2 cp, Mme DUPONT"],
            "drug_source_value": ["3400930000000"],
        }
    )
    d = level1_batch(drug, "drug_exposure", m, site_number=1, allow_text=frozenset({"sig"})).to_pylist()[0]
    assert d["sig"] is None


def _config(tmp_path: Path, policy: dict) -> Path:
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    doc["platforms"][0]["pseudonymisation"] = policy
    path = tmp_path / "network.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def test_platform_policy_is_validated_and_stamped_on_its_members(tmp_path):
    n = load_network(_config(tmp_path, {"date_shift_days": 30, "text_allow_list": ["race_source_value"]}))
    assert {b.pseudonymisation.date_shift_days for b in n.platform("idf").members} == {30}
    assert n.base("hosp_a").pseudonymisation.text_allow_list == ["race_source_value"]
    assert n.base("hosp_d").pseudonymisation.date_shift_days == 0  # another platform, its own policy
    with pytest.raises(ConfigError, match="person_source_value.*never leaves the hospital"):
        load_network(_config(tmp_path, {"text_allow_list": ["person_source_value"]}))
    with pytest.raises(ConfigError, match="'nom' is not a text column"):
        load_network(_config(tmp_path, {"text_allow_list": ["nom"]}))
    with pytest.raises(ConfigError, match="date_shift_days"):
        load_network(_config(tmp_path, {"date_shift_days": -3}))


def test_postcode_is_generalised_to_the_departement():
    got = generalise_postcode(pa.array(["75011", "20167", "20200", "97411", "98800", " 92 100", "7501", None]))
    assert got.to_pylist() == ["75", "2A", "2B", "974", "988", "92", None, None]


def test_location_rows_keep_the_departement_only():
    loc = pa.table(
        {
            "location_id": pa.array([4], pa.int64()),
            "address_1": ["12 rue des Lilas"],
            "city": ["Ajaccio"],
            "zip": ["20090"],
            "county": ["Corse-du-Sud"],
            "latitude": pa.array([41.92]),
            "longitude": pa.array([8.73]),
            "location_source_value": ["addr-77"],
            "country_concept_id": pa.array([4330442], pa.int64()),
        }
    )
    persons = _persons(1, shift=0)
    out = level1_batch(loc, "location", persons, site_number=2).to_pylist()[0]
    keyed = rowids.rekey(pa.array([4], pa.int64()), persons.row_key, "level1-row")[0].as_py()
    assert out["zip"] == "2A" and out["location_id"] == keyed != 4
    assert [out[c] for c in ("address_1", "city", "county", "latitude", "longitude", "location_source_value")] == [
        None
    ] * 6
    assert out["country_concept_id"] == 4330442


def test_note_tables_never_leave_the_local_level(tmp_path):
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    for t in ("note", "note_nlp"):
        doc["platforms"][0]["members"][0]["tables"] = ["person", t]
        path = tmp_path / "n.yaml"
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(ConfigError, match=f"table '{t}' holds free text"):
            load_network(path)
    assert not {"note", "note_nlp"} & {t for b in load_network().local_bases for t in b.tables}


# -- hashing once per patient ----------------------------------------------------------------------------------


def test_a_batch_is_hashed_once_per_patient_not_once_per_row(monkeypatch):
    calls = []
    real = pseudonymise.hmac256
    monkeypatch.setattr(pseudonymise, "hmac256", lambda k, msg: calls.append(k.name) or real(k, msg))
    m = KeyedPersonMap(
        PLATFORM, TRANSPORT, bytes(BOX.public_key), site="750000001", date_shift_days=10, date_shift_key=DATE_SHIFT
    )
    n_rows, patients = 50_000, [3, 5, 8]
    m.add([(p, _nir(f"18412764510{p:02d}"), dt.date(1984, 12, 3), "M", f"IPP{p}") for p in patients])
    t0 = dt.datetime(2024, 1, 1)
    rows = pa.table(
        {
            "measurement_id": pa.array(range(n_rows), pa.int64()),
            "person_id": pa.array([patients[i % 3] for i in range(n_rows)], pa.int64()),
            "measurement_datetime": pa.array([t0] * n_rows, pa.timestamp("us")),
        }
    )
    out = level1_batch(rows, "measurement", m, site_number=1)
    assert out.num_rows == n_rows
    # per patient: one transport token and one date offset (the level-1 pseudonym comes from the hospital's map);
    # none per row
    assert sorted(calls) == ["date_shift"] * 3 + ["transport"] * 3
    assert len(set(out.column("person_id").to_pylist())) == 3


# -- key versions ----------------------------------------------------------------------------------------------


def test_fingerprint_changes_with_the_key_version_and_the_policy():
    base = policy_fingerprint("v1", date_shift_days=0, keep_birth_month=False, allow_text=DEFAULT_TEXT_ALLOW_LIST)
    assert base == policy_fingerprint(
        "v1", date_shift_days=0, keep_birth_month=False, allow_text=sorted(DEFAULT_TEXT_ALLOW_LIST)
    )
    for other in (
        policy_fingerprint("v2", date_shift_days=0, keep_birth_month=False, allow_text=DEFAULT_TEXT_ALLOW_LIST),
        policy_fingerprint("v1", date_shift_days=7, keep_birth_month=False, allow_text=DEFAULT_TEXT_ALLOW_LIST),
        policy_fingerprint("v1", date_shift_days=0, keep_birth_month=True, allow_text=DEFAULT_TEXT_ALLOW_LIST),
        policy_fingerprint("v1", date_shift_days=0, keep_birth_month=False, allow_text={"sig"}),
    ):
        assert other != base


def test_rotating_a_stack_key_bumps_its_version_and_keeps_the_old_secret_apart(tmp_path, request):
    from eds_network.dev.stack import Stack

    network = load_network()
    s = Stack(root=tmp_path, pg_port=1, s3_port=2, api_port=3)
    if s.pg_root != s.root:  # as root, the (unused) cluster folder holding the DB password is outside tmp_path
        request.addfinalizer(lambda: shutil.rmtree(s.pg_root, ignore_errors=True))
    before = s.keys(network)
    conn_id = rotation.key_connection_for(network, platform="idf")
    assert rotate_stack_key(s, network, conn_id) == ("v1", "v2")
    after = s.keys(network)
    assert after[conn_id]["extra"]["version"] == "v2"
    assert after[conn_id]["extra"]["retired_versions"] == ["v1"]
    assert after[conn_id]["password"] != before[conn_id]["password"]
    assert {k: v for k, v in after.items() if k != conn_id} == {k: v for k, v in before.items() if k != conn_id}
    retired = json.loads((s.secrets_dir / rotation.RETIRED_KEYS_FILE).read_text())
    assert retired[conn_id]["v1"]["password"] == before[conn_id]["password"]
    assert (s.secrets_dir / rotation.RETIRED_KEYS_FILE).stat().st_mode & 0o077 == 0
    conns = json.loads(s.connections_file.read_text())
    assert conns[conn_id]["extra"]["version"] == "v2" and conns[conn_id]["password"] == after[conn_id]["password"]
    assert rotate_stack_key(s, network, conn_id) == ("v2", "v3")
    with pytest.raises(EdsError, match="one key at a time"):
        rotation.key_connection_for(network, platform="idf", national=True)
    with pytest.raises(EdsError, match="next key version"):
        rotation.next_version("2024-01")
