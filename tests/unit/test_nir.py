"""NIR helpers and identity planning (pure: no database; the Synthea zip is read when present)."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest

from eds_network.core.config import Network, load_network
from eds_network.core.errors import ConfigError, SourceError
from eds_network.core.nir import make_nir, nir_is_valid, nir_key
from eds_network.dev import seed
from eds_network.dev.seed import Identity

# ---------------------------------------------------------------------------------------------------
# NIR key and validation
# ---------------------------------------------------------------------------------------------------


def test_key_known_example():
    # 1 84 12 76 451 089 -> key 46
    assert nir_key("1841276451089") == "46"
    assert nir_is_valid("184127645108946")
    assert nir_is_valid("1 84 12 76 451 089 46")


def test_key_is_two_digits():
    for nir13 in ("1841276451089", "2690575123456", "1000101001001"):
        k = nir_key(nir13)
        assert len(k) == 2 and k.isdigit()
        assert 1 <= int(k) <= 97
        assert (int(nir13) + int(k)) % 97 == 0


@pytest.mark.parametrize(
    "bad",
    [
        "184127645108947",  # wrong key
        "184127645108900",
        "18412764510894",  # too short
        "1841276451089466",  # too long
        "384127645108946",  # sex digit 3
        "184137645108946",  # month 13
        "18412764510894A",
        "",
        None,
    ],
)
def test_invalid(bad):
    assert not nir_is_valid(bad)


def test_corsica_substitution():
    # 2A -> 19 and 2B -> 18 before the modulo.
    assert nir_key("184022A004123") == f"{97 - int('1840219004123') % 97:02d}"
    assert nir_key("184022B004123") == f"{97 - int('1840218004123') % 97:02d}"
    assert nir_key("184022A004123") != nir_key("184022B004123")
    nir = make_nir("M", dt.date(1984, 2, 29), "2A", 4, 123)
    assert nir[5:7] == "2A"
    assert nir_is_valid(nir)
    assert nir_is_valid(nir.lower())
    assert not nir_is_valid(nir[:5] + "2B" + nir[7:])


def test_nir_key_rejects_malformed():
    for bad in ("184127645108", "18412764510899", "1841X76451089", "184122C004123"):
        with pytest.raises(ValueError):
            nir_key(bad)


@pytest.mark.parametrize(
    ("sex", "birth", "dept", "commune", "order"),
    [
        ("M", dt.date(1984, 12, 3), "76", 451, 89),
        ("F", dt.date(2001, 1, 31), "75", "056", 1),
        ("F", dt.date(1930, 7, 14), "2B", 33, 999),
        ("M", dt.date(1962, 5, 8), "99", 352, 17),
        ("F", dt.date(1999, 9, 9), "97", 411, 500),
    ],
)
def test_make_nir_roundtrip(sex, birth, dept, commune, order):
    nir = make_nir(sex, birth, dept, commune, order)
    assert len(nir) == 15
    assert nir[0] == {"M": "1", "F": "2"}[sex]
    assert nir[1:3] == f"{birth.year % 100:02d}"
    assert nir[3:5] == f"{birth.month:02d}"
    assert nir[5:7] == dept
    assert nir[7:10] == f"{int(commune):03d}"
    assert nir[10:13] == f"{order:03d}"
    assert nir[13:] == nir_key(nir[:13])
    assert nir_is_valid(nir)


def test_make_nir_known_example():
    assert make_nir("M", dt.date(1984, 12, 1), "76", 451, 89) == "184127645108946"


@pytest.mark.parametrize(
    "args",
    [
        ("X", dt.date(1984, 12, 1), "76", 451, 89),
        ("M", dt.date(1984, 12, 1), "2C", 451, 89),
        ("M", dt.date(1984, 12, 1), "7", 451, 89),
        ("M", dt.date(1984, 12, 1), "76", 1000, 89),
        ("M", dt.date(1984, 12, 1), "76", 451, 0),
    ],
)
def test_make_nir_rejects(args):
    with pytest.raises(ValueError):
        make_nir(*args)


# ---------------------------------------------------------------------------------------------------
# Identity planning
# ---------------------------------------------------------------------------------------------------


def _generated_network() -> Network:
    """The demo network with every base generated (no Synthea zip needed), plus a cross-platform share."""
    raw = load_network().model_dump(mode="json")
    for p in raw["platforms"]:
        for m in p["members"]:
            if m["seed"]["source"] == "synthea27nj":
                m["seed"] = {"source": "generated", "patients": 120, "seed": 1, "objectors": 3}
    return Network.model_validate(raw)


def _fresh_plan(network: Network) -> dict[str, list[Identity]]:
    seed._PLAN_CACHE.clear()
    return seed.plan_identities(network)


def test_plan_is_deterministic():
    net = _generated_network()
    first = _fresh_plan(net)
    second = _fresh_plan(_generated_network())
    assert first == second
    assert {b: len(v) for b, v in first.items()} == {b.id: b.seed.patients for b in net.local_bases}


def test_plan_depends_on_seed():
    net = _generated_network()
    raw = net.model_dump(mode="json")
    raw["platforms"][0]["members"][2]["seed"]["seed"] = 99
    other = Network.model_validate(raw)
    assert _fresh_plan(net)["hosp_c"] != _fresh_plan(other)["hosp_c"]
    assert _fresh_plan(net)["hosp_d"] == _fresh_plan(other)["hosp_d"]


def test_identities_look_real():
    plan = _fresh_plan(_generated_network())
    for ident in (i for ids in plan.values() for i in ids):
        assert ident.sex in ("M", "F")
        assert ident.last_name and ident.first_name
        assert dt.date(1900, 1, 1) <= ident.birth_date <= dt.date.today()
        if ident.nir is not None:
            assert len(ident.nir) == 15
            assert ident.nir[0] == {"M": "1", "F": "2"}[ident.sex]
            assert ident.nir[1:3] == f"{ident.birth_date.year % 100:02d}"
            assert ident.nir[3:5] == f"{ident.birth_date.month:02d}"
        assert ident.phone is None or ident.phone.replace(" ", "").startswith("06")
        assert ident.email is None or "@" in ident.email
        assert ident.postcode is None or (len(ident.postcode) == 5 and ident.postcode.isdigit())
    names = {i.last_name for ids in plan.values() for i in ids} | {i.first_name for ids in plan.values() for i in ids}
    assert any(any(ch in n for ch in "éèëïç") for n in names), "accents exercise normalisation"
    assert any("'" in n for n in names)


def test_identity_repr_never_shows_values():
    ident = _fresh_plan(_generated_network())["hosp_b"][0]
    assert ident.last_name not in repr(ident)
    assert ident.last_name not in str(ident)


def test_missing_and_wrong_nirs():
    net = _generated_network()
    plan = _fresh_plan(net)
    gt = seed.ground_truth(net)
    for base in net.local_bases:
        ids = plan[base.id]
        n_shared = sum(gt["bases"][base.id]["shared_with"].values())
        own = len(ids) - n_shared
        none = sum(1 for i in ids if i.nir is None)
        wrong = sum(1 for i in ids if i.nir is not None and not nir_is_valid(i.nir))
        assert none == round(seed.NO_NIR_RATE * own)
        assert wrong == round(seed.BAD_KEY_RATE * own)
        assert wrong >= 1 and none >= 1


def test_nirs_unique_across_network():
    plan = _fresh_plan(_generated_network())
    by_nir13: dict[str, set[Identity]] = {}
    for ident in (i for ids in plan.values() for i in ids if i.nir):
        by_nir13.setdefault(ident.nir[:13], set()).add(ident)
    assert all(len(v) == 1 for v in by_nir13.values()), "one NIR = one person"
    for base, ids in plan.items():
        assert max(Counter(i.nir for i in ids if i.nir).values()) == 1, base


def test_shared_fractions_and_overlap():
    net = _generated_network()
    plan = _fresh_plan(net)
    gt = seed.ground_truth(net)
    keys = {b: {i.linkage_key for i in ids if i.linkage_key} for b, ids in plan.items()}
    for base in net.local_bases:
        for other in base.seed.shared_with:
            want = round(base.seed.shared_fraction * base.seed.patients)
            got = gt["bases"][base.id]["shared_with"][other]
            assert got == want  # every pool is large enough in this network
            # Shared patients: same NIR, names, birth date, sex; always a valid NIR.
            mine = {i.nir: i for i in plan[base.id] if i.nir}
            theirs = {i.nir: i for i in plan[other] if i.nir}
            common = [n for n in mine if n in theirs]
            assert len(common) >= got
            for nir in common:
                a, b = mine[nir], theirs[nir]
                assert nir_is_valid(nir)
                assert (a.last_name, a.first_name, a.birth_date, a.sex) == (
                    b.last_name,
                    b.first_name,
                    b.birth_date,
                    b.sex,
                )
    for a in plan:
        assert gt["overlap"][a][a] == len(gt["bases"][a]["linkage_keys"])
        for b in plan:
            assert gt["overlap"][a][b] == gt["overlap"][b][a]
            if a != b:
                assert gt["overlap"][a][b] == len(keys[a] & keys[b])
    # Cross-platform linkage is exercised: hosp_d (onco) shares with hosp_b (idf).
    assert gt["overlap"]["hosp_d"]["hosp_b"] >= gt["bases"]["hosp_d"]["shared_with"]["hosp_b"] > 0


def test_ground_truth_keys_and_objectors():
    net = _generated_network()
    plan = _fresh_plan(net)
    gt = seed.ground_truth(net)
    all_keys = {b: {i.linkage_key for i in ids if i.linkage_key} for b, ids in plan.items()}
    for base in net.local_bases:
        g = gt["bases"][base.id]
        assert g["persons"] == len(plan[base.id])
        assert g["linkage_keys"] == sorted(g["linkage_keys"])
        assert len(g["objectors"]) == base.seed.objectors
        assert all(1 <= pid <= base.seed.patients for pid in g["objectors"])
        for pid in g["objectors"]:
            ident = plan[base.id][pid - 1]
            # Objectors are never shared: their key is nowhere else.
            if ident.linkage_key:
                assert ident.linkage_key not in g["linkage_keys"]
                assert all(ident.linkage_key not in all_keys[o] for o in plan if o != base.id)
            assert ident.nir is None or all(ident.nir not in {i.nir for i in plan[o]} for o in plan if o != base.id)
        n_valid = sum(1 for i in plan[base.id] if i.linkage_key)
        assert len(g["all_linkage_keys"]) == n_valid
        assert len(g["linkage_keys"]) + len(g["fallback_person_ids"]) + len(g["objectors"]) == g["persons"]
        for key in g["linkage_keys"]:
            nir, birth, sex = key.split("|")
            assert nir_is_valid(nir) and sex in ("M", "F")
            dt.date.fromisoformat(birth)


def test_shared_count_capped_by_available_patients():
    raw = _generated_network().model_dump(mode="json")
    raw["platforms"][0]["members"][0]["seed"].update(patients=20, objectors=2)  # hosp_a: small
    raw["platforms"][0]["members"][1]["seed"].update(patients=100, shared_with=["hosp_a"], shared_fraction=0.5)
    net = Network.model_validate(raw)
    plan = _fresh_plan(net)
    gt = seed.ground_truth(net)
    available = len(gt["bases"]["hosp_a"]["linkage_keys"])  # valid NIR, not objector
    assert gt["bases"]["hosp_b"]["shared_with"]["hosp_a"] == available < 50
    assert gt["overlap"]["hosp_a"]["hosp_b"] == available
    assert len(plan["hosp_b"]) == 100


def test_shared_cycle_is_a_config_error():
    raw = _generated_network().model_dump(mode="json")
    raw["platforms"][0]["members"][0]["seed"]["shared_with"] = ["hosp_c"]  # a -> c -> b -> a
    with pytest.raises(ConfigError, match="cycle"):
        _fresh_plan(Network.model_validate(raw))


def test_demo_network_with_synthea():
    try:
        zip_path = seed.synthea_zip_path()
    except SourceError:
        pytest.skip("Synthea27Nj sample not available")
    net = load_network()
    plan = _fresh_plan(net)
    gt = seed.ground_truth(net)
    persons = seed._synthea_persons(zip_path)
    synthea = next(b for b in net.local_bases if b.seed.source == "synthea27nj")
    assert len(plan[synthea.id]) == len(persons) == 28
    for (_, birth, sex), ident in zip(persons, plan[synthea.id], strict=True):
        assert (ident.birth_date, ident.sex) == (birth, sex)
    assert seed.planned_person_ids(net)[synthea.id] == [p[0] for p in persons]
    assert len(gt["bases"][synthea.id]["objectors"]) == synthea.seed.objectors
    for base in net.local_bases:
        for other in base.seed.shared_with:
            want = round(base.seed.shared_fraction * base.seed.patients)
            available = len(gt["bases"][other]["linkage_keys"]) if other == synthea.id else want
            assert gt["bases"][base.id]["shared_with"][other] == min(want, available)
            assert gt["overlap"][base.id][other] >= gt["bases"][base.id]["shared_with"][other] > 0


def test_synthea_zip_path_error_names_the_path(monkeypatch, tmp_path):
    missing = tmp_path / "nope.zip"
    monkeypatch.setenv(seed.SYNTHEA_ZIP_ENV, str(missing))
    with pytest.raises(SourceError, match="nope.zip"):
        seed.synthea_zip_path()
