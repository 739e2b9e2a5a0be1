"""When a milestone was recorded (or last corrected), beside who recorded it: the operator tools show both.

Revision ID: 0004_milestone_recorded_at
Revises: 0003_base_statistics
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_milestone_recorded_at"
down_revision = "0003_base_statistics"
branch_labels = None
depends_on = None

SCHEMA = "catalogue"


def upgrade() -> None:
    # IF NOT EXISTS: a catalogue built by create_all before migrations existed (stamped at the baseline) has it
    op.execute(
        sa.text(
            f"ALTER TABLE {SCHEMA}.milestone ADD COLUMN IF NOT EXISTS recorded_at TIMESTAMP WITH TIME ZONE "
            "DEFAULT now() NOT NULL"
        )
    )


def downgrade() -> None:
    op.drop_column("milestone", "recorded_at", schema=SCHEMA)
