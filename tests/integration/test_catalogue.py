"""The catalogue on the real embedded PostgreSQL: append-only audit trail, reference bases and their
milestones, HealthDCAT-AP JSON-LD, onboarding lead times, protected statistics on a warehouse.

Each test works in a fresh database (`fresh_db`) with the catalogue schema created the way the stack does.
"""

from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest
import rdflib
from sqlalchemy import select

from eds_network import catalogue
from eds_network.catalogue import healthdcat, lead_time, stats
from eds_network.core.config import load_network
from eds_network.dev.reference_bases import REFERENCE_BASES, reference_base, seed_reference_bases

pytestmark = pytest.mark.integration

UTC = dt.UTC


@pytest.fixture
def cat(fresh_db):
    catalogue.create_schema(fresh_db)
    catalogue.register_network(fresh_db, load_network())
    return fresh_db


def _rows(dsn: str, table) -> list[tuple]:
    with catalogue.engine(dsn).connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns))]


# ---------------------------------------------------------------------------------------------------
# (a) the audit trail is append-only, enforced by the database
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE catalogue.audit SET actor = 'mallory'",
        "DELETE FROM catalogue.audit",
        "TRUNCATE catalogue.audit",
        "TRUNCATE catalogue.audit CASCADE",
    ],
)
def test_audit_trail_is_append_only(cat, statement):
    with catalogue.engine(cat).begin() as conn:
        catalogue.audit(conn, "tester", "test.append", "base:hosp_a", {"n": 1})
    before = _rows(cat, catalogue.audit_t)
    assert any(r[3] == "test.append" for r in before)
    with psycopg.connect(cat) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute(statement)
        conn.rollback()
    assert _rows(cat, catalogue.audit_t) == before
    # appending still works
    with catalogue.engine(cat).begin() as conn:
        catalogue.audit(conn, "tester", "test.append2", "base:hosp_a")
    assert len(_rows(cat, catalogue.audit_t)) == len(before) + 1


# ---------------------------------------------------------------------------------------------------
# (b) reference bases and milestones
# ---------------------------------------------------------------------------------------------------


def test_reference_bases_seeded_with_milestones_idempotently(cat):
    first = seed_reference_bases(cat)
    assert {b["id"] for b in first} == {b.id for b in REFERENCE_BASES}
    snapshot = (_rows(cat, catalogue.base_t), _rows(cat, catalogue.milestone_t), _rows(cat, catalogue.audit_t))
    second = seed_reference_bases(cat)
    assert second == first
    again = (_rows(cat, catalogue.base_t), _rows(cat, catalogue.milestone_t), _rows(cat, catalogue.audit_t))
    assert again == snapshot  # same rows, and no new audit entry on a re-seed

    with catalogue.engine(cat).connect() as conn:
        refs = conn.execute(select(catalogue.base_t).where(catalogue.base_t.c.reference)).all()
    assert len(refs) == 7
    assert all(r.platform_id is None for r in refs)
    assert {r.holder for r in refs} == {
        "AP-HP",
        "Unicancer",
        "Santé publique France",
        "Roche",
        "CRCDC Occitanie",
        "Inserm",
        "ARS Île-de-France",
    }
    assert {r.kind for r in refs} <= {"registry", "cohort", "hospital_eds", "other"}
    for b in REFERENCE_BASES:
        assert catalogue.milestones(cat, b.id) == b.milestones
    # the demo hospitals are still there, not reference bases
    with catalogue.engine(cat).connect() as conn:
        network = conn.execute(select(catalogue.base_t.c.id).where(~catalogue.base_t.c.reference)).scalars().all()
    assert set(network) == {b.id for b in load_network().local_bases}


