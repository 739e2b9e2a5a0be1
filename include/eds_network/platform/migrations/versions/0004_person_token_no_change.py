"""A person's new sealed transport token alone is no change: every extraction seals the token anew (a sealed box
is randomised), so a rerun of an unchanged interval would otherwise mark every person changed and the next
incremental delivery would carry them all. The row trigger compares a person's row without its token.

Revision ID: 0004_person_token_no_change
Revises: 0003_person_digest
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0004_person_token_no_change"
down_revision = "0003_person_digest"
branch_labels = None
depends_on = None

_UPGRADE = """
CREATE OR REPLACE FUNCTION eds_platform.bump_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'person' THEN
        IF (to_jsonb(NEW) - '_transport_token') IS DISTINCT FROM (to_jsonb(OLD) - '_transport_token') THEN
            NEW._seq := nextval('eds_platform.change_seq');
        END IF;
    ELSIF ROW(NEW.*) IS DISTINCT FROM ROW(OLD.*) THEN
        NEW._seq := nextval('eds_platform.change_seq');
    END IF;
    RETURN NEW;
END $$;
"""

_DOWNGRADE = """
CREATE OR REPLACE FUNCTION eds_platform.bump_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF ROW(NEW.*) IS DISTINCT FROM ROW(OLD.*) THEN
        NEW._seq := nextval('eds_platform.change_seq');
    END IF;
    RETURN NEW;
END $$;
"""


def upgrade() -> None:
    op.execute(_UPGRADE)


def downgrade() -> None:
    op.execute(_DOWNGRADE)
