"""The one module that talks to Airflow: resolves connections into the plain resources step modules take.

Step modules never import Airflow; DAG files call these helpers inside task code (never at parse time).
Key material is registered with Airflow's secrets masker as soon as it is read.
"""

from __future__ import annotations

import base64

from airflow.sdk import Connection
from airflow.sdk.log import mask_secret

from eds_network.core import zones
from eds_network.core.config import LocalBase, Network, Platform
from eds_network.core.crypto import Key
from eds_network.core.errors import ConfigError
from eds_network.core.storage import S3Endpoint, verify_of
from eds_network.local import resources
from eds_network.local.resources import LocalResources
from eds_network.national.transfer import NationalResources
from eds_network.platform.consolidate import PlatformResources


def _conn(conn_id: str, what: str) -> Connection:
    try:
        return Connection.get(conn_id)
    except Exception as exc:  # the SDK raises its own not-found error type
        raise ConfigError(f"{what}: Airflow connection {conn_id!r} is not defined ({type(exc).__name__})") from None


def pg_dsn(conn_id: str, what: str = "database") -> str:
    """The libpq URI of a Postgres connection, built by the Postgres provider's hook (SQLAlchemy's URL quoting)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    c = _conn(conn_id, what)
    if c.password:
        mask_secret(c.password)
    url = PostgresHook(postgres_conn_id=conn_id, connection=c).sqlalchemy_url
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def s3_endpoint(conn_id: str, what: str = "object storage") -> S3Endpoint:
    c = _conn(conn_id, what)
    extra = c.extra_dejson
    if c.password:
        mask_secret(c.password)
    return S3Endpoint(
        endpoint_url=extra.get("endpoint_url"),
        access_key=c.login or extra.get("aws_access_key_id"),
        secret_key=c.password or extra.get("aws_secret_access_key"),
        region=extra.get("region_name", "eu-west-3"),
        verify=verify_of(extra.get("verify")),  # a private CA's bundle (docker-compose: MinIO behind TLS)
    )


def key(conn_id: str, what: str) -> Key:
    c = _conn(conn_id, what)
    if not c.password:
        raise ConfigError(f"{what}: connection {conn_id!r} holds no key (password field is empty)")
    mask_secret(c.password)
    k = Key.from_secret(conn_id, c.password, str(c.extra_dejson.get("version", "v1")))
    _mask_bytes(k.secret)
    return k


def key_version(conn_id: str, what: str) -> str:
    """The version of a key, from its connection's extra: the platform zone holds the version, never the key."""
    c = _conn(conn_id, what)
    version = c.extra_dejson.get("version")
    if not version:
        raise ConfigError(f"{what}: connection {conn_id!r} has no version in its extra")
    return str(version)


def _mask_bytes(secret: bytes) -> None:
    """The key in the other spellings it could leak in (hex, base64), whatever spelling the connection used."""
    mask_secret(secret.hex())
    mask_secret(base64.b64encode(secret).decode())


def box_private_key(conn_id: str) -> tuple[bytes, str]:
    c = _conn(conn_id, "national sealed-box key")
    if not c.password:
        raise ConfigError(f"national sealed-box key: connection {conn_id!r} holds no key (password field is empty)")
    mask_secret(c.password)
    private = base64.b64decode(c.password)
    _mask_bytes(private)
    return private, str(c.extra_dejson.get("version", "v1"))


def box_public_key(conn_id: str) -> tuple[bytes, str]:
    c = _conn(conn_id, "national sealed-box public key")
    pub = c.extra_dejson.get("public_key")
    if not pub:
        raise ConfigError(f"connection {conn_id!r} has no public_key in its extra")
    return base64.b64decode(pub), str(c.extra_dejson.get("version", "v1"))


