"""Feasibility on a platform warehouse: how many of each member base's patients match a cohort. Counts only.

The national tables hold every platform's rows under level-2 pseudonyms, but not the base a row came from (the
delivery drops `_site`): the per-base counts are therefore computed here, where each event row still carries its
site number, while the per-platform and network-wide counts (deduplicated by the national pseudonym) are computed
on the national tables (`national.projects.feasibility`). Nothing but integers leaves this module.

- `expand_concepts`: each criterion's concept set with its descendants through `vocab.concept_ancestor`, when the
  warehouse's vocabulary has that table (and it is not empty); otherwise the concept set as given (`source` says
  which).
- `base_counts`: per member base, the persons who satisfy every criterion on that base's own rows (`_site`) and
  the age / sex filters.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from eds_network.core.cohort import Cohort
from eds_network.core.config import Platform


def _has_ancestors(conn: psycopg.Connection) -> bool:
    if conn.execute("SELECT to_regclass('vocab.concept_ancestor')").fetchone()[0] is None:
        return False
    return conn.execute("SELECT EXISTS (SELECT 1 FROM vocab.concept_ancestor)").fetchone()[0]


def expand_concepts(dsn: str, cohort: Cohort) -> tuple[dict[int, tuple[int, ...]], str]:
    """Criterion index -> its concept ids with descendants, and where they came from."""
    out: dict[int, tuple[int, ...]] = {}
    with psycopg.connect(dsn) as conn:
        if not _has_ancestors(conn):
            return {i: tuple(sorted(c.concepts)) for i, c in enumerate(cohort.criteria)}, "as given"
        for i, c in enumerate(cohort.criteria):
            ids = set(c.concepts)
            if c.descendants:
                rows = conn.execute(
                    "SELECT descendant_concept_id FROM vocab.concept_ancestor WHERE ancestor_concept_id = ANY(%s)",
                    (list(c.concepts),),
                )
                ids |= {r[0] for r in rows}
            out[i] = tuple(sorted(ids))
    return out, "concept_ancestor"


def _has_table(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s)", (f"omop.{table}",)).fetchone()[0] is not None


def base_counts(dsn: str, platform: Platform, cohort: Cohort) -> dict[str, int]:
    """Base id -> persons of that base matching `cohort` (its concept sets already expanded) on its own rows."""
    lo, hi = cohort.birth_years
    out: dict[str, int] = {}
    with psycopg.connect(dsn) as conn:
        missing = [c.table for c in cohort.criteria if not _has_table(conn, c.table)]
        for base in platform.members:
            if missing or not _has_table(conn, "person"):
                out[base.id] = 0
                continue
            exists = []
            params: list = []
            for c in cohort.criteria:
                exists.append(
                    sql.SQL(
                        "EXISTS (SELECT 1 FROM omop.{t} e WHERE e.person_id = p.person_id AND e._site = %s"
                        " AND e.{cc} = ANY(%s) AND e.{dc} >= %s AND e.{dc} < %s)"
                    ).format(
                        t=sql.Identifier(c.table), cc=sql.Identifier(c.concept_column), dc=sql.Identifier(c.date_column)
                    )
                )
                params += [base.site_number, list(c.concepts), cohort.period.start, cohort.period.end]
            where, head = [sql.SQL("TRUE")], []
            if cohort.age_min is not None or cohort.age_max is not None:
                where.append(sql.SQL("p.year_of_birth BETWEEN %s AND %s"))
                head += [lo, hi]
            if cohort.gender_concepts:
                where.append(sql.SQL("p.gender_concept_id = ANY(%s)"))
                head.append(list(cohort.gender_concepts))
            params = [*head, *params]
            q = sql.SQL("SELECT count(*) FROM omop.person p WHERE {}").format(sql.SQL(" AND ").join(where + exists))
            out[base.id] = conn.execute(q, params).fetchone()[0]
    return out
