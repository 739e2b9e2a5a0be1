"""Merge one verified batch into the warehouse, inside the caller's transaction: COPY each file into a
temporary staging table, standardise it, upsert it, apply the batch's tombstones.

A `full` table (re-keying run) replaces the site's rows; a new version of an already applied batch (a local
rerun) replaces the old one. A person row is held by the lowest site number that treats the patient.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg import sql

from eds_network.core import digests, omop
from eds_network.core.errors import IntegrityError
from eds_network.core.timing import PhaseTimer
from eds_network.platform import changes, keyversions, loadcounts, standardise, stats
from eds_network.platform.warehouse import (
    conflict_key,
    expected_columns,
)

log = logging.getLogger(__name__)
DIGEST = digests.DIGEST_COLUMN
SCHEMA = "eds_platform"
COPY_BATCH_ROWS = 100_000  # rows read, encoded and sent to COPY at a time


def _copy_parquet(
    conn: psycopg.Connection,
    path: Path,
    target: sql.Composable,
    columns: list[str],
    *,
    freeze: bool = False,
    counts: loadcounts.LoadCounts | None = None,
) -> int:
    """COPY a Parquet file into a table, batch by batch (CSV is the fastest COPY input from Arrow).
    `freeze`: rows written frozen (the table was truncated in this transaction): no later VACUUM rewrite.
    `counts`: each batch is also counted there, in the encoder thread (a bulk load's statistics)."""
    pf = pq.ParquetFile(path)
    n = 0
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv{})").format(
        target, sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(", FREEZE" if freeze else "")
    )
    opts = pacsv.WriteOptions(include_header=False, quoting_style="needed")

    def encoded():  # read + CSV-encode (Arrow, outside the GIL) one row group while the server parses the last
        for rb in pf.iter_batches(batch_size=COPY_BATCH_ROWS, columns=columns):
            if counts is not None:
                counts.add(rb)
            buf = io.BytesIO()
            pacsv.write_csv(rb, buf, write_options=opts)
            yield rb.num_rows, buf.getvalue()

    with conn.cursor().copy(stmt) as copy, ThreadPoolExecutor(1, thread_name_prefix="eds-csv") as pool:
        chunks = encoded()
        ahead = pool.submit(next, chunks, None)
        while (got := ahead.result()) is not None:
            ahead = pool.submit(next, chunks, None)
            copy.write(got[1])
            n += got[0]
    return n


def _remove_batch(conn: psycopg.Connection, manifest: dict, tables: list[str], files: Mapping[str, Path]) -> None:
    """Take out what an earlier version of this batch merged in the tables the new version does not carry (rows
    a later batch overwrote are kept); in the others, `_drop_superseded` removes after the merge only the rows
    the new version no longer holds, so a rerun with the same rows changes nothing."""
    bid, base = manifest["batch_id"], manifest["base"]
    for t in reversed(tables):
        if t == "person" and t not in files:
            conn.execute("DELETE FROM eds_platform.person_site WHERE base_id = %s AND batch_id = %s", (base, bid))
        elif t not in files:
            conn.execute(sql.SQL("DELETE FROM omop.{} WHERE _batch_id = %s").format(sql.Identifier(t)), (bid,))


def _drop_superseded(conn: psycopg.Connection, t: str, stage: sql.Identifier, manifest: dict) -> None:
    """Rows (for `person`: the site's memberships) the earlier version of this batch merged and the new one,
    now merged from `stage`, no longer holds."""
    bid, base = manifest["batch_id"], manifest["base"]
    if t == "person":
        conn.execute(
            sql.SQL(
                "DELETE FROM eds_platform.person_site ps WHERE ps.base_id = %s AND ps.batch_id = %s "
                "AND NOT EXISTS (SELECT 1 FROM {} s WHERE s.person_id = ps.person_id)"
            ).format(stage),
            (base, bid),
        )
        return
    key = sql.Identifier(conflict_key(t))
    conn.execute(
        sql.SQL(
            "DELETE FROM omop.{t} w WHERE w._batch_id = %s AND NOT EXISTS (SELECT 1 FROM {s} WHERE {s}.{k} = w.{k})"
        ).format(t=sql.Identifier(t), s=stage, k=key),
        (bid,),
    )


