"""The EHDS data quality and utility label of a base (Regulation (EU) 2025/327, Art. 78), from what each night
recorded in the catalogue, and its DQV form for the HealthDCAT-AP export.

Elements (each recomputed from the stored results of the latest local run, so the label follows every night):
  completeness / conformance / plausibility   pass rate of the OHDSI DQD checks of that Kahn category that were
                                              evaluated (passed / (passed + failed); not-applicable and disabled
                                              checks are not counted), from `catalogue.quality_check`
  timeliness                                  hours from the end of the night's data interval (the latest event
                                              date the run could carry) to the platform's national delivery
                                              accepted at the Health Data Hub (`catalogue.run`, level national)
  coverage                                    the period covered by the base's local runs, and the persons published

In HealthDCAT-AP the label is a `dqv:QualityCertificate` (what the shapes require of dqv:hasQualityAnnotation)
and each element a `dqv:QualityMeasurement` of a `dqv:Metric` defined here (`metric_nodes`).
"""

from __future__ import annotations

from sqlalchemy import func, select

from eds_network.catalogue.db import engine
from eds_network.catalogue.results import quality_batches, quality_results
from eds_network.catalogue.tables import base_t, run_t, run_table_t
from eds_network.catalogue.vocab import en, iri, typed

CATEGORIES = ("Completeness", "Conformance", "Plausibility")
METRICS = {
    "completeness_pass_rate": ("completeness", "Share of the evaluated OHDSI DQD completeness checks that pass"),
    "conformance_pass_rate": ("conformance", "Share of the evaluated OHDSI DQD conformance checks that pass"),
    "plausibility_pass_rate": ("plausibility", "Share of the evaluated OHDSI DQD plausibility checks that pass"),
    "timeliness_hours": ("timeliness", "Hours from the end of the night's data interval to the HDH delivery"),
    "coverage_persons": ("coverage", "Persons published by the latest local run"),
}


def _pass_rates(dsn: str, base_id: str) -> tuple[str | None, dict[str, float | None], dict[str, int]]:
    batches = quality_batches(dsn, "local", base_id)
    if not batches:
        return None, dict.fromkeys(CATEGORIES), {}
    checks, _ = quality_results(dsn, "local", base_id, batches[0])
    rates, counted = {}, {}
    for cat in CATEGORIES:
        evaluated = [c for c in checks if c["category"] == cat and c["passed"] is not None]
        counted[cat] = len(evaluated)
        rates[cat] = round(sum(1 for c in evaluated if c["passed"]) / len(evaluated), 4) if evaluated else None
    return batches[0], rates, counted


def label(dsn: str, base_id: str) -> dict | None:
    """The label of one network base, or None when no local run is recorded yet."""
    with engine(dsn).connect() as conn:
        base = conn.execute(select(base_t).where(base_t.c.id == base_id)).first()
        if base is None:
            raise KeyError(f"base {base_id!r} is not in the catalogue")
        local = conn.execute(
            select(run_t)
            .where(run_t.c.level == "local", run_t.c.scope_id == base_id)
            .order_by(run_t.c.recorded_at.desc())
            .limit(1)
        ).first()
        if local is None:
            return None
        span = conn.execute(
            select(func.min(run_t.c.data_interval_start), func.max(run_t.c.data_interval_end)).where(
                run_t.c.level == "local", run_t.c.scope_id == base_id
            )
        ).one()
        persons = conn.execute(
            select(run_table_t.c.published).where(
                run_table_t.c.run_id == local.id, run_table_t.c.table_name == "person"
            )
        ).scalar()
        delivered = None
        if base.platform_id and local.data_interval_end is not None:
            delivered = conn.execute(
                select(func.min(run_t.c.recorded_at)).where(
                    run_t.c.level == "national",
                    run_t.c.scope_id == base.platform_id,
                    run_t.c.status == "success",
                    run_t.c.recorded_at >= local.recorded_at,
                )
            ).scalar()
    batch, rates, counted = _pass_rates(dsn, base_id)
    hours = None
    if delivered is not None and local.data_interval_end is not None:
        hours = round((delivered - local.data_interval_end).total_seconds() / 3600, 1)
    return {
        "base_id": base_id,
        "batch_id": batch or local.batch_id,
        "completeness": rates["Completeness"],
        "conformance": rates["Conformance"],
        "plausibility": rates["Plausibility"],
        "checks_evaluated": counted,
        "timeliness_hours": hours,
        "coverage": {
            "start": span[0].isoformat() if span[0] else None,
            "end": span[1].isoformat() if span[1] else None,
            "persons": persons,
        },
    }


def metric_iri(base_iri: str, name: str) -> str:
    return f"{base_iri}quality/metric/{name}"


def metric_nodes(base_iri: str) -> list[dict]:
    """The dqv:Metric and dqv:Dimension definitions the measurements refer to."""
    out = []
    for name, (dim, definition) in METRICS.items():
        out.append(
            {
                "@id": metric_iri(base_iri, name),
                "@type": "dqv:Metric",
                "skos:definition": en(definition),
                "dqv:expectedDataType": iri("xsd:decimal"),
                "dqv:inDimension": {
                    "@id": f"{base_iri}quality/dimension/{dim}",
                    "@type": "dqv:Dimension",
                    "skos:prefLabel": en(dim),
                },
            }
        )
    return out


def dqv_annotation(lab: dict, dataset_iri: str, base_iri: str) -> tuple[dict, list[dict]]:
    """(the label as a dqv:QualityCertificate, one dqv:QualityMeasurement per element that has a value): the
    dataset carries both (dqv:hasQualityAnnotation, dqv:hasQualityMeasurement)."""
    values = {
        "completeness_pass_rate": lab["completeness"],
        "conformance_pass_rate": lab["conformance"],
        "plausibility_pass_rate": lab["plausibility"],
        "timeliness_hours": lab["timeliness_hours"],
        "coverage_persons": lab["coverage"]["persons"],
    }
    measurements = [
        {
            "@type": "dqv:QualityMeasurement",
            "dqv:isMeasurementOf": metric_nodes(base_iri)[list(METRICS).index(name)],
            "dqv:computedOn": iri(dataset_iri),
            "dqv:value": typed(value, "xsd:decimal"),
        }
        for name, value in values.items()
        if value is not None
    ]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    text = (
        f"EHDS data quality and utility label (Regulation (EU) 2025/327, Art. 78), local batch {lab['batch_id']}: "
        f"completeness {pct(lab['completeness'])}, conformance {pct(lab['conformance'])}, plausibility "
        f"{pct(lab['plausibility'])} of evaluated OHDSI DQD checks passed; timeliness "
        f"{'n/a' if lab['timeliness_hours'] is None else str(lab['timeliness_hours']) + ' h'} from the end of the "
        f"night to the HDH delivery; coverage {lab['coverage']['start']} to {lab['coverage']['end']}, "
        f"{lab['coverage']['persons'] if lab['coverage']['persons'] is not None else 'n/a'} persons."
    )
    annotation = {
        "@type": ["dqv:QualityAnnotation", "dqv:QualityCertificate"],
        "oa:motivatedBy": iri("dqv:qualityAssessment"),
        "oa:hasTarget": iri(dataset_iri),
        "oa:hasBody": {"@type": "oa:TextualBody", "rdf:value": text, "dct:format": "text/plain"},
    }
    return annotation, measurements
