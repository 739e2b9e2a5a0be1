"""The catalogue as first released: network, milestones, runs with row accounting, deliveries, audit trail.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-23

Written by hand to create exactly what `eds_network.catalogue.metadata` described at the time (the
migration test compares the two), plus the append-only trigger on the audit trail.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = "catalogue"

APPEND_ONLY_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the audit trail is append-only (% refused)', TG_OP; END $$
"""
APPEND_ONLY_TRIGGER = f"""
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {SCHEMA}.audit
  FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.refuse_change()
"""


def upgrade() -> None:
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    op.create_table(
        "platform",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "base",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("platform_id", sa.String(64), sa.ForeignKey(f"{SCHEMA}.platform.id"), nullable=True),
        sa.Column("holder", sa.Text),
        sa.Column("reference", sa.Boolean, nullable=False, server_default="false"),
        schema=SCHEMA,
    )
    op.create_table(
        "milestone",
        sa.Column("base_id", sa.String(64), sa.ForeignKey(f"{SCHEMA}.base.id"), primary_key=True),
        sa.Column("milestone", sa.String(32), primary_key=True),
        sa.Column("reached_on", sa.Date, nullable=False),
        sa.Column("evidence", sa.Text),
        sa.Column("recorded_by", sa.Text, nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "run",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("scope_id", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("dag_run_id", sa.Text),
        sa.Column("data_interval_start", sa.DateTime(timezone=True)),
        sa.Column("data_interval_end", sa.DateTime(timezone=True)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("details", sa.JSON),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("level", "scope_id", "batch_id", name="run_once_per_batch"),
        schema=SCHEMA,
    )
    op.create_table(
        "run_table",
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey(f"{SCHEMA}.run.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("table_name", sa.String(64), primary_key=True),
        sa.Column("extracted", sa.BigInteger, nullable=False),
        sa.Column("published", sa.BigInteger, nullable=False),
        sa.Column("quarantined", sa.BigInteger, nullable=False),
        sa.Column("excluded_objection", sa.BigInteger, nullable=False),
        sa.Column("tombstones", sa.BigInteger, nullable=False, server_default="0"),
        schema=SCHEMA,
    )
    op.create_table(
        "delivery",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("platform_id", sa.String(64), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("manifest_key", sa.Text),
        sa.Column("files", sa.JSON),
        sa.Column("bytes", sa.BigInteger),
        sa.Column("rows", sa.JSON),
        sa.Column("key_versions", sa.JSON),
        sa.Column("receipt", sa.JSON),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=SCHEMA,
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("object", sa.Text, nullable=False),
        sa.Column("details", sa.JSON),
        schema=SCHEMA,
    )
    op.execute(APPEND_ONLY_FUNCTION)
    op.execute(APPEND_ONLY_TRIGGER)


def downgrade() -> None:
    op.execute(f"DROP TRIGGER IF EXISTS audit_append_only ON {SCHEMA}.audit")
    for table in ("audit", "delivery", "run_table", "run", "milestone", "base", "platform"):
        op.drop_table(table, schema=SCHEMA)
    op.execute(f"DROP FUNCTION IF EXISTS {SCHEMA}.refuse_change()")
