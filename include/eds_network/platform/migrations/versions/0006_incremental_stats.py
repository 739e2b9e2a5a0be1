"""Statistics the warehouse keeps up to date itself (`platform/stats.py`): per table and site the rows, the rows
whose main concept is unmapped and those whose unit is unknown (`eds_platform.table_stats`), the persons touched
since the last statistics (`touched_person`), and the rows whose person the warehouse does not hold
(`orphan_rows`); three statement triggers with transition tables on every `omop` table maintain them. The
upgrade counts an existing warehouse once from its rows; from then on a night's statistics cost what it changed.

Revision ID: 0006_incremental_stats
Revises: 0005_transport_version
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op
from psycopg import sql

from eds_network.platform import stats

revision = "0006_incremental_stats"
down_revision = "0005_transport_version"
branch_labels = None
depends_on = None

TABLES = """
CREATE TABLE eds_platform.table_stats (
    table_name text NOT NULL, site_number integer NOT NULL, rows bigint NOT NULL DEFAULT 0,
    unmapped_concepts bigint NOT NULL DEFAULT 0, unmapped_units bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (table_name, site_number));
CREATE TABLE eds_platform.touched_person (person_id bigint PRIMARY KEY);
CREATE TABLE eds_platform.orphan_rows (
    table_name text NOT NULL, person_id bigint NOT NULL, rows bigint NOT NULL, PRIMARY KEY (table_name, person_id));
CREATE TABLE eds_platform.visit_ref (
    table_name text NOT NULL, visit_id bigint NOT NULL, site_number integer NOT NULL, rows bigint NOT NULL,
    PRIMARY KEY (visit_id, site_number, table_name));
CREATE TABLE eds_platform.touched_visit (visit_id bigint PRIMARY KEY);
CREATE TABLE eds_platform.event_person (
    table_name text NOT NULL, person_id bigint NOT NULL, rows bigint NOT NULL, PRIMARY KEY (person_id, table_name));
CREATE TABLE eds_platform.orphan_visit_rows (
    table_name text NOT NULL, visit_id bigint NOT NULL, site_number integer NOT NULL, rows bigint NOT NULL,
    PRIMARY KEY (visit_id, site_number, table_name));
"""

# TG_ARGV: [0] the unmapped-concept condition with a vocabulary, [1] without one, [2] the unknown-unit condition,
# [3] 'events' for a table of events (person_id), 'persons' for person itself, [4] 'refs' when its rows point to a visit (visit_occurrence_id),
# 'visits' for visit_occurrence itself. The conditions are written by `conditions` (one source for the triggers
# and for `rebuild`), over the alias r.
FUNCTION = """
CREATE OR REPLACE FUNCTION eds_platform.track_stats() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad text := CASE WHEN to_regclass('vocab.standard_concept') IS NULL THEN TG_ARGV[1] ELSE TG_ARGV[0] END;
    agg text := 'INSERT INTO eds_platform.table_stats AS s '
        || '(table_name, site_number, rows, unmapped_concepts, unmapped_units) '
        || 'SELECT %L, r._site, %s * count(*), %s * count(*) FILTER (WHERE %s), %s * count(*) FILTER (WHERE %s) '
        || 'FROM %I r GROUP BY r._site ON CONFLICT (table_name, site_number) DO UPDATE SET '
        || 'rows = s.rows + EXCLUDED.rows, unmapped_concepts = s.unmapped_concepts + EXCLUDED.unmapped_concepts, '
        || 'unmapped_units = s.unmapped_units + EXCLUDED.unmapped_units';
    touch text := 'INSERT INTO eds_platform.touched_person (person_id) SELECT DISTINCT person_id FROM %I '
        || 'WHERE person_id IS NOT NULL ON CONFLICT DO NOTHING';
    per_person text := 'INSERT INTO eds_platform.event_person AS s (table_name, person_id, rows) '
        || 'SELECT %L, person_id, %s * count(*) FROM %I WHERE person_id IS NOT NULL GROUP BY 2 '
        || 'ON CONFLICT (person_id, table_name) DO UPDATE SET rows = s.rows + EXCLUDED.rows';
    refs text := 'INSERT INTO eds_platform.visit_ref AS s (table_name, visit_id, site_number, rows) '
        || 'SELECT %L, visit_occurrence_id, _site, %s * count(*) FROM %I WHERE visit_occurrence_id IS NOT NULL '
        || 'GROUP BY 2, 3 ON CONFLICT (visit_id, site_number, table_name) DO UPDATE SET rows = s.rows + EXCLUDED.rows';
    visits text := 'INSERT INTO eds_platform.touched_visit (visit_id) SELECT DISTINCT visit_occurrence_id FROM %I '
        || 'WHERE visit_occurrence_id IS NOT NULL ON CONFLICT DO NOTHING';
    tt text;
    sign int;
