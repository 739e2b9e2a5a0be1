"""HealthDCAT-AP descriptions of the catalogue's bases, as JSON-LD (one `dcat:Dataset` per base).

`dataset_jsonld(dsn, base_id)` describes one base (network or reference base) for the national catalogue
(HealthData@EU through the Health Data Hub), at the access level NON_PUBLIC: health data reachable only
through a data permit of the health data access body.

Mandatory properties of a NON_PUBLIC HealthDCAT-AP dataset, and what fills them here:
  dct:title, dct:description             the base's label; a description built from its kind and holder
  dct:identifier                         the dataset IRI (plain literal)
  dct:publisher                          foaf:Agent with foaf:name (the holder) and its contact point
  dcat:contactPoint                      vcard:Kind (vcard:Organization) with fn, email, URL
  dct:accessRights                       <…/access-right/NON_PUBLIC>
  dcatap:applicableLegislation           EHDS regulation (EU) 2025/327 and GDPR (EU) 2016/679, by ELI
  healthdcatap:hdab                      the Health Data Hub, foaf:Agent with its own dcat:contactPoint
  healthdcatap:healthCategory            from the base's kind (EHR, registry, cohort, other)
  dcat:theme                             EU data theme HEAL
  dcat:keyword                           kind, holder, OMOP CDM, …
  dct:type                               EU dataset type PERSONAL_DATA
  dct:provenance                         dct:ProvenanceStatement (how the data reaches the catalogue)
  dcat:distribution                      dcat:Distribution: Parquet, access URL, applicable legislation
Recommended / optional ones also given when known: healthdcatap:hasCodingSystem (SNOMED CT, LOINC, RxNorm,
ICD-10, the OMOP standard vocabularies), dct:conformsTo (OMOP CDM 5.4), dct:temporal (from the runs' data
intervals), healthdcatap:numberOfRecords and numberOfUniqueIndividuals (latest local run: sum of published
rows; persons = published rows of `person`), dqv:hasQualityAnnotation (latest run with quality details),
dpv:hasPersonalData, dct:issued, dct:modified, dct:spatial (France).

Vocabulary IRIs for health categories follow the HealthDCAT-AP draft namespace; align them with the
published controlled vocabulary when it is final (one table below, HEALTH_CATEGORY).
"""

from __future__ import annotations

import datetime as dt
import os

from sqlalchemy import func, select

from eds_network import catalogue

HEALTHDCATAP = "http://healthdataportal.eu/ns/health#"
BASE_IRI = os.environ.get("EDS_CATALOGUE_BASE_IRI", "https://eds-network.example.org/catalogue/")
CONTACT_EMAIL = os.environ.get("EDS_CATALOGUE_CONTACT", "mailto:catalogue@eds-network.example.org")

CONTEXT = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "vcard": "http://www.w3.org/2006/vcard/ns#",
    "adms": "http://www.w3.org/ns/adms#",
    "dqv": "http://www.w3.org/ns/dqv#",
    "oa": "http://www.w3.org/ns/oa#",
    "prov": "http://www.w3.org/ns/prov#",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "dcatap": "http://data.europa.eu/r5r/",
    "dpv": "https://w3id.org/dpv#",
    "dpv-pd": "https://w3id.org/dpv/pd#",
    "healthdcatap": HEALTHDCATAP,
}

ACCESS_NON_PUBLIC = "http://publications.europa.eu/resource/authority/access-right/NON_PUBLIC"
LEGISLATION = (
    "http://data.europa.eu/eli/reg/2025/327/oj",  # EHDS regulation
    "http://data.europa.eu/eli/reg/2016/679/oj",  # GDPR
)
THEME_HEALTH = "http://publications.europa.eu/resource/authority/data-theme/HEAL"
TYPE_PERSONAL_DATA = "http://publications.europa.eu/resource/authority/dataset-type/PERSONAL_DATA"
FRANCE = "http://publications.europa.eu/resource/authority/country/FRA"
PARQUET = "http://publications.europa.eu/resource/authority/file-type/PARQUET"
PARQUET_MEDIA_TYPE = "https://www.iana.org/assignments/media-types/application/vnd.apache.parquet"
OMOP_CDM = "https://ohdsi.github.io/CommonDataModel/cdm54.html"
CODING_SYSTEMS = {
    "SNOMED CT": "http://snomed.info/sct",
    "LOINC": "http://loinc.org",
    "RxNorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "ICD-10": "http://hl7.org/fhir/sid/icd-10",
    "OMOP standard vocabularies": "https://athena.ohdsi.org/",
}
HEALTH_CATEGORY = {
    "hospital_eds": HEALTHDCATAP + "EHR",
    "registry": HEALTHDCATAP + "REGISTRY",
    "cohort": HEALTHDCATAP + "COHORT",
    "other": HEALTHDCATAP + "OTHER",
}
KIND_LABEL = {
    "hospital_eds": "hospital health-data warehouse (EDS)",
    "registry": "registry",
    "cohort": "cohort",
    "other": "health database",
}
HDH = {
    "name": "Health Data Hub (Plateforme des données de santé)",
    "homepage": "https://www.health-data-hub.fr/",
}