def test_milestones_out_of_order_are_accepted(cat):
    seed_reference_bases(cat)
    oscour = catalogue.milestones(cat, "ref_oscour")
    assert oscour["transfer_channel"] < oscour["preparation"]
    assert catalogue.stage(oscour) == "available"
    e_sis = catalogue.milestones(cat, "ref_e_sis")
    assert "transfer_channel" in e_sis and "preparation" not in e_sis
    assert catalogue.stage(e_sis) == "transfer_channel"
    # recorded through the catalogue API, in any order, on a network base too
    catalogue.set_milestone(cat, "hosp_b", "transfer_channel", dt.date(2026, 2, 1), evidence="t", recorded_by="t")
    catalogue.set_milestone(cat, "hosp_b", "contract_signed", dt.date(2026, 1, 5), evidence="t", recorded_by="t")
    assert catalogue.stage(catalogue.milestones(cat, "hosp_b")) == "transfer_channel"


def test_stage_is_available_only_when_every_milestone_is_reached(cat):
    seed_reference_bases(cat)
    for b in REFERENCE_BASES:
        got = catalogue.milestones(cat, b.id)
        assert (catalogue.stage(got) == "available") == (set(got) == set(catalogue.MILESTONES)), b.id
    assert catalogue.stage(catalogue.MILESTONES) == "available"
    assert catalogue.stage(catalogue.MILESTONES[:4]) == "ready"
    assert catalogue.stage(["contract_signed"]) == "contract_signed"
    assert catalogue.stage([]) == "registered"


# ---------------------------------------------------------------------------------------------------
# (c) HealthDCAT-AP JSON-LD
# ---------------------------------------------------------------------------------------------------

PREFIXES = """
PREFIX dcat: <http://www.w3.org/ns/dcat#>
PREFIX dct: <http://purl.org/dc/terms/>
PREFIX foaf: <http://xmlns.com/foaf/0.1/>
PREFIX vcard: <http://www.w3.org/2006/vcard/ns#>
PREFIX dcatap: <http://data.europa.eu/r5r/>
PREFIX dqv: <http://www.w3.org/ns/dqv#>
PREFIX healthdcatap: <http://healthdataportal.eu/ns/health#>
PREFIX cv: <http://data.europa.eu/m8g/>
"""

MANDATORY = {
    "access rights NON_PUBLIC": "?d dct:accessRights "
    "<http://publications.europa.eu/resource/authority/access-right/NON_PUBLIC> .",
    "applicable legislation (EHDS)": "?d dcatap:applicableLegislation <http://data.europa.eu/eli/reg/2025/327/oj> .",
    "applicable legislation (GDPR)": "?d dcatap:applicableLegislation <http://data.europa.eu/eli/reg/2016/679/oj> .",
    "identifier": "?d dct:identifier ?id . FILTER(isLiteral(?id))",
    "theme": "?d dcat:theme ?theme . FILTER(isIRI(?theme))",
    "health category": "?d healthdcatap:healthCategory ?hc .",
    "keyword": "?d dcat:keyword ?kw .",
    "type": "?d dct:type ?type .",
    "provenance": "?d dct:provenance ?prov . ?prov a dct:ProvenanceStatement .",
    "contact point": "?d dcat:contactPoint ?cp . ?cp a vcard:Kind ; vcard:hasEmail ?mail .",
    "hdab with contact point": "?d healthdcatap:hdab ?h . ?h a foaf:Agent ; foaf:name ?hn ; cv:contactPoint ?hcp . "
    "?hcp a cv:ContactPoint .",
    "distribution": "?d dcat:distribution ?dist . ?dist a dcat:Distribution ; dcat:accessURL ?url ; dct:format ?f .",
    "publisher": "?d dct:publisher ?p . ?p a foaf:Agent ; foaf:name ?pn .",
    "title": "?d dct:title ?t .",
    "description": "?d dct:description ?desc .",
}


def _graph(doc: dict) -> rdflib.Graph:
    g = rdflib.Graph()
    g.parse(data=json.dumps(doc), format="json-ld")
    return g


def _assert_mandatory(g: rdflib.Graph) -> None:
    missing = [
        name
        for name, pattern in MANDATORY.items()
        if not g.query(f"{PREFIXES} ASK {{ ?d a dcat:Dataset . {pattern} }}").askAnswer
    ]
    assert missing == []