def apply_batch(
    conn: psycopg.Connection,
    manifest: dict,
    files: dict[str, Path],
    tombs: dict[str, Path],
    tables: list[str],
    *,
    vocabulary: bool = False,
    replace: bool = False,
    timer: PhaseTimer | None = None,
) -> dict[str, int]:
    """Merge the batch's files (table -> Parquet) and tombstones; `replace`: an earlier version of the batch was
    applied, what it holds that the new one no longer does goes. Returns rows per table (and standardisation and
    tombstone counts). `timer`, if given, receives the wall and CPU seconds of each phase (stage, standardise,
    upsert…)."""
    tm = timer or PhaseTimer()
    rows: dict[str, int] = {}
    bid = manifest["batch_id"]
    version = manifest.get("key_versions", {}).get("level1")
    if replace:
        tm.start("remove_previous")
        _remove_batch(conn, manifest, tables, files)
    replaced = False
    for t in [t for t in tables if t in files]:
        replaced |= _merge_table(
            conn, manifest, t, files[t], version, rows, vocabulary=vocabulary, replace=replace, tm=tm
        )
    tm.start("tombstones")
    for t, path in tombs.items():
        rows[f"{t}.tombstones"] = _apply_tombstones(conn, manifest, t, path, tables, rows)
    tm.start("cleanup")
    if replaced:
        # Persons no site refers to any more (their old level-1 pseudonym after a re-keying run) go.
        conn.execute(
            "DELETE FROM omop.person p WHERE NOT EXISTS ("
            "SELECT 1 FROM eds_platform.person_site s WHERE s.person_id = p.person_id)"
        )
    keyversions.register_version(conn, version)
    if replace:
        # Persons the new version no longer carries and no other site treats: gone with their last site.
        conn.execute(
            "DELETE FROM omop.person p WHERE p._batch_id = %s AND NOT EXISTS ("
            "SELECT 1 FROM eds_platform.person_site s WHERE s.person_id = p.person_id)",
            (bid,),
        )
    if replace or replaced or tombs:
        # Digests of persons the warehouse no longer holds go with them (an objection leaves no trace).
        conn.execute(
            "DELETE FROM eds_platform.person_digest d WHERE NOT EXISTS ("
            "SELECT 1 FROM omop.person p WHERE p.person_id = d.person_id)"
        )
    tm.stop()
    return rows


def _drop_indexes(conn: psycopg.Connection, table: str) -> list[tuple]:
    """Drop omop.<table>'s indexes and the constraints they back; returns (name, index definition, constraint,
    constraint definition) of each, to rebuild them."""
    ident = sql.SQL("omop.{}").format(sql.Identifier(table))
    indexes = conn.execute(
        "SELECT ic.relname, pg_get_indexdef(i.indexrelid), c.conname, pg_get_constraintdef(c.oid) "
        "FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
        "LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid "
        "WHERE i.indrelid = %s::regclass ORDER BY i.indisprimary DESC, ic.relname",
        (f"omop.{table}",),
    ).fetchall()
    for name, _idx, con, _cdef in indexes:
        if con:
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(ident, sql.Identifier(con)))
        else:
            conn.execute(sql.SQL("DROP INDEX omop.{}").format(sql.Identifier(name)))
    return indexes