def dataset_iri(base_id: str) -> str:
    return f"{BASE_IRI}dataset/{base_id}"


def _iri(value: str) -> dict:
    return {"@id": value}


def _typed(value, datatype: str) -> dict:
    return {"@value": str(value), "@type": datatype}


def _contact(fn: str, email: str, url: str | None = None) -> dict:
    c = {"@type": ["vcard:Kind", "vcard:Organization"], "vcard:fn": fn, "vcard:hasEmail": _iri(email)}
    if url:
        c["vcard:hasURL"] = _iri(url)
    return c


def _latest_local_run(conn, base_id: str):
    r = catalogue.run_t
    return conn.execute(
        select(r).where(r.c.level == "local", r.c.scope_id == base_id).order_by(r.c.recorded_at.desc()).limit(1)
    ).first()


def _quality(conn, base, local_run) -> dict | None:
    """A dqv:QualityAnnotation from the latest run that carries quality details (local run, else platform)."""
    r = catalogue.run_t
    candidates = []
    if local_run is not None:
        candidates.append(local_run)
    if base.platform_id:
        plat = conn.execute(
            select(r)
            .where(r.c.level == "mutualised", r.c.scope_id == base.platform_id)
            .order_by(r.c.recorded_at.desc())
            .limit(1)
        ).first()
        if plat is not None:
            candidates.append(plat)
    for run in candidates:
        details = run.details or {}
        checks = details.get("checks") or details.get("quality")
        tables = conn.execute(select(catalogue.run_table_t).where(catalogue.run_table_t.c.run_id == run.id)).all()
        if not checks and not (run.level == "local" and tables):
            continue
        parts = [f"{run.level} run {run.batch_id} ({run.status}, recorded {run.recorded_at:%Y-%m-%d})"]
        if run.level == "local" and tables:
            ext = sum(t.extracted for t in tables)
            quar = sum(t.quarantined for t in tables)
            parts.append(f"{ext} rows extracted, {quar} quarantined by OHDSI DQD fatal checks")
            if details.get("failed_tables"):
                parts.append(f"failed tables: {', '.join(details['failed_tables'])}")
        if isinstance(checks, dict):
            passed = sum(1 for c in checks.values() if isinstance(c, dict) and c.get("passed"))
            parts.append(f"{passed}/{len(checks)} checks passed")
        elif isinstance(checks, int | list):
            parts.append(f"{checks if isinstance(checks, int) else len(checks)} checks evaluated")
        return {
            "@type": "dqv:QualityAnnotation",
            "oa:motivatedBy": _iri("dqv:qualityAssessment"),
            "oa:hasBody": {"@type": "oa:TextualBody", "rdf:value": "; ".join(parts), "dct:format": "text/plain"},
        }
    return None


