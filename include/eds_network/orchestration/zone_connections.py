"""Which Airflow connections each trust zone gets, and with what contents: a pure mapping, no Airflow import.

A zone's workers resolve connections from that zone's own secrets file only (see `core/zones.py`). The same
connection id can hold different contents in different zones: `eds_s3` in a hospital's file is the hospital's
S3 credential (writes its own intake prefix), in the platform's file the platform's (reads its intake, writes
its outbox), in the national file the HDH's (reads the outboxes). Every database connection of a zone logs in
with that zone's own PostgreSQL role.

What each zone holds (and why):

    local:<base>        its source database; the intake (its own prefix); the key holder's exchange area (posts
                        blinded elements, reads evaluations); the catalogue; its signing key; the network
                        transport key; the national box *public* key. Never the level-1 key: level-1
                        pseudonyms are an OPRF evaluated by the key holder (docs/pseudonymisation.md).
    keys:<platform>     the platform's level-1 key; its exchange area; the catalogue (evaluation counts).
    platform:<p>        its warehouse; its intake and outbox; the catalogue; its signing key; the *version* of
                        its level-1 key (never the key); the national box *public* key (feasibility counts).
    national            the national HMAC key, the national box *private* key, the landing zone, the national
                        tables' database (Iceberg catalog + apply ledger), the outboxes
                        (read), the catalogue, its signing key.

Every zone also gets the trust store (public keys of every signer, no secret). The Airflow REST API connection
is not a zone's: it belongs to the central scheduler side (`CENTRAL_CONNECTION_IDS`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eds_network.core import zones
from eds_network.core.config import Network

TRUST_STORE_CONNECTION_ID = "eds_trust_store"
CENTRAL_CONNECTION_IDS = ("eds_airflow_api",)


def signing_connection_id(zone: str) -> str:
    """The connection holding `zone`'s Ed25519 signing key (`local:hosp_a` -> `eds_sign_local_hosp_a`)."""
    return "eds_sign_" + zone.replace(":", "_")


def principal(zone: str) -> str:
    """The zone's login name in the stores: its PostgreSQL role and its S3 (IAM) user (`eds_local_hosp_a`)."""
    return "eds_" + zone.replace(":", "_")


def all_zones(network: Network) -> list[str]:
    """Every zone of the network: each hospital, each key holder, each platform, the HDH."""
    out = [zones.local(b.id) for b in network.local_bases]
    out += [zones.keys(p.id) for p in network.platforms]
    out += [zones.platform(p.id) for p in network.platforms]
    return [*out, zones.NATIONAL]


def signing_zones(network: Network) -> list[str]:
    """The zones that publish signed documents: each hospital (batch manifests), each platform (package
    manifests), the HDH (receipts)."""
    return [
        *(zones.local(b.id) for b in network.local_bases),
        *(zones.platform(p.id) for p in network.platforms),
        zones.NATIONAL,
    ]


@dataclass(frozen=True)
class Login:
    login: str
    password: str


@dataclass(frozen=True)
class ZoneLogins:
    """A zone's own credentials in the stores (None: the connection's own login, i.e. the shared one)."""

    pg: Login | None = None
    s3: Login | None = None


@dataclass(frozen=True)
class _Grant:
    """One connection of a zone: `kind` says how its contents are derived from the stack's connection."""

    conn_id: str
    kind: str  # "pg", "s3", "secret" (as is), "public" (no password), "version" (key version only)
    extra: dict[str, Any] = field(default_factory=dict)