def _bulk_load(
    conn: psycopg.Connection,
    table: str,
    path: Path,
    cols: list[str],
    site: int,
    bid: str,
    version: str | None,
    vocabulary: bool,
    rows: dict[str, int],
    tm: PhaseTimer,
) -> bool:
    """Load a batch into a warehouse table that holds no row yet (a site's first delivery, a new platform) the
    way PostgreSQL loads fastest: its indexes dropped, the file COPYed straight into the table (no staging
    copy, no upsert: there is nothing to conflict with, nor another site's ids to collide with), standardised
    in place, then the indexes rebuilt in one sorted pass each. All inside the batch's transaction (DDL is
    transactional: a crash or a refused row leaves the table as it was). Returns False (nothing done) when the
    table holds rows: the batch then goes through the staging table and the upsert."""
    ident = sql.SQL("omop.{}").format(sql.Identifier(table))
    empty = sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(ident)
    if not conn.execute(empty).fetchone()[0]:
        return False
    # Readers and other writers wait for the batch's commit; check again once the lock is held.
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(ident))
    if not conn.execute(empty).fetchone()[0]:
        return False
    tm.start("bulk_load")
    indexes = _drop_indexes(conn, table)
    # The batch's constants as column defaults for the COPY (restored below, in the same transaction). The
    # batch's rows share one change sequence value, drawn once: they are delivered together (changes.py).
    seq = conn.execute("SELECT nextval('eds_platform.change_seq')").fetchone()[0]
    meta = {"_site": site, "_batch_id": bid, keyversions.KEY_VERSION_COLUMN: version, changes.SEQ_COLUMN: seq}
    for c, v in meta.items():
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}").format(ident, sql.Identifier(c), sql.Literal(v))
        )
    # Empty, locked: truncating it lets COPY write the rows frozen and all-visible (index-only scans at once).
    # The statistics triggers are off for the load (no transition table of every row): the rows are counted
    # as the COPY sends them, and the statistics written from those counts below (no scan of the table).
    conn.execute(sql.SQL("TRUNCATE {}").format(ident))
    stats.set_tracking(conn, table, False)
    counts = loadcounts.LoadCounts(conn, table, site, cols)
    n = _copy_parquet(conn, path, ident, cols, freeze=True, counts=counts if counts.covers else None)
    for c in meta:
        conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(ident, sql.Identifier(c)))
    conn.execute(
        sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT nextval('eds_platform.change_seq')").format(
            ident, sql.Identifier(changes.SEQ_COLUMN)
        )
    )
    if vocabulary:
        tm.start("standardise")
        std = standardise.standardise_stage(conn, table, ident)  # every row of the table is this batch's
        if std.mapped:
            rows[f"{table}.mapped_concepts"] = std.mapped
        if std.units:
            rows[f"{table}.units_normalised"] = std.units
    tm.start("statistics")
    stats.recount(conn, table, resume_tracking=True, counted=counts if counts.covers else None)
    tm.start("index_build")
    conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
    for _name, idx, con, cdef in indexes:
        if con:  # a duplicate id within the batch fails here (IntegrityError): the batch is refused
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(ident, sql.Identifier(con), sql.SQL(cdef))
            )
        else:
            conn.execute(idx)
    rows[table] = n
    log.info("%s: %d rows bulk-loaded into the empty warehouse table (indexes rebuilt after the load)", table, n)
    return True


def _register_digests(conn: psycopg.Connection, stage: sql.Identifier, base: str) -> None:
    view = sql.Identifier("stage_person_digest_v")
    conn.execute(
        sql.SQL(
            "CREATE TEMP VIEW {} AS SELECT person_id, CASE WHEN {d} ~ '^[0-9a-f]{{64}}$' THEN decode({d}, 'hex') END "
            "AS digest FROM {}"
        ).format(view, stage, d=sql.Identifier(DIGEST))
    )
    try:
        digests.register_from(conn, SCHEMA, view, zone="platform", base=base)
    finally:
        conn.execute(sql.SQL("DROP VIEW {}").format(view))


