"""The warehouse's per-night statistics, kept up to date by the warehouse itself, so that a night's statistics
cost what the night changed and not the size of the warehouse (issue 23).

- `eds_platform.table_stats` (table, site): rows, rows whose main concept is unmapped (0 or not a valid standard
  concept) and rows whose unit is unknown. Three statement-level AFTER triggers on every `omop` table (INSERT,
  UPDATE, DELETE, each with its transition table) add what a statement wrote and subtract what it removed, so
  every path that changes the warehouse (upsert, tombstones, erasure, a full replacement, a replaced batch, an
  operator's SQL) keeps them exact. The bulk load of an empty table switches them off and counts the table in
  one scan (`recount`) rather than have PostgreSQL keep a transition table of millions of rows.
- `eds_platform.touched_person`: the persons one of whose rows was written or removed since the last
  statistics. The night's duplicate detection and foreign-key check look at these persons only (`refresh`).
- `eds_platform.event_person` (table, person): how many rows of a table each person has, kept by the same
  triggers; `orphan_rows` (table, person): those of a person the warehouse does not hold (DQD isForeignKey).
  Only a touched person can become or stop being one, and it is read from `event_person`: the check costs a
  look-up per touched person and never reads an event table.
- `eds_platform.visit_ref` (table, visit, site): how many rows of a site point to a visit, kept by the same
  triggers; `touched_visit`, the visits written or removed and those newly pointed to or no longer;
  `orphan_visit_rows`: the references to a visit their own site does not hold (an event of site A must not
  point to a visit of site B), looked at again for the touched visits only.

`rebuild` counts everything from the rows (the migration that introduced the tables, a new vocabulary, whose
standard concepts change what is unmapped). A bulk load counts the rows it writes as it writes them
(`loadcounts.py`), so that loading an empty table does not scan it again. `statscheck.from_scratch` computes
every statistic from the rows without writing, the reference the tests compare the maintained ones with.
"""

from __future__ import annotations

import logging
from typing import Protocol

import psycopg
from psycopg import sql

from eds_network.core import omop
from eds_network.core.config import Platform
from eds_network.core.events import identity_columns
from eds_network.core.timing import PhaseTimer
from eds_network.platform.standardise import UNIT_TABLES, VOCAB_SCHEMA, concept_columns
from eds_network.platform.warehouse import conflict_key

log = logging.getLogger(__name__)
TRIGGERS = {"INSERT": "eds_stats_ins", "UPDATE": "eds_stats_upd", "DELETE": "eds_stats_del"}


def warehouse_tables(conn: psycopg.Connection) -> list[str]:
    """The OMOP tables of this warehouse's `omop` schema."""
    have = {
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'omop' AND table_type = 'BASE TABLE'"
        )
    }
    return sorted(have & set(omop.schema()))


def columns(conn: psycopg.Connection, table: str) -> set[str]:
    """The columns omop.<table> has in this warehouse (one taken over from before the migrations may lack some
    of the CDM's): what the statistics look at is what the table has."""
    return {
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'omop' AND table_name = %s",
            (table,),
        )
    }


def has_person(table: str, have: set[str] | None = None) -> bool:
    return "person_id" in have if have is not None else omop.table(table).has("person_id")


def visit_kind(table: str, have: set[str]) -> str:
    """'visits' for visit_occurrence, 'refs' for a table whose rows point to a visit, '' otherwise."""
    if table == "visit_occurrence":
        return "visits"
    return "refs" if "visit_occurrence_id" in have else ""


def conditions(table: str, have: set[str], *, vocab: bool) -> tuple[sql.Composable, sql.Composable]:
    """(unmapped concept, unknown unit) conditions on a row `r` of `table`, whose columns are `have`."""
    cols = concept_columns(table)
    if not cols or cols[0] not in have:
        bad: sql.Composable = sql.SQL("false")
    else:
        cc = sql.SQL("r.{}").format(sql.Identifier(cols[0]))
        bad = sql.SQL("coalesce({cc}, 0) = 0").format(cc=cc)
        if vocab:
            bad = sql.SQL(
                "coalesce({cc}, 0) = 0 OR NOT EXISTS (SELECT 1 FROM {v}.standard_concept c WHERE c.concept_id = {cc})"
            ).format(cc=cc, v=sql.Identifier(VOCAB_SCHEMA))
    unit: sql.Composable = (
        sql.SQL("r.unit_source_value IS NOT NULL AND coalesce(r.unit_concept_id, 0) = 0")
        if table in UNIT_TABLES and {"unit_source_value", "unit_concept_id"} <= have
        else sql.SQL("false")
    )
    return bad, unit


