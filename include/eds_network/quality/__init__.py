"""Data quality: the OHDSI DQD checks (generated as GX 1.x suites in `expectations/`, see `quality.dqd`) run on
every batch a hospital extracts, and the mutualised level's checks on the consolidated warehouse.

Where each step lives
---------------------
- `checks.check_batch(base, table, batch, ...)` -> `results.QualityResult`: one `CheckResult` per check
  (counts and percentages only), the `keep_mask` of rows passing every row-level fatal check, the quarantined
  rows, whether the batch is fatal, warnings.
- `evaluate`: the Arrow engine (the evaluator of record): every check computed with pyarrow / numpy on every
  row. `reference`: the lookups of the cross-table checks (known ids, PERSON, DEATH, CONCEPT rows); a check
  whose lookup is missing is reported `not applicable`, never silently passed. `suites`: the suites parsed
  once per process, and per-base overrides (`checkName:table.column[:conceptId[:unitConceptId]]`, the most
  specific key wins: a new threshold, or disabled with a mandatory reason).
- `gx`: the GX engine (`engine="gx"` or `EDS_QUALITY_ENGINE=gx`): one GX validation of the whole batch whose
  counts replace the Arrow numerators, any disagreement reported as a warning. `datadocs`: GX runs the same
  suites on a bounded sample of each table (`EDS_QUALITY_DOCS_ROWS`, `EDS_QUALITY_DOCS=off` skips it) and builds
  GX Data Docs in the state folder; checks where GX and Arrow count differently are recorded as mismatches.
  Why Arrow is the engine of record and GX the view: BENCHMARKS.md.
- `tables`: `TableChecks` sums one table's results over its record batches (one entry per check: bounded
  memory), names the action taken (`none`, `warn`, `quarantine_rows`, `fail_batch`) and
  `record_table_quality` stores them in the catalogue.
- `warehouse`: the mutualised level: SQL on the consolidated warehouse (cross-site person and visit foreign
  keys, duplicate events as `core.events` defines them) and each member table's volume versus its previous
  nights; stored by `record_platform_quality`. `export.export_dqd` rebuilds DQD's results JSON from the catalogue.

Fatal checks, quarantine, batch failure
---------------------------------------
Row-level fatal checks (isRequired on the primary key or person_id, isPrimaryKey, isForeignKey on person_id)
are exact, row by row: null keys, the 2nd..nth occurrence of a primary key and unknown persons are quarantined
and the rest of the batch goes on. The batch is fatal only when such a check quarantines more than
`max(threshold_pct, quarantine_limit_pct)` % of it (default 5 %: a broken extraction must not be published as
an empty batch); a column-level fatal check (cdmDatatype) fails the batch above its threshold. Convention and
characterization failures give a warning; the batch is published. Denominators follow DQD's SQL; checks see
one batch (isPrimaryKey finds duplicates within the batch). Differences with DQD: docs/quality.md.

Privacy
-------
No value of the data leaves this package: results hold counts, percentages, check names and DQD concept ids.
GX runs with `GX_RESULT_FORMAT` (no unexpected values, lists, indexes or rows) in the batch validation and the
Data Docs alike; `tests/unit/test_quality.py` plants identifier-like values and greps every Data Docs file.
"""

from eds_network.quality import dqd
from eds_network.quality.checks import check_batch
from eds_network.quality.datadocs import DataDocs, gx_data_docs
from eds_network.quality.export import export_dqd
from eds_network.quality.reference import Reference
from eds_network.quality.results import (
    DEFAULT_QUARANTINE_LIMIT_PCT,
    ENGINE_ENV,
    GX_RESULT_FORMAT,
    CheckResult,
    Engine,
    Override,
    QualityResult,
    action,
    fatal_message,
    to_dqd_json,
)
from eds_network.quality.suites import unknown_override_keys
from eds_network.quality.tables import (
    DOCS_ENV,
    DOCS_ROWS_ENV,
    ROW_ACTIONS,
    TableChecks,
    TableQuality,
    catalogue_recorder,
    docs_path,
    record_table_quality,
)
from eds_network.quality.warehouse import (
    DUPLICATE_THRESHOLD_PCT,
    check_platform,
    record_platform_quality,
    volume_check,
    volume_checks,
    warehouse_checks,
)

__all__ = [
    "DEFAULT_QUARANTINE_LIMIT_PCT",
    "DOCS_ENV",
    "DOCS_ROWS_ENV",
    "DUPLICATE_THRESHOLD_PCT",
    "ENGINE_ENV",
    "GX_RESULT_FORMAT",
    "ROW_ACTIONS",
    "CheckResult",
    "DataDocs",
    "Engine",
    "Override",
    "QualityResult",
    "Reference",
    "TableChecks",
    "TableQuality",
    "action",
    "catalogue_recorder",
    "check_batch",
    "check_platform",
    "docs_path",
    "dqd",
    "export_dqd",
    "fatal_message",
    "gx_data_docs",
    "record_platform_quality",
    "record_table_quality",
    "to_dqd_json",
    "unknown_override_keys",
    "volume_check",
    "volume_checks",
    "warehouse_checks",
]
