"""The warehouse's statistics counted again from its rows, nothing written: the reference the tests compare the
statistics the warehouse maintains (`stats.py`) with. A full scan of every table: never run by a night."""

from __future__ import annotations

import psycopg
from psycopg import sql

from eds_network.platform import stats


def _count_query(conn: psycopg.Connection, table: str) -> sql.Composable:
    """(site, rows, unmapped concepts, unknown units) of every row of omop.<table>, per site."""
    bad, unit = stats.conditions(table, stats.columns(conn, table), vocab=stats.has_vocabulary(conn))
    return sql.SQL(
        "SELECT r._site, count(*), count(*) FILTER (WHERE {bad}), count(*) FILTER (WHERE {unit}) "
        "FROM omop.{t} r GROUP BY r._site"
    ).format(bad=bad, unit=unit, t=sql.Identifier(table))


def _rows_per_person(table: str) -> sql.Composable:
    """(person, rows, held: whether the warehouse holds the person) of omop.<table>, counted from its rows."""
    return sql.SQL(
        "SELECT e.person_id, count(*), EXISTS (SELECT 1 FROM omop.person p WHERE p.person_id = e.person_id) "
        "FROM omop.{t} e WHERE e.person_id IS NOT NULL GROUP BY e.person_id"
    ).format(t=sql.Identifier(table))


def _event_tables(conn: psycopg.Connection) -> list[str]:
    return [t for t in stats.warehouse_tables(conn) if t != "person" and stats.has_person(t, stats.columns(conn, t))]


def _visit_refs(conn: psycopg.Connection) -> dict:
    refs = {}
    for t in stats.warehouse_tables(conn):
        if stats.visit_kind(t, stats.columns(conn, t)) == "refs":
            for visit, site, rows in conn.execute(
                sql.SQL(
                    "SELECT visit_occurrence_id, _site, count(*) FROM omop.{} WHERE visit_occurrence_id IS NOT NULL "
                    "GROUP BY 1, 2"
                ).format(sql.Identifier(t))
            ):
                refs[(t, visit, site)] = rows
    return refs


def from_scratch(conn: psycopg.Connection) -> dict:
    """The statistics counted from the rows, nothing written: {"table_stats": {(table, site): (rows, unmapped,
    units)}, "rows_per_person" and "orphans": {(table, person): rows}, "visit_refs" and "orphan_visits":
    {(table, visit, site): rows}, "duplicates": {(table, row id): (duplicate of, person, site)}}. What the
    maintained tables must equal (the tests compare them)."""
    ts = {}
    for t in stats.warehouse_tables(conn):
        for site, rows, bad, unit in conn.execute(_count_query(conn, t)):
            ts[(t, site)] = (rows, bad, unit)
    orphans, per_person = {}, {}
    for t in _event_tables(conn):
        for person, rows, held in conn.execute(_rows_per_person(t)):
            per_person[(t, person)] = rows
            if not held:
                orphans[(t, person)] = rows
    refs = _visit_refs(conn)
    held = (
        {tuple(r) for r in conn.execute("SELECT visit_occurrence_id, _site FROM omop.visit_occurrence")}
        if stats.has_visits(conn)
        else None
    )
    orphan_visits = {k: n for k, n in refs.items() if held is not None and (k[1], k[2]) not in held}
    dup = {}
    every = sql.SQL("SELECT person_id FROM eds_platform.person_site GROUP BY person_id HAVING count(*) > 1")
    for t in stats.warehouse_tables(conn):
        q = stats.duplicates_query(t, every)
        if q is not None:
            for rid, first, person, site in conn.execute(q):
                dup[(t, rid)] = (first, person, site)
    return {
        "table_stats": ts,
        "rows_per_person": per_person,
        "orphans": orphans,
        "visit_refs": refs,
        "orphan_visits": orphan_visits,
        "duplicates": dup,
    }


def maintained(conn: psycopg.Connection) -> dict:
    """The maintained statistics, in `from_scratch`'s shape (sites and persons with no row left omitted)."""

    def read(q: str) -> list[tuple]:
        return [tuple(r) for r in conn.execute(q)]

    ts = {
        (t, s): (r, b, u)
        for t, s, r, b, u in read(
            "SELECT table_name, site_number, rows, unmapped_concepts, unmapped_units FROM eds_platform.table_stats "
            "WHERE rows <> 0 OR unmapped_concepts <> 0 OR unmapped_units <> 0"
        )
    }
    orphans = {(t, p): r for t, p, r in read("SELECT table_name, person_id, rows FROM eds_platform.orphan_rows")}
    per_person = {
        (t, p): r
        for t, p, r in read("SELECT table_name, person_id, rows FROM eds_platform.event_person WHERE rows <> 0")
    }
    dup = {
        (t, rid): (first, p, s)
        for t, rid, first, p, s in read(
            "SELECT table_name, row_id, duplicate_of, person_id, site_number FROM eds_platform.duplicate_event"
        )
    }
    refs = {
        (t, v, s): r
        for t, v, s, r in read(
            "SELECT table_name, visit_id, site_number, rows FROM eds_platform.visit_ref WHERE rows <> 0"
        )
    }
    orphan_visits = {
        (t, v, s): r
        for t, v, s, r in read("SELECT table_name, visit_id, site_number, rows FROM eds_platform.orphan_visit_rows")
    }
    return {
        "table_stats": ts,
        "rows_per_person": per_person,
        "orphans": orphans,
        "visit_refs": refs,
        "orphan_visits": orphan_visits,
        "duplicates": dup,
    }
