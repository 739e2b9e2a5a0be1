"""The national tables' ledger: one row per delivery and OMOP table applied to the Iceberg tables. IF NOT EXISTS:
a ledger created before these migrations existed is taken over as it is.

Revision ID: 0001_delivery_ledger
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0001_delivery_ledger"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE IF NOT EXISTS eds_national.applied (
            delivery_id text NOT NULL,
            table_name text NOT NULL,
            platform text NOT NULL,
            kind text NOT NULL DEFAULT 'full',
            manifest_sha256 text NOT NULL,
            delivered_at timestamptz NOT NULL,
            snapshot_id bigint,
            rows_written bigint NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (delivery_id, table_name))
    """)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS eds_national.applied")