def _merge_table(
    conn: psycopg.Connection,
    manifest: dict,
    t: str,
    path: Path,
    version,
    rows: dict,
    *,
    vocabulary: bool,
    replace: bool,
    tm: PhaseTimer,
) -> bool:
    """Stage one file, standardise it, upsert it (or bulk-load it into an empty table); True when it replaced
    the site's rows (a `full` table). `replace`: the rows the batch's earlier version merged and this one no
    longer holds go after the upsert."""
    site = int(manifest["site_number"])
    cols = expected_columns(t)
    full = bool(manifest["tables"][t].get("full"))
    tm.start("stage_copy")
    if t != "person" and _bulk_load(conn, t, path, cols, site, manifest["batch_id"], version, vocabulary, rows, tm):
        return full
    stage = sql.Identifier(f"stage_{t}")
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM omop.{} WITH NO DATA").format(
            stage, sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(t)
        )
    )
    n = _stage_person(conn, manifest, path, stage, cols) if t == "person" else _copy_parquet(conn, path, stage, cols)
    if full:
        # Re-keying run (key rotation / policy change): this file is the site's whole table.
        _replace_site_rows(conn, t, stage, site, manifest["base"])
    if vocabulary:
        tm.start("standardise")
        std = standardise.standardise_stage(conn, t, stage)
        if std.mapped:
            rows[f"{t}.mapped_concepts"] = std.mapped
        if std.units:
            rows[f"{t}.units_normalised"] = std.units
    tm.start("collision_check")
    _refuse_collisions(conn, manifest, t, stage, site)
    tm.start("upsert")
    _upsert(conn, t, stage, cols, (site, manifest["batch_id"], version))
    if t == "person":
        conn.execute(
            sql.SQL(
                "INSERT INTO eds_platform.person_site (person_id, base_id, site_number, batch_id) "
                "SELECT person_id, %s, %s, %s FROM {} "
                "ON CONFLICT (person_id, base_id) DO UPDATE SET batch_id = EXCLUDED.batch_id"
            ).format(stage),
            (manifest["base"], site, manifest["batch_id"]),
        )
    if replace:
        _drop_superseded(conn, t, stage, manifest)
    rows[t] = n
    return full


def _stage_person(conn: psycopg.Connection, manifest: dict, path: Path, stage: sql.Identifier, cols: list[str]) -> int:
    """The person file staged with the full level-1 digest beside each 63-bit id, checked against the registry
    before any merge (a file without digests is refused: a collision could not be detected)."""
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} text").format(stage, sql.Identifier(DIGEST)))
    if DIGEST not in pq.ParquetFile(path).schema_arrow.names:
        raise IntegrityError(
            "the person file carries no digest beside its 63-bit ids: refused (a collision could not be detected)",
            base=manifest["base"],
            table="person",
            column=DIGEST,
        )
    n = _copy_parquet(conn, path, stage, [*cols, DIGEST])
    _register_digests(conn, stage, manifest["base"])
    return n


def _refuse_collisions(conn: psycopg.Connection, manifest: dict, t: str, stage: sql.Identifier, site: int) -> None:
    """Row ids are keyed per site: the same id already held by another site is a collision, refused."""
    key = conflict_key(t)
    if key == "person_id":
        return
    clash = conn.execute(
        sql.SQL("SELECT count(*) FROM {s} JOIN omop.{t} w USING ({k}) WHERE w._site <> %s").format(
            s=stage, t=sql.Identifier(t), k=sql.Identifier(key)
        ),
        (site,),
    ).fetchone()[0]
    if clash:
        raise IntegrityError(
            f"{clash} row ids already held by another site (63-bit collision): the batch is refused, never merged",
            base=manifest["base"],
            table=t,
        )


def _upsert(conn: psycopg.Connection, t: str, stage: sql.Identifier, cols: list[str], meta_values: tuple) -> None:
    """Staged rows into omop.<t> with the platform's columns (site, batch, key version), upserted on the key.

    A row keyed by the patient (person, death) is held by the lowest site number that treats the patient (its
    later versions update it; other sites' copies do not), so the warehouse does not depend on the order batches
    arrive in, and a rerun of every site's night changes nothing (no site takes the row back from another, which
    would draw a new change sequence and deliver it again)."""
    key = conflict_key(t)
    meta = ["_site", "_batch_id", keyversions.KEY_VERSION_COLUMN]
    updates = sql.SQL(", ").join(
        sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in [*cols, *meta] if c != key
    )
    only = (
        sql.SQL(" WHERE omop.{}._site >= EXCLUDED._site").format(sql.Identifier(t))
        if key == "person_id"
        else sql.SQL("")
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO omop.{t} ({cols}, {meta}) SELECT {cols}, %s, %s, %s FROM {stage} "
            "ON CONFLICT ({key}) DO UPDATE SET {updates}{only}"
        ).format(
            t=sql.Identifier(t),
            cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
            meta=sql.SQL(", ").join(map(sql.Identifier, meta)),
            stage=stage,
            key=sql.Identifier(key),
            updates=updates,
            only=only,
        ),
        meta_values,
    )