def has_vocabulary(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass('vocab.standard_concept')").fetchone()[0] is not None


def trigger_arguments(table: str, have: set[str]) -> list[sql.Composable | str]:
    """What `eds_platform.track_stats` is given for `table` (see the migration 0006_incremental_stats): the
    unmapped-concept condition with a vocabulary and without one, the unknown-unit condition, 'events' for a
    table of events (person_id) or 'persons' for person itself, 'refs' / 'visits' / '' (`visit_kind`). `have`: the
    table's columns."""
    with_vocab, unit = conditions(table, have, vocab=True)
    without, _ = conditions(table, have, vocab=False)
    persons = ("persons" if table == "person" else "events") if has_person(table, have) else ""
    return [with_vocab, without, unit, persons, visit_kind(table, have)]


def set_tracking(conn: psycopg.Connection, table: str, enabled: bool) -> None:
    """Switch the table's statistics triggers on or off, inside the caller's transaction (a bulk load)."""
    for name in TRIGGERS.values():
        conn.execute(
            sql.SQL("ALTER TABLE omop.{} {} TRIGGER {}").format(
                sql.Identifier(table), sql.SQL("ENABLE" if enabled else "DISABLE"), sql.Identifier(name)
            )
        )


class Counted(Protocol):
    """What a bulk load counted of the rows it wrote (`loadcounts.LoadCounts`): `groups` fills the temp table
    `eds_recount` as `recount`'s scan would."""

    def groups(self, conn: psycopg.Connection) -> None: ...


def recount(
    conn: psycopg.Connection, table: str, *, resume_tracking: bool = False, counted: Counted | None = None
) -> None:
    """Count one table from its rows, and mark each of its persons and visits touched (after a bulk load: every
    row of the table is the batch's; `resume_tracking` then switches its triggers back on).

    The rows' groups (`eds_recount`) come from `counted`, what the bulk load counted of its batches as it wrote
    them, or from one scan of the table: its rows grouped by (person, site) and, for a table pointing to visits,
    by (visit, site) in the same pass (GROUPING SETS). The counts per site, the touched persons, the visit
    references and the touched visits are read from those groups."""
    if resume_tracking:
        set_tracking(conn, table, True)
    have = columns(conn, table)
    person, refs = has_person(table, have), visit_kind(table, have) == "refs"
    conn.execute("DROP TABLE IF EXISTS eds_recount")
    if counted is not None:
        counted.groups(conn)
    else:
        _scan_groups(conn, table, have, person=person, refs=refs)
    _from_groups(conn, table, have, person=person, refs=refs)
    conn.execute("DROP TABLE eds_recount")


def _scan_groups(conn: psycopg.Connection, table: str, have: set[str], *, person: bool, refs: bool) -> None:
    """`eds_recount` (p person, v visit, site, kind: 0 for the first grouping set, 1 for the visits beside the
    persons, n rows, b unmapped concepts, u unknown units) from one scan of omop.<table>."""
    bad, unit = conditions(table, have, vocab=has_vocabulary(conn))
    sets = [s for s, on in (("r.person_id, r._site", person), ("r.visit_occurrence_id, r._site", refs)) if on]
    # the two hash tables in memory (the default 4 MB would make PostgreSQL sort every row, three times slower)
    conn.execute("SET LOCAL work_mem = '64MB'")
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE eds_recount ON COMMIT DROP AS SELECT {p} AS p, {v} AS v, r._site AS site, {kind} AS kind,"
            " count(*) AS n, count(*) FILTER (WHERE {bad}) AS b, count(*) FILTER (WHERE {unit}) AS u "
            "FROM omop.{t} r GROUP BY GROUPING SETS ({sets})"
        ).format(
            p=sql.SQL("r.person_id" if person else "NULL::bigint"),
            v=sql.SQL("r.visit_occurrence_id" if refs else "NULL::bigint"),
            kind=sql.SQL("GROUPING(r.person_id)" if person and refs else "0"),
            bad=bad,
            unit=unit,
            t=sql.Identifier(table),
            sets=sql.SQL(", ").join(sql.SQL(f"({s})") for s in (sets or ["r._site"])),
        )
    )


