"""The platform warehouse: its resources, the tables a platform carries and their merge keys.

The warehouse's schemas (`omop`: OMOP CDM 5.4 tables plus `_site`, `_batch_id`, `_key_version`; `eds_platform`:
ledger, person_site, rejected batches, duplicate events, key versions, manifest state, vocabulary load) are created
and changed by the Alembic migrations in `platform/migrations` (`MIGRATIONS.ensure(warehouse_dsn)`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from eds_network.core import digests, omop
from eds_network.core.config import Platform
from eds_network.core.exchange import TOKEN_COLUMN
from eds_network.core.storage import S3Endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlatformResources:
    warehouse_dsn: str = field(repr=False)
    intake: S3Endpoint
    outbox: S3Endpoint
    # The platform's current level-1 key version: a batch pseudonymised with another version would not link.
    level1_key_version: str | None = None
    # The trust store (zone -> Ed25519 public key): members' manifests are verified against it. None only in
    # step-level tests that publish unsigned batches; the Airflow adapter always sets it.
    trust: Mapping[str, bytes] | None = None
    # The platform zone's own Ed25519 signing key: its package manifests are signed with it.
    signing_key: bytes | None = field(default=None, repr=False)


def platform_tables(platform: Platform) -> list[str]:
    wanted = {t for b in platform.members for t in b.tables}
    return [t for t in omop.DEFAULT_TABLES if t in wanted] + sorted(wanted - set(omop.DEFAULT_TABLES))


def conflict_key(table: str) -> str:
    return omop.table(table).primary_key or "person_id"


def expected_columns(table: str) -> list[str]:
    cols = omop.table(table).column_names
    return [*cols, TOKEN_COLUMN] if table == "person" else cols


def published_columns(table: str) -> list[str]:
    """The columns of a member's file: the warehouse's, plus (person) the digest beside each 63-bit id, which is
    checked and kept in `eds_platform.person_digest`, never in `omop.person`."""
    cols = expected_columns(table)
    return [*cols, digests.DIGEST_COLUMN] if table == "person" else cols
