"""What the consolidated warehouse tells about its patients: linkage statistics (persons seen at several
sites, overlap between sites), duplicate events reported by two sites, cross-site foreign keys."""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from eds_network.core import omop
from eds_network.core.config import Platform
from eds_network.core.events import identity_columns
from eds_network.platform.warehouse import (
    conflict_key,
)

log = logging.getLogger(__name__)


def flag_duplicates(conn: psycopg.Connection, platform: Platform, tables: list[str]) -> dict[str, dict[str, int]]:
    """Flag events a second site reported for the same linked person (`core.events`: same concept, date, values).

    The first site's row (lowest site number, then lowest id) is the reference; rows of the other sites are
    recorded in eds_platform.duplicate_event with the row they duplicate. Nothing is deleted. Recomputed in
    one transaction over the rows of the persons linked at two sites or more (`person_site`), so the result
    does not depend on how often consolidation ran, and its cost on how many persons are shared.
    Returns {base: {table: flagged rows}}.
    """
    bases = {b.site_number: b.id for b in platform.members}
    out: dict[str, dict[str, int]] = {b.id: {} for b in platform.members}
    with conn.transaction():
        conn.execute("DELETE FROM eds_platform.duplicate_event")
        # Only a person linked at two sites or more can have an event reported twice: the window runs over
        # their rows (through the person_id index), not over the whole warehouse.
        multi = sql.SQL("SELECT person_id FROM eds_platform.person_site GROUP BY person_id HAVING count(*) > 1")
        for t in tables:
            cols = identity_columns(t)
            if not cols:
                continue
            key = sql.Identifier(conflict_key(t))
            part = sql.SQL(", ").join(map(sql.Identifier, cols))
            conn.execute(
                sql.SQL(
                    "INSERT INTO eds_platform.duplicate_event (table_name, row_id, duplicate_of, person_id, site_number) "
                    "SELECT %s, id, first_id, person_id, _site FROM ("
                    " SELECT {key} AS id, person_id, _site, first_value({key}) OVER w AS first_id,"
                    " first_value(_site) OVER w AS first_site FROM omop.{t} WHERE person_id IN ({multi})"
                    " WINDOW w AS (PARTITION BY {part} ORDER BY _site, {key})) x "
                    "WHERE _site <> first_site"
                ).format(key=key, part=part, t=sql.Identifier(t), multi=multi),
                (t,),
            )
        for t, site, n in conn.execute(
            "SELECT table_name, site_number, count(*) FROM eds_platform.duplicate_event GROUP BY 1, 2 ORDER BY 1, 2"
        ):
            if site in bases:
                out[bases[site]][t] = n
    return out


def linkage_stats(conn: psycopg.Connection) -> dict:
    per_site = dict(
        conn.execute(
            "SELECT base_id, count(*) FROM eds_platform.person_site GROUP BY base_id ORDER BY base_id"
        ).fetchall()
    )
    overlap: dict[str, dict[str, int]] = {a: {} for a in per_site}
    for a, b, n in conn.execute(
        "SELECT a.base_id, b.base_id, count(*) FROM eds_platform.person_site a "
        "JOIN eds_platform.person_site b ON a.person_id = b.person_id AND a.base_id < b.base_id "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    ):
        overlap[a][b] = n
    persons = conn.execute("SELECT count(*) FROM omop.person").fetchone()[0]
    multi = conn.execute(
        "SELECT count(*) FROM (SELECT person_id FROM eds_platform.person_site GROUP BY 1 HAVING count(*) > 1) x"
    ).fetchone()[0]
    return {"persons": persons, "persons_per_site": per_site, "overlap": overlap, "persons_multi_site": multi}


def platform_checks(conn: psycopg.Connection, tables: list[str]) -> dict:
    """Cross-site checks on the consolidated warehouse: every event's person exists (DQD isForeignKey)."""
    out = {}
    for t in tables:
        if t == "person" or not omop.table(t).has("person_id"):
            continue
        # Rows per person first (an index-only scan of the person_id index), then one look-up per person.
        total, orphans = conn.execute(
            sql.SQL(
                "SELECT coalesce(sum(n), 0), coalesce(sum(n) FILTER (WHERE NOT EXISTS (SELECT 1 FROM omop.person p "
                "WHERE p.person_id = e.person_id)), 0) FROM (SELECT person_id, count(*) AS n FROM omop.{} "
                "GROUP BY person_id) e"
            ).format(sql.Identifier(t))
        ).fetchone()
        total, orphans = int(total), int(orphans)
        out[f"isForeignKey:{t}.person_id"] = {"rows": total, "violating_rows": orphans, "passed": orphans == 0}
    return out
