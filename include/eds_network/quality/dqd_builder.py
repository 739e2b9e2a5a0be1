"""One table's checks built from the rows of the DQD catalogue: one method per DQD column family, each adding
the `Check`s (GX expectation type, kwargs, DQD meta) its checks map to (the mapping: `quality.dqd`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eds_network.quality.dqd import (
    BATCH,
    BIRTH_DATE,
    CROSS_TABLE,
    DEATH_DATE_PLUS_GRACE,
    DEATH_GRACE_DAYS,
    FATAL,
    GENDER_CONCEPTS,
    INTEGER_DTYPES,
    PERSON_GENDER,
    Check,
    CheckType,
    mostly_for,
    severity_for,
)
from eds_network.quality.dqd_catalogue import (
    _all,
    _bound,
    _describe,
    _eq,
    _not_null,
    _number,
    _threshold,
)


class SuiteBuilder:
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

    def field(self, row: Mapping[str, str]) -> None:
        col = row["cdmFieldName"].lower()
        yes = lambda k: row.get(k, "").lower() == "yes"  # noqa: E731
        thr = lambda k: _threshold(row.get(f"{k}Threshold", ""))  # noqa: E731

        for part in (
            self._conformance,
            self._relational,
            self._completeness,
            self._values,
            self._temporal_after,
            self._temporal,
        ):
            part(row, col, yes, thr)

    def _conformance(self, row: Mapping[str, str], col: str, yes, thr) -> None:
        """cdmField, isRequired, cdmDatatype, isPrimaryKey."""
        dtype = row["cdmDatatype"].lower()
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

    def _relational(self, row: Mapping[str, str], col: str, yes, thr) -> None:
        """isForeignKey (with fkDomain, fkClass), isStandardValidConcept."""
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

    def _completeness(self, row: Mapping[str, str], col: str, yes, thr) -> None:
        """measureValueCompleteness, standard/sourceConceptRecordCompleteness."""
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

    def _values(self, row: Mapping[str, str], col: str, yes, thr) -> None:
        """plausibleValueLow / High on the field."""
        dtype = row["cdmDatatype"].lower()
        kind = "date" if dtype == "date" else "datetime" if dtype == "datetime" else dtype
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

    def _temporal_after(self, row: Mapping[str, str], col: str, yes, thr) -> None:
        """plausibleTemporalAfter, against a field of the same table or the person's birth."""
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

    def _temporal(self, row: Mapping[str, str], col: str, yes, thr) -> None:
        """plausibleDuringLife / BeforeDeath, plausibleStartBeforeEnd, plausibleAfterBirth."""
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
