"""The full digest beside every 63-bit person id, under uniqueness constraints: a collision is refused, never merged.

A person id is the first 63 bits of a longer keyed digest (level 1: the OPRF output; level 2: the HMAC of the
transport token). Two different patients whose digests share those 63 bits would silently become one patient
(≈ n²/2⁶⁴ for n patients: rare, never impossible). So each zone that merges persons across batches and sites
(the platform warehouse, the national level) keeps a registry `<schema>.person_digest (person_id PRIMARY KEY,
digest UNIQUE)` (created by that zone's migrations) and every new batch is checked against it before anything is merged:

- two digests for one id (two linkage identities, one 63-bit id): refused;
- one digest for two ids (a producer truncating differently, a corrupted file): refused.

The error names the zone, base and table and counts the clashes; it never quotes an id or a digest. The
constraints stay in the table, so even a check skipped by a concurrent writer cannot merge two patients.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import psycopg
from psycopg import sql

from eds_network.core.errors import IntegrityError

TABLE = "person_digest"
# The column of a local person file that carries the digest (hex) beside the 63-bit id.
DIGEST_COLUMN = "_person_digest"
LEVEL1_DIGEST_BYTES = 32  # the first half of the 64-byte level-1 OPRF output (the half the 63-bit id comes from)


def register_from(
    conn: psycopg.Connection,
    schema: str,
    source: sql.Composable,
    *,
    zone: str,
    base: str | None = None,
    table: str = "person",
) -> int:
    """Check then record the (person_id, digest bytea) pairs of relation `source`, inside the caller's transaction.

    Raises IntegrityError (nothing recorded; the caller's transaction is to be rolled back) on any clash within
    `source` or against the registry. Returns the number of new pairs."""
    reg = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(TABLE))
    missing = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE digest IS NULL AND person_id IS NOT NULL").format(source)
    ).fetchone()[0]
    if missing:
        raise IntegrityError(
            f"{zone}: {missing} person rows carry no digest beside their 63-bit id: refused (a collision could "
            "not be detected)",
            base=base,
            table=table,
            column=DIGEST_COLUMN,
        )
    inner_ids, inner_digests = conn.execute(
        sql.SQL(
            "SELECT (SELECT count(*) FROM (SELECT person_id FROM {s} GROUP BY person_id "
            "HAVING count(DISTINCT digest) > 1) a), "
            "(SELECT count(*) FROM (SELECT digest FROM {s} GROUP BY digest HAVING count(DISTINCT person_id) > 1) b)"
        ).format(s=source)
    ).fetchone()
    outer_ids, outer_digests = conn.execute(
        sql.SQL(
            "SELECT (SELECT count(DISTINCT s.person_id) FROM {s} s JOIN {r} r USING (person_id) "
            "WHERE r.digest <> s.digest), "
            "(SELECT count(DISTINCT s.digest) FROM {s} s JOIN {r} r USING (digest) WHERE r.person_id <> s.person_id)"
        ).format(s=source, r=reg)
    ).fetchone()
    ids, digests = inner_ids + outer_ids, inner_digests + outer_digests
    if ids or digests:
        parts = []
        if ids:
            parts.append(f"{ids} person ids given by two different digests (two linkage identities, one 63-bit id)")
        if digests:
            parts.append(f"{digests} digests given two different person ids")
        raise IntegrityError(
            f"{zone}: person id collision: {'; '.join(parts)}: the batch is refused, never merged",
            base=base,
            table=table,
            column="person_id",
        )
    cur = conn.execute(
        sql.SQL(
            "INSERT INTO {r} (person_id, digest) SELECT DISTINCT person_id, digest FROM {s} "
            "WHERE person_id IS NOT NULL ON CONFLICT DO NOTHING"
        ).format(r=reg, s=source)
    )
    return cur.rowcount


def register_pairs(
    conn: psycopg.Connection,
    schema: str,
    pairs: Iterable[tuple[int, bytes]],
    *,
    zone: str,
    base: str | None = None,
    table: str = "person",
) -> int:
    """`register_from` for pairs held in memory: COPY them into a temporary table first."""
    stage = sql.Identifier("stage_person_digest")
    conn.execute(
        sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (person_id bigint, digest bytea) ON COMMIT DROP").format(stage)
    )
    conn.execute(sql.SQL("TRUNCATE {}").format(stage))
    with conn.cursor().copy(sql.SQL("COPY {} (person_id, digest) FROM STDIN").format(stage)) as cp:
        buf = io.StringIO()
        for pid, digest in pairs:
            buf.write(f"{int(pid)}\t\\\\x{bytes(digest).hex()}\n")
            if buf.tell() > 1 << 20:
                cp.write(buf.getvalue())
                buf = io.StringIO()
        cp.write(buf.getvalue())
    return register_from(conn, schema, stage, zone=zone, base=base, table=table)


def forget(conn: psycopg.Connection, schema: str, person_ids: Iterable[int]) -> int:
    """Drop the digests of persons no longer held (an objection erased everywhere)."""
    ids = [int(p) for p in person_ids]
    if not ids:
        return 0
    reg = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(TABLE))
    return conn.execute(sql.SQL("DELETE FROM {} WHERE person_id = ANY(%s)").format(reg), (ids,)).rowcount
