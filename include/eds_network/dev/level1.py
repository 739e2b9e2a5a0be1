"""The level-1 OPRF round trip in one process, for the embedded stack's tests and benches.

The stack holds every zone's keys, so a test that runs the local step directly (without the DAG's
blind -> evaluate -> finalize tasks) can have the patients it meets evaluated here: the same blind, evaluation
and finalization as the DAG, through the same hospital map, only not across zones.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg

from eds_network.core import oprf
from eds_network.core.crypto import Key
from eds_network.core.identity import linkage_identity
from eds_network.keys.evaluate import server_key
from eds_network.local import level1
from eds_network.local.pseudonymise import PersonMap


def in_process(key: Key, platform_id: str, site: str) -> Callable[[psycopg.Connection, list[int]], None]:
    server = server_key(key, platform_id)

    def evaluate_missing(conn: psycopg.Connection, person_ids: list[int]) -> None:
        batch = f"in-process-{uuid.uuid4().hex[:12]}"
        blinded = level1.blind_rows(conn, batch, key.version, site, person_ids)
        level1.finalize_rows(conn, batch, key.version, site, [oprf.blind_evaluate(server, b) for b in blinded])

    return evaluate_missing


class KeyedPersonMap(PersonMap):
    """A PersonMap that evaluates the level-1 PRF itself from the identities it is given (unit tests only:
    the output equals the blind -> evaluate -> finalize round trip, as the RFC 9497 vectors show)."""

    def __init__(self, key: Key, *args, platform_id: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._server = server_key(key, platform_id or key.name)

    def add(self, rows) -> None:
        rows = list(rows)
        super().add(
            [
                (*r[:5], oprf.evaluate(self._server, linkage_identity(r[1], r[2], r[3], r[4], self.site).encode()))
                for r in rows
            ]
        )


def with_level1_key(res, key: Key, platform_id: str, site: str):
    """The same local resources with another level-1 key (tests of key rotation): its version and its
    in-process evaluation."""
    import dataclasses

    return dataclasses.replace(res, level1_version=key.version, level1_evaluate=in_process(key, platform_id, site))
