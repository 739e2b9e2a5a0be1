"""The embedded stack's keys and Airflow connections: generated once into its secrets folder, never into git, and
the resources a step gets from them (for tests and benches that run steps without Airflow)."""

from __future__ import annotations

import base64
import json
import os
import secrets

from eds_network.core.config import Network
from eds_network.dev.access import new_signing_key, signing_zones, trust_store_of
from eds_network.dev.postgres import PG_USER
from eds_network.orchestration.zone_connections import (
    TRUST_STORE_CONNECTION_ID,
    signing_connection_id,
    zone_connections,
)


class StackConnections:
    """The keys-and-connections part of `Stack` (a mixin: it uses the stack's ports, secrets and S3 login)."""

    def local_resources(
        self, network: Network, base_id: str, *, source_dsn: str | None = None, intake_prefix: str | None = None
    ):
        """What a local task gets from Airflow connections, built from this stack's own keys (tests, benches)."""
        from eds_network.core.crypto import Key
        from eds_network.core.storage import S3Endpoint
        from eds_network.dev.level1 import in_process
        from eds_network.local.resources import local_resources

        keys = self.keys(network)
        platform = network.platform_of(base_id)
        base = network.base(base_id)
        box = keys[network.national.box_key_connection_id]

        def key(conn_id: str) -> Key:
            return Key.from_secret(conn_id, keys[conn_id]["password"], keys[conn_id]["extra"]["version"])

        level1_key = key(platform.key_connection_id)
        return local_resources(
            network,
            base,
            source_dsn=source_dsn or self.dsn(f"src_{base_id}"),
            intake=S3Endpoint(self.s3_endpoint, *self.s3_login, verify=self.s3_verify),
            level1_version=level1_key.version,
            transport_key=key(network.transport_key_connection_id),
            national_public_key=(base64.b64decode(box["extra"]["public_key"]), box["extra"]["version"]),
            intake_prefix=intake_prefix,
            level1_evaluate=in_process(level1_key, platform.id, base.finess or base.id),
            signing_key=base64.b64decode(keys[signing_connection_id(f"local:{base_id}")]["password"]),
            date_shift_key=key(network.date_shift_key_connection_id),
        )

    def trust(self, network: Network) -> dict[str, bytes]:
        """The trust store's public keys (zone -> Ed25519 public key), as the receiving zones read them."""
        store = trust_store_of(network, self.keys(network))["extra"]["public_keys"]
        return {zone: base64.b64decode(k) for zone, k in store.items()}

    # -- keys and connections --------------------------------------------------------------------------
    def keys(self, network: Network) -> dict[str, dict]:
        """Pseudonymisation keys, generated once into .eds/secrets/keys.json (never into git)."""

        def make() -> str:
            from nacl.public import PrivateKey

            box = PrivateKey.generate()
            keys = {
                "eds_key_transport": {"password": secrets.token_hex(32), "extra": {"version": "v1"}},
                "eds_key_national": {"password": secrets.token_hex(32), "extra": {"version": "v1"}},
                "eds_key_national_box": {
                    "password": base64.b64encode(bytes(box)).decode(),
                    "extra": {"version": "v1", "public_key": base64.b64encode(bytes(box.public_key)).decode()},
                },
            }
            return json.dumps(keys, indent=2)

        keys = json.loads(self._secret("keys.json", make))
        changed = False
        if network.date_shift_key_connection_id not in keys:  # the hospitals' dedicated date-shift key
            keys[network.date_shift_key_connection_id] = {"password": secrets.token_hex(32), "extra": {"version": "v1"}}
            changed = True
        for p in network.platforms:
            if p.key_connection_id not in keys:
                keys[p.key_connection_id] = {"password": secrets.token_hex(32), "extra": {"version": "v1"}}
                changed = True
        for zone in signing_zones(network):  # each publishing zone's Ed25519 signing key (manifests)
            conn_id = signing_connection_id(zone)
            if conn_id not in keys:
                keys[conn_id] = new_signing_key(zone)
                changed = True
        if changed:
            (self.secrets_dir / "keys.json").write_text(json.dumps(keys, indent=2))
        return keys

    def connections(self, network: Network) -> dict[str, dict]:
        pw = self.pg_password

        def pg(db: str) -> dict:
            return {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": self.pg_port,
                "login": PG_USER,
                "password": pw,
                "schema": db,
            }

        s3_key, s3_secret = self.s3_login
        s3 = {
            "conn_type": "aws",
            "login": s3_key,
            "password": s3_secret,
            "extra": {
                "endpoint_url": self.s3_endpoint,
                "region_name": "eu-west-3",
                **({"verify": self.s3_verify} if self.s3_verify else {}),
            },
        }
        conns: dict[str, dict] = {network.catalogue_connection_id: pg("catalogue")}
        for p in network.platforms:
            conns[p.warehouse_connection_id] = pg(f"wh_{p.id}")
            conns[p.intake.connection_id] = s3
            conns[p.outbox.connection_id] = s3
            for b in p.members:
                conns[b.source_connection_id] = pg(f"src_{b.id}")
        conns[network.national.landing_zone.connection_id] = s3
        conns[network.national.tables_connection_id] = pg("hdh")
        # Airflow's own REST API, for the onboarding DAG's backfills (the UI's admin user of this stack).
        conns["eds_airflow_api"] = {
            "conn_type": "http",
            "host": "localhost",
            "port": self.api_port,
            "schema": "http",
            "login": "admin",
            "password": self.ui_password(),
        }
        keys = self.keys(network)
        for conn_id, k in keys.items():
            conns[conn_id] = {"conn_type": "generic", **k}
        conns[TRUST_STORE_CONNECTION_ID] = trust_store_of(network, keys)
        return conns

    def zone_connections(self, network: Network, zone: str) -> dict[str, dict]:
        """The connections file of one zone (what that zone's workers alone can resolve)."""
        from eds_network.dev.access import zone_logins

        return zone_connections(network, zone, self.connections(network), zone_logins(self, network, zone))

    def write_connections(self, network: Network) -> None:
        self.secrets_dir.mkdir(parents=True, exist_ok=True)
        path = self.connections_file
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.connections(network), f, indent=2)
        tmp.replace(path)
