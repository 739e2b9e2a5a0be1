"""What the consolidated warehouse tells about its patients: linkage statistics (persons seen at several
sites, overlap between sites). The duplicate events reported by two sites and the cross-site foreign keys are
kept up to date from what each night touched (`platform/stats.py`)."""

from __future__ import annotations

import logging

import psycopg

log = logging.getLogger(__name__)


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
