"""Feasibility questions asked on the operator page: requested (who, when, the cohort, k) -> answered (the
protected answer in `feasibility_query`).

Revision ID: 0007_feasibility_request
Revises: 0006_key_evaluation_count
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_feasibility_request"
down_revision = "0006_key_evaluation_count"
branch_labels = None
depends_on = None

SCHEMA = "catalogue"


def upgrade() -> None:
    op.create_table(
        "feasibility_request",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("cohort_name", sa.Text(), nullable=False),
        sa.Column("cohort", sa.JSON(), nullable=False),
        sa.Column("k", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("run_id", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("feasibility_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["feasibility_id"], [f"{SCHEMA}.feasibility_query.id"]),
        sa.PrimaryKeyConstraint("id"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("feasibility_request", schema=SCHEMA)
