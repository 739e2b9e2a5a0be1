"""The network catalogue (PostgreSQL, SQLAlchemy 2): where each base stands, and what every run did.

Every DAG writes here through this module only. Tables:
  platform, base                 the configured network (+ reference bases of the national catalogue)
  milestone                      onboarding milestones with dates (contract_signed, documentation,
                                 preparation, transfer_channel, available) — reached in any order
  run, run_table                 one row per level run, row accounting per table
  delivery                       national deliveries: files, bytes, SHA-256, key versions, receipt
  national_linkage               per pair of national deliveries: persons sharing a level-2 pseudonym
  audit                          append-only trail of status changes and actions
  platform_table_stats           per platform, member base and table: rows in the warehouse, unmapped
                                 concepts (rate) and units, duplicate events flagged (latest consolidation)
  member_arrival                 per platform, member and night: arrived / late / rejected at consolidation
  onboarding_report              per base and onboarding DAG run: schema comparison, volume profile, backfill
  quality_check                  one DQD-style result per check, run and table (local and mutualised levels)
  base_statistics                per base: small-cell protected statistics (catalogue.base_stats)
  quality_table                  per run and table: engine, rows checked, quarantine, GX Data Docs path (UI link)
  project, project_event         research projects and data permits, status timeline (catalogue.projects)
  project_dataset                per project extract: pinned snapshots, prefix, bytes, rows; deletion at expiry
  project_withdrawal             withdrawal notices (project pseudonym) after an objection
  feasibility_query              protected feasibility answers (never a raw count)
  feasibility_request            questions asked on the operator page: requested -> answered (who, when)
"""

from __future__ import annotations

from eds_network.catalogue import (
    feasibility_requests,  # noqa: F401,E402 (its table joins the metadata)
    projects,  # noqa: F401,E402 (its tables join the metadata)
)
from eds_network.catalogue.db import (
    BASELINE_REVISION,
    MIGRATIONS,
    alembic_config,
    create_schema,
    current_revision,
    engine,
    head_revision,
    schema_diff,
    upgrade,
)
from eds_network.catalogue.results import (
    arrivals,
    platform_stats,
    quality_batches,
    quality_results,
    record_arrivals,
    record_platform_stats,
    record_quality,
    table_volumes,
)
from eds_network.catalogue.runs import (
    audit,
    count,
    deliveries,
    latest_runs,
    mark_available,
    mark_transfer_channel,
    milestones,
    national_linkage,
    record_already_delivered,
    record_delivery,
    record_key_event,
    record_national_linkage,
    record_run,
    record_skipped_delivery,
    register_network,
    rows_passed_through,
    set_milestone,
    stage,
    unset_milestone,
)
from eds_network.catalogue.tables import (
    LEVELS,
    MILESTONES,
    SCHEMA,
    audit_t,
    base_statistics_t,
    base_t,
    delivery_t,
    member_arrival_t,
    metadata,
    milestone_t,
    national_linkage_t,
    onboarding_report_t,
    platform_t,
    platform_table_stats_t,
    quality_check_t,
    quality_table_t,
    run_t,
    run_table_t,
)

__all__ = [
    "BASELINE_REVISION",
    "LEVELS",
    "MIGRATIONS",
    "MILESTONES",
    "SCHEMA",
    "alembic_config",
    "arrivals",
    "audit",
    "audit_t",
    "base_statistics_t",
    "base_t",
    "count",
    "create_schema",
    "current_revision",
    "deliveries",
    "delivery_t",
    "engine",
    "head_revision",
    "latest_runs",
    "mark_available",
    "mark_transfer_channel",
    "member_arrival_t",
    "metadata",
    "milestone_t",
    "milestones",
    "national_linkage",
    "national_linkage_t",
    "onboarding_report_t",
    "platform_stats",
    "platform_t",
    "platform_table_stats_t",
    "quality_batches",
    "quality_check_t",
    "quality_results",
    "quality_table_t",
    "record_already_delivered",
    "record_arrivals",
    "record_delivery",
    "record_key_event",
    "record_national_linkage",
    "record_platform_stats",
    "record_quality",
    "record_run",
    "record_skipped_delivery",
    "register_network",
    "rows_passed_through",
    "run_t",
    "run_table_t",
    "schema_diff",
    "set_milestone",
    "unset_milestone",
    "stage",
    "table_volumes",
    "upgrade",
]
