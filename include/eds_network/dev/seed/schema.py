"""The source schemas of a demo hospital database: OMOP tables with a change column, update/delete triggers and the deletion log, and the identity schema."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources

import psycopg
from psycopg import sql

from eds_network.core import omop
from eds_network.core.nir import make_nir, nir_is_valid, nir_key  # noqa: F401 (re-exported)
from eds_network.core.omopzip import SQL_TYPE, copy_tables, load_vocabulary, read_zip_csv, zip_member  # noqa: F401
from eds_network.dev.seed.identities import SOURCE_SCHEMA

log = logging.getLogger(__name__)


def _sql_file(name: str) -> str:
    return resources.files("eds_network.dev").joinpath(f"sql/seed/{name}").read_text(encoding="utf-8")


def _delete_key(t: omop.Table) -> str | None:
    """Column recorded in omop._deleted: the primary key, else person_id (DEATH), else nothing."""
    if t.primary_key:
        return t.primary_key
    return "person_id" if t.has("person_id") else None


def create_source_schema(conn: psycopg.Connection, tables: Sequence[str]) -> None:
    """(Re)create schemas `omop` and `identity` of a hospital source database. Does not commit."""
    with conn.cursor() as cur:
        cur.execute(_sql_file("source_schema.sql"))
        for name in tables:
            t = omop.table(name)
            cols = []
            for c in t.columns:
                if not SQL_TYPE.match(c.sql_type):
                    raise ValueError(f"unexpected SQL type {c.sql_type!r} for {t.name}.{c.name}")
                cols.append(
                    sql.SQL("{} {}{}").format(
                        sql.Identifier(c.name), sql.SQL(c.sql_type), sql.SQL(" NOT NULL" if c.required else "")
                    )
                )
            cols.append(sql.SQL("{} timestamptz NOT NULL").format(sql.Identifier(omop.CHANGE_COLUMN)))
            if t.primary_key:
                cols.append(sql.SQL("PRIMARY KEY ({})").format(sql.Identifier(t.primary_key)))
            qname = sql.Identifier(SOURCE_SCHEMA, t.name)
            cur.execute(sql.SQL("CREATE TABLE {} ({})").format(qname, sql.SQL(", ").join(cols)))
            cur.execute(
                sql.SQL("CREATE INDEX {} ON {} ({})").format(
                    sql.Identifier(f"{t.name}__updated_at_idx"), qname, sql.Identifier(omop.CHANGE_COLUMN)
                )
            )
            cur.execute(
                sql.SQL("CREATE TRIGGER {} BEFORE UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
                    sql.Identifier(f"{t.name}_touch_updated_at"),
                    qname,
                    sql.Identifier(SOURCE_SCHEMA, "_touch_updated_at"),
                )
            )
            key = _delete_key(t)
            cur.execute(
                sql.SQL("CREATE TRIGGER {} AFTER DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}({})").format(
                    sql.Identifier(f"{t.name}_record_delete"),
                    qname,
                    sql.Identifier(SOURCE_SCHEMA, "_record_delete"),
                    sql.Literal(key) if key else sql.SQL(""),
                )
            )
    log.info("source schema created: %d omop tables", len(tables))


# ---------------------------------------------------------------------------------------------------
# Zip / CSV / COPY helpers


@contextmanager
def _indexes_deferred(cur: psycopg.Cursor, schema: str, table: str) -> Iterator[None]:
    """Drop the table's indexes (primary key included) for a bulk load, and rebuild them afterwards."""
    cur.execute(
        """
        SELECT con.conname, pg_get_constraintdef(con.oid)
          FROM pg_constraint con
          JOIN pg_class c ON c.oid = con.conrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %s AND c.relname = %s AND con.contype IN ('p', 'u')
        """,
        (schema, table),
    )
    constraints = cur.fetchall()
    cur.execute(
        """
        SELECT ci.relname, pg_get_indexdef(ix.indexrelid)
          FROM pg_index ix
          JOIN pg_class c ON c.oid = ix.indrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_class ci ON ci.oid = ix.indexrelid
         WHERE n.nspname = %s AND c.relname = %s
           AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = ix.indexrelid)
        """,
        (schema, table),
    )
    indexes = cur.fetchall()
    qname = sql.Identifier(schema, table)
    for name, _ in indexes:
        cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)))
    for name, _ in constraints:
        cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(qname, sql.Identifier(name)))
    yield
    for name, definition in constraints:
        cur.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(qname, sql.Identifier(name), sql.SQL(definition))
        )
    for _, definition in indexes:
        cur.execute(sql.SQL(definition))
