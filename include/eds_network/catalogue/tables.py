"""The catalogue's tables (SQLAlchemy Core metadata, schema `catalogue`); migrations in `migrations/`."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)

SCHEMA = "catalogue"
MILESTONES = ("contract_signed", "documentation", "preparation", "transfer_channel", "available")
LEVELS = ("local", "mutualised", "national")

metadata = MetaData(schema=SCHEMA)

platform_t = Table(
    "platform",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("label", Text, nullable=False),
    Column("kind", String(32), nullable=False),
)
base_t = Table(
    "base",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("label", Text, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("platform_id", String(64), ForeignKey(f"{SCHEMA}.platform.id"), nullable=True),
    Column("holder", Text),
    Column("reference", Boolean, nullable=False, server_default="false"),
)
milestone_t = Table(
    "milestone",
    metadata,
    Column("base_id", String(64), ForeignKey(f"{SCHEMA}.base.id"), primary_key=True),
    Column("milestone", String(32), primary_key=True),
    Column("reached_on", Date, nullable=False),
    Column("evidence", Text),
    Column("recorded_by", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
run_t = Table(
    "run",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("level", String(16), nullable=False),
    Column("scope_id", String(64), nullable=False),
    Column("batch_id", Text, nullable=False),
    Column("dag_run_id", Text),
    Column("data_interval_start", DateTime(timezone=True)),
    Column("data_interval_end", DateTime(timezone=True)),
    Column("status", String(16), nullable=False),
    Column("details", JSON),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("level", "scope_id", "batch_id", name="run_once_per_batch"),
)
run_table_t = Table(
    "run_table",
    metadata,
    Column("run_id", BigInteger, ForeignKey(f"{SCHEMA}.run.id", ondelete="CASCADE"), primary_key=True),
    Column("table_name", String(64), primary_key=True),
    Column("extracted", BigInteger, nullable=False),
    Column("published", BigInteger, nullable=False),
    Column("quarantined", BigInteger, nullable=False),
    Column("excluded_objection", BigInteger, nullable=False),
    Column("tombstones", BigInteger, nullable=False, server_default="0"),
)
delivery_t = Table(
    "delivery",
    metadata,
    Column("id", Text, primary_key=True),
    Column("platform_id", String(64), nullable=False),
    Column("level", String(16), nullable=False),
    Column("status", String(32), nullable=False),
    Column("manifest_key", Text),
    Column("files", JSON),
    Column("bytes", BigInteger),
    Column("rows", JSON),
    Column("key_versions", JSON),
    Column("receipt", JSON),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
national_linkage_t = Table(
    "national_linkage",
    metadata,
    Column("delivery_a", Text, primary_key=True),
    Column("delivery_b", Text, primary_key=True),
    Column("platform_a", String(64), nullable=False),
    Column("platform_b", String(64), nullable=False),
    Column("shared_persons", BigInteger, nullable=False),
    Column("summary_key", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
audit_t = Table(
    "audit",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("object", Text, nullable=False),
    Column("details", JSON),
    # Task roles may INSERT into the audit, never read it: no RETURNING of the new id (it needs SELECT).
    implicit_returning=False,
)

platform_table_stats_t = Table(
    "platform_table_stats",
    metadata,
    Column("platform_id", String(64), primary_key=True),
    Column("base_id", String(64), primary_key=True),
    Column("table_name", String(64), primary_key=True),
    Column("rows", BigInteger, nullable=False),
    Column("unmapped_concepts", BigInteger, nullable=False),
    Column("unmapped_rate", Float, nullable=False),
    Column("unmapped_units", BigInteger, nullable=False, server_default="0"),
    Column("duplicate_events", BigInteger, nullable=False, server_default="0"),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
member_arrival_t = Table(
    "member_arrival",
    metadata,
    Column("platform_id", String(64), primary_key=True),
    Column("base_id", String(64), primary_key=True),
    Column("night_end", DateTime(timezone=True), primary_key=True),
    Column("status", String(16), nullable=False),  # arrived | late | rejected | arrived_late
    Column("dag_run_id", Text),
    Column("reason", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
onboarding_report_t = Table(
    "onboarding_report",
    metadata,
    Column("base_id", String(64), nullable=False),
    Column("dag_run_id", Text, nullable=False),
    Column("kind", String(16), nullable=False),  # schema | profile | backfill
    Column("report", JSON, nullable=False),
    Column("recorded_by", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("base_id", "dag_run_id", "kind", name="onboarding_report_once"),
)

# Data quality (see eds_network.quality): a DQD-style result per check; `base_id` is the base the result is
# about (the scope itself at the local level, a member base or the platform at the mutualised level).
quality_check_t = Table(
    "quality_check",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("level", String(16), nullable=False),
    Column("scope_id", String(64), nullable=False),
    Column("batch_id", Text, nullable=False),
    Column("table_name", String(64), nullable=False),
    Column("base_id", String(64), nullable=False),
    Column("check_id", Text, nullable=False),
    Column("check_name", String(64), nullable=False),
    Column("check_level", String(16), nullable=False),
    Column("field_name", String(64), nullable=False, server_default=""),
    Column("concept_id", BigInteger),
    Column("unit_concept_id", BigInteger),
    Column("category", String(32), nullable=False),
    Column("subcategory", String(32), nullable=False, server_default=""),
    Column("context", String(16), nullable=False, server_default=""),
    Column("severity", String(24), nullable=False),
    Column("rows_checked", BigInteger, nullable=False),
    Column("violating_rows", BigInteger, nullable=False),
    Column("violating_pct", Float, nullable=False),
    Column("threshold_pct", Float, nullable=False),
    Column("passed", Boolean),  # NULL: not evaluated (not applicable or disabled)
    Column("status", String(16), nullable=False),  # passed / failed / not_applicable / disabled
    Column("action", String(24), nullable=False),  # none / warn / quarantine_rows / fail_batch
    Column("note", Text),  # not-applicable or disabled reason, override key
    Column("description", Text),
    Column("engine", String(16), nullable=False),
    Column("dag_run_id", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint(
        "level", "scope_id", "batch_id", "table_name", "base_id", "check_id", name="quality_check_once_per_run"
    ),
)
quality_table_t = Table(
    "quality_table",
    metadata,
    Column("level", String(16), primary_key=True),
    Column("scope_id", String(64), primary_key=True),
    Column("batch_id", Text, primary_key=True),
    Column("table_name", String(64), primary_key=True),
    Column("engine", String(16), nullable=False),
    Column("rows_checked", BigInteger, nullable=False),
    Column("quarantined_rows", BigInteger, nullable=False, server_default="0"),
    Column("batch_fatal", Boolean, nullable=False, server_default="false"),
    Column("checks", BigInteger, nullable=False),
    Column("failed", JSON),  # severity -> number of failed checks
    Column("data_docs_path", Text),  # GX Data Docs index.html in the state folder (operator UI link)
    Column("gx_sample_rows", BigInteger),
    Column("gx_mismatches", BigInteger),  # checks where GX and the Arrow engine disagree on the sample
    Column("dag_run_id", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Small-cell protected statistics per base (see catalogue.base_stats): only published values are stored, a
# suppressed cell is stored as null; recomputed after each consolidation of the base's platform.
base_statistics_t = Table(
    "base_statistics",
    metadata,
    Column("base_id", String(64), primary_key=True),
    Column("platform_id", String(64), nullable=False),
    Column("k", BigInteger, nullable=False),
    Column("reference_date", Date, nullable=False),
    Column("statistics", JSON, nullable=False),
    Column("dag_run_id", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