def _from_groups(conn: psycopg.Connection, table: str, have: set[str], *, person: bool, refs: bool) -> None:
    """The table's statistics from its groups in `eds_recount`."""
    conn.execute("DELETE FROM eds_platform.table_stats WHERE table_name = %s", (table,))
    conn.execute(  # the first grouping set holds every row once
        "INSERT INTO eds_platform.table_stats (table_name, site_number, rows, unmapped_concepts, unmapped_units) "
        "SELECT %s, site, sum(n), sum(b), sum(u) FROM eds_recount WHERE kind = 0 GROUP BY site",
        (table,),
    )
    if person:
        conn.execute(
            "INSERT INTO eds_platform.touched_person (person_id) SELECT DISTINCT p FROM eds_recount "
            "WHERE kind = 0 AND p IS NOT NULL ON CONFLICT DO NOTHING"
        )
    if person and table != "person":
        conn.execute("DELETE FROM eds_platform.event_person WHERE table_name = %s", (table,))
        conn.execute(
            "INSERT INTO eds_platform.event_person (table_name, person_id, rows) "
            "SELECT %s, p, sum(n) FROM eds_recount WHERE kind = 0 AND p IS NOT NULL GROUP BY p",
            (table,),
        )
    if refs:
        visit_set = 1 if person else 0
        conn.execute("DELETE FROM eds_platform.visit_ref WHERE table_name = %s", (table,))
        conn.execute(
            "INSERT INTO eds_platform.visit_ref (table_name, visit_id, site_number, rows) "
            "SELECT %s, v, site, sum(n) FROM eds_recount WHERE kind = %s AND v IS NOT NULL GROUP BY v, site",
            (table, visit_set),
        )
        conn.execute(
            "INSERT INTO eds_platform.touched_visit (visit_id) SELECT DISTINCT v FROM eds_recount "
            "WHERE kind = %s AND v IS NOT NULL ON CONFLICT DO NOTHING",
            (visit_set,),
        )
    elif visit_kind(table, have):  # visit_occurrence itself: each of its visits
        conn.execute(
            "INSERT INTO eds_platform.touched_visit (visit_id) SELECT DISTINCT visit_occurrence_id "
            "FROM omop.visit_occurrence WHERE visit_occurrence_id IS NOT NULL ON CONFLICT DO NOTHING"
        )


def _orphan_visits_query(visits: sql.Composable | None) -> sql.Composable:
    """(table, visit, site, rows) of the rows pointing to a visit their own site does not hold, among `visits`
    (a query of visit ids) or among all, from `visit_ref`."""
    among = sql.SQL("r.visit_id IN ({}) AND ").format(visits) if visits is not None else sql.SQL("")
    return sql.SQL(
        "SELECT r.table_name, r.visit_id, r.site_number, r.rows FROM eds_platform.visit_ref r WHERE {among}"
        "r.rows > 0 AND NOT EXISTS (SELECT 1 FROM omop.visit_occurrence v WHERE v.visit_occurrence_id = r.visit_id "
        "AND v._site = r.site_number)"
    ).format(among=among)


def has_visits(conn: psycopg.Connection) -> bool:
    return "visit_occurrence" in warehouse_tables(conn)


def rebuild(conn: psycopg.Connection) -> None:
    """Every count from the rows themselves (a full scan: a new warehouse schema, a new vocabulary). Every person
    and visit is marked touched, so the next refresh also flags the duplicate events of the whole warehouse once."""
    conn.execute("DELETE FROM eds_platform.table_stats")
    conn.execute("DELETE FROM eds_platform.orphan_rows")
    for t in warehouse_tables(conn):
        held = sql.SQL("SELECT EXISTS (SELECT 1 FROM omop.{})").format(sql.Identifier(t))
        if conn.execute(held).fetchone()[0]:  # an empty table has nothing to count (a new warehouse: none)
            recount(conn, t)
        else:
            conn.execute("DELETE FROM eds_platform.event_person WHERE table_name = %s", (t,))
            conn.execute("DELETE FROM eds_platform.visit_ref WHERE table_name = %s", (t,))
    conn.execute(
        "INSERT INTO eds_platform.orphan_rows (table_name, person_id, rows) SELECT e.table_name, e.person_id, e.rows "
        "FROM eds_platform.event_person e WHERE e.rows > 0 "
        "AND NOT EXISTS (SELECT 1 FROM omop.person p WHERE p.person_id = e.person_id)"
    )
    conn.execute("DELETE FROM eds_platform.orphan_visit_rows")
    if has_visits(conn):
        conn.execute(sql.SQL("INSERT INTO eds_platform.orphan_visit_rows {}").format(_orphan_visits_query(None)))
    log.info("warehouse statistics counted from the rows (%d tables)", len(warehouse_tables(conn)))


