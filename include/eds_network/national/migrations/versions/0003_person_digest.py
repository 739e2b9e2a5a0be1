"""The national person-digest registry (`core/digests.py`): the full digest beside every level-2 person id of
every delivery of every platform, each unique, so that a collision refuses the delivery, never merges two patients.
IF NOT EXISTS: a database whose registry was created by the transfer before this revision existed is taken over.

Revision ID: 0003_person_digest
Revises: 0002_incremental_ledger
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0003_person_digest"
down_revision = "0002_incremental_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE IF NOT EXISTS eds_national.person_digest (
            person_id bigint PRIMARY KEY, digest bytea NOT NULL, first_seen timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT person_digest_digest_unique UNIQUE (digest))
    """)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS eds_national.person_digest")
