"""The national tables' schemas: one Iceberg table per OMOP CDM 5.4 table, `_platform` first (the partition),
the OMOP columns after it; the same in Arrow for what is appended."""

from __future__ import annotations

import pyarrow as pa
from pyiceberg.schema import Schema
from pyiceberg.types import DateType, DoubleType, LongType, NestedField, StringType, TimestampType

from eds_network.core import omop

PLATFORM_COLUMN = "_platform"


def _iceberg_type(col: omop.Column):
    d = col.datatype.lower()
    if d in ("integer", "bigint"):
        return LongType()
    if d == "float":
        return DoubleType()
    if d == "date":
        return DateType()
    if d == "datetime":
        return TimestampType()
    return StringType()


def iceberg_schema(table: str) -> Schema:
    """The national table's schema: `_platform` (required), then the OMOP columns (optional: a delivery's
    Parquet files are nullable, the OMOP required flags are checked by the quality step)."""
    spec = omop.table(table)
    fields = [NestedField(1, PLATFORM_COLUMN, StringType(), required=True)]
    for i, c in enumerate(spec.columns, start=2):
        fields.append(NestedField(i, c.name, _iceberg_type(c), required=False))
    return Schema(*fields)


def arrow_schema(table: str) -> pa.Schema:
    spec = omop.table(table)
    return pa.schema(
        [pa.field(PLATFORM_COLUMN, pa.string(), nullable=False)]
        + [pa.field(c.name, c.arrow_type, nullable=True) for c in spec.columns]
    )
