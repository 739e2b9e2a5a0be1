"""Change tracking for incremental deliveries (`platform/changes.py`): the warehouse-wide sequence
`eds_platform.change_seq`; on every `omop` table a `_seq` column (drawn on insert, drawn again by a BEFORE UPDATE
trigger when the row really changes) with its index, and an AFTER DELETE statement trigger that logs each deleted
row in `eds_platform.change_log` (its row id; for person only its sealed transport token, never a level-1 id);
`eds_platform.packaged`, the packages made (kind, sequence range).

Revision ID: 0002_change_tracking
Revises: 0001_warehouse
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op
from psycopg import sql

revision = "0002_change_tracking"
down_revision = "0001_warehouse"
branch_labels = None
depends_on = None

FUNCTIONS = """
CREATE SEQUENCE IF NOT EXISTS eds_platform.change_seq;
CREATE TABLE IF NOT EXISTS eds_platform.change_log (
    seq bigint NOT NULL DEFAULT nextval('eds_platform.change_seq') PRIMARY KEY,
    table_name text NOT NULL,
    row_id bigint,
    token text
);
CREATE TABLE IF NOT EXISTS eds_platform.packaged (
    delivery_id text PRIMARY KEY,
    kind text NOT NULL,
    since_seq bigint,
    upto_seq bigint NOT NULL,
    packaged_at timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION eds_platform.bump_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF ROW(NEW.*) IS DISTINCT FROM ROW(OLD.*) THEN
        NEW._seq := nextval('eds_platform.change_seq');
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE FUNCTION eds_platform.log_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_ARGV[0] = 'person' THEN
        INSERT INTO eds_platform.change_log (table_name, token)
        SELECT 'person', _transport_token FROM gone;
    ELSE
        EXECUTE format('INSERT INTO eds_platform.change_log (table_name, row_id) SELECT %L, %I FROM gone',
                       TG_TABLE_NAME, TG_ARGV[1]);
    END IF;
    RETURN NULL;
END $$;
"""


def _tracked(conn) -> dict[str, str]:
    """Every table of the `omop` schema -> its merge key (primary key column, else person_id)."""
    rows = conn.execute(
        "SELECT t.table_name, coalesce(("
        " SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        " WHERE i.indrelid = format('omop.%I', t.table_name)::regclass AND i.indisprimary), 'person_id')"
        " FROM information_schema.tables t WHERE t.table_schema = 'omop' AND t.table_type = 'BASE TABLE'"
        " ORDER BY t.table_name"
    ).fetchall()
    return dict(rows)


def upgrade() -> None:
    # psycopg itself, in the migration's transaction: identifiers composed with psycopg.sql, and no parameter
    # parsing of the functions' format() patterns
    raw = op.get_bind().connection.driver_connection
    raw.execute(FUNCTIONS)
    for t, key in _tracked(raw).items():
        ident = sql.Identifier(t)
        for stmt in (
            sql.SQL(
                "ALTER TABLE omop.{t} ADD COLUMN IF NOT EXISTS _seq bigint NOT NULL "
                "DEFAULT nextval('eds_platform.change_seq')"
            ).format(t=ident),
            sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON omop.{t} (_seq)").format(
                i=sql.Identifier(f"{t}_seq_idx"), t=ident
            ),
            sql.SQL(
                "CREATE OR REPLACE TRIGGER eds_bump_seq BEFORE UPDATE ON omop.{t} "
                "FOR EACH ROW EXECUTE FUNCTION eds_platform.bump_seq()"
            ).format(t=ident),
            sql.SQL(
                "CREATE OR REPLACE TRIGGER eds_log_deletes AFTER DELETE ON omop.{t} REFERENCING OLD TABLE AS gone "
                "FOR EACH STATEMENT EXECUTE FUNCTION eds_platform.log_deletes({kind}, {key})"
            ).format(t=ident, kind=sql.Literal("person" if t == "person" else "row"), key=sql.Literal(key)),
        ):
            raw.execute(stmt)


def downgrade() -> None:
    raw = op.get_bind().connection.driver_connection
    for t in _tracked(raw):
        raw.execute(f'DROP TRIGGER IF EXISTS eds_log_deletes ON omop."{t}"')
        raw.execute(f'DROP TRIGGER IF EXISTS eds_bump_seq ON omop."{t}"')
        raw.execute(f'ALTER TABLE omop."{t}" DROP COLUMN IF EXISTS _seq')
    raw.execute(
        "DROP FUNCTION IF EXISTS eds_platform.log_deletes(); DROP FUNCTION IF EXISTS eds_platform.bump_seq();"
        "DROP TABLE IF EXISTS eds_platform.packaged; DROP TABLE IF EXISTS eds_platform.change_log;"
        "DROP SEQUENCE IF EXISTS eds_platform.change_seq"
    )
