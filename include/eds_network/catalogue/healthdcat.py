"""HealthDCAT-AP descriptions of the catalogue's bases, as JSON-LD: one `dcat:Dataset` per base and the
`dcat:Catalog` that lists them, at the access level NON_PUBLIC (health data reachable only through a data
permit of the health data access body, the Health Data Hub).

Every document conforms, with pySHACL and no inference, to the HealthDCAT-AP Release 8 NON_PUBLIC shapes
together with the DCAT-AP 3.0.1 shapes (`eds_network.catalogue.shacl`, shapes in `shapes/`): every
referenced resource carries the class the shapes require (vocabulary values from `vocab`).

What fills the mandatory properties of a NON_PUBLIC dataset:
  dct:title, dct:description, dct:identifier   the base's label, a description from its kind and holder, its IRI
  dct:accessRights                             access-right NON_PUBLIC (skos:Concept, dct:RightsStatement)
  dcatap:applicableLegislation                 EHDS regulation (EU) 2025/327 and the GDPR (eli:LegalResource)
  dcat:theme, dct:type                         data theme HEAL, dataset type PERSONAL_DATA (skos:Concept)
  healthdcatap:healthCategory                  EHDS Article 51 category from the base's kind
  healthdcatap:hdab, dct:publisher             foaf:Agent with one cv:contactPoint (cv:ContactPoint)
  dcat:contactPoint                            vcard:Kind with an e-mail and a URL
  dcat:keyword, dct:provenance                 kind, holder, OMOP CDM; how the data reaches the catalogue
  dcat:distribution                            the access route: a data permit request to the HDH
  healthdcatap:hasStructuredData (+ hasVariables) the OMOP tables and columns a network base publishes
Also given when known: dct:conformsTo OMOP CDM, healthdcatap:hasCodingSystem, dct:temporal (runs' data
intervals), numberOfRecords / numberOfUniqueIndividuals (latest local run), dct:spatial France, dct:issued,
dct:modified, dpv:hasPersonalData, dct:accrualPeriodicity (nightly), and the EHDS quality and utility label
(`quality_label`): a dqv:QualityCertificate plus one dqv:QualityMeasurement per element (DQD pass rates per
category, timeliness, coverage).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from sqlalchemy import func, select

from eds_network import catalogue
from eds_network.catalogue import quality_label, vocab
from eds_network.catalogue.vocab import en, iri, typed

HEALTHDCATAP = vocab.CONTEXT["healthdcatap"]
CONTEXT = vocab.CONTEXT
BASE_IRI = os.environ.get("EDS_CATALOGUE_BASE_IRI", "https://eds-network.example.org/catalogue/")
CONTACT_EMAIL = os.environ.get("EDS_CATALOGUE_CONTACT", "catalogue@eds-network.example.org")
HDAB_EMAIL = os.environ.get("EDS_CATALOGUE_HDAB_CONTACT", "hdab@eds-network.example.org")
HDH = {
    "name": "Health Data Hub (Plateforme des données de santé)",
    "homepage": "https://www.health-data-hub.fr/",
}
ACCESS_REQUEST_URL = os.environ.get("EDS_CATALOGUE_ACCESS_URL", "https://www.health-data-hub.fr/depot")
KIND_LABEL = {
    "hospital_eds": "hospital health-data warehouse (EDS)",
    "registry": "registry",
    "cohort": "cohort",
    "other": "health database",
}
CSVW_TYPES = {"integer": "integer", "bigint": "integer", "float": "double", "date": "date", "datetime": "datetime"}


def dataset_iri(base_id: str) -> str:
    return f"{BASE_IRI}dataset/{base_id}"


def catalog_iri() -> str:
    return f"{BASE_IRI}catalog"


def _agent(name: str, email: str, page: str | None = None) -> dict:
    cp = {"@type": "cv:ContactPoint", "cv:email": email}
    if page:
        cp["cv:contactPage"] = iri(page)
    return {"@type": "foaf:Agent", "foaf:name": name, "cv:contactPoint": cp}


def _vcard(fn: str, email: str, url: str) -> dict:
    return {
        "@type": ["vcard:Kind", "vcard:Organization"],
        "vcard:fn": fn,
        "vcard:hasEmail": iri(f"mailto:{email}"),
        "vcard:hasURL": iri(url),
    }


def _latest_local_run(conn, base_id: str):
    r = catalogue.run_t
    return conn.execute(
        select(r).where(r.c.level == "local", r.c.scope_id == base_id).order_by(r.c.recorded_at.desc()).limit(1)
    ).first()


def _variables(base_label: str, table_names: list[str]) -> dict:
    """The OMOP CDM 5.4 tables a base publishes, as a csvw:TableGroup (one csvw:Column per field)."""
    from eds_network.core import omop

    tables = []
    for name in sorted(table_names):
        try:
            t = omop.table(name)
        except KeyError:
            continue
        cols = []
        for c in t.columns:
            kind = CSVW_TYPES.get(c.datatype.lower(), "string")
            notes = ", ".join(
                x for x in ("required" if c.required else "optional", "primary key" if c.primary_key else "") if x
            )
            cols.append(
                {
                    "@type": "csvw:Column",
                    "csvw:name": c.name,
                    "csvw:title": c.name.replace("_", " "),
                    "csvw:datatype": kind,
                    "dct:description": f"OMOP CDM 5.4 {name}.{c.name} ({c.datatype}, {notes})",
                }
            )
        tables.append({"@type": "csvw:Table", "dct:title": name, "csvw:column": cols})
    return {"@type": "csvw:TableGroup", "dct:title": f"{base_label}: OMOP CDM 5.4 tables", "csvw:table": tables}


def _base_row(conn, base_id: str):
    b_t, p_t = catalogue.base_t, catalogue.platform_t
    base = conn.execute(
        select(b_t, p_t.c.label.label("platform_label"))
        .select_from(b_t.outerjoin(p_t, b_t.c.platform_id == p_t.c.id))
        .where(b_t.c.id == base_id)
    ).first()
    if base is None:
        raise KeyError(f"base {base_id!r} is not in the catalogue")
    return base


def _texts(base) -> tuple[str, str]:
    """(description, provenance) of a base."""
    kind = base.kind if base.kind in KIND_LABEL else "other"
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
    return description, provenance


def _distribution(iri_: str, label: str) -> dict:
    return {
        "@id": f"{iri_}/distribution/parquet",
        "@type": "dcat:Distribution",
        "dct:title": en(f"{label}: OMOP CDM 5.4 tables (Parquet), on a data permit of the Health Data Hub"),
        "dct:format": vocab.file_type("PARQUET", "Parquet"),
        "dcat:mediaType": vocab.media_type("application/vnd.apache.parquet"),
        "dcat:accessURL": {"@id": ACCESS_REQUEST_URL, "@type": "rdfs:Resource"},
        "dct:rights": vocab.access_rights(),
        "dcatap:applicableLegislation": vocab.legislation(),
    }


def _core(base, iri_: str) -> dict:
    kind = base.kind if base.kind in KIND_LABEL else "other"
    holder = base.holder or base.label
    description, provenance = _texts(base)
    return {
        "@id": iri_,
        "@type": "dcat:Dataset",
        "dct:title": {"@value": base.label, "@language": "fr"},
        "dct:description": en(description),
        "dct:identifier": iri_,
        "adms:identifier": {"@type": "adms:Identifier", "skos:notation": base.id},
        "dct:publisher": _agent(holder, CONTACT_EMAIL),
        "dcat:contactPoint": _vcard(f"{base.label}: contact", CONTACT_EMAIL, f"{BASE_IRI}base/{base.id}"),
        "dct:accessRights": vocab.access_rights(),
        "dcatap:applicableLegislation": vocab.legislation(),
        "healthdcatap:hdab": _agent(HDH["name"], HDAB_EMAIL, HDH["homepage"]),
        "healthdcatap:healthCategory": vocab.health_category(kind),
        "dcat:theme": vocab.theme_health(),
        "dcat:keyword": [en(w) for w in ("health data", KIND_LABEL[kind], "OMOP CDM", holder)],
        "dct:type": vocab.dataset_type_personal(),
        "dct:provenance": {"@type": "dct:ProvenanceStatement", "rdfs:label": en(provenance)},
        "dct:conformsTo": vocab.omop_cdm(),
        "healthdcatap:hasCodingSystem": vocab.coding_systems(),
        "dct:spatial": vocab.france(),
        "dct:language": vocab.language(),
        "dpv:hasPersonalData": [
            {"@id": vocab.CONTEXT["dpv-pd"] + n, "@type": "dpv:PersonalData"} for n in ("HealthRecord", "Age", "Gender")
        ],
        "dcat:distribution": _distribution(iri_, base.label),
    }


def dataset_jsonld(dsn: str, base_id: str, *, issued: dt.date | None = None) -> dict:
    """The HealthDCAT-AP (NON_PUBLIC) JSON-LD description of one catalogued base."""
    r = catalogue.run_t
    with catalogue.engine(dsn).connect() as conn:
        base = _base_row(conn, base_id)
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
        iri_ = dataset_iri(base_id)
    milestones = catalogue.milestones(dsn, base_id)
    lab = quality_label.label(dsn, base_id) if local is not None else None

    ds = {"@context": CONTEXT, **_core(base, iri_)}
    if tables:
        ds["healthdcatap:hasStructuredData"] = typed("true", "xsd:boolean")
        ds["healthdcatap:hasVariables"] = _variables(base.label, [t.table_name for t in tables])
        records = sum(t.published for t in tables)
        persons = sum(t.published for t in tables if t.table_name == "person")
        ds["healthdcatap:numberOfRecords"] = typed(records, "xsd:nonNegativeInteger")
        ds["healthdcatap:numberOfUniqueIndividuals"] = typed(persons, "xsd:nonNegativeInteger")
    else:  # no table published through this network yet: its data dictionary is its holder's
        ds["healthdcatap:hasStructuredData"] = typed("false", "xsd:boolean")
    if not base.reference:
        ds["dct:accrualPeriodicity"] = vocab.frequency_daily()
    available = milestones.get("available")
    if issued or available:
        ds["dct:issued"] = typed((issued or available).isoformat(), "xsd:date")
    if local is not None:
        ds["dct:modified"] = typed(local.recorded_at.isoformat(), "xsd:dateTime")
    if span[0] is not None and span[1] is not None:
        ds["dct:temporal"] = {
            "@type": "dct:PeriodOfTime",
            "dcat:startDate": typed(span[0].isoformat(), "xsd:dateTime"),
            "dcat:endDate": typed(span[1].isoformat(), "xsd:dateTime"),
        }
    if lab is not None:
        ds["dqv:hasQualityAnnotation"], measurements = quality_label.dqv_annotation(lab, iri_, BASE_IRI)
        if measurements:
            ds["dqv:hasQualityMeasurement"] = measurements
    return ds


def base_ids(dsn: str) -> list[str]:
    b = catalogue.base_t
    with catalogue.engine(dsn).connect() as conn:
        return list(conn.execute(select(b.c.id).order_by(b.c.reference, b.c.id)).scalars())


def catalog_jsonld(dsn: str, *, datasets: list[dict] | None = None) -> dict:
    """The dcat:Catalog of every catalogued base, with the datasets' descriptions in the same graph."""
    datasets = datasets if datasets is not None else [dataset_jsonld(dsn, b) for b in base_ids(dsn)]
    catalog = {
        "@id": catalog_iri(),
        "@type": "dcat:Catalog",
        "dct:title": en("eds-network catalogue of French hospital health-data warehouses"),
        "dct:description": en(
            "The bases of the eds-network (hospital EDS through their mutualised platforms) and the reference "
            "bases of the national catalogue, described for the Health Data Hub and HealthData@EU."
        ),
        "dct:publisher": _agent(HDH["name"], HDAB_EMAIL, HDH["homepage"]),
        "dcatap:applicableLegislation": vocab.legislation(),
        "dct:spatial": vocab.france(),
        "dct:language": vocab.language(),
        "foaf:homepage": {"@id": BASE_IRI, "@type": "foaf:Document"},
        "dcat:themeTaxonomy": {
            "@id": vocab.EU_NAL + "data-theme",
            "@type": "skos:ConceptScheme",
            "dct:title": en("Data theme"),
        },
        "dcat:dataset": [iri(d["@id"]) for d in datasets],
    }
    modified = [d["dct:modified"]["@value"] for d in datasets if "dct:modified" in d]
    if modified:  # the latest run recorded: a rerun writes the same document
        catalog["dct:modified"] = typed(max(modified), "xsd:dateTime")
    graph = [catalog] + [{k: v for k, v in d.items() if k != "@context"} for d in datasets]
    return {"@context": CONTEXT, "@graph": graph}


def write_documents(dsn: str, out: Path) -> dict[str, Path]:
    """Write `<base>.jsonld` for every base and `catalog.jsonld`; returns {name: path}. Idempotent: a rerun
    rewrites the same files (each written aside, then renamed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    docs = {b: dataset_jsonld(dsn, b) for b in base_ids(dsn)}
    docs["catalog"] = catalog_jsonld(dsn, datasets=list(docs.values()))
    paths = {}
    for name, doc in docs.items():
        path = out / f"{name}.jsonld"
        tmp = path.with_suffix(".jsonld.tmp")
        tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)
        paths[name] = path
    return paths
