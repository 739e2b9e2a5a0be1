"""Key versions and rotation: re-keying runs at the local level, retirement of old versions at the platform.

Rotation of a platform's level-1 key (`eds keys rotate --platform X`) = a new key version, then a re-keying run:

- Local level: every published table records the fingerprint of what its rows depend on besides the data
  (level-1 key version, date-shift range, birth-month and text policies) in the hospital's own database
  (`eds_local.published_state`). When the current fingerprint differs from the last published one, the next run
  extracts the whole table (every row changed before the end of the interval), not only the interval's changes,
  and marks the table `full` in its manifest. A table that fails that night stays due for a full extraction.
- Platform: a `full` table entry replaces the site's rows of that table (delete by site, then load, in the
  batch's transaction); for `person`, the base's persons not in the new set leave `person_site` and persons no
  site refers to any more are deleted. Every warehouse row carries the level-1 key version it was hashed with
  (`_key_version`); a version no row carries any more is retired (`eds_platform.key_version`) and a batch still
  carrying a retired version is rejected. While two versions are live (some members not re-keyed yet) the
  platform does not package: the same patient would appear under two level-1 pseudonyms.

Nothing here reads or logs a key: versions and connection ids only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import psycopg
import psycopg.errors
from psycopg import sql

from eds_network.errors import EdsError, IntegrityError

log = logging.getLogger(__name__)

KEY_VERSION_COLUMN = "_key_version"


class KeyRotationInProgress(EdsError):
    """Rows of two level-1 key versions are live in a warehouse: packaging waits for the re-keying runs."""


# -- local level -----------------------------------------------------------------------------------------


def ensure_local_state(conn: psycopg.Connection) -> None:
    """The hospital's record of what each table was last published under (autocommit connection)."""
    if conn.execute("SELECT to_regclass('eds_local.published_state')").fetchone()[0]:
        return
    try:
        conn.execute(
            "CREATE SCHEMA IF NOT EXISTS eds_local;"
            "CREATE TABLE IF NOT EXISTS eds_local.published_state (table_name text PRIMARY KEY,"
            " fingerprint text NOT NULL, level1_version text NOT NULL, batch_id text NOT NULL,"
            " full_batch_id text, published_at timestamptz NOT NULL DEFAULT now())"
        )
    except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject):
        pass  # created at the same moment by a sibling table task of the first night


def needs_full_extraction(conn: psycopg.Connection, table: str, fingerprint: str, batch_id: str) -> bool:
    """True when this table was last published under another key version or policy, or when the batch being
    (re)run is the one that published the table's last full extraction (a rerun must replace it in kind).

    A table never published before is extracted incrementally (its first interval is its history).
    """
    ensure_local_state(conn)
    row = conn.execute(
        "SELECT fingerprint, full_batch_id FROM eds_local.published_state WHERE table_name = %s", (table,)
    ).fetchone()
    return row is not None and (row[0] != fingerprint or row[1] == batch_id)


def record_published(dsn: str, batch_id: str, level1_version: str, tables: Mapping[str, dict]) -> None:
    """After the manifest is written: what each published table's rows now depend on.

    `tables`: table -> its manifest entry (`fingerprint`, `full`).
    """
    with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
        ensure_local_state(conn)
        with conn.transaction():
            for table, entry in tables.items():
                if not entry.get("fingerprint"):
                    continue
                conn.execute(
                    "INSERT INTO eds_local.published_state (table_name, fingerprint, level1_version, batch_id,"
                    " full_batch_id) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (table_name) DO UPDATE SET"
                    " fingerprint = EXCLUDED.fingerprint, level1_version = EXCLUDED.level1_version,"
                    " batch_id = EXCLUDED.batch_id, published_at = now(),"
                    " full_batch_id = coalesce(EXCLUDED.full_batch_id, published_state.full_batch_id)",
                    (table, entry["fingerprint"], level1_version, batch_id, batch_id if entry.get("full") else None),
                )


# -- platform level --------------------------------------------------------------------------------------


def ensure_registry(conn: psycopg.Connection, tables: Iterable[str]) -> None:
    """The key-version registry, and the `_key_version` column on warehouses created before it existed."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS eds_platform.key_version (version text PRIMARY KEY,"
        " seq bigint GENERATED ALWAYS AS IDENTITY, first_applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
        " retired_at timestamptz)"
    )
    have = {
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = 'omop' AND column_name = %s",
            (KEY_VERSION_COLUMN,),
        )
    }
    for t in [t for t in tables if t not in have]:  # no ALTER (and its exclusive lock) once the column exists
        conn.execute(
            sql.SQL("ALTER TABLE omop.{} ADD COLUMN IF NOT EXISTS {} text").format(
                sql.Identifier(t), sql.Identifier(KEY_VERSION_COLUMN)
            )
        )


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


# -- embedded stack: rotating a key in the secrets file ----------------------------------------------------

RETIRED_KEYS_FILE = "keys.retired.json"


def next_version(version: str) -> str:
    """v1 -> v2, v9 -> v10; any other scheme is refused rather than guessed."""
    import re

    m = re.fullmatch(r"v(\d+)", version)
    if not m:
        raise EdsError(f"cannot derive the next key version from {version!r} (expected v<number>)")
    return f"v{int(m.group(1)) + 1}"


def rotate_stack_key(stack, network, conn_id: str) -> tuple[str, str]:
    """New secret and version for one key of the embedded stack (`.eds/secrets/keys.json`).

    The old secret moves to `keys.retired.json` (mode 0600, kept until its version is retired everywhere; the
    data never needs it: re-keying re-extracts from the sources), the connection's extra lists the retired
    versions, and Airflow's connections file is rewritten. Returns (old version, new version); no secret is
    returned, printed or logged.
    """
    import datetime as dt
    import json
    import secrets as _secrets

    keys = stack.keys(network)
    if conn_id not in keys:
        raise EdsError(f"no key connection {conn_id!r} in the embedded stack's secrets")
    entry = keys[conn_id]
    old = str(entry.get("extra", {}).get("version", "v1"))
    new = next_version(old)
    retired_path = stack.secrets_dir / RETIRED_KEYS_FILE
    retired = json.loads(retired_path.read_text()) if retired_path.exists() else {}
    retired.setdefault(conn_id, {})[old] = {
        "password": entry["password"],
        "retired_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    _write_private(retired_path, retired)
    extra = dict(entry.get("extra", {}))
    extra["version"] = new
    extra["retired_versions"] = [*extra.get("retired_versions", []), old]
    keys[conn_id] = {"password": _secrets.token_hex(32), "extra": extra}
    _write_private(stack.secrets_dir / "keys.json", keys)
    stack.write_connections(network)
    log.info("key %s rotated: version %s -> %s", conn_id, old, new)
    return old, new


def _write_private(path, doc) -> None:
    import json
    import os

    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
    tmp.replace(path)


ROTATABLE = ("platform level-1 keys (--platform ID)", "the national key (--national)")


def key_connection_for(network, *, platform: str | None = None, national: bool = False) -> str:
    if platform and national:
        raise EdsError("rotate one key at a time: --platform or --national")
    if platform:
        return network.platform(platform).key_connection_id
    if national:
        return network.national.key_connection_id
    raise EdsError(f"which key? rotatable: {', '.join(ROTATABLE)}")
