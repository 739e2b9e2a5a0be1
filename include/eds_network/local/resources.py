"""What a local task needs, resolved from Airflow connections by the DAG adapter (or by the embedded stack)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from eds_network.core.config import LocalBase, Network
from eds_network.core.crypto import Key
from eds_network.core.storage import S3Endpoint


@dataclass(frozen=True)
class LocalResources:
    """Everything a local task needs (built by `local_resources`)."""

    source_dsn: str = field(repr=False)
    intake: S3Endpoint
    intake_bucket: str
    intake_prefix: str
    level1_version: str  # the key holder's version the hospital's pseudonym map was completed under
    transport_key: Key
    national_public_key: bytes
    national_key_version: str
    # Embedded stack and tests only: run the OPRF round trip in process for patients not evaluated yet (the
    # stack holds every zone's keys). In production the map is filled by the DAG's round trip, before extraction.
    level1_evaluate: Callable[[psycopg.Connection, list[int]], None] | None = field(default=None, repr=False)
    # The hospital's own Ed25519 signing key (32-byte seed): its batch manifests are signed with it, and the
    # platform refuses an unsigned one (platform/manifests.py).
    signing_key: bytes | None = field(default=None, repr=False)
    # The hospitals' dedicated date-shift key: resolved only when the base's platform shifts dates.
    date_shift_key: Key | None = field(default=None, repr=False)


def local_resources(
    network: Network,
    base: LocalBase,
    *,
    source_dsn: str,
    intake: S3Endpoint,
    level1_version: str,
    transport_key: Key,
    national_public_key: tuple[bytes, str],
    intake_prefix: str | None = None,
    level1_evaluate: Callable[[psycopg.Connection, list[int]], None] | None = None,
    signing_key: bytes | None = None,
    date_shift_key: Key | None = None,
) -> LocalResources:
    """The resources of `base`: its platform's intake, the version of its level-1 pseudonym map, the network's
    transport key and the national sealed-box public key (resolved by Airflow connections, or the dev stack)."""
    platform = network.platform(base.platform)
    public, version = national_public_key
    return LocalResources(
        source_dsn=source_dsn,
        intake=intake,
        intake_bucket=platform.intake.bucket,
        intake_prefix=platform.intake.prefix if intake_prefix is None else intake_prefix,
        level1_version=level1_version,
        transport_key=transport_key,
        national_public_key=public,
        national_key_version=version,
        level1_evaluate=level1_evaluate,
        signing_key=signing_key,
        date_shift_key=date_shift_key if base.pseudonymisation.date_shift_days else None,
    )
