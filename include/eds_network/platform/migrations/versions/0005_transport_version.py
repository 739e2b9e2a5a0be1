"""The transport key version of each applied batch and of each package.

A new transport key version changes every level-1 row id and every person's national pseudonym (the token the
HDH derives it from), so the platform packages the whole warehouse again once every member has re-extracted
under the new version, and holds its packages while the members' versions differ (`platform.keyversions`).

Revision ID: 0005_transport_version
Revises: 0004_person_token_no_change
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0005_transport_version"
down_revision = "0004_person_token_no_change"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE eds_platform.ledger ADD COLUMN IF NOT EXISTS transport_version text")
    op.execute("ALTER TABLE eds_platform.packaged ADD COLUMN IF NOT EXISTS transport_version text")


def downgrade() -> None:
    op.execute("ALTER TABLE eds_platform.packaged DROP COLUMN IF EXISTS transport_version")
    op.execute("ALTER TABLE eds_platform.ledger DROP COLUMN IF EXISTS transport_version")
