"""Quality checks derived from the OHDSI Data Quality Dashboard (DQD) catalogue, as GX 1.x suites.

The DQD catalogue (`shared/reference/ohdsi-dqd-5.4/*.csv`, Apache 2.0) lists, per OMOP CDM 5.4 table,
field and concept, which checks apply and the % of violating rows tolerated (threshold). This module
turns it into one Great Expectations 1.x `ExpectationSuite` JSON per table (`expectations/<table>.json`,
written by `quality.generate`, `make expectations`). This module holds what a check is (`Check`, severities,
scopes) and reads the committed suites (`load_suite`, `load_checks`). Every expectation carries in `meta`: check_id, check_name (DQD `checkName`),
check_level, table, column, category / subcategory / context (Kahn), threshold_pct (DQD threshold),
severity, scope, row_level, requires, description and `dqd` (the parameters our engine needs).
`kwargs.mostly` is always `1 - threshold_pct / 100`.

Mapping of DQD checks (FIELD and CONCEPT level) to GX expectation types
------------------------------------------------------------------------
=================================  =========================================================  ==========
DQD checkName                      GX expectation                                             scope
=================================  =========================================================  ==========
cdmField                           expect_column_to_exist                                     batch
isRequired                         expect_column_values_to_not_be_null                        batch
cdmDatatype (integer, bigint)      expect_column_values_to_be_in_type_list (integer dtypes)   batch
isPrimaryKey                       expect_column_values_to_be_unique                          batch
measureValueCompleteness           expect_column_values_to_not_be_null (mostly)               batch
standard/sourceConceptRecord...    expect_column_values_to_not_be_in_set [0]                  batch
plausibleValueLow / High (field)   expect_column_values_to_be_between (min or max only)       batch
plausibleTemporalAfter (same tbl)  expect_column_pair_values_a_to_be_greater_than_b (A>=B)    batch
plausibleStartBeforeEnd            expect_column_pair_values_a_to_be_greater_than_b (end>=st) batch
plausibleUnitConceptIds (concept)  expect_column_values_to_be_in_set + row_condition (1)      batch
plausibleValueLow / High (concept) expect_column_values_to_be_between + row_condition (1)     batch
isForeignKey                       expect_column_values_to_be_in_set {$PARAMETER: known ids}  cross_table
fkDomain / fkClass                 expect_column_values_to_be_in_set {$PARAMETER: ...}        cross_table
isStandardValidConcept             expect_column_values_to_be_in_set {$PARAMETER: ...}        cross_table
plausibleTemporalAfter (PERSON)    pair A>=B against derived column __person_birth_date       cross_table
plausibleAfterBirth                pair A>=B against derived column __person_birth_date       cross_table
plausibleDuringLife/BeforeDeath    pair A>=B, derived column __death_date_plus_grace (60 d)   cross_table
plausibleGender (concept)          in_set on derived column __person_gender_concept_id        cross_table
=================================  =========================================================  ==========

(1) GX 1.x structured row conditions (`{"type": "and", "conditions": [...]}`), not the deprecated strings.

`batch` expectations are evaluable by GX on one batch DataFrame. `cross_table` ones need data from
another table (PERSON, DEATH, the referenced table's ids, the CONCEPT vocabulary): they are kept in the
suite as valid GX configurations (value sets given as `$PARAMETER`, other tables' data as derived
`__…` columns) so the suite is a complete, portable definition, but `eds_network.quality` always
evaluates them with its own pyarrow code, from lookups passed by the caller. Concept foreign keys and
concept conformance checks carry `requires: ["concept"]` and `needs_vocabulary: true`: they are only
evaluated where a CONCEPT vocabulary is available (otherwise reported "not applicable").

Dynamic bounds (DQD `DATEADD(dd,1,GETDATE())`, `YEAR(GETDATE())+1`) are written as GX suite parameters
`{"$PARAMETER": "tomorrow"}` / `{"$PARAMETER": "next_year"}` (see `suite_parameters()`); date bounds are
ISO datetimes (`1950-01-01T00:00:00`).

Severity rule (ours, not DQD's)
-------------------------------
- **fatal**: `isPrimaryKey`; `cdmDatatype`; `isRequired` on the primary key or on `person_id`;
  `isForeignKey` on `person_id`. Fatal checks that can be pinned to rows (`row_level: true`: null
  key / person_id, duplicated primary key after its first occurrence, unknown person) quarantine the
  offending rows; `cdmDatatype` (a column-level property) can only fail the whole batch.
- **convention**: every other Conformance check (isRequired on other fields, other isForeignKey,
  fkDomain, fkClass, isStandardValidConcept, cdmField), and the Completeness checks DQD itself
  rates `convention` (standard/sourceConceptRecordCompleteness).
- **characterization**: every Plausibility check, and measureValueCompleteness (DQD's own rating).

DQD checks not turned into expectations (listed in each suite's `meta.not_implemented`):
table-level cdmTable / measurePersonCompleteness / measureConditionEraCompleteness /
measureObservationPeriodOverlap (whole-database properties, meaningless on an incremental batch: run
DQD on the warehouse), sourceValueCompleteness (a ratio of *distinct* source values, whole-database
too), withinVisitDates (needs VISIT_OCCURRENCE dates keyed by visit), plausibleGenderUseDescendants
(needs CONCEPT_ANCESTOR).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eds_network.core import omop
from eds_network.core.config import REPO_ROOT

DEFAULT_DQD_DIR = REPO_ROOT.parent / "shared" / "reference" / "ohdsi-dqd-5.4"
DEFAULT_SUITES_DIR = REPO_ROOT / "expectations"
SUITE_PREFIX = "omop54."

FATAL, CONVENTION, CHARACTERIZATION = "fatal", "convention", "characterization"
SEVERITIES = (FATAL, CONVENTION, CHARACTERIZATION)
BATCH, CROSS_TABLE = "batch", "cross_table"

# Derived columns a cross-table expectation refers to (filled from lookups by eds_network.quality).
BIRTH_DATE = "__person_birth_date"
DEATH_DATE_PLUS_GRACE = "__death_date_plus_grace"
PERSON_GENDER = "__person_gender_concept_id"
DEATH_GRACE_DAYS = 60  # DQD plausibleDuringLife / plausibleBeforeDeath tolerate 60 days after death

GENDER_CONCEPTS = {"Male": 8507, "Female": 8532}
INTEGER_DTYPES = ["Int64Dtype", "Int32Dtype", "int64", "int32"]  # pandas dtypes GX accepts for integers

# Evaluation order of field-level checks inside a column, then concept-level ones (Check_Descriptions order).
_FIELD_CHECKS = (
    "cdmField",
    "isRequired",
    "cdmDatatype",
    "isPrimaryKey",
    "isForeignKey",
    "fkDomain",
    "fkClass",
    "isStandardValidConcept",
    "measureValueCompleteness",
    "standardConceptRecordCompleteness",
    "sourceConceptRecordCompleteness",
    "plausibleValueLow",
    "plausibleValueHigh",
    "plausibleTemporalAfter",
    "plausibleDuringLife",
    "plausibleStartBeforeEnd",
    "plausibleAfterBirth",
    "plausibleBeforeDeath",
)
_CONCEPT_CHECKS = ("plausibleGender", "plausibleUnitConceptIds", "plausibleValueLow", "plausibleValueHigh")

NOT_IMPLEMENTED: dict[str, str] = {
    "cdmTable": "table presence is checked when the source is read (SourceError), not per batch",
    "measurePersonCompleteness": "whole-database measure (persons without a record): run DQD on the warehouse",
    "measureConditionEraCompleteness": "whole-database measure on derived eras: run DQD on the warehouse",
    "measureObservationPeriodOverlap": "needs every period of a person, an incremental batch has only some",
    "sourceValueCompleteness": "ratio of distinct source values over the whole database, biased on a batch",
    "withinVisitDates": "needs VISIT_OCCURRENCE start/end dates keyed by visit_occurrence_id",
    "plausibleGenderUseDescendants": "needs the CONCEPT_ANCESTOR hierarchy",
}


@dataclass(frozen=True)
class CheckType:
    """One row of OMOP_CDMv5.4_Check_Descriptions.csv."""

    name: str
    level: str  # TABLE | FIELD | CONCEPT
    description: str
    context: str  # verification | validation
    category: str  # Conformance | Completeness | Plausibility
    subcategory: str  # Relational | Value | Computational | Atemporal | Temporal | ''
    dqd_severity: str  # DQD's own rating: fatal | convention | characterization


@dataclass(frozen=True, eq=False)
class Check:
    """One DQD check on one table column (optionally one concept / unit), and its GX expectation."""

    check_name: str
    level: str  # FIELD | CONCEPT
    table: str
    column: str
    category: str
    subcategory: str
    context: str
    threshold_pct: float
    severity: str
    scope: str  # batch | cross_table
    row_level: bool  # a fatal check whose violating rows are quarantined one by one
    expectation_type: str
    kwargs: Mapping[str, Any]
    params: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    concept_id: int | None = None
    unit_concept_id: int | None = None
    description: str = ""

    @property
    def check_id(self) -> str:
        """`checkName:table.column[:conceptId[:unitConceptId]]`: also the key of a quality override."""
        key = f"{self.check_name}:{self.table}.{self.column}"
        if self.concept_id is not None:
            key += f":{self.concept_id}"
            if self.unit_concept_id is not None:
                key += f":{self.unit_concept_id}"
        return key

    @property
    def mostly(self) -> float:
        return mostly_for(self.threshold_pct)

    @property
    def needs_vocabulary(self) -> bool:
        return "concept" in self.requires

    def expectation(self) -> dict[str, Any]:
        """The expectation as GX 1.x JSON (`type`, `kwargs`, `meta`), without a GX id."""
        meta: dict[str, Any] = {
            "check_id": self.check_id,
            "check_name": self.check_name,
            "check_level": self.level,
            "table": self.table,
            "column": self.column,
            "category": self.category,
            "subcategory": self.subcategory,
            "context": self.context,
            "threshold_pct": self.threshold_pct,
            "severity": self.severity,
            "scope": self.scope,
            "row_level": self.row_level,
            "requires": list(self.requires),
            "needs_vocabulary": self.needs_vocabulary,
            "description": self.description,
            "dqd": dict(self.params),
        }
        if self.concept_id is not None:
            meta["concept_id"] = self.concept_id
        if self.unit_concept_id is not None:
            meta["unit_concept_id"] = self.unit_concept_id
        return {"type": self.expectation_type, "kwargs": dict(self.kwargs), "meta": meta}

    @classmethod
    def from_expectation(cls, exp: Mapping[str, Any]) -> Check:
        m = exp["meta"]
        return cls(
            check_name=m["check_name"],
            level=m["check_level"],
            table=m["table"],
            column=m["column"],
            category=m["category"],
            subcategory=m["subcategory"],
            context=m["context"],
            threshold_pct=float(m["threshold_pct"]),
            severity=m["severity"],
            scope=m["scope"],
            row_level=bool(m["row_level"]),
            expectation_type=exp["type"],
            kwargs=dict(exp["kwargs"]),
            params=dict(m.get("dqd", {})),
            requires=tuple(m.get("requires", ())),
            concept_id=m.get("concept_id"),
            unit_concept_id=m.get("unit_concept_id"),
            description=m.get("description", ""),
        )


def mostly_for(threshold_pct: float) -> float:
    """GX `mostly` for a DQD threshold (% of violating rows tolerated)."""
    return round(min(1.0, max(0.0, 1.0 - threshold_pct / 100.0)), 10)


def severity_for(check_name: str, table: str, column: str, category: str, dqd_severity: str) -> str:
    """The severity rule documented in the module docstring."""
    pk = omop.table(table).primary_key if table in omop.schema() else None
    if check_name in ("isPrimaryKey", "cdmDatatype"):
        return FATAL
    if check_name == "isRequired" and column in (pk, "person_id"):
        return FATAL
    if check_name == "isForeignKey" and column == "person_id":
        return FATAL
    if category == "Conformance":
        return CONVENTION
    if category == "Plausibility":
        return CHARACTERIZATION
    return dqd_severity if dqd_severity in (CONVENTION, CHARACTERIZATION) else CHARACTERIZATION


def suite_parameters(today: Any) -> dict[str, Any]:
    """Values of the `$PARAMETER`s used by the suites, for a run on `today` (a `datetime.date`)."""
    import datetime as dt

    tomorrow = today + dt.timedelta(days=1)
    return {"tomorrow": f"{tomorrow.isoformat()}T00:00:00", "next_year": today.year + 1}


# --------------------------------------------------------------------------------------------------
# Catalogue reading


def load_suite(table: str, suites_dir: Path | str | None = None) -> dict[str, Any]:
    path = Path(suites_dir or DEFAULT_SUITES_DIR) / f"{table.lower()}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no expectation suite for table {table!r} (run `python -m eds_network.quality.dqd generate`)"
        ) from None


def load_checks(table: str, suites_dir: Path | str | None = None) -> list[Check]:
    return [Check.from_expectation(e) for e in load_suite(table, suites_dir)["expectations"]]
