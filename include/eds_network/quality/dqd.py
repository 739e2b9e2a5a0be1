"""Quality checks derived from the OHDSI Data Quality Dashboard (DQD) catalogue, as GX 1.x suites.

The DQD catalogue (`shared/reference/ohdsi-dqd-5.4/*.csv`, Apache 2.0) lists, per OMOP CDM 5.4 table,
field and concept, which checks apply and the % of violating rows tolerated (threshold). This module
turns it into one Great Expectations 1.x `ExpectationSuite` JSON per table (`expectations/<table>.json`)::

    python -m eds_network.quality.dqd generate [--dqd DIR] [--out expectations/] [--tables person measurement ...]
    python -m eds_network.quality.dqd generate --check      # exit 1 if the committed suites are stale

Generation is deterministic (sorted expectations, sorted JSON keys, no GX ids, no dates): regenerating
is byte-identical. Every expectation carries in `meta`: check_id, check_name (DQD `checkName`),
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

import argparse
import csv
import difflib
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
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


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return [{k.strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(f)]


@cache
def _catalogue(dqd_dir: Path) -> tuple[dict[str, CheckType], list[dict[str, str]], list[dict[str, str]]]:
    missing = [
        n
        for n in (
            "OMOP_CDMv5.4_Check_Descriptions.csv",
            "OMOP_CDMv5.4_Field_Level.csv",
            "OMOP_CDMv5.4_Concept_Level.csv",
            "OMOP_CDMv5.4_Table_Level.csv",
        )
        if not (dqd_dir / n).is_file()
    ]
    if missing:
        raise FileNotFoundError(f"{dqd_dir}: DQD catalogue file(s) missing: {', '.join(missing)}")
    types = {}
    for row in _read_csv(dqd_dir / "OMOP_CDMv5.4_Check_Descriptions.csv"):
        types[row["checkName"]] = CheckType(
            name=row["checkName"],
            level=row["checkLevel"].upper(),
            description=" ".join(row["checkDescription"].split()),
            context=row["kahnContext"].lower(),
            category=row["kahnCategory"],
            subcategory=row["kahnSubcategory"],
            dqd_severity=row["severity"].lower(),
        )
    fields = _read_csv(dqd_dir / "OMOP_CDMv5.4_Field_Level.csv")
    concepts = _read_csv(dqd_dir / "OMOP_CDMv5.4_Concept_Level.csv")
    return types, fields, concepts


def load_check_types(dqd_dir: Path | str = DEFAULT_DQD_DIR) -> dict[str, CheckType]:
    return _catalogue(Path(dqd_dir).resolve())[0]


def _threshold(raw: str) -> float:
    return float(raw) if raw else 0.0  # DQD's default threshold is 0


def _number(raw: str) -> int | float:
    value = float(raw)
    return int(value) if value.is_integer() and "." not in raw else value


def _bound(raw: str, datatype: str) -> Any:
    """A DQD plausible value bound, as a JSON-able GX bound (literal or `$PARAMETER`)."""
    raw = raw.strip()
    if raw.upper().replace(" ", "") == "DATEADD(DD,1,GETDATE())":
        return {"$PARAMETER": "tomorrow"}
    if raw.upper().replace(" ", "") == "YEAR(GETDATE())+1":
        return {"$PARAMETER": "next_year"}
    m = re.fullmatch(r"'?(\d{4})(\d{2})(\d{2})'?", raw)
    if m and datatype in ("date", "datetime"):
        return f"{m[1]}-{m[2]}-{m[3]}T00:00:00"
    return _number(raw.strip("'"))


def _eq(column: str, value: int) -> dict[str, Any]:
    """A GX 1.x row condition (`Column(column) == value`) as JSON."""
    return {"type": "comparison", "column": {"name": column}, "operator": "==", "parameter": value}


def _not_null(column: str) -> dict[str, Any]:
    return {"type": "nullity", "column": {"name": column}, "is_null": False}


def _all(*conditions: dict[str, Any]) -> dict[str, Any]:
    return conditions[0] if len(conditions) == 1 else {"type": "and", "conditions": list(conditions)}


def _describe(template: str, values: Mapping[str, Any]) -> str:
    def sub(m: re.Match[str]) -> str:
        v = values.get(m[1])
        return str(v) if v not in (None, "") else m[0]

    return re.sub(r"@(\w+)", sub, template)


# --------------------------------------------------------------------------------------------------
# Building checks


class _Builder:
    def __init__(self, types: Mapping[str, CheckType], table: str):
        self.types = types
        self.table = table
        self.checks: list[Check] = []
        self.seen: set[str] = set()

    def add(
        self,
        name: str,
        column: str,
        threshold: float,
        expectation_type: str,
        kwargs: dict[str, Any],
        *,
        scope: str = BATCH,
        params: Mapping[str, Any] | None = None,
        requires: Sequence[str] = (),
        concept_id: int | None = None,
        unit_concept_id: int | None = None,
        describe: Mapping[str, Any] | None = None,
        description: str | None = None,
    ) -> None:
        ct = self.types[name]
        severity = severity_for(name, self.table, column, ct.category, ct.dqd_severity)
        row_level = severity == FATAL and name in ("isRequired", "isPrimaryKey", "isForeignKey")
        kwargs = dict(kwargs)
        if expectation_type not in ("expect_column_to_exist", "expect_column_values_to_be_in_type_list"):
            kwargs["mostly"] = mostly_for(threshold)
        values = {"cdmTableName": self.table.upper(), "cdmFieldName": column.upper(), **(describe or {})}
        check = Check(
            check_name=name,
            level="CONCEPT" if concept_id is not None else ct.level,
            table=self.table,
            column=column,
            category=ct.category,
            subcategory=ct.subcategory,
            context=ct.context,
            threshold_pct=threshold,
            severity=severity,
            scope=scope,
            row_level=row_level,
            expectation_type=expectation_type,
            kwargs=kwargs,
            params=dict(params or {}),
            requires=tuple(requires),
            concept_id=concept_id,
            unit_concept_id=unit_concept_id,
            description=description or _describe(ct.description, values),
        )
        if check.check_id in self.seen:  # the catalogue repeats a few concept rows: first one wins
            return
        self.seen.add(check.check_id)
        self.checks.append(check)

    def field(self, row: Mapping[str, str]) -> None:  # noqa: C901 - one branch per DQD column family
        col = row["cdmFieldName"].lower()
        dtype = row["cdmDatatype"].lower()
        kind = "date" if dtype == "date" else "datetime" if dtype == "datetime" else dtype
        yes = lambda k: row.get(k, "").lower() == "yes"  # noqa: E731
        thr = lambda k: _threshold(row.get(f"{k}Threshold", ""))  # noqa: E731

        self.add("cdmField", col, 0.0, "expect_column_to_exist", {"column": col})
        if yes("isRequired"):
            self.add("isRequired", col, thr("isRequired"), "expect_column_values_to_not_be_null", {"column": col})
        if dtype in ("integer", "bigint"):
            self.add(
                "cdmDatatype",
                col,
                thr("cdmDatatype"),
                "expect_column_values_to_be_in_type_list",
                {"column": col, "type_list": INTEGER_DTYPES},
                params={"datatype": dtype},
                describe={},
            )
        if yes("isPrimaryKey"):
            self.add("isPrimaryKey", col, thr("isPrimaryKey"), "expect_column_values_to_be_unique", {"column": col})
        if yes("isForeignKey"):
            fk_table, fk_field = row["fkTableName"].lower(), row["fkFieldName"].lower()
            self.add(
                "isForeignKey",
                col,
                thr("isForeignKey"),
                "expect_column_values_to_be_in_set",
                {"column": col, "value_set": {"$PARAMETER": f"known_ids__{fk_table}"}},
                scope=CROSS_TABLE,
                params={"fk_table": fk_table, "fk_field": fk_field},
                requires=(fk_table,),
                describe={"fkTableName": fk_table.upper()},
            )
            if row.get("fkDomain"):
                domain = row["fkDomain"]
                self.add(
                    "fkDomain",
                    col,
                    thr("fkDomain"),
                    "expect_column_values_to_be_in_set",
                    {"column": col, "value_set": {"$PARAMETER": f"concept_ids__domain__{domain}"}},
                    scope=CROSS_TABLE,
                    params={"fk_domain": domain},
                    requires=("concept",),
                    describe={"fkDomain": domain},
                )
            if row.get("fkClass"):
                klass = row["fkClass"]
                self.add(
                    "fkClass",
                    col,
                    thr("fkClass"),
                    "expect_column_values_to_be_in_set",
                    {"column": col, "value_set": {"$PARAMETER": f"concept_ids__class__{klass}"}},
                    scope=CROSS_TABLE,
                    params={"fk_class": klass},
                    requires=("concept",),
                    describe={"fkClass": klass},
                )
        if yes("isStandardValidConcept"):
            self.add(
                "isStandardValidConcept",
                col,
                thr("isStandardValidConcept"),
                "expect_column_values_to_be_in_set",
                {"column": col, "value_set": {"$PARAMETER": "concept_ids__standard_valid"}},
                scope=CROSS_TABLE,
                params={"zero_allowed": True},
                requires=("concept",),
            )
        if yes("measureValueCompleteness"):
            self.add(
                "measureValueCompleteness",
                col,
                thr("measureValueCompleteness"),
                "expect_column_values_to_not_be_null",
                {"column": col},
            )
        for name in ("standardConceptRecordCompleteness", "sourceConceptRecordCompleteness"):
            if yes(name):
                self.add(
                    name, col, thr(name), "expect_column_values_to_not_be_in_set", {"column": col, "value_set": [0]}
                )
        for name, side in (("plausibleValueLow", "min_value"), ("plausibleValueHigh", "max_value")):
            if row.get(name):
                bound = _bound(row[name], kind)
                self.add(
                    name,
                    col,
                    thr(name),
                    "expect_column_values_to_be_between",
                    {"column": col, side: bound},
                    params={"bound": bound, "dqd_value": row[name]},
                    describe={name: row[name]},
                )
        if yes("plausibleTemporalAfter"):
            after_table = row["plausibleTemporalAfterTableName"].lower()
            after_field = row["plausibleTemporalAfterFieldName"].lower()
            desc = {
                "plausibleTemporalAfterTableName": after_table.upper(),
                "plausibleTemporalAfterFieldName": after_field.upper(),
            }
            params = {"after_table": after_table, "after_field": after_field}
            if after_table == self.table:
                self.add(
                    "plausibleTemporalAfter",
                    col,
                    thr("plausibleTemporalAfter"),
                    "expect_column_pair_values_a_to_be_greater_than_b",
                    {
                        "column_A": col,
                        "column_B": after_field,
                        "or_equal": True,
                        "ignore_row_if": "either_value_is_missing",
                    },
                    params=params,
                    describe=desc,
                )
            elif after_table == "person":
                self.add(
                    "plausibleTemporalAfter",
                    col,
                    thr("plausibleTemporalAfter"),
                    "expect_column_pair_values_a_to_be_greater_than_b",
                    {
                        "column_A": col,
                        "column_B": BIRTH_DATE,
                        "or_equal": True,
                        "ignore_row_if": "either_value_is_missing",
                    },
                    scope=CROSS_TABLE,
                    params={**params, "derived": BIRTH_DATE},
                    requires=("person",),
                    describe=desc,
                )
        for name in ("plausibleDuringLife", "plausibleBeforeDeath"):
            if yes(name):
                self.add(
                    name,
                    col,
                    thr(name),
                    "expect_column_pair_values_a_to_be_greater_than_b",
                    {
                        "column_A": DEATH_DATE_PLUS_GRACE,
                        "column_B": col,
                        "or_equal": True,
                        "ignore_row_if": "either_value_is_missing",
                    },
                    scope=CROSS_TABLE,
                    params={"grace_days": DEATH_GRACE_DAYS, "derived": DEATH_DATE_PLUS_GRACE},
                    requires=("death",),
                )
        if yes("plausibleStartBeforeEnd"):
            end = row["plausibleStartBeforeEndFieldName"].lower()
            self.add(
                "plausibleStartBeforeEnd",
                col,
                thr("plausibleStartBeforeEnd"),
                "expect_column_pair_values_a_to_be_greater_than_b",
                {"column_A": end, "column_B": col, "or_equal": True, "ignore_row_if": "either_value_is_missing"},
                params={"end_field": end},
                describe={"plausibleStartBeforeEndFieldName": end.upper()},
            )
        if yes("plausibleAfterBirth"):
            self.add(
                "plausibleAfterBirth",
                col,
                thr("plausibleAfterBirth"),
                "expect_column_pair_values_a_to_be_greater_than_b",
                {"column_A": col, "column_B": BIRTH_DATE, "or_equal": True, "ignore_row_if": "either_value_is_missing"},
                scope=CROSS_TABLE,
                params={"derived": BIRTH_DATE},
                requires=("person",),
            )

    def concept(self, row: Mapping[str, str]) -> None:
        col = row["cdmFieldName"].lower()
        try:
            concept_id = int(row["conceptId"])
        except ValueError:
            return  # lists of concepts only occur for plausibleGenderUseDescendants (not implemented)
        desc = {"conceptId": concept_id, "conceptName": row.get("conceptName", "")}
        cond = _eq(col, concept_id)
        if row.get("plausibleGender") in GENDER_CONCEPTS:
            gender = row["plausibleGender"]
            self.add(
                "plausibleGender",
                col,
                _threshold(row.get("plausibleGenderThreshold", "")),
                "expect_column_values_to_be_in_set",
                {
                    "column": PERSON_GENDER,
                    "value_set": [GENDER_CONCEPTS[gender]],
                    "row_condition": cond,
                },
                scope=CROSS_TABLE,
                params={"gender": gender, "gender_concept_id": GENDER_CONCEPTS[gender], "derived": PERSON_GENDER},
                requires=("person",),
                concept_id=concept_id,
                describe={**desc, "plausibleGender": gender},
            )
        if row.get("plausibleUnitConceptIds"):
            units = sorted({int(u) for u in row["plausibleUnitConceptIds"].split(",") if u.strip()})
            self.add(
                "plausibleUnitConceptIds",
                col,
                _threshold(row.get("plausibleUnitConceptIdsThreshold", "")),
                "expect_column_values_to_be_in_set",
                {
                    "column": "unit_concept_id",
                    "value_set": units,
                    "row_condition": _all(cond, _not_null("value_as_number")),
                },
                params={"unit_concept_ids": units, "value_column": "value_as_number", "unit_column": "unit_concept_id"},
                concept_id=concept_id,
                describe={**desc, "plausibleUnitConceptIds": ",".join(map(str, units))},
            )
        unit = int(row["unitConceptId"]) if row.get("unitConceptId") else None
        for name, side in (("plausibleValueLow", "min_value"), ("plausibleValueHigh", "max_value")):
            if row.get(name):
                bound = _number(row[name])
                conds = [cond] + ([_eq("unit_concept_id", unit)] if unit is not None else [])
                self.add(
                    name,
                    col,
                    _threshold(row.get(f"{name}Threshold", "")),
                    "expect_column_values_to_be_between",
                    {
                        "column": "value_as_number",
                        side: bound,
                        "row_condition": _all(*conds, _not_null("value_as_number")),
                    },
                    params={"bound": bound, "value_column": "value_as_number", "unit_column": "unit_concept_id"},
                    concept_id=concept_id,
                    unit_concept_id=unit,
                    description=(
                        f"The number and percent of records for CONCEPT_ID {concept_id} ({desc['conceptName']})"
                        + (
                            f" with UNIT_CONCEPT_ID {unit} ({row.get('unitConceptName', '')})"
                            if unit is not None
                            else ""
                        )
                        + f" whose VALUE_AS_NUMBER is {'less' if side == 'min_value' else 'greater'} than {bound}."
                    ),
                )


def _sort_key(order: Mapping[str, int]):
    def key(c: Check) -> tuple:
        names = _FIELD_CHECKS if c.level == "FIELD" else _CONCEPT_CHECKS
        return (
            c.level != "FIELD",
            order.get(c.column, len(order)),
            c.column,
            names.index(c.check_name) if c.check_name in names else len(names),
            c.check_name,
            c.concept_id if c.concept_id is not None else -1,
            c.unit_concept_id if c.unit_concept_id is not None else -1,
        )

    return key


def build_checks(
    dqd_dir: Path | str = DEFAULT_DQD_DIR, tables: Iterable[str] = omop.DEFAULT_TABLES
) -> dict[str, list[Check]]:
    """Per OMOP table (lower case), the DQD checks of the catalogue in `dqd_dir`, deterministically sorted."""
    types, fields, concepts = _catalogue(Path(dqd_dir).resolve())
    out: dict[str, list[Check]] = {}
    for table in tables:
        table = table.lower()
        b = _Builder(types, table)
        for row in fields:
            if row["cdmTableName"].lower() == table:
                b.field(row)
        for row in concepts:
            if row["cdmTableName"].lower() == table:
                b.concept(row)
        if not b.checks:
            raise KeyError(f"table {table!r} has no field in the DQD catalogue {dqd_dir}")
        order = {c: i for i, c in enumerate(omop.table(table).column_names)} if table in omop.schema() else {}
        out[table] = sorted(b.checks, key=_sort_key(order))
    return out


def _not_implemented(dqd_dir: Path, table: str) -> list[dict[str, str]]:
    _, fields, concepts = _catalogue(dqd_dir)
    names: set[str] = set()
    for row in fields:
        if row["cdmTableName"].lower() == table:
            names.update(n for n in ("sourceValueCompleteness", "withinVisitDates") if row.get(n, "").lower() == "yes")
    for row in concepts:
        if row["cdmTableName"].lower() == table and row.get("plausibleGenderUseDescendants"):
            names.add("plausibleGenderUseDescendants")
    tl = _read_csv(dqd_dir / "OMOP_CDMv5.4_Table_Level.csv")
    for row in tl:
        if row["cdmTableName"].lower() == table:
            names.add("cdmTable")
            names.update(
                n
                for n in (
                    "measurePersonCompleteness",
                    "measureConditionEraCompleteness",
                    "measureObservationPeriodOverlap",
                )
                if row.get(n, "").lower() == "yes"
            )
    return [{"check_name": n, "reason": NOT_IMPLEMENTED[n]} for n in sorted(names)]


def suite_dict(table: str, checks: Sequence[Check], dqd_dir: Path | str = DEFAULT_DQD_DIR) -> dict[str, Any]:
    """A GX 1.x ExpectationSuite as JSON (loadable with `gx.ExpectationSuite(**suite)`)."""
    return {
        "name": f"{SUITE_PREFIX}{table}",
        "expectations": [c.expectation() for c in checks],
        "meta": {
            "generated_by": "python -m eds_network.quality.dqd generate",
            "source": "OHDSI DataQualityDashboard OMOP_CDMv5.4 check catalogue (Apache License 2.0)",
            "table": table,
            "counts": {
                "expectations": len(checks),
                BATCH: sum(c.scope == BATCH for c in checks),
                CROSS_TABLE: sum(c.scope == CROSS_TABLE for c in checks),
                **{s: sum(c.severity == s for c in checks) for s in SEVERITIES},
            },
            "suite_parameters": ["tomorrow", "next_year"],
            "not_implemented": _not_implemented(Path(dqd_dir).resolve(), table),
        },
        "notes": None,
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_suites(dqd_dir: Path | str = DEFAULT_DQD_DIR, tables: Iterable[str] = omop.DEFAULT_TABLES) -> dict[str, str]:
    """File name -> JSON text of every suite."""
    checks = build_checks(dqd_dir, tables)
    return {f"{t}.json": dumps(suite_dict(t, cs, dqd_dir)) for t, cs in checks.items()}


def write_suites(
    out_dir: Path | str = DEFAULT_SUITES_DIR,
    dqd_dir: Path | str = DEFAULT_DQD_DIR,
    tables: Iterable[str] = omop.DEFAULT_TABLES,
) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_suites(dqd_dir, tables).items():
        path = out / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eds_network.quality.dqd", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write one GX expectation suite JSON per OMOP table")
    gen.add_argument("--dqd", type=Path, default=DEFAULT_DQD_DIR, help="DQD catalogue folder")
    gen.add_argument("--out", type=Path, default=DEFAULT_SUITES_DIR, help="output folder (expectations/)")
    gen.add_argument("--tables", nargs="+", default=list(omop.DEFAULT_TABLES), metavar="TABLE")
    gen.add_argument("--check", action="store_true", help="write nothing; exit 1 if a suite differs")
    args = parser.parse_args(argv)

    if args.check:
        stale = []
        for name, text in render_suites(args.dqd, args.tables).items():
            path = args.out / name
            current = path.read_text(encoding="utf-8") if path.exists() else ""
            if current != text:
                stale.append(name)
                sys.stdout.writelines(
                    list(difflib.unified_diff(current.splitlines(True), text.splitlines(True), str(path), name))[:40]
                )
        if stale:
            print(
                f"stale suites: {', '.join(stale)} (run `python -m eds_network.quality.dqd generate`)", file=sys.stderr
            )
            return 1
        print(f"{len(args.tables)} suites up to date in {args.out}")
        return 0
    paths = write_suites(args.out, args.dqd, args.tables)
    for p in paths:
        n = len(json.loads(p.read_text(encoding="utf-8"))["expectations"])
        print(f"{p}: {n} expectations")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