def _grants(network: Network, zone: str) -> list[_Grant]:
    kind = zones.kind(zone)
    cat = _Grant(network.catalogue_connection_id, "pg")
    if kind == "local":
        base = network.base(zone.split(":", 1)[1])
        p = network.platform_of(base.id)
        return [
            _Grant(base.source_connection_id, "pg"),
            _Grant(p.intake.connection_id, "s3"),
            cat,
            _Grant(signing_connection_id(zone), "secret"),
            _Grant(p.key_holder.exchange.connection_id, "s3"),
            _Grant(network.transport_key_connection_id, "secret"),
            _Grant(network.national.box_key_connection_id, "public"),
            *(
                [_Grant(network.date_shift_key_connection_id, "secret")]
                if base.pseudonymisation.date_shift_days
                else []
            ),
        ]
    if kind == "keys":
        p = network.platform(zone.split(":", 1)[1])
        return [_Grant(p.key_connection_id, "secret"), _Grant(p.key_holder.exchange.connection_id, "s3"), cat]
    if kind == "platform":
        p = network.platform(zone.split(":", 1)[1])
        return [
            _Grant(p.warehouse_connection_id, "pg"),
            _Grant(p.intake.connection_id, "s3"),
            _Grant(p.outbox.connection_id, "s3"),
            cat,
            _Grant(signing_connection_id(zone), "secret"),
            _Grant(p.key_connection_id, "version"),
            _Grant(network.national.box_key_connection_id, "public"),  # feasibility counts sealed to the HDH
        ]
    if kind == zones.NATIONAL:
        return [
            _Grant(network.national.key_connection_id, "secret"),
            _Grant(network.national.box_key_connection_id, "secret"),
            _Grant(network.national.landing_zone.connection_id, "s3"),
            _Grant(network.national.tables_connection_id, "pg"),
            *(_Grant(p.outbox.connection_id, "s3") for p in network.platforms),
            cat,
            _Grant(signing_connection_id(zone), "secret"),
        ]
    raise ValueError(f"unknown zone {zone!r}")


def zone_connection_ids(network: Network, zone: str) -> list[str]:
    """The Airflow connection ids `zone`'s workers can resolve (trust store included), without duplicates."""
    ids = [g.conn_id for g in _grants(network, zone)] + [TRUST_STORE_CONNECTION_ID]
    return list(dict.fromkeys(ids))


def zone_connections(
    network: Network,
    zone: str,
    connections: Mapping[str, Mapping[str, Any]],
    logins: ZoneLogins | None = None,
) -> dict[str, dict[str, Any]]:
    """The connections file of `zone`: the contents of its connection ids, derived from `connections` (the
    embedded stack's full set, `Stack.connections`), with the zone's own PostgreSQL and S3 logins.

    A "public" grant keeps only the public half of a key pair, a "version" grant only the key's version (and
    retired versions): neither carries a password. A connection missing from `connections` is left out (the
    zone's task then fails naming it)."""
    logins = logins or ZoneLogins()
    out: dict[str, dict[str, Any]] = {}
    for g in _grants(network, zone):
        src = connections.get(g.conn_id)
        if src is None or g.conn_id in out:
            continue
        out[g.conn_id] = _derive(g, src, logins)
    trust = connections.get(TRUST_STORE_CONNECTION_ID)
    if trust is not None:
        out[TRUST_STORE_CONNECTION_ID] = {"conn_type": "generic", "extra": copy.deepcopy(dict(trust.get("extra", {})))}
    return out


def _derive(g: _Grant, src: Mapping[str, Any], logins: ZoneLogins) -> dict[str, Any]:
    conn = copy.deepcopy(dict(src))
    extra = dict(conn.get("extra") or {})
    if g.kind == "pg" and logins.pg is not None:
        conn.update(login=logins.pg.login, password=logins.pg.password)
    elif g.kind == "s3" and logins.s3 is not None:
        conn.update(login=logins.s3.login, password=logins.s3.password)
    elif g.kind == "public":
        conn.pop("password", None)
        extra = {k: v for k, v in extra.items() if k in ("public_key", "version")}
    elif g.kind == "version":
        conn.pop("password", None)
        extra = {k: v for k, v in extra.items() if k in ("version", "retired_versions")}
    if extra or "extra" in conn:
        conn["extra"] = extra
    return conn


def trust_store(public_keys: Mapping[str, str]) -> dict[str, Any]:
    """The trust-store connection: each signer zone's Ed25519 public key (base64), no secret."""
    return {"conn_type": "generic", "extra": {"public_keys": dict(sorted(public_keys.items()))}}
