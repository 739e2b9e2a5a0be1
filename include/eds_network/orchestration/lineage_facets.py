"""The custom OpenLineage facets of eds-network (JSON schema: docs/lineage-facets.json).

Imported by the OpenLineage provider's extraction only (in the task's process, after the body): DAG parsing never
pays for the OpenLineage client. Every field is a level, a version label, a verdict or a count.
"""

from __future__ import annotations

from typing import Any

import attr
from openlineage.client.facet_v2 import DatasetFacet, RunFacet

SCHEMA_URL = "https://github.com/eds-network/eds-network/blob/main/docs/lineage-facets.json"


def _schema(name: str) -> str:
    return f"{SCHEMA_URL}#/$defs/{name}"


@attr.define
class PseudonymisationRunFacet(RunFacet):
    """`eds_pseudonymisation`: the level the data leaves the task at (1 = platform, 2 = national) and the key
    versions it was produced under (never a key)."""

    level: int
    keyVersions: dict[str, Any] = attr.field(factory=dict)  # noqa: N815
    dateShiftDays: int | None = None  # noqa: N815
    keepBirthMonth: bool | None = None  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return _schema("PseudonymisationRunFacet")


@attr.define
class QualityRunFacet(RunFacet):
    """`eds_quality`: the verdict of the task's checks (`passed`, `warnings`, `failed`) and how many were run and
    violated."""

    verdict: str
    checks: int = 0
    violated: int = 0
    fatalViolated: int = 0  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return _schema("QualityRunFacet")


@attr.define
class RowAccountingRunFacet(RunFacet):
    """`eds_rowAccounting`: extracted = published + quarantined + excluded, summed over the run's tables."""

    extracted: int
    published: int
    quarantined: int
    excluded: int
    balanced: bool
    tables: int = 1

    @staticmethod
    def _get_schema() -> str:
        return _schema("RowAccountingRunFacet")


@attr.define
class RowAccountingDatasetFacet(DatasetFacet):
    """`eds_rowAccounting` of one dataset in this run (a table, or a batch of `tables` tables)."""

    extracted: int
    published: int
    quarantined: int
    excluded: int
    balanced: bool
    tables: int = 1

    @staticmethod
    def _get_schema() -> str:
        return _schema("RowAccountingDatasetFacet")


RUN_FACETS = {
    "eds_pseudonymisation": PseudonymisationRunFacet,
    "eds_quality": QualityRunFacet,
    "eds_rowAccounting": RowAccountingRunFacet,
}
DATASET_FACETS = {"eds_rowAccounting": RowAccountingDatasetFacet}
