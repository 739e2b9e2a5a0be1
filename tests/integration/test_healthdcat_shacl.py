"""The HealthDCAT-AP export against the official shapes (pySHACL, no inference): HealthDCAT-AP Release 8
NON_PUBLIC together with DCAT-AP 3.0.1, loaded from the files kept in include/eds_network/catalogue/shapes/.

Every catalogued base (the 4 network bases with a night recorded, the 7 reference bases) and the catalogue
conform; deliberately broken documents do not (the test is not vacuous); `eds catalogue dcat --out DIR`
writes the same documents the UI's API serves.
"""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest

from eds_network import catalogue
from eds_network.catalogue import healthdcat, shacl
from eds_network.core.config import load_network
from eds_network.dev.reference_bases import REFERENCE_BASES, seed_reference_bases

pytestmark = pytest.mark.integration


@pytest.fixture
def cat(fresh_db):
    catalogue.create_schema(fresh_db)
    network = load_network()
    catalogue.register_network(fresh_db, network)
    seed_reference_bases(fresh_db)
    start = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)
    for b in network.local_bases:
        tables = {
            "person": {"extracted": 30, "published": 28, "quarantined": 1, "excluded_objection": 1},
            "visit_occurrence": {"extracted": 100, "published": 97, "quarantined": 3, "excluded_objection": 0},
            "condition_occurrence": {"extracted": 50, "published": 50, "quarantined": 0, "excluded_objection": 0},
        }
        catalogue.record_run(
            fresh_db,
            level="local",
            scope_id=b.id,
            batch_id="n1",
            status="success",
            tables=tables,
            interval=(start, start + dt.timedelta(days=1)),
            details={"failed_tables": []},
        )
    return fresh_db


def test_every_base_and_the_catalogue_conform(cat):
    ids = healthdcat.base_ids(cat)
    assert len(ids) == len(load_network().local_bases) + len(REFERENCE_BASES) == 11
    docs = {b: healthdcat.dataset_jsonld(cat, b) for b in ids}
    reports = {b: shacl.validate(d) for b, d in docs.items()}
    reports["catalog"] = shacl.validate(healthdcat.catalog_jsonld(cat, datasets=list(docs.values())))
    failing = {b: r.summary() for b, r in reports.items() if not r.conforms}
    assert failing == {}
    assert sum(r.conforms for r in reports.values()) == 12  # 11 of 11 bases, and the catalogue


BREAKS = {
    "access rights PUBLIC": lambda d: d.__setitem__(
        "dct:accessRights", {"@id": "http://publications.europa.eu/resource/authority/access-right/PUBLIC"}
    ),
    "legislation without its class (eli:LegalResource)": lambda d: d.__setitem__(
        "dcatap:applicableLegislation", {"@id": "http://data.europa.eu/eli/reg/2022/868/oj"}
    ),
    "quality annotation not a dqv:QualityCertificate": lambda d: d.__setitem__(
        "dqv:hasQualityAnnotation", {"@type": "dqv:QualityAnnotation", "oa:hasTarget": {"@id": d["@id"]}}
    ),
    "no health data access body": lambda d: d.pop("healthdcatap:hdab"),
    "spatial not a dct:Location": lambda d: d.__setitem__(
        "dct:spatial", {"@id": "http://publications.europa.eu/resource/authority/country/FRA"}
    ),
    "distribution without access URL": lambda d: d["dcat:distribution"].pop("dcat:accessURL"),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_a_broken_document_fails(cat, name):
    doc = copy.deepcopy(healthdcat.dataset_jsonld(cat, "ref_bndmr"))
    assert shacl.validate(doc).conforms
    BREAKS[name](doc)
    report = shacl.validate(doc)
    assert not report.conforms and report.violations


def test_cli_writes_one_document_per_base_and_the_catalogue(cat, tmp_path):
    from eds_network.cli import main

    assert main(["catalogue", "dcat", "--out", str(tmp_path), "--dsn", cat, "--validate"]) == 0
    names = sorted(p.stem for p in tmp_path.glob("*.jsonld"))
    assert names == sorted([*healthdcat.base_ids(cat), "catalog"])
    written = json.loads((tmp_path / "hosp_a.jsonld").read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(healthdcat.dataset_jsonld(cat, "hosp_a")))
    first = {p.name: p.read_bytes() for p in tmp_path.glob("*.jsonld")}
    assert main(["catalogue", "dcat", "--out", str(tmp_path), "--dsn", cat]) == 0
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.jsonld")} == first  # a rerun writes the same files
