"""The one definition of "the same event reported by two sites".

Two rows of an event table are the same event when they belong to the same (linked) person and agree on the
columns below: the event's concept, its date, and the values that tell two events of one day apart. The
platform flags such rows in `eds_platform.duplicate_event` (`platform.stats`, for the persons each night
touched) and the mutualised quality check `crossSiteDuplicates` (`quality.warehouse`) counts them: both read
this table, so the operator page's duplicate count and the check measure the same thing. NULL values compare
equal (SQL's GROUP BY / PARTITION BY semantics, used by both).
"""

from __future__ import annotations

from dataclasses import dataclass

from eds_network.core import omop


@dataclass(frozen=True)
class EventIdentity:
    """The columns (besides person_id) that identify one event of a table."""

    concept: str
    date: str
    values: tuple[str, ...] = ()


EVENT_IDENTITY: dict[str, EventIdentity] = {
    "visit_occurrence": EventIdentity("visit_concept_id", "visit_start_date", ("visit_end_date",)),
    "condition_occurrence": EventIdentity("condition_concept_id", "condition_start_date"),
    "drug_exposure": EventIdentity("drug_concept_id", "drug_exposure_start_date", ("quantity",)),
    "procedure_occurrence": EventIdentity("procedure_concept_id", "procedure_date"),
    "device_exposure": EventIdentity("device_concept_id", "device_exposure_start_date"),
    "measurement": EventIdentity(
        "measurement_concept_id", "measurement_date", ("value_as_number", "value_as_concept_id", "unit_concept_id")
    ),
    "observation": EventIdentity(
        "observation_concept_id", "observation_date", ("value_as_number", "value_as_string", "value_as_concept_id")
    ),
    "specimen": EventIdentity("specimen_concept_id", "specimen_date"),
}


def identity_columns(table: str) -> tuple[str, ...] | None:
    """person_id and the identity columns of `table` that its OMOP definition has; None for a table without
    events (no identity, or no person_id)."""
    ident = EVENT_IDENTITY.get(table)
    spec = omop.table(table) if table in omop.schema() else None
    if ident is None or spec is None or not spec.has("person_id"):
        return None
    return tuple(c for c in ("person_id", ident.concept, ident.date, *ident.values) if spec.has(c))
