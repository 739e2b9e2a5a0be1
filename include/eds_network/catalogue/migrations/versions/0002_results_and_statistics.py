"""Quality results (DQD-style, per check and per table), platform statistics (unmapped concepts, duplicate
events), member arrivals (late members), national linkage per pair of deliveries, onboarding reports.

Revision ID: 0002_results_and_statistics
Revises: 0001_initial
Create Date: 2026-11-23

Generated with Alembic autogenerate against a catalogue at 0001_initial, then reviewed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_results_and_statistics"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

SCHEMA = "catalogue"


def upgrade() -> None:
    op.create_table(
        "member_arrival",
        sa.Column("platform_id", sa.String(length=64), nullable=False),
        sa.Column("base_id", sa.String(length=64), nullable=False),
        sa.Column("night_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("dag_run_id", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("platform_id", "base_id", "night_end"),
        schema="catalogue",
    )
    op.create_table(
        "national_linkage",
        sa.Column("delivery_a", sa.Text(), nullable=False),
        sa.Column("delivery_b", sa.Text(), nullable=False),
        sa.Column("platform_a", sa.String(length=64), nullable=False),
        sa.Column("platform_b", sa.String(length=64), nullable=False),
        sa.Column("shared_persons", sa.BigInteger(), nullable=False),
        sa.Column("summary_key", sa.Text(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("delivery_a", "delivery_b"),
        schema="catalogue",
    )
    op.create_table(
        "onboarding_report",
        sa.Column("base_id", sa.String(length=64), nullable=False),
        sa.Column("dag_run_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("recorded_by", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.UniqueConstraint("base_id", "dag_run_id", "kind", name="onboarding_report_once"),
        schema="catalogue",
    )
    op.create_table(
        "platform_table_stats",
        sa.Column("platform_id", sa.String(length=64), nullable=False),
        sa.Column("base_id", sa.String(length=64), nullable=False),
        sa.Column("table_name", sa.String(length=64), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("unmapped_concepts", sa.BigInteger(), nullable=False),
        sa.Column("unmapped_rate", sa.Float(), nullable=False),
        sa.Column("unmapped_units", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("duplicate_events", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("platform_id", "base_id", "table_name"),
        schema="catalogue",
    )
    op.create_table(
        "quality_check",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("scope_id", sa.String(length=64), nullable=False),
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("table_name", sa.String(length=64), nullable=False),
        sa.Column("base_id", sa.String(length=64), nullable=False),
        sa.Column("check_id", sa.Text(), nullable=False),
        sa.Column("check_name", sa.String(length=64), nullable=False),
        sa.Column("check_level", sa.String(length=16), nullable=False),
        sa.Column("field_name", sa.String(length=64), server_default="", nullable=False),
        sa.Column("concept_id", sa.BigInteger(), nullable=True),
        sa.Column("unit_concept_id", sa.BigInteger(), nullable=True),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("subcategory", sa.String(length=32), server_default="", nullable=False),
        sa.Column("context", sa.String(length=16), server_default="", nullable=False),
        sa.Column("severity", sa.String(length=24), nullable=False),
        sa.Column("rows_checked", sa.BigInteger(), nullable=False),
        sa.Column("violating_rows", sa.BigInteger(), nullable=False),
        sa.Column("violating_pct", sa.Float(), nullable=False),
        sa.Column("threshold_pct", sa.Float(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=24), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("engine", sa.String(length=16), nullable=False),
        sa.Column("dag_run_id", sa.Text(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "level", "scope_id", "batch_id", "table_name", "base_id", "check_id", name="quality_check_once_per_run"
        ),
        schema="catalogue",
    )
    op.create_table(
        "quality_table",
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("scope_id", sa.String(length=64), nullable=False),
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("table_name", sa.String(length=64), nullable=False),
        sa.Column("engine", sa.String(length=16), nullable=False),
        sa.Column("rows_checked", sa.BigInteger(), nullable=False),
        sa.Column("quarantined_rows", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("batch_fatal", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("checks", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.JSON(), nullable=True),
        sa.Column("data_docs_path", sa.Text(), nullable=True),
        sa.Column("gx_sample_rows", sa.BigInteger(), nullable=True),
        sa.Column("gx_mismatches", sa.BigInteger(), nullable=True),
        sa.Column("dag_run_id", sa.Text(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("level", "scope_id", "batch_id", "table_name"),
        schema="catalogue",
    )


def downgrade() -> None:
    op.drop_table("quality_table", schema="catalogue")
    op.drop_table("quality_check", schema="catalogue")
    op.drop_table("platform_table_stats", schema="catalogue")
    op.drop_table("onboarding_report", schema="catalogue")
    op.drop_table("national_linkage", schema="catalogue")
    op.drop_table("member_arrival", schema="catalogue")