def dataset_jsonld(dsn: str, base_id: str, *, issued: dt.date | None = None) -> dict:
    """The HealthDCAT-AP (NON_PUBLIC) JSON-LD description of one catalogued base."""
    b_t, p_t, r = catalogue.base_t, catalogue.platform_t, catalogue.run_t
    with catalogue.engine(dsn).connect() as conn:
        base = conn.execute(
            select(b_t, p_t.c.label.label("platform_label"))
            .select_from(b_t.outerjoin(p_t, b_t.c.platform_id == p_t.c.id))
            .where(b_t.c.id == base_id)
        ).first()
        if base is None:
            raise KeyError(f"base {base_id!r} is not in the catalogue")
        local = _latest_local_run(conn, base_id)
        tables = (
            conn.execute(select(catalogue.run_table_t).where(catalogue.run_table_t.c.run_id == local.id)).all()
            if local is not None
            else []
        )
        span = conn.execute(
            select(func.min(r.c.data_interval_start), func.max(r.c.data_interval_end)).where(
                r.c.level == "local", r.c.scope_id == base_id
            )
        ).one()
        quality = _quality(conn, base, local)
    milestones = catalogue.milestones(dsn, base_id)

    iri = dataset_iri(base_id)
    kind = base.kind if base.kind in HEALTH_CATEGORY else "other"
    holder = base.holder or base.label
    via = f", shared through {base.platform_label}" if base.platform_label else ""
    description = (
        f"{base.label}: {KIND_LABEL[kind]} held by {holder}{via}. Pseudonymised individual-level health data "
        "in the OMOP CDM 5.4, available to approved projects through a data permit of the Health Data Hub."
    )
    if base.reference:
        provenance = (
            f"Reference base of the French national catalogue, held by {holder}; onboarding milestones recorded "
            "in the eds-network catalogue (contract, documentation, preparation, transfer channel, availability)."
        )
    else:
        provenance = (
            f"Extracted nightly from the hospital EDS of {holder} ({base.platform_label or 'platform'}) by the "
            "eds-network pipelines: opposition registry applied, OHDSI DQD checks with quarantine at the "
            "hospital, level-1 then level-2 pseudonymisation (HMAC), consolidation at the mutualised platform, "
            "delivery to the Health Data Hub landing zone with SHA-256 checksums."
        )

    ds: dict = {
        "@context": CONTEXT,
        "@id": iri,
        "@type": "dcat:Dataset",
        "dct:title": {"@value": base.label, "@language": "fr"},
        "dct:description": {"@value": description, "@language": "en"},
        "dct:identifier": iri,
        "adms:identifier": {"@type": "adms:Identifier", "skos:notation": base_id},
        "dct:publisher": {
            "@type": "foaf:Agent",
            "foaf:name": holder,
            "dcat:contactPoint": _contact(f"{holder} — data office", CONTACT_EMAIL),
        },
        "dcat:contactPoint": _contact(f"{base.label} — contact", CONTACT_EMAIL, f"{BASE_IRI}base/{base_id}"),
        "dct:accessRights": _iri(ACCESS_NON_PUBLIC),
        "dcatap:applicableLegislation": [_iri(u) for u in LEGISLATION],
        "healthdcatap:hdab": {
            "@type": "foaf:Agent",
            "foaf:name": HDH["name"],
            "foaf:homepage": _iri(HDH["homepage"]),
            "dcat:contactPoint": _contact(HDH["name"], "mailto:hdab@eds-network.example.org", HDH["homepage"]),
        },
        "healthdcatap:healthCategory": _iri(HEALTH_CATEGORY[kind]),
        "dcat:theme": _iri(THEME_HEALTH),
        "dcat:keyword": [
            {"@value": w, "@language": "en"} for w in ("health data", KIND_LABEL[kind], "OMOP CDM", holder)
        ],
        "dct:type": _iri(TYPE_PERSONAL_DATA),
        "dct:provenance": {"@type": "dct:ProvenanceStatement", "rdfs:label": provenance},
        "dct:conformsTo": _iri(OMOP_CDM),
        "healthdcatap:hasCodingSystem": [_iri(u) for u in CODING_SYSTEMS.values()],
        "dct:spatial": _iri(FRANCE),
        "dpv:hasPersonalData": [_iri("dpv-pd:HealthRecord"), _iri("dpv-pd:Age"), _iri("dpv-pd:Gender")],
        "dcat:distribution": {
            "@id": f"{iri}/distribution/parquet",
            "@type": "dcat:Distribution",
            "dct:title": f"{base.label} — OMOP CDM 5.4 tables (Parquet)",
            "dct:format": _iri(PARQUET),
            "dcat:mediaType": _iri(PARQUET_MEDIA_TYPE),
            "dcat:accessURL": _iri(HDH["homepage"]),
            "dct:rights": _iri(ACCESS_NON_PUBLIC),
            "dcatap:applicableLegislation": [_iri(u) for u in LEGISLATION],
        },
    }
    available = milestones.get("available")
    if issued or available:
        ds["dct:issued"] = _typed((issued or available).isoformat(), "xsd:date")
    if local is not None:
        ds["dct:modified"] = _typed(local.recorded_at.isoformat(), "xsd:dateTime")
    if span[0] is not None and span[1] is not None:
        ds["dct:temporal"] = {
            "@type": "dct:PeriodOfTime",
            "dcat:startDate": _typed(span[0].isoformat(), "xsd:dateTime"),
            "dcat:endDate": _typed(span[1].isoformat(), "xsd:dateTime"),
        }
    if tables:
        records = sum(t.published for t in tables)
        persons = sum(t.published for t in tables if t.table_name == "person")
        ds["healthdcatap:numberOfRecords"] = _typed(records, "xsd:nonNegativeInteger")
        ds["healthdcatap:numberOfUniqueIndividuals"] = _typed(persons, "xsd:nonNegativeInteger")
    if quality is not None:
        quality["oa:hasTarget"] = _iri(iri)
        ds["dqv:hasQualityAnnotation"] = quality
    return ds
