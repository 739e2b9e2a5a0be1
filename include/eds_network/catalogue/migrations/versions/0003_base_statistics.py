"""Small-cell protected statistics per base (persons by sex and age band, persons with a visit per year, top
conditions), suppressed values stored as null.

Revision ID: 0003_base_statistics
Revises: 0002_results_and_statistics
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_base_statistics"
down_revision = "0002_results_and_statistics"
branch_labels = None
depends_on = None

SCHEMA = "catalogue"


def upgrade() -> None:
    op.create_table(
        "base_statistics",
        sa.Column("base_id", sa.String(length=64), nullable=False),
        sa.Column("platform_id", sa.String(length=64), nullable=False),
        sa.Column("k", sa.BigInteger(), nullable=False),
        sa.Column("reference_date", sa.Date(), nullable=False),
        sa.Column("statistics", sa.JSON(), nullable=False),
        sa.Column("dag_run_id", sa.Text(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("base_id"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("base_statistics", schema=SCHEMA)
