"""Level-1 pseudonyms at the hospital, by an oblivious PRF (RFC 9497): the hospital never holds the key.

Each night, before extraction:

1. `blind_new_identities`: every patient of `identity.patient` (objectors excepted) with no level-1 pseudonym
   under the key holder's current version, or whose identity changed since it was evaluated, gets a fresh
   random blind; the blinded elements (and nothing else: no person id, no count per patient) are written to
   the key holder's exchange area, the blinds stay in the hospital's database (`eds_local.level1_pending`).
2. (key zone) the key holder evaluates the blinded elements (`eds_network.keys.evaluate`).
3. `finalize_evaluations`: the hospital unblinds, finalizes, and keeps `local person_id -> level-1 pseudonym`
   in `eds_local.level1_pseudonym` (64-byte PRF output, per key version): each patient is evaluated once.

The extraction reads that map (`lookup`); a patient without a pseudonym yet is quarantined like a patient
without identity. Nothing here logs or returns an identity, a blind or a pseudonym: counts and versions only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable

import psycopg
import psycopg.errors

from eds_network.core import oprf
from eds_network.core.errors import EdsError, IntegrityError
from eds_network.core.exchange import (
    OPRF_ANNOUNCE,
    OPRF_PART_ELEMENTS,
    OPRF_REQUEST,
    OPRF_RESPONSE,
    oprf_part_key,
    oprf_prefix,
)
from eds_network.core.identity import linkage_identity
from eds_network.core.storage import S3Endpoint, object_exists, put_json, read_json
from eds_network.local.migrations import MIGRATIONS

log = logging.getLogger(__name__)

# What an identity's evaluation depends on: a change of any of these re-evaluates the patient (SQL, per row).
SOURCE_DIGEST_SQL = "sha256(convert_to(concat_ws('|', coalesce(p.nir, ''), p.birth_date::text, p.sex, p.ipp), 'UTF8'))"


def current_version(conn: psycopg.Connection) -> str | None:
    """The key version the hospital's map was last completed under (None before the first round trip)."""
    row = conn.execute("SELECT key_version FROM eds_local.level1_state WHERE id = 1").fetchone()
    return row[0] if row else None


def current_version_of(source_dsn: str) -> str | None:
    MIGRATIONS.ensure(source_dsn)
    with psycopg.connect(source_dsn, connect_timeout=10, autocommit=True) as conn:
        return current_version(conn)


def _due(conn: psycopg.Connection, version: str, person_ids: Iterable[int] | None) -> list[tuple]:
    """(person_id, nir, birth_date, sex, ipp, source_digest) of the patients to evaluate under `version`."""
    where = "" if person_ids is None else " AND p.person_id = ANY(%(ids)s)"
    return conn.execute(
        f"SELECT p.person_id, p.nir, p.birth_date, p.sex, p.ipp, {SOURCE_DIGEST_SQL} FROM identity.patient p"
        " LEFT JOIN eds_local.level1_pseudonym m ON m.person_id = p.person_id AND m.key_version = %(v)s"
        " WHERE (m.person_id IS NULL OR m.source_digest <> " + SOURCE_DIGEST_SQL + ")"
        " AND NOT EXISTS (SELECT 1 FROM identity.opposition o WHERE o.person_id = p.person_id)"
        + where
        + " ORDER BY p.person_id",
        {"v": version, "ids": list(person_ids or [])},
    ).fetchall()


