"""OMOP CDM 5.4 schema, read from the OHDSI DQD field-level catalogue.

`data/omop54_fields.csv` is a column subset of DQD's `OMOP_CDMv5.4_Field_Level.csv`
(Apache License 2.0, see `data/LICENSE.ohdsi-dqd`); regenerate it with `make schema`.
Every step that needs column names, types, required flags or keys asks this module.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

import pyarrow as pa

# Tables a local base publishes by default: the clinical core of OMOP, in load order
# (a table's foreign keys point to tables earlier in the list).
DEFAULT_TABLES: tuple[str, ...] = (
    "person",
    "observation_period",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "measurement",
    "observation",
    "death",
)

# Clinical tables a base may put in scope (NOTE / NOTE_NLP carry free text: excluded by design).
CLINICAL_TABLES: frozenset[str] = frozenset(
    DEFAULT_TABLES
    + (
        "visit_detail",
        "device_exposure",
        "specimen",
        "payer_plan_period",
        "cost",
        "drug_era",
        "dose_era",
        "condition_era",
        "episode",
        "episode_event",
        "fact_relationship",
    )
)

# Change-tracking column every source table carries (maintained by the hospital EDS).
CHANGE_COLUMN = "_updated_at"


@dataclass(frozen=True)
class Column:
    name: str
    datatype: str  # as written by DQD: integer, bigint, float, date, datetime, varchar(n)
    required: bool
    primary_key: bool
    fk_table: str | None
    fk_field: str | None

    @property
    def sql_type(self) -> str:
        """PostgreSQL type. Integers are widened to bigint: namespaced ids need 63 bits."""
        d = self.datatype.lower()
        if d in ("integer", "bigint"):
            return "bigint"
        if d == "float":
            return "double precision"
        if d == "date":
            return "date"
        if d == "datetime":
            return "timestamp"
        if d == "varchar(max)":
            return "text"
        if d.startswith("varchar("):
            return d
        raise ValueError(f"unknown DQD datatype {self.datatype!r} for column {self.name}")

    @property
    def arrow_type(self) -> pa.DataType:
        d = self.datatype.lower()
        if d in ("integer", "bigint"):
            return pa.int64()
        if d == "float":
            return pa.float64()
        if d == "date":
            return pa.date32()
        if d == "datetime":
            return pa.timestamp("us")
        return pa.string()

    @property
    def is_id(self) -> bool:
        """A row identifier or a reference to one (not a concept id)."""
        return (
            self.datatype.lower() in ("integer", "bigint")
            and self.name.endswith("_id")
            and not (self.name.endswith("concept_id"))
        )


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def primary_key(self) -> str | None:
        for c in self.columns:
            if c.primary_key:
                return c.name
        return None

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def has(self, name: str) -> bool:
        return any(c.name == name for c in self.columns)

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow_type, nullable=not c.required) for c in self.columns])


@cache
def schema() -> dict[str, Table]:
    """All OMOP 5.4 tables keyed by lower-case name, columns in DQD order (person_id first-ish)."""
    text = resources.files("eds_network.core").joinpath("data/omop54_fields.csv").read_text(encoding="utf-8")
    cols: dict[str, list[Column]] = {}
    for row in csv.DictReader(text.splitlines()):
        t = row["cdmTableName"].lower()
        cols.setdefault(t, []).append(
            Column(
                name=row["cdmFieldName"].lower(),
                datatype=row["cdmDatatype"],
                required=row["isRequired"] == "Yes",
                primary_key=row["isPrimaryKey"] == "Yes",
                fk_table=row["fkTableName"].lower() or None,
                fk_field=row["fkFieldName"].lower() or None,
            )
        )
    out = {}
    for t, cs in cols.items():
        # Primary key first, then the DQD order: stable and readable in every output.
        cs.sort(key=lambda c: (not c.primary_key, c.name != "person_id"))
        out[t] = Table(t, tuple(cs))
    return out


def table(name: str) -> Table:
    try:
        return schema()[name.lower()]
    except KeyError:
        raise KeyError(f"{name!r} is not an OMOP CDM 5.4 table") from None


def write_subset(field_level_csv: str, out: str | None = None) -> None:
    """Regenerate data/omop54_fields.csv from DQD's OMOP_CDMv5.4_Field_Level.csv (`make schema`)."""
    from pathlib import Path

    cols = [
        "cdmTableName",
        "cdmFieldName",
        "isRequired",
        "cdmDatatype",
        "isPrimaryKey",
        "isForeignKey",
        "fkTableName",
        "fkFieldName",
    ]
    dest = Path(out) if out else Path(__file__).parent / "data" / "omop54_fields.csv"
    with open(field_level_csv, encoding="utf-8-sig", newline="") as src, open(dest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for row in csv.DictReader(src):
            w.writerow([row[c] for c in cols])


if __name__ == "__main__":
    import sys

    write_subset(*sys.argv[1:])
