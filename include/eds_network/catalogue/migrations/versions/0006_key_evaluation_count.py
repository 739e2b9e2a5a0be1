"""The key holder's nightly count of evaluations, without reading the audit: a SECURITY DEFINER function.

Task roles may INSERT into `catalogue.audit` but not read it (docs/security.md), yet the key holder's ceiling
needs how many elements it already evaluated for a member today, which only the audit records. The function
`catalogue.key_evaluations_on(platform, base, day)` returns that one number (a sum over the `key.evaluated`
rows), runs as the catalogue's owner with a fixed search_path, and is executable by nobody but its owner:
EXECUTE is granted to each key holder's role only, by the zones' grants (dev/access.py), never to PUBLIC or to
the task group.

Revision ID: 0006_key_evaluation_count
Revises: 0005_projects
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0006_key_evaluation_count"
down_revision = "0005_projects"
branch_labels = None
depends_on = None

SCHEMA = "catalogue"
FUNCTION = f"{SCHEMA}.key_evaluations_on(text, text, date)"


def upgrade() -> None:
    op.execute(f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.key_evaluations_on(platform_id text, base_id text, day date) RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
  SELECT coalesce(sum((a.details ->> 'evaluated')::bigint), 0)::bigint FROM {SCHEMA}.audit a
  WHERE a.action = 'key.evaluated' AND a.object = 'base:' || base_id AND a.details ->> 'platform' = platform_id
    AND (a.at AT TIME ZONE 'UTC')::date = day
$$""")
    op.execute(f"REVOKE ALL ON FUNCTION {FUNCTION} FROM PUBLIC")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}")