# -- the night's statistics -------------------------------------------------------------------------------------


def _take_touched(conn: psycopg.Connection) -> int:
    """The persons touched since the last statistics into the transaction's temp table `eds_night_touched`, and
    out of `touched_person` (put back if the transaction rolls back). Returns how many."""
    conn.execute("DROP TABLE IF EXISTS eds_night_touched")
    n = conn.execute(
        "CREATE TEMP TABLE eds_night_touched ON COMMIT DROP AS WITH d AS "
        "(DELETE FROM eds_platform.touched_person RETURNING person_id) SELECT person_id FROM d"
    ).rowcount
    conn.execute("ALTER TABLE eds_night_touched ADD PRIMARY KEY (person_id)")
    conn.execute("ANALYZE eds_night_touched")
    return n


def _refresh_orphans(conn: psycopg.Connection) -> None:
    """Orphan rows again for the touched persons, and orphan visit references for the touched visits."""
    conn.execute("DROP TABLE IF EXISTS eds_night_visits")
    conn.execute(
        "CREATE TEMP TABLE eds_night_visits ON COMMIT DROP AS WITH d AS "
        "(DELETE FROM eds_platform.touched_visit RETURNING visit_id) SELECT visit_id FROM d"
    )
    # A visit or person no row refers to any more leaves no trace here (an objector's ids go with their rows).
    conn.execute(
        "DELETE FROM eds_platform.visit_ref r USING eds_night_visits t WHERE r.visit_id = t.visit_id AND r.rows = 0"
    )
    conn.execute(
        "DELETE FROM eds_platform.event_person e USING eds_night_touched t WHERE e.person_id = t.person_id AND e.rows = 0"
    )
    conn.execute("DELETE FROM eds_platform.orphan_visit_rows o USING eds_night_visits t WHERE o.visit_id = t.visit_id")
    if has_visits(conn):
        conn.execute(
            sql.SQL("INSERT INTO eds_platform.orphan_visit_rows {}").format(
                _orphan_visits_query(sql.SQL("SELECT visit_id FROM eds_night_visits"))
            )
        )
    # A touched person the warehouse does not hold (normally none): its rows per table, from event_person.
    conn.execute("DELETE FROM eds_platform.orphan_rows o USING eds_night_touched t WHERE o.person_id = t.person_id")
    conn.execute(
        "INSERT INTO eds_platform.orphan_rows (table_name, person_id, rows) SELECT e.table_name, e.person_id, e.rows "
        "FROM eds_platform.event_person e JOIN eds_night_touched t ON t.person_id = e.person_id WHERE e.rows > 0 "
        "AND NOT EXISTS (SELECT 1 FROM omop.person p WHERE p.person_id = e.person_id)"
    )


def duplicates_query(table: str, persons: sql.Composable) -> sql.Composable | None:
    """(row id, id of the row it duplicates, person, site) of the events of `table` a second site reported for
    the same linked person, among `persons` (a query of the ids of persons linked at two sites or more: only
    they can have an event reported twice); None for a table without events. The window runs over their rows
    (through the person_id index). The first site's row (lowest site number, then lowest id) is the reference."""
    cols = identity_columns(table)
    if not cols:
        return None
    key = sql.Identifier(conflict_key(table))
    return sql.SQL(
        "SELECT id, first_id, person_id, _site FROM ("
        " SELECT {key} AS id, person_id, _site, first_value({key}) OVER w AS first_id,"
        " first_value(_site) OVER w AS first_site FROM omop.{t} WHERE person_id IN ({persons})"
        " WINDOW w AS (PARTITION BY {part} ORDER BY _site, {key})) x "
        "WHERE _site <> first_site"
    ).format(key=key, t=sql.Identifier(table), persons=persons, part=sql.SQL(", ").join(map(sql.Identifier, cols)))


