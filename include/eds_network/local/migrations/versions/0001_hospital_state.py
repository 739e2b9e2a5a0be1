"""The hospital's state: quarantine, snapshot state, published state, the level-1 pseudonym map and its pending
blinds. Written with IF NOT EXISTS so that a database whose tables were created before these migrations existed
(by the steps themselves) is taken over as it is.

Revision ID: 0001_hospital_state
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0001_hospital_state"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE IF NOT EXISTS eds_local.quarantine (
            batch_id text NOT NULL, table_name text NOT NULL, reason text NOT NULL, row_data jsonb,
            recorded_at timestamptz NOT NULL DEFAULT now());
        CREATE TABLE IF NOT EXISTS eds_local.snapshot_state (
            table_name text NOT NULL, row_key bigint NOT NULL, row_hash text NOT NULL, since timestamptz NOT NULL,
            until timestamptz);
        CREATE INDEX IF NOT EXISTS snapshot_state_key ON eds_local.snapshot_state (table_name, row_key);
        CREATE TABLE IF NOT EXISTS eds_local.published_state (
            table_name text PRIMARY KEY, fingerprint text NOT NULL, level1_version text NOT NULL,
            batch_id text NOT NULL, full_batch_id text, published_at timestamptz NOT NULL DEFAULT now());
        CREATE TABLE IF NOT EXISTS eds_local.level1_pending (
            batch_id text NOT NULL, part int NOT NULL, position int NOT NULL, person_id bigint NOT NULL,
            blind bytea NOT NULL, source_digest bytea NOT NULL, PRIMARY KEY (batch_id, part, position));
        CREATE TABLE IF NOT EXISTS eds_local.level1_pseudonym (
            key_version text NOT NULL, person_id bigint NOT NULL, level1 bytea NOT NULL CHECK (length(level1) = 64),
            source_digest bytea NOT NULL, evaluated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (key_version, person_id));
        CREATE TABLE IF NOT EXISTS eds_local.level1_state (
            id int PRIMARY KEY CHECK (id = 1), key_version text NOT NULL, batch_id text NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now());
    """)


def downgrade() -> None:
    for t in ("level1_state", "level1_pseudonym", "level1_pending", "published_state", "snapshot_state", "quarantine"):
        op.execute(f"DROP TABLE IF EXISTS eds_local.{t}")