def test_jsonld_of_every_reference_base_has_the_mandatory_properties(cat):
    seed_reference_bases(cat)
    for b in REFERENCE_BASES:
        doc = healthdcat.dataset_jsonld(cat, b.id, issued=dt.date(2024, 1, 15))
        g = _graph(doc)
        _assert_mandatory(g)
        ds = rdflib.URIRef(healthdcat.dataset_iri(b.id))
        assert (ds, rdflib.RDF.type, rdflib.URIRef("http://www.w3.org/ns/dcat#Dataset")) in g
        names = {str(o) for o in g.objects(None, rdflib.FOAF.name)}
        assert reference_base(b.id).holder in names
    coding = {
        str(o)
        for o in _graph(healthdcat.dataset_jsonld(cat, "ref_bndmr")).objects(
            None, rdflib.URIRef(healthdcat.HEALTHDCATAP + "hasCodingSystem")
        )
    }
    nal = "https://hdeu-dcat.data.health.europa.eu/resource/authority/coding-system/"
    assert {nal + "SNOMED-CT", nal + "LOINC", nal + "ICD-10"} <= coding


def test_jsonld_of_a_network_base_carries_run_counts_coverage_and_quality(cat):
    start = dt.datetime(2026, 11, 21, 0, 0, tzinfo=UTC)
    end = start + dt.timedelta(days=1)
    tables = {
        "person": {"extracted": 30, "published": 28, "quarantined": 1, "excluded_objection": 1},
        "visit_occurrence": {"extracted": 100, "published": 97, "quarantined": 3, "excluded_objection": 0},
    }
    catalogue.record_run(
        cat,
        level="local",
        scope_id="hosp_a",
        batch_id="b1",
        status="success",
        tables=tables,
        interval=(start, end),
        details={"failed_tables": [], "checks": {"isRequired:person.person_id": {"passed": True}}},
    )
    doc = healthdcat.dataset_jsonld(cat, "hosp_a")
    g = _graph(doc)
    _assert_mandatory(g)
    h = healthdcat.HEALTHDCATAP
    ds = rdflib.URIRef(healthdcat.dataset_iri("hosp_a"))
    assert int(g.value(ds, rdflib.URIRef(h + "numberOfRecords"))) == 125
    assert int(g.value(ds, rdflib.URIRef(h + "numberOfUniqueIndividuals"))) == 28
    q = g.query(
        PREFIXES + "SELECT ?s ?e WHERE { ?d dct:temporal ?t . ?t dcat:startDate ?s ; dcat:endDate ?e }"
    ).bindings
    assert len(q) == 1 and q[0]["s"].toPython() == start and q[0]["e"].toPython() == end
    assert g.query(PREFIXES + "ASK { ?d dqv:hasQualityAnnotation ?a . ?a a dqv:QualityAnnotation }").askAnswer
    with pytest.raises(KeyError):
        healthdcat.dataset_jsonld(cat, "no_such_base")


# ---------------------------------------------------------------------------------------------------
# (d) lead times
# ---------------------------------------------------------------------------------------------------


def test_lead_time_distribution_on_the_reference_bases(cat):
    seed_reference_bases(cat)
    today = dt.date(2023, 12, 31)
    rows = {r["base_id"]: r for r in lead_time.lead_times(cat, today=today)}
    assert rows["ref_bndmr"]["days"] == 196 and rows["ref_bndmr"]["elapsed_days"] is None
    assert rows["ref_esme"]["days"] == 357
    assert rows["ref_e_must"]["days"] is None and rows["ref_e_must"]["elapsed_days"] == 251
    assert rows["ref_e_sis"]["days"] is None and rows["ref_e_sis"]["elapsed_days"] == 356
    assert rows["hosp_a"]["days"] is None and rows["hosp_a"]["elapsed_days"] is None  # no contract yet
    for b in REFERENCE_BASES:
        ms = b.milestones
        if "available" in ms:
            assert rows[b.id]["days"] == (ms["available"] - ms["contract_signed"]).days

    d = lead_time.distribution(cat, today=today, reference_only=True)
    assert d["target_days"] == 213
    assert d["bases"] == 7 and d["available"] == 5 and d["pending"] == 2
    assert (d["within_target"], d["over_target"]) == (3, 2)  # 196, 201, 210 | 231, 357
    assert d["pending_over_target"] == 2
    assert d["median_days"] == 210
    assert d["p90_days"] == pytest.approx(231 + 0.6 * (357 - 231))
    assert lead_time.distribution(cat, target_days=365, today=today, reference_only=True)["over_target"] == 0
    whole = lead_time.distribution(cat, today=today)
    assert whole["bases"] == 7 + len(load_network().local_bases) and whole["available"] == 5