def _refresh_duplicates(conn: psycopg.Connection, tables: list[str]) -> None:
    """The duplicate events of the touched persons, flagged again (those of every other person are unchanged:
    an event is a duplicate of another event of the same person)."""
    conn.execute("DELETE FROM eds_platform.duplicate_event d USING eds_night_touched t WHERE d.person_id = t.person_id")
    # Only a person linked at two sites or more can have an event reported twice (normally few of the touched).
    conn.execute("DROP TABLE IF EXISTS eds_night_multi")
    multi = conn.execute(
        "CREATE TEMP TABLE eds_night_multi ON COMMIT DROP AS SELECT ps.person_id FROM eds_platform.person_site ps "
        "JOIN eds_night_touched t ON t.person_id = ps.person_id GROUP BY ps.person_id HAVING count(*) > 1"
    ).rowcount
    if not multi:
        return
    conn.execute("ANALYZE eds_night_multi")
    for t in tables:
        q = duplicates_query(t, sql.SQL("SELECT person_id FROM eds_night_multi"))
        if q is None:
            continue
        conn.execute(
            sql.SQL(
                "INSERT INTO eds_platform.duplicate_event (row_id, duplicate_of, person_id, site_number, table_name) "
                "SELECT *, %s FROM ({}) x"
            ).format(q),
            (t,),
        )


def refresh(conn: psycopg.Connection, platform: Platform, tables: list[str], tm: PhaseTimer) -> tuple:
    """The night's cross-site checks, duplicate events and unmapped rates, in one transaction, from what the
    night's batches touched: (checks, duplicates, standardisation) as `report` gives them."""
    with conn.transaction():
        tm.start("platform_checks")
        n = _take_touched(conn)
        _refresh_orphans(conn)
        tm.start("duplicates")
        _refresh_duplicates(conn, tables)
        tm.start("unmapped")
        out = report(conn, platform, tables)
    log.info("%s: statistics brought up to date from the %d persons the night touched", platform.id, n)
    return out


def report(conn: psycopg.Connection, platform: Platform, tables: list[str]) -> tuple[dict, dict, dict]:
    """Read the maintained statistics: (checks {isForeignKey:<t>.person_id: {rows, violating_rows, passed}},
    duplicates {base: {table: flagged rows}}, standardisation {base: {table: {rows, unmapped_concepts,
    unmapped_rate, unmapped_units}}})."""
    bases = {b.site_number: b.id for b in platform.members}
    counts: dict[str, dict[int, tuple[int, int, int]]] = {}
    for t, site, rows, bad, unit in conn.execute(
        "SELECT table_name, site_number, rows, unmapped_concepts, unmapped_units FROM eds_platform.table_stats "
        "WHERE table_name = ANY(%s) AND rows > 0 ORDER BY 1, 2",
        (tables,),
    ):
        counts.setdefault(t, {})[site] = (int(rows), int(bad), int(unit))
    orphans = dict(
        conn.execute(
            "SELECT table_name, sum(rows) FROM eds_platform.orphan_rows WHERE table_name = ANY(%s) GROUP BY 1",
            (tables,),
        ).fetchall()
    )
    checks = {}
    for t in tables:
        if t == "person" or not has_person(t):
            continue
        total, bad = sum(r for r, _, _ in counts.get(t, {}).values()), int(orphans.get(t, 0))
        checks[f"isForeignKey:{t}.person_id"] = {"rows": total, "violating_rows": bad, "passed": bad == 0}
    duplicates: dict[str, dict[str, int]] = {b.id: {} for b in platform.members}
    for t, site, n in conn.execute(
        "SELECT table_name, site_number, count(*) FROM eds_platform.duplicate_event GROUP BY 1, 2 ORDER BY 1, 2"
    ):
        if site in bases:
            duplicates[bases[site]][t] = n
    std: dict[str, dict[str, dict]] = {b.id: {} for b in platform.members}
    for t in tables:
        if not concept_columns(t):
            continue
        for site, (rows, bad, unit) in counts.get(t, {}).items():
            if site in bases:
                std[bases[site]][t] = {
                    "rows": rows,
                    "unmapped_concepts": bad,
                    "unmapped_rate": round(bad / rows, 6) if rows else 0.0,
                    "unmapped_units": unit,
                }
    return checks, duplicates, std
