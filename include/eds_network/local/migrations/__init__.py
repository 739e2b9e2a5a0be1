"""The hospital's own state in its source database (schema `eds_local`), under Alembic.

`MIGRATIONS.ensure(source_dsn)` is called by the steps that use the state (the OPRF round trip, the extraction,
the published state) before they connect; see `eds_network.core.migrations`.
"""

from pathlib import Path

from eds_network.core.migrations import Migrations

MIGRATIONS = Migrations("hospital", Path(__file__).parent, schema="eds_local", lock_key=7_305_011_003)
