"""The HDH's bookkeeping beside its Iceberg catalog (schema `eds_national`: the delivery ledger), under Alembic.

`MIGRATIONS.ensure(dsn)` is called by the national tables' apply before it reads the ledger; see
`eds_network.core.migrations`. (The Iceberg catalog's own tables are pyiceberg's.)
"""

from pathlib import Path

from eds_network.core.migrations import Migrations

MIGRATIONS = Migrations("national", Path(__file__).parent, schema="eds_national", lock_key=7_305_011_004)
