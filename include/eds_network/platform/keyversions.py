"""Level-1 key versions at the platform: which versions the warehouse rows carry, and their retirement.

Every warehouse row carries the level-1 key version it was pseudonymised under (`_key_version`); a version no row
carries any more is retired (`eds_platform.key_version`) and a batch still carrying a retired version is rejected.
While two versions are live (some members not re-keyed yet) the platform does not package: the same patient would
appear under two level-1 pseudonyms. Nothing here reads a key: versions only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import psycopg
from psycopg import sql

from eds_network.core.errors import EdsError, IntegrityError

log = logging.getLogger(__name__)

KEY_VERSION_COLUMN = "_key_version"


class KeyRotationInProgress(EdsError):
    """Rows of two level-1 key versions are live in a warehouse: packaging waits for the re-keying runs."""


# -- local level -----------------------------------------------------------------------------------------


def check_not_retired(conn: psycopg.Connection, version: str | None, base: str) -> None:
    if version is None:
        return
    row = conn.execute("SELECT retired_at FROM eds_platform.key_version WHERE version = %s", (version,)).fetchone()
    if row is not None and row[0] is not None:
        raise IntegrityError(
            f"level-1 key version {version!r} is retired at this platform: the batch must be extracted again "
            "under the current key version",
            base=base,
        )


def register_version(conn: psycopg.Connection, version: str | None) -> None:
    if version is not None:
        conn.execute(
            "INSERT INTO eds_platform.key_version (version) VALUES (%s) ON CONFLICT (version) DO NOTHING", (version,)
        )


def live_versions(conn: psycopg.Connection) -> list[str]:
    """Versions not retired, oldest first."""
    return [
        r[0] for r in conn.execute("SELECT version FROM eds_platform.key_version WHERE retired_at IS NULL ORDER BY seq")
    ]


def _sites_with(conn: psycopg.Connection, tables: Iterable[str], version: str) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for t in tables:
        sites = {
            r[0]
            for r in conn.execute(
                sql.SQL("SELECT DISTINCT _site FROM omop.{} WHERE {} = %s").format(
                    sql.Identifier(t), sql.Identifier(KEY_VERSION_COLUMN)
                ),
                (version,),
            )
        }
        if sites:
            out[t] = sites
    return out


def retire_unused(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    """Retire every live version but the newest that no warehouse row carries any more. Returns them.

    Only scans the warehouse while a rotation is in progress (two live versions); a steady night costs one query.
    """
    live = live_versions(conn)
    retired = []
    for v in live[:-1]:
        in_use = any(
            conn.execute(
                sql.SQL("SELECT 1 FROM omop.{} WHERE {} = %s LIMIT 1").format(
                    sql.Identifier(t), sql.Identifier(KEY_VERSION_COLUMN)
                ),
                (v,),
            ).fetchone()
            for t in tables
        )
        if not in_use:
            conn.execute("UPDATE eds_platform.key_version SET retired_at = clock_timestamp() WHERE version = %s", (v,))
            retired.append(v)
    if retired:
        log.info("level-1 key versions retired (no row carries them any more): %s", ", ".join(retired))
    return retired


def require_single_version(
    conn: psycopg.Connection, platform_id: str, tables: list[str], bases_by_site: Mapping[int, str]
) -> None:
    """Refuse to package while rows of two level-1 key versions are live (a rotation not finished)."""
    live = live_versions(conn)
    if len(live) <= 1:
        return
    newest = live[-1]
    pending: dict[str, set[str]] = {}
    for v in live[:-1]:
        for t, sites in _sites_with(conn, tables, v).items():
            for s in sites:
                pending.setdefault(bases_by_site.get(s, f"site {s}"), set()).add(t)
    detail = "; ".join(f"{b}: {', '.join(sorted(ts))}" for b, ts in sorted(pending.items()))
    raise KeyRotationInProgress(
        f"platform {platform_id}: level-1 key rotation in progress ({', '.join(live[:-1])} -> {newest}); rows still "
        f"under the old version: {detail}. The platform is packaged again once these bases have published their "
        "re-keying run (a full extraction under the new key version)."
    )


class TransportRotationInProgress(KeyRotationInProgress):
    """The members' live batches were published under two transport key versions: packaging waits for the rest."""


def transport_version(conn: psycopg.Connection, platform_id: str) -> str | None:
    """The transport key version of every member's live rows: the version of each base's latest applied batch
    (a new version re-extracts every table in full, so that batch replaced the base's rows). None when no batch
    records one. Raises `TransportRotationInProgress` while two bases are on different versions."""
    latest = dict(
        conn.execute(
            "SELECT DISTINCT ON (base_id) base_id, transport_version FROM eds_platform.ledger"
            " WHERE replaced_at IS NULL AND transport_version IS NOT NULL"
            " ORDER BY base_id, applied_at DESC, batch_id DESC"
        ).fetchall()
    )
    versions = sorted(set(latest.values()), key=_version_order)
    if len(versions) <= 1:
        return versions[0] if versions else None
    newest = versions[-1]
    behind = sorted(b for b, v in latest.items() if v != newest)
    raise TransportRotationInProgress(
        f"platform {platform_id}: transport key rotation in progress ({', '.join(versions[:-1])} -> {newest}); "
        f"bases still under the old version: {', '.join(behind)}. The platform is packaged again once they have "
        "published their re-keying run (a full extraction under the new version)."
    )


def acknowledged_transport_version(conn: psycopg.Connection, upto_seq: int | None) -> str | None:
    """The transport key version of the package the HDH acknowledged (the one packaged up to `upto_seq`), so that
    a full package made but never applied is made again."""
    if upto_seq is None:
        return None
    row = conn.execute(
        "SELECT transport_version FROM eds_platform.packaged WHERE upto_seq = %s AND transport_version IS NOT NULL"
        " ORDER BY packaged_at DESC, delivery_id DESC LIMIT 1",
        (int(upto_seq),),
    ).fetchone()
    return row[0] if row else None


def _version_order(version: str) -> tuple[int, str]:
    digits = version.lstrip("v")
    return (int(digits), version) if digits.isdigit() else (-1, version)


# -- embedded stack: rotating a key in the secrets file ----------------------------------------------------
