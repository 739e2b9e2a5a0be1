"""The platform's person-digest registry (`core/digests.py`): the full digest beside every 63-bit person id of the
warehouse, each unique, so that two patients whose ids collide are refused at consolidation, never merged.
IF NOT EXISTS: a warehouse whose registry was created by the step before this revision existed is taken over.

Revision ID: 0003_person_digest
Revises: 0002_change_tracking
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0003_person_digest"
down_revision = "0002_change_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE IF NOT EXISTS eds_platform.person_digest (
            person_id bigint PRIMARY KEY, digest bytea NOT NULL, first_seen timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT person_digest_digest_unique UNIQUE (digest))
    """)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS eds_platform.person_digest")