def local_resources(network: Network, base: LocalBase) -> LocalResources:
    """The hospital zone's resources: its source, its platform's intake, the transport and sealed-box public keys,
    and the version of its level-1 pseudonym map — never the level-1 key, which only the key holder has."""
    from eds_network.core.errors import EdsError
    from eds_network.local import level1

    platform = network.platform(base.platform)
    source_dsn = pg_dsn(base.source_connection_id, f"source of base {base.id}")
    level1_version = level1.current_version_of(source_dsn)
    if level1_version is None:
        raise EdsError(
            "no level-1 pseudonym map yet: the round trip with the key holder has not completed", base=base.id
        )
    return resources.local_resources(
        network,
        base,
        source_dsn=source_dsn,
        intake=s3_endpoint(platform.intake.connection_id, f"intake of platform {platform.id}"),
        level1_version=level1_version,
        transport_key=key(network.transport_key_connection_id, "network transport key"),
        national_public_key=box_public_key(network.national.box_key_connection_id),
        signing_key=signing_key(zones.local(base.id)),
        date_shift_key=(
            key(network.date_shift_key_connection_id, "date-shift key")
            if base.pseudonymisation.date_shift_days
            else None
        ),
    )


def exchange_endpoint(platform: Platform) -> S3Endpoint:
    """The key holder's exchange area, as reached by the zone running the task (its own connection)."""
    loc = platform.key_holder.exchange
    return s3_endpoint(loc.connection_id, f"key exchange area of platform {platform.id}")


def level1_key(platform: Platform) -> Key:
    """The level-1 key: resolved only by the key zone's tasks (`keys:<platform>`)."""
    return key(platform.key_connection_id, f"level-1 key of platform {platform.id}")


def signing_key(zone: str) -> bytes:
    """The zone's own Ed25519 signing key (32-byte seed), from its signing-key connection."""
    from eds_network.orchestration.zone_connections import signing_connection_id

    conn_id = signing_connection_id(zone)
    c = _conn(conn_id, f"signing key of zone {zone}")
    if not c.password:
        raise ConfigError(f"signing key of zone {zone}: connection {conn_id!r} holds no key")
    mask_secret(c.password)
    seed = base64.b64decode(c.password)
    _mask_bytes(seed)
    return seed


def trust_store() -> dict[str, bytes]:
    """Zone -> Ed25519 public key, from the trust-store connection (public keys only)."""
    from eds_network.orchestration.zone_connections import TRUST_STORE_CONNECTION_ID

    keys = _conn(TRUST_STORE_CONNECTION_ID, "trust store").extra_dejson.get("public_keys") or {}
    if not keys:
        raise ConfigError(f"trust store: connection {TRUST_STORE_CONNECTION_ID!r} lists no public key")
    return {zone: base64.b64decode(k) for zone, k in keys.items()}


def platform_resources(platform: Platform) -> PlatformResources:
    return PlatformResources(
        trust=trust_store(),
        signing_key=signing_key(zones.platform(platform.id)),
        warehouse_dsn=pg_dsn(platform.warehouse_connection_id, f"warehouse of platform {platform.id}"),
        intake=s3_endpoint(platform.intake.connection_id, f"intake of platform {platform.id}"),
        outbox=s3_endpoint(platform.outbox.connection_id, f"outbox of platform {platform.id}"),
        level1_key_version=key_version(platform.key_connection_id, f"level-1 key of platform {platform.id}"),
    )


def national_resources(network: Network, platform: Platform) -> NationalResources:
    private, version = box_private_key(network.national.box_key_connection_id)
    return NationalResources(
        outbox=s3_endpoint(platform.outbox.connection_id, f"outbox of platform {platform.id}"),
        landing=s3_endpoint(network.national.landing_zone.connection_id, "HDH landing zone"),
        national_key=key(network.national.key_connection_id, "national key"),
        box_private_key=private,
        box_key_version=version,
        trust=trust_store(),
        registry_dsn=pg_dsn(network.national.tables_connection_id, "HDH national database (person-digest registry)"),
    )


def catalogue_dsn(network: Network) -> str:
    return pg_dsn(network.catalogue_connection_id, "catalogue")


def airflow_api(conn_id: str):
    """Airflow's own REST API (onboarding backfills) through the official client: URL and API user from an HTTP
    connection."""
    from eds_network.orchestration.airflow_api import AirflowApi

    c = _conn(conn_id, "Airflow REST API")
    if c.password:
        mask_secret(c.password)
    extra = c.extra_dejson
    url = extra.get("base_url") or f"{c.schema or 'http'}://{c.host or 'localhost'}:{c.port or 8080}"
    return AirflowApi(url, c.login or "admin", c.password or "")
