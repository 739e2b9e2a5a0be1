"""A permit's bases against what the national tables can serve (`orchestration.project_tasks.platforms_of`).

The national tables carry each row's platform, not its base: a permit naming only some bases of a platform must be
refused, never served with the other bases' patients.
"""

from __future__ import annotations

import pytest

from eds_network.catalogue.projects import ProjectError
from eds_network.core.config import load_network
from eds_network.orchestration import project_tasks

NETWORK = load_network()
PROJECT = {
    "id": "study-x",
    "permit_reference": "DAB-1",
    "tables": {"person": ["person_id", "year_of_birth"]},
    "cohort": {
        "name": "c",
        "period": {"start": "2015-01-01", "end": "2026-01-01"},
        "criteria": [{"table": "condition_occurrence", "concepts": [4251306]}],
        "requested": {},
        "descendants_from": {},
    },
}


def _members(platform: str) -> list[str]:
    return [m.id for m in NETWORK.platform(platform).members]


def test_a_permit_over_whole_platforms_is_served_on_those_platforms():
    idf, onco = _members("idf"), _members("onco")
    assert len(idf) > 1  # the demo network has a platform of several bases: the refusal below is meaningful
    assert project_tasks.platforms_of(NETWORK, idf) == ["idf"]
    assert project_tasks.platforms_of(NETWORK, idf + onco) == ["idf", "onco"]
    permit = project_tasks.permit_of(NETWORK, {**PROJECT, "bases": onco})
    assert list(permit.platforms) == ["onco"]


def test_a_permit_naming_some_bases_of_a_platform_is_refused_naming_the_bases_left_out():
    idf, onco = _members("idf"), _members("onco")
    some = idf[1:2]
    assert project_tasks.uncovered_bases(NETWORK, some + onco) == {"idf": sorted(set(idf) - set(some))}
    with pytest.raises(ProjectError, match="whole platforms") as err:
        project_tasks.platforms_of(NETWORK, some + onco)
    for b in set(idf) - set(some):
        assert b in str(err.value)
    # a project already in the catalogue with such bases cannot be extracted either (permit_of is the extract's
    # only way from the catalogue row to the platforms it reads)
    with pytest.raises(ProjectError, match="whole platforms"):
        project_tasks.permit_of(NETWORK, {**PROJECT, "bases": some})
