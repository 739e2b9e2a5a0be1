"""Network configuration: the shipped file is valid; a bad file fails naming the file, the key path and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eds_network.core.config import DEFAULT_CONFIG, load_network
from eds_network.core.errors import ConfigError


def _write(tmp_path: Path, mutate) -> Path:
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    mutate(doc)
    path = tmp_path / "network.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def test_shipped_network_is_valid():
    n = load_network(DEFAULT_CONFIG)
    assert {p.id for p in n.platforms} == {"idf", "onco"}
    assert all(b.platform for b in n.local_bases)
    assert n.base("hosp_a").schedule == "0 1 * * *"
    assert n.base("hosp_a").timezone == "Europe/Paris"


def _set(path, value):
    def mutate(doc):
        node = doc
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            _set(["platforms", 1, "members", 0, "schedule"], "0 25 * * *"),
            "platforms[1].members[0].schedule: invalid cron expression '0 25 * * *'",
        ),
        (
            _set(["platforms", 0, "members", 1, "tables"], ["person", "note"]),
            "platforms[0].members[1].tables: table 'note' holds free text",
        ),
        (
            _set(["platforms", 0, "members", 1, "tables"], ["measurement"]),
            "platforms[0].members[1].tables: 'person' must be in scope",
        ),
        (
            _set(["platforms", 0, "members", 0, "tables"], ["person", "measurment"]),
            "'measurment' is not an OMOP CDM 5.4 clinical table",
        ),
        (_set(["platforms", 0, "members", 0, "id"], "Hosp A!"), "platforms[0].members[0].id: String should match"),
        (
            _set(["platforms", 0, "members", 0, "change_columns"], {"specimen": None}),
            "platforms[0].members[0]: change_columns: table 'specimen' is not in this base's tables",
        ),
        (
            _set(["platforms", 0, "members", 0, "change_columns"], {"measurement": "updated at"}),
            "change_columns.measurement: 'updated at' is not a column name",
        ),
        (_set(["platforms", 0, "members", 0, "timezone"], "Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (_set(["platforms", 0, "members", 0, "site_number"], 2), "site_number 2 is used twice in platform 'idf'"),
        (_set(["platforms", 1, "id"], "idf"), "platform id 'idf' is used twice"),
        (_set(["platforms", 0, "members", 0, "unknown_key"], 1), "platforms[0].members[0].unknown_key: Extra inputs"),
        (_set(["platforms", 0, "kind"], "national"), "platforms[0].kind: Input should be 'regional' or 'thematic'"),
        (_set(["national", "landing_zone", "bucket"], "Bad_Bucket"), "national.landing_zone.bucket"),
        (_set(["platforms", 0, "members", 1, "seed", "shared_with"], ["hosp_z"]), "unknown base 'hosp_z'"),
        (_set(["platforms"], []), "platforms: List should have at least 1 item"),
    ],
)
def test_bad_file_names_file_key_path_and_problem(tmp_path, mutate, expected):
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError) as err:
        load_network(path)
    assert str(path) in str(err.value) or "network.yaml" in str(err.value)
    assert expected in str(err.value)


QO = ["platforms", 0, "members", 0, "quality_overrides"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"isRequierd:person.person_id": {"threshold_pct": 5}},
            "quality_overrides: key 'isRequierd:person.person_id': unknown check 'isRequierd' for table 'person'",
        ),
        (
            {"isRequired:persn.person_id": {"threshold_pct": 5}},
            "key 'isRequired:persn.person_id': table 'persn' is not in this base's tables",
        ),
        (
            {"isRequired:person.gender_concept": {"threshold_pct": 5}},
            "key 'isRequired:person.gender_concept': column 'gender_concept' is not a column of the OMOP CDM 5.4 "
            "table 'person'",
        ),
        (
            {"plausibleValueHigh:person.gender_concept_id": {"threshold_pct": 5}},
            "check 'plausibleValueHigh' does not apply to person.gender_concept_id",
        ),
        (
            {"plausibleUnitConceptIds:measurement.measurement_concept_id:42": {"threshold_pct": 5}},
            "has no variant for concept 42",
        ),
        ({"isRequired person": {"threshold_pct": 5}}, "expected checkName:table.column"),
        ({"isRequired:person.person_id": {"treshold_pct": 5}}, "unknown setting 'treshold_pct'"),
        ({"isRequired:person.person_id": {"disabled": True}}, "a disabled check needs a reason"),
    ],
)
def test_a_mistyped_quality_override_fails_naming_the_key(tmp_path, overrides, expected):
    def mutate(doc):
        doc["platforms"][0]["members"][0].setdefault("tables", ["person", "measurement", "visit_occurrence"])
        _set(QO, overrides)(doc)

    with pytest.raises(ConfigError) as err:
        load_network(_write(tmp_path, mutate))
    assert "platforms[0].members[0]" in str(err.value) and expected in str(err.value)


def test_valid_quality_overrides_load(tmp_path):
    good = {
        "isRequired:person.year_of_birth": {"threshold_pct": 1.5},
        "plausibleUnitConceptIds:measurement.measurement_concept_id": {"disabled": True, "reason": "lab feed B"},
    }
    path = _write(tmp_path, _set(QO, good))
    assert (
        load_network(path).base(yaml.safe_load(path.read_text())["platforms"][0]["members"][0]["id"]).quality_overrides
        == good
    )


def test_malformed_yaml_names_line(tmp_path):
    path = tmp_path / "network.yaml"
    path.write_text("name: x\nplatforms: [\n  - id: a\n")
    with pytest.raises(ConfigError, match=r"network.yaml: line \d+, column \d+: malformed YAML"):
        load_network(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_network(tmp_path / "nope.yaml")


def test_unknown_base_lists_configured_ones():
    with pytest.raises(ConfigError, match=r"unknown base 'hosp_z' \(configured: hosp_a, hosp_b"):
        load_network().base("hosp_z")
