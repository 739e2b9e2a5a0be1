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
import rdflib

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
    _plant_quality(fresh_db, start)
    return fresh_db


def _check(check_id: str, category: str, passed: bool | None) -> dict:
    name, rest = check_id.split(":", 1)
    return {
        "check_id": check_id,
        "check_name": name,
        "check_level": "FIELD",
        "field_name": rest.split(".")[1],
        "base_id": "hosp_a",
        "category": category,
        "severity": "fatal",
        "rows_checked": 100,
        "violating_rows": 0 if passed else 10,
        "violating_pct": 0.0 if passed else 10.0,
        "threshold_pct": 5.0,
        "passed": passed,
        "status": {True: "passed", False: "failed", None: "not_applicable"}[passed],
        "action": "none",
        "engine": "arrow",
    }


def _plant_quality(dsn: str, start: dt.datetime) -> None:
    """hosp_a's night n1: completeness 3/4, conformance 2/2, plausibility 1/2 (+ one not applicable); the idf
    delivery accepted at the HDH 30 hours after the end of the night's interval."""
    checks = [
        _check("isRequired:person.person_id", "Completeness", True),
        _check("isRequired:person.gender_concept_id", "Completeness", True),
        _check("isRequired:person.year_of_birth", "Completeness", True),
        _check("measureValueCompleteness:person.race_concept_id", "Completeness", False),
        _check("isPrimaryKey:person.person_id", "Conformance", True),
        _check("cdmDatatype:person.year_of_birth", "Conformance", True),
        _check("plausibleValueLow:person.year_of_birth", "Plausibility", True),
        _check("plausibleValueHigh:person.year_of_birth", "Plausibility", False),
        _check("plausibleGender:person.gender_concept_id", "Plausibility", None),
    ]
    summary = {"engine": "arrow", "rows_checked": 30, "checks": len(checks), "failed": {"fatal": 2}}
    catalogue.record_quality(
        dsn, level="local", scope_id="hosp_a", batch_id="n1", table_name="person", checks=checks, summary=summary
    )
    with catalogue.engine(dsn).begin() as conn:
        r = catalogue.run_t
        conn.execute(  # the local run recorded one hour after its night, the delivery 29 hours later
            r.update().where(r.c.level == "local").values(recorded_at=start + dt.timedelta(days=1, hours=1))
        )
        conn.execute(
            catalogue.run_t.insert().values(
                level="national",
                scope_id="idf",
                batch_id="d1",
                status="success",
                details={},
                recorded_at=start + dt.timedelta(days=1, hours=30),
            )
        )


def test_the_quality_label_is_published_as_dqv(cat):
    from eds_network.catalogue import quality_label

    lab = quality_label.label(cat, "hosp_a")
    assert (lab["completeness"], lab["conformance"], lab["plausibility"]) == (0.75, 1.0, 0.5)
    assert lab["checks_evaluated"] == {"Completeness": 4, "Conformance": 2, "Plausibility": 2}
    assert lab["timeliness_hours"] == 30.0
    assert lab["coverage"]["persons"] == 28 and lab["coverage"]["start"].startswith("2026-11-21")
    g = rdflib.Graph().parse(data=json.dumps(healthdcat.dataset_jsonld(cat, "hosp_a")), format="json-ld")
    rows = g.query("""
        PREFIX dqv: <http://www.w3.org/ns/dqv#>
        SELECT ?metric ?value WHERE { ?d dqv:hasQualityMeasurement ?m . ?m dqv:isMeasurementOf ?metric ;
                                      dqv:value ?value . ?metric a dqv:Metric ; dqv:inDimension ?dim }""")
    got = {str(r.metric).rsplit("/", 1)[1]: float(r.value) for r in rows}
    assert got == {
        "completeness_pass_rate": 0.75,
        "conformance_pass_rate": 1.0,
        "plausibility_pass_rate": 0.5,
        "timeliness_hours": 30.0,
        "coverage_persons": 28.0,
    }
    assert g.query(
        "PREFIX dqv: <http://www.w3.org/ns/dqv#> ASK { ?d dqv:hasQualityAnnotation ?a . ?a a dqv:QualityCertificate }"
    ).askAnswer
    assert shacl.validate(healthdcat.dataset_jsonld(cat, "hosp_a")).conforms
    from fastapi.testclient import TestClient

    from eds_network import ui

    client = TestClient(ui.create_app(lambda: cat, load_network))
    assert client.get("/api/bases/hosp_a/quality-label").json() == json.loads(json.dumps(lab))
    assert client.get("/api/bases/ref_bndmr/quality-label").status_code == 404  # no local run: no label


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