BEGIN
    FOREACH tt IN ARRAY CASE TG_OP WHEN 'INSERT' THEN ARRAY['new_rows'] WHEN 'DELETE' THEN ARRAY['old_rows']
                                   ELSE ARRAY['old_rows', 'new_rows'] END LOOP
        sign := CASE tt WHEN 'old_rows' THEN -1 ELSE 1 END;
        EXECUTE format(agg, TG_TABLE_NAME, sign, sign, bad, sign, TG_ARGV[2], tt);
        IF TG_ARGV[3] <> '' THEN
            EXECUTE format(touch, tt);
        END IF;
        IF TG_ARGV[3] = 'events' THEN
            EXECUTE format(per_person, TG_TABLE_NAME, sign, tt);
        END IF;
        IF TG_ARGV[4] = 'refs' THEN
            EXECUTE format(refs, TG_TABLE_NAME, sign, tt);
        END IF;
        IF TG_ARGV[4] <> '' THEN
            EXECUTE format(visits, tt);
        END IF;
    END LOOP;
    RETURN NULL;
END $$;
"""


def _install(conn) -> None:
    """The tables, the trigger function and the three triggers of every `omop` table."""
    conn.execute(TABLES)
    conn.execute(FUNCTION)
    for t in stats.warehouse_tables(conn):
        args = sql.SQL(", ").join(
            sql.Literal(a.as_string(conn) if isinstance(a, sql.Composable) else a)
            for a in stats.trigger_arguments(t, stats.columns(conn, t))
        )
        for event, name in stats.TRIGGERS.items():
            ref = {"INSERT": "NEW TABLE AS new_rows", "UPDATE": "OLD TABLE AS old_rows NEW TABLE AS new_rows"}.get(
                event, "OLD TABLE AS old_rows"
            )
            conn.execute(
                sql.SQL(
                    "CREATE OR REPLACE TRIGGER {n} AFTER {op} ON omop.{t} REFERENCING {ref} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION eds_platform.track_stats({args})"
                ).format(n=sql.Identifier(name), op=sql.SQL(event), t=sql.Identifier(t), ref=sql.SQL(ref), args=args)
            )


def _uninstall(conn) -> None:
    for t in stats.warehouse_tables(conn):
        for name in stats.TRIGGERS.values():
            conn.execute(
                sql.SQL("DROP TRIGGER IF EXISTS {} ON omop.{}").format(sql.Identifier(name), sql.Identifier(t))
            )
    conn.execute(
        "DROP FUNCTION IF EXISTS eds_platform.track_stats(); DROP TABLE IF EXISTS eds_platform.orphan_rows; "
        "DROP TABLE IF EXISTS eds_platform.visit_ref; DROP TABLE IF EXISTS eds_platform.event_person; DROP TABLE IF EXISTS eds_platform.touched_visit; "
        "DROP TABLE IF EXISTS eds_platform.orphan_visit_rows; "
        "DROP TABLE IF EXISTS eds_platform.touched_person; DROP TABLE IF EXISTS eds_platform.table_stats"
    )


def upgrade() -> None:
    raw = op.get_bind().connection.driver_connection  # psycopg, in the migration's transaction
    _install(raw)
    stats.rebuild(raw)


def downgrade() -> None:
    _uninstall(op.get_bind().connection.driver_connection)
