"""The ledger of incremental deliveries: the change-sequence range each delivery applied, its key versions, and
the rows it deleted.

Revision ID: 0002_incremental_ledger
Revises: 0001_delivery_ledger
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0002_incremental_ledger"
down_revision = "0001_delivery_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        ALTER TABLE eds_national.applied ADD COLUMN IF NOT EXISTS since_seq bigint;
        ALTER TABLE eds_national.applied ADD COLUMN IF NOT EXISTS upto_seq bigint;
        ALTER TABLE eds_national.applied ADD COLUMN IF NOT EXISTS key_versions text;
        ALTER TABLE eds_national.applied ADD COLUMN IF NOT EXISTS rows_deleted bigint NOT NULL DEFAULT 0
    """)


def downgrade() -> None:
    for c in ("rows_deleted", "key_versions", "upto_seq", "since_seq"):
        op.execute(f"ALTER TABLE eds_national.applied DROP COLUMN IF EXISTS {c}")
