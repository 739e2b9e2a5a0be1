"""What each published table's rows depend on besides the data (level-1 key version, pseudonymisation policy).

Recorded in the hospital's own database (`eds_local.published_state`) once a batch's manifest is written. When the
current fingerprint differs from the last published one (a key rotation, a policy change), the next run extracts
the whole table and marks it `full` in its manifest; a table that fails that night stays due. See
`eds_network.keys.rotation` for the whole rotation.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg

from eds_network.local.migrations import MIGRATIONS


def needs_full_extraction(conn: psycopg.Connection, table: str, fingerprint: str, batch_id: str) -> bool:
    """True when this table was last published under another key version or policy, or when the batch being
    (re)run is the one that published the table's last full extraction (a rerun must replace it in kind).

    A table never published before is extracted incrementally (its first interval is its history).
    """
    row = conn.execute(
        "SELECT fingerprint, full_batch_id FROM eds_local.published_state WHERE table_name = %s", (table,)
    ).fetchone()
    return row is not None and (row[0] != fingerprint or row[1] == batch_id)


def record_published(dsn: str, batch_id: str, level1_version: str, tables: Mapping[str, dict]) -> None:
    """After the manifest is written: what each published table's rows now depend on.

    `tables`: table -> its manifest entry (`fingerprint`, `full`).
    """
    MIGRATIONS.ensure(dsn)
    with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
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