LINKED = {  # tables without person_id whose rows hang on other rows' ids: they go with them
    "cost": ("cost_event_id",),
    "fact_relationship": ("fact_id_1", "fact_id_2"),
    "episode_event": ("event_id", "episode_id"),
}


def erase_persons(conn: psycopg.Connection, persons: list[int], tables: list[str]) -> int:
    """An objection: every row of these level-1 persons, whatever site sent it (the person row whichever site the
    platform kept it from, every event, and the cost, fact_relationship and episode_event rows that hang on their
    ids), and their site memberships. The change log records the deletions for the next delivery. Returns the
    rows deleted."""
    n = 0
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS erased_ids (id bigint) ON COMMIT DROP")
    conn.execute("TRUNCATE erased_ids")
    conn.execute("INSERT INTO erased_ids SELECT unnest(%s::bigint[])", (persons,))
    for t in tables:
        if t == "person" or t in LINKED or "person_id" not in omop.table(t).column_names:
            continue
        key = conflict_key(t)
        q = sql.SQL("WITH d AS (DELETE FROM omop.{t} WHERE person_id = ANY(%s) RETURNING {k}) ").format(
            t=sql.Identifier(t), k=sql.Identifier(key)
        )
        cur = conn.execute(
            q + sql.SQL("INSERT INTO erased_ids SELECT {k} FROM d").format(k=sql.Identifier(key)), (persons,)
        )
        n += cur.rowcount
    for t, cols in LINKED.items():
        if t not in tables:
            continue
        cond = sql.SQL(" OR ").join(
            sql.SQL("{c} IN (SELECT id FROM erased_ids)").format(c=sql.Identifier(c)) for c in cols
        )
        n += conn.execute(sql.SQL("DELETE FROM omop.{} WHERE {}").format(sql.Identifier(t), cond)).rowcount
    conn.execute("DELETE FROM eds_platform.person_site WHERE person_id = ANY(%s)", (persons,))
    conn.execute("DELETE FROM eds_platform.duplicate_event WHERE person_id = ANY(%s)", (persons,))
    n += conn.execute("DELETE FROM omop.person WHERE person_id = ANY(%s)", (persons,)).rowcount
    return n


def _apply_tombstones(conn: psycopg.Connection, manifest: dict, t: str, path: Path, tables: list[str], rows) -> int:
    """A row tombstone removes the row; a person tombstone (an objection) erases every row of that patient,
    whatever site sent it (`erase_persons`, counted in rows["<t>.erased"]). Returns the number of tombstones."""
    tomb = pq.read_table(path)
    kinds = tomb.column("kind").to_pylist()
    ids = tomb.column("id").to_pylist()
    persons = [i for k, i in zip(kinds, ids, strict=True) if k == "person"]
    row_ids = [i for k, i in zip(kinds, ids, strict=True) if k == "row"]
    if row_ids:
        conn.execute(
            sql.SQL("DELETE FROM omop.{} WHERE {} = ANY(%s)").format(
                sql.Identifier(t), sql.Identifier(conflict_key(t))
            ),
            (row_ids,),
        )
    if persons:
        rows[f"{t}.erased"] = erase_persons(conn, persons, tables)
    return len(ids)


def _replace_site_rows(conn: psycopg.Connection, table: str, stage: sql.Identifier, site: int, base_id: str) -> None:
    """A full extraction replaces what this site contributed to `table`: its rows (event ids are namespaced by
    site, so `_site` tells them apart) or, for `person` (shared between sites), its membership in person_site."""
    if table == "person":
        conn.execute(
            sql.SQL(
                "DELETE FROM eds_platform.person_site WHERE base_id = %s AND person_id NOT IN "
                "(SELECT person_id FROM {})"
            ).format(stage),
            (base_id,),
        )
    else:
        conn.execute(sql.SQL("DELETE FROM omop.{} WHERE _site = %s").format(sql.Identifier(table)), (site,))
