"""Least privilege in the embedded stack's stores: each trust zone's own PostgreSQL role and S3 user.

Also the zones' Ed25519 signing keys and the trust store of their public keys.
"""

from __future__ import annotations

import base64

from eds_network.core import zones
from eds_network.core.config import Network
from eds_network.orchestration.zone_connections import (
    Login,
    ZoneLogins,
    signing_connection_id,
    trust_store,
)


def signing_zones(network: Network) -> list[str]:
    """The zones that publish signed documents: each hospital (batch manifests), each platform (package
    manifests), the HDH (receipts)."""
    return [
        *(zones.local(b.id) for b in network.local_bases),
        *(zones.platform(p.id) for p in network.platforms),
        zones.NATIONAL,
    ]


def new_signing_key(zone: str) -> dict:
    """A fresh Ed25519 signing key as a connection: the seed (base64) as password, the public key in extra."""
    from nacl.signing import SigningKey

    sk = SigningKey.generate()
    return {
        "password": base64.b64encode(bytes(sk)).decode(),
        "extra": {"key_id": zone, "public_key": base64.b64encode(bytes(sk.verify_key)).decode()},
    }


def trust_store_of(network: Network, keys: dict[str, dict]) -> dict:
    """The trust-store connection: the public key of every signing zone whose key exists in `keys`."""
    public = {
        z: keys[signing_connection_id(z)]["extra"]["public_key"]
        for z in signing_zones(network)
        if signing_connection_id(z) in keys
    }
    return trust_store(public)


def zone_logins(stack, network: Network, zone: str) -> ZoneLogins:
    """The zone's own logins in the stack's stores (the shared login until the per-zone roles exist)."""
    del stack, network, zone
    return ZoneLogins()


__all__ = ["Login", "ZoneLogins", "new_signing_key", "signing_zones", "trust_store_of", "zone_logins"]
