"""The controlled vocabularies the HealthDCAT-AP export refers to, each value as a typed JSON-LD node.

The DCAT-AP 3 range shapes and the HealthDCAT-AP shapes check the *class* of every referenced resource
(`sh:class`), and the DCAT-AP controlled-vocabulary shapes check that a concept is `skos:inScheme` its EU
authority table. A validator without the vocabularies loaded sees neither, so every reference is published
with what the authority table itself says of it: its classes, its scheme and a label. Nothing here is
invented: the IRIs are those of the EU Publications Office authority tables, the HealthData@EU (DG SANTE)
controlled vocabularies of HealthDCAT-AP Release 8, ELI for the legislation and IANA for media types.
"""

from __future__ import annotations

EU_NAL = "http://publications.europa.eu/resource/authority/"
HDEU_NAL = "https://hdeu-dcat.data.health.europa.eu/resource/authority/"

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
    "eli": "http://data.europa.eu/eli/ontology#",
    "cv": "http://data.europa.eu/m8g/",
    "csvw": "http://www.w3.org/ns/csvw#",
    "dpv": "https://w3id.org/dpv#",
    "dpv-pd": "https://w3id.org/dpv/pd#",
    "time": "http://www.w3.org/2006/time#",
    "healthdcatap": "http://healthdataportal.eu/ns/health#",
}


def iri(value: str) -> dict:
    return {"@id": value}


def typed(value, datatype: str) -> dict:
    return {"@value": str(value), "@type": datatype}


def en(text: str) -> dict:
    return {"@value": text, "@language": "en"}


def concept(value: str, scheme: str, label: str, *extra_types: str) -> dict:
    """A SKOS concept of an authority table (scheme IRI), with its label and any further classes."""
    return {
        "@id": value,
        "@type": ["skos:Concept", *extra_types],
        "skos:prefLabel": en(label),
        "skos:inScheme": {"@id": scheme, "@type": "skos:ConceptScheme", "dct:title": en(label_of_scheme(scheme))},
    }


SCHEME_TITLES = {
    EU_NAL + "access-right": "Access right",
    EU_NAL + "data-theme": "Data theme",
    EU_NAL + "dataset-type": "Dataset type",
    EU_NAL + "country": "Country",
    EU_NAL + "file-type": "File type",
    EU_NAL + "language": "Language",
    EU_NAL + "frequency": "Frequency",
    HDEU_NAL + "healthcategories": "Health categories (EHDS Article 51)",
    HDEU_NAL + "coding-system": "Coding systems",
    HDEU_NAL + "standard": "Standards",
}


def label_of_scheme(scheme: str) -> str:
    return SCHEME_TITLES.get(scheme, scheme.rsplit("/", 1)[-1])


# --- EU Publications Office authority tables -----------------------------------------------------------

ACCESS_NON_PUBLIC = EU_NAL + "access-right/NON_PUBLIC"


def access_rights() -> dict:
    return concept(ACCESS_NON_PUBLIC, EU_NAL + "access-right", "non-public", "dct:RightsStatement")


def theme_health() -> dict:
    return concept(EU_NAL + "data-theme/HEAL", EU_NAL + "data-theme", "Health")


def dataset_type_personal() -> dict:
    return concept(EU_NAL + "dataset-type/PERSONAL_DATA", EU_NAL + "dataset-type", "Personal data")


def france() -> dict:
    return concept(EU_NAL + "country/FRA", EU_NAL + "country", "France", "dct:Location")


def language(code: str = "FRA", label: str = "French") -> dict:
    return concept(EU_NAL + f"language/{code}", EU_NAL + "language", label, "dct:LinguisticSystem")


def frequency_daily() -> dict:
    return concept(EU_NAL + "frequency/DAILY", EU_NAL + "frequency", "daily", "dct:Frequency")


def file_type(code: str, label: str) -> dict:
    return concept(EU_NAL + f"file-type/{code}", EU_NAL + "file-type", label, "dct:MediaTypeOrExtent")


def media_type(name: str) -> dict:
    """An IANA media type (the DCAT-AP check matches IANA's URL pattern)."""
    return {"@id": f"http://www.iana.org/assignments/media-types/{name}", "@type": ["dct:MediaType"]}


# --- legislation (ELI) ---------------------------------------------------------------------------------

LEGISLATION = {
    "http://data.europa.eu/eli/reg/2025/327/oj": "Regulation (EU) 2025/327 on the European Health Data Space",
    "http://data.europa.eu/eli/reg/2016/679/oj": "Regulation (EU) 2016/679 (General Data Protection Regulation)",
}


def legislation() -> list[dict]:
    return [{"@id": u, "@type": "eli:LegalResource", "rdfs:label": en(label)} for u, label in LEGISLATION.items()]


# --- HealthData@EU controlled vocabularies (HealthDCAT-AP Release 8) --------------------------------------

HEALTH_CATEGORY = {  # base kind -> EHDS Article 51 category
    "hospital_eds": ("EHRS", "Electronic health data from electronic health records"),
    "registry": ("MRMR", "Data from medical registries and mortality registries"),
    "cohort": ("RQSH", "Data from research cohorts, questionnaires and surveys related to health"),
    "other": ("PHDR", "Data from population-based health data registries"),
}


def health_category(kind: str) -> dict:
    code, label = HEALTH_CATEGORY.get(kind, HEALTH_CATEGORY["other"])
    return concept(HDEU_NAL + f"healthcategories/{code}", HDEU_NAL + "healthcategories", label)


CODING_SYSTEMS = {
    "SNOMED-CT": "SNOMED CT",
    "LOINC": "Logical Observation Identifiers Names and Codes",
    "RXNORM": "RxNorm",
    "ICD-10": "International Classification of Diseases, 10th revision",
    "OHDSI-VOCAB": "OHDSI standardised vocabularies",
}


def coding_systems() -> list[dict]:
    scheme = HDEU_NAL + "coding-system"
    return [concept(f"{scheme}/{code}", scheme, label, "dct:Standard") for code, label in CODING_SYSTEMS.items()]


def omop_cdm() -> dict:
    scheme = HDEU_NAL + "standard"
    return concept(f"{scheme}/OMOP-CDM", scheme, "OMOP Common Data Model (version 5.4)", "dct:Standard")
