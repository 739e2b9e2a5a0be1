"""A research cohort: OMOP concept sets, a period, age and sex filters (what a feasibility query and a permit name).

A patient is in the cohort when, within the rows considered (one base, one platform, the whole network):

- for **every** criterion, the patient has at least one row of the criterion's table whose concept is in the
  criterion's concept set (with its descendants through `concept_ancestor` when `descendants` is true and the
  vocabulary has the table) and whose date is in the period `[start, end)`;
- the patient's sex (`gender_concept_id`) is one of `sex` (all when empty);
- the patient's age in the period's last year (`(end - 1 day).year - year_of_birth`) is in `[age_min, age_max]`
  (either bound may be left out).

The file format (`eds project feasibility --cohort FILE`) is this model as JSON or YAML:

    {"name": "t2d-adults", "period": {"start": "2015-01-01", "end": "2027-01-01"},
     "criteria": [{"table": "condition_occurrence", "concepts": [201826], "descendants": true}],
     "age_min": 18, "age_max": 120, "sex": ["F", "M"]}
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from eds_network.core.errors import ConfigError

# table -> (concept column, event date column): the columns a criterion filters on
EVENT_COLUMNS: dict[str, tuple[str, str]] = {
    "condition_occurrence": ("condition_concept_id", "condition_start_date"),
    "drug_exposure": ("drug_concept_id", "drug_exposure_start_date"),
    "procedure_occurrence": ("procedure_concept_id", "procedure_date"),
    "measurement": ("measurement_concept_id", "measurement_date"),
    "observation": ("observation_concept_id", "observation_date"),
    "visit_occurrence": ("visit_concept_id", "visit_start_date"),
    "device_exposure": ("device_concept_id", "device_exposure_start_date"),
    "death": ("cause_concept_id", "death_date"),
}
SEX_CONCEPTS = {"M": 8507, "F": 8532}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Period(_Model):
    start: dt.date
    end: dt.date

    @model_validator(mode="after")
    def _ordered(self) -> Period:
        if self.end <= self.start:
            raise ValueError(f"period end {self.end} is not after its start {self.start}")
        return self


class Criterion(_Model):
    table: str
    concepts: tuple[int, ...] = Field(min_length=1)
    descendants: bool = True

    @model_validator(mode="after")
    def _known(self) -> Criterion:
        if self.table not in EVENT_COLUMNS:
            raise ValueError(f"criterion table {self.table!r}: one of {sorted(EVENT_COLUMNS)}")
        return self

    @property
    def concept_column(self) -> str:
        return EVENT_COLUMNS[self.table][0]

    @property
    def date_column(self) -> str:
        return EVENT_COLUMNS[self.table][1]


class Cohort(_Model):
    name: str = "cohort"
    period: Period
    criteria: tuple[Criterion, ...] = Field(min_length=1)
    age_min: int | None = Field(default=None, ge=0)
    age_max: int | None = Field(default=None, ge=0)
    sex: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _filters(self) -> Cohort:
        if self.age_min is not None and self.age_max is not None and self.age_max < self.age_min:
            raise ValueError(f"age_max {self.age_max} is below age_min {self.age_min}")
        bad = sorted(set(self.sex) - set(SEX_CONCEPTS))
        if bad:
            raise ValueError(f"sex {bad}: one of {sorted(SEX_CONCEPTS)}")
        return self

    @property
    def gender_concepts(self) -> tuple[int, ...]:
        return tuple(SEX_CONCEPTS[s] for s in self.sex)

    @property
    def birth_years(self) -> tuple[int, int]:
        """The inclusive range of years of birth the age filter admits."""
        y = (self.period.end - dt.timedelta(days=1)).year
        hi = 9999 if self.age_min is None else y - self.age_min
        lo = 0 if self.age_max is None else y - self.age_max
        return lo, hi

    def with_concepts(self, expanded: dict[int, tuple[int, ...]]) -> Cohort:
        """The same cohort with criterion i's concept set replaced by `expanded[i]` (descendants resolved)."""
        crit = tuple(
            c.model_copy(update={"concepts": expanded.get(i, c.concepts), "descendants": False})
            for i, c in enumerate(self.criteria)
        )
        return self.model_copy(update={"criteria": crit})

    def digest_doc(self) -> dict:
        return json.loads(self.model_dump_json())


class CohortError(ConfigError):
    """A cohort that does not validate: names the field(s), never echoes a value (a form's free text)."""


# a validation error's location -> the field of the feasibility form (and of the DAG's Params form)
_FORM_FIELD = {
    "period": "start/end",
    "period.start": "start",
    "period.end": "end",
    "criteria": "concepts",
    "criteria.0": "table",
    "criteria.0.table": "table",
    "criteria.0.concepts": "concepts",
    "criteria.0.descendants": "descendants",
}


def validate(doc: Mapping[str, Any]) -> Cohort:
    """`Cohort.model_validate(doc)`, refusing with a CohortError naming the invalid field(s) only."""
    from pydantic import ValidationError

    try:
        return Cohort.model_validate(doc)
    except ValidationError as exc:
        locs = set()
        for e in exc.errors():
            loc = ".".join(str(x) for x in e["loc"])
            if not loc:  # a check across fields of the cohort: the one its message is about
                loc = next((f for f in ("age_max", "sex") if e.get("msg", "").find(f) >= 0), "cohort")
            locs.add(loc)
        if any(x.startswith("criteria.") for x in locs):
            locs.discard("criteria")  # the list's own error follows from its item's
        names = {_FORM_FIELD.get(x, x) for x in locs}
        raise CohortError(f"feasibility cohort: invalid field(s) {', '.join(sorted(names))}") from None


def from_fields(fields: Mapping[str, Any]) -> Cohort:
    """A cohort of one criterion from a form's fields: name, table, concepts (ids separated by commas or spaces),
    descendants, start, end, age_min, age_max, sex (list)."""
    try:
        concepts = [int(c) for c in str(fields.get("concepts") or "").replace(",", " ").split()]
    except ValueError:
        raise CohortError("feasibility cohort: invalid field(s) concepts (integer concept ids)") from None
    doc = {
        "name": fields.get("name") or "cohort",
        "period": {"start": fields.get("start") or None, "end": fields.get("end") or None},
        "criteria": [
            {"table": fields.get("table"), "concepts": concepts, "descendants": bool(fields.get("descendants"))}
        ],
        "age_min": fields.get("age_min"),
        "age_max": fields.get("age_max"),
        "sex": list(fields.get("sex") or []),
    }
    return validate(doc)


def load_cohort(path: str | Path) -> Cohort:
    """A cohort from a JSON or YAML file; an invalid file fails naming the file and the problem."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        doc = yaml.safe_load(text)
    else:
        doc = json.loads(text)
    try:
        return Cohort.model_validate(doc)
    except ValueError as exc:
        raise ValueError(f"{p}: invalid cohort: {exc}") from None