def blind_rows(conn: psycopg.Connection, batch: str, version: str, site: str, person_ids=None) -> list[bytes]:
    """Blind every due identity; the blinds go to `eds_local.level1_pending` (replacing this batch's earlier
    ones). Returns the blinded elements, in pending order."""
    rows = _due(conn, version, person_ids)
    elements: list[bytes] = []
    with conn.transaction():
        conn.execute("DELETE FROM eds_local.level1_pending WHERE batch_id = %s", (batch,))
        with conn.cursor().copy(
            "COPY eds_local.level1_pending (batch_id, part, position, person_id, blind, source_digest) FROM STDIN"
        ) as copy:
            for i, (person_id, nir, birth_date, sex, ipp, digest) in enumerate(rows):
                r, blinded = oprf.blind(linkage_identity(nir, birth_date, sex, ipp, site).encode())
                elements.append(blinded)
                copy.write_row((batch, i // OPRF_PART_ELEMENTS, i % OPRF_PART_ELEMENTS, person_id, r, digest))
    return elements


def finalize_rows(conn: psycopg.Connection, batch: str, version: str, site: str, evaluated: list[bytes]) -> int:
    """Unblind and finalize the evaluated elements of this batch's pending blinds into the map."""
    pending = conn.execute(
        "SELECT q.person_id, q.blind, q.source_digest, p.nir, p.birth_date, p.sex, p.ipp"
        " FROM eds_local.level1_pending q JOIN identity.patient p USING (person_id)"
        " WHERE q.batch_id = %s ORDER BY q.part, q.position",
        (batch,),
    ).fetchall()
    if len(pending) != len(evaluated):
        raise IntegrityError(
            f"{len(evaluated)} evaluated elements for {len(pending)} pending blinds: rerun the blinding", base=None
        )
    out = []
    for (person_id, r, digest, nir, birth_date, sex, ipp), element in zip(pending, evaluated, strict=True):
        level1 = oprf.finalize(linkage_identity(nir, birth_date, sex, ipp, site).encode(), bytes(r), element)
        out.append((version, person_id, level1, digest))
    with conn.transaction():
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO eds_local.level1_pseudonym (key_version, person_id, level1, source_digest)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (key_version, person_id) DO UPDATE SET"
                " level1 = EXCLUDED.level1, source_digest = EXCLUDED.source_digest, evaluated_at = now()",
                out,
            )
        conn.execute("DELETE FROM eds_local.level1_pending WHERE batch_id = %s", (batch,))
        conn.execute(
            "INSERT INTO eds_local.level1_state (id, key_version, batch_id) VALUES (1, %s, %s) ON CONFLICT (id)"
            " DO UPDATE SET key_version = EXCLUDED.key_version, batch_id = EXCLUDED.batch_id, updated_at = now()",
            (version, batch),
        )
    return len(out)


def lookup(conn: psycopg.Connection, version: str, person_ids: list[int]) -> dict[int, bytes]:
    """The level-1 pseudonyms (64-byte PRF outputs) of these patients under `version`, where evaluated."""
    rows = conn.execute(
        "SELECT person_id, level1 FROM eds_local.level1_pseudonym WHERE key_version = %s AND person_id = ANY(%s)",
        (version, person_ids),
    )
    return {pid: bytes(level1) for pid, level1 in rows}


# -- through the key holder's exchange area (S3) ---------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blind_new_identities(
    source_dsn: str, exchange: S3Endpoint, bucket: str, prefix: str, *, base: str, site: str, batch: str
) -> dict:
    """Blind the night's new identities and post the request (parts first, request document last)."""
    s3 = exchange.client()
    where = oprf_prefix(prefix, base, batch)
    announce = object_exists(s3, bucket, where + OPRF_ANNOUNCE) and read_json(s3, bucket, where + OPRF_ANNOUNCE)
    if not announce:
        raise EdsError("the key holder has not announced its key version for this batch", base=base)
    version = announce["key_version"]
    MIGRATIONS.ensure(source_dsn)
    with psycopg.connect(source_dsn, connect_timeout=10, autocommit=True) as conn:
        elements = blind_rows(conn, batch, version, site)
    parts = []
    for i in range(0, max(len(elements), 1), OPRF_PART_ELEMENTS):
        body = b"".join(elements[i : i + OPRF_PART_ELEMENTS])
        key = oprf_part_key(where, "request", i // OPRF_PART_ELEMENTS)
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        parts.append({"key": key, "count": len(body) // oprf.ELEMENT_BYTES, "sha256": _sha(body)})
    s3.delete_object(Bucket=bucket, Key=where + OPRF_RESPONSE)  # an older response answers another request
    request = {
        "kind": "eds-network/oprf-request",
        "suite": oprf.SUITE,
        "base": base,
        "batch_id": batch,
        "key_version": version,
        "count": len(elements),
        "parts": parts,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    put_json(s3, bucket, where + OPRF_REQUEST, request)
    log.info("%s: %d identities blinded for level-1 key %s", base, len(elements), version)
    return {"batch_id": batch, "key_version": version, "blinded": len(elements)}


def finalize_evaluations(
    source_dsn: str, exchange: S3Endpoint, bucket: str, prefix: str, *, base: str, site: str, batch: str
) -> dict:
    """Read the key holder's response to this batch's request, check it answers it, finalize into the map."""
    s3 = exchange.client()
    where = oprf_prefix(prefix, base, batch)
    request_body = s3.get_object(Bucket=bucket, Key=where + OPRF_REQUEST)["Body"].read()
    if not object_exists(s3, bucket, where + OPRF_RESPONSE):
        raise EdsError("no response of the key holder to this batch's request", base=base)
    response = read_json(s3, bucket, where + OPRF_RESPONSE)
    request = json.loads(request_body)
    if response.get("request_sha256") != _sha(request_body) or response.get("count") != request["count"]:
        raise IntegrityError("the key holder's response does not answer this batch's request: rerun", base=base)
    evaluated: list[bytes] = []
    for part in response["parts"]:
        body = s3.get_object(Bucket=bucket, Key=part["key"])["Body"].read()
        if _sha(body) != part["sha256"] or len(body) != part["count"] * oprf.ELEMENT_BYTES:
            raise IntegrityError(f"response part {part['key']} does not match its SHA-256", base=base)
        evaluated += [body[i : i + oprf.ELEMENT_BYTES] for i in range(0, len(body), oprf.ELEMENT_BYTES)]
    MIGRATIONS.ensure(source_dsn)
    with psycopg.connect(source_dsn, connect_timeout=10, autocommit=True) as conn:
        n = finalize_rows(conn, batch, response["key_version"], site, evaluated)
    log.info("%s: %d level-1 pseudonyms finalized under key %s", base, n, response["key_version"])
    return {"batch_id": batch, "key_version": response["key_version"], "finalized": n}
