"""The platform warehouse's schemas (`omop`: the consolidated OMOP tables; `eds_platform`: the bookkeeping),
under Alembic, version table `eds_platform.alembic_version`.

`MIGRATIONS.ensure(warehouse_dsn)` is called by the steps that use the warehouse (consolidation, packaging)
before they connect; see `eds_network.core.migrations`.
"""

from pathlib import Path

from eds_network.core.migrations import Migrations

MIGRATIONS = Migrations("warehouse", Path(__file__).parent, schema="eds_platform", lock_key=7_305_011_002)