# ---------------------------------------------------------------------------------------------------
# (e) protected statistics on a warehouse
# ---------------------------------------------------------------------------------------------------


def test_protected_statistics_on_a_warehouse(fresh_db):
    with psycopg.connect(fresh_db) as conn:
        conn.execute("""
            CREATE SCHEMA omop; CREATE SCHEMA eds_platform;
            CREATE TABLE omop.person (person_id bigint PRIMARY KEY, gender_concept_id int, year_of_birth int,
                                      _site int NOT NULL);
            CREATE TABLE omop.visit_occurrence (visit_occurrence_id bigserial PRIMARY KEY, person_id bigint,
                                                visit_start_date date, _site int NOT NULL);
            CREATE TABLE omop.condition_occurrence (condition_occurrence_id bigserial PRIMARY KEY,
                                                    person_id bigint, condition_concept_id int, _site int NOT NULL);
            CREATE TABLE eds_platform.person_site (person_id bigint, base_id text, site_number int);
        """)
        # 40 women born in the 1950s, 3 women born in the 1980s, 25 men born in the 1950s, 20 in the 1980s
        pid = 0
        for gender, year, n in [(8532, 1955, 40), (8532, 1984, 3), (8507, 1952, 25), (8507, 1981, 20)]:
            for _ in range(n):
                pid += 1
                conn.execute("INSERT INTO omop.person VALUES (%s, %s, %s, 1)", [pid, gender, year])
                conn.execute("INSERT INTO eds_platform.person_site VALUES (%s, 'hosp_x', 1)", [pid])
        for year, n in [(2024, 50), (2025, 4), (2026, 30)]:
            for i in range(n):
                conn.execute(
                    "INSERT INTO omop.visit_occurrence (person_id, visit_start_date, _site) VALUES (%s, %s, 1)",
                    [i + 1, dt.date(year, 3, 1)],
                )
        for concept, n in [(201826, 30), (320128, 12), (4329847, 5)]:
            for i in range(n):
                conn.execute(
                    "INSERT INTO omop.condition_occurrence (person_id, condition_concept_id, _site) VALUES (%s, %s, 1)",
                    [i + 1, concept],
                )

    persons = stats.persons_by_sex_birth_band(fresh_db)
    assert stats.is_safe(persons)
    assert persons["cells"][("F", "1980-1989")] is None
    assert persons["totals"][(None, None)] == 88
    assert [c for c, v in persons["cells"].items() if v is None] != [("F", "1980-1989")]  # complement too
    assert stats.persons_by_sex_birth_band(fresh_db, base_id="hosp_x")["totals"] == persons["totals"]

    visits = stats.visits_per_year(fresh_db)
    assert visits["cells"] == {(2024,): 50, (2025,): None, (2026,): None}
    assert visits["totals"] == {(None,): 84}

    top = stats.top_conditions(fresh_db, n=3)
    assert [r["condition_concept_id"] for r in top["ranking"]] == [201826, 320128, 4329847]
    assert [r["persons"] for r in top["ranking"]] == [30, 12, None]
    assert stats.top_conditions(fresh_db, n=3, k=20)["ranking"][1]["persons"] is None
