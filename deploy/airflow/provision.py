"""Provision the docker-compose stack from config/network.yaml (run by the `airflow-init` job).

1. render every Airflow connection the network file names, from connections.template.yaml and the Docker
   secrets, and import them into the metadata DB (`airflow connections import --overwrite`);
2. create the demo warehouse and source databases on the compose PostgreSQL (`x-create-database`);
3. create any missing bucket (platform intakes and outboxes, HDH landing zone) through the connection
   that owns it, so the credentials the DAGs will use are exercised once before the first run.

The template and the secrets are the source of truth: re-running (every `make compose-up`) re-imports
the connections, so a rotated secret reaches Airflow without manual edits.

    python provision.py             # everything (inside airflow-init)
    python provision.py --dry-run   # list the connections it would import (secrets masked)
    EDS_SECRETS_DIR=deploy/secrets python deploy/airflow/provision.py --export-env conns.env
                                    # AIRFLOW_CONN_<ID>=<json> lines (mode 0600), e.g. for a Kubernetes
                                    # Secret consumed through the Helm chart's extraEnvFrom
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_TEMPLATE = HERE / "connections.template.yaml"
SECRETS_DIR = Path(os.environ.get("EDS_SECRETS_DIR", "/run/secrets"))
KEYS_SECRET = "eds_keys"

CONNECTION_FIELDS = {"conn_type", "description", "host", "login", "password", "schema", "port", "extra"}
_VAR = re.compile(r"\{(conn_id|platform|base)\}")
_REF = re.compile(r"\$\{(secret|key|env):([^}]*)\}")

Lookup = Callable[[str, str], str]


class ProvisionError(RuntimeError):
    """A configuration problem the operator must fix; the message says how."""


# -- which connection plays which role -------------------------------------------------------------


def connection_roles(network: Any) -> dict[str, dict[str, str]]:
    """Map every connection id named by the network configuration to its role and context.

    `network` is an `eds_network.core.config.Network`. Returns {conn_id: {"role", "conn_id", "platform", "base"}}.
    """
    roles: dict[str, dict[str, str]] = {}

    def add(conn_id: str, role: str, platform: str = "", base: str = "") -> None:
        seen = roles.get(conn_id)
        if seen is None:
            roles[conn_id] = {"role": role, "conn_id": conn_id, "platform": platform, "base": base}
        elif seen["role"] != role:
            raise ProvisionError(
                f"connection {conn_id!r} is named both as {seen['role']} and as {role} in the network file; "
                "give each role its own connection id"
            )

    landing = network.national.landing_zone.connection_id
    add(network.catalogue_connection_id, "catalogue")
    add(landing, "hdh_landing")
    for platform in network.platforms:
        add(platform.warehouse_connection_id, "warehouse", platform=platform.id)
        add(platform.key_connection_id, "platform_key", platform=platform.id)
        for location in (platform.intake, platform.outbox):
            if location.connection_id != landing:
                add(location.connection_id, "object_storage")
        for base in platform.members:
            add(base.source_connection_id, "source", platform=platform.id, base=base.id)
    add(network.transport_key_connection_id, "transport_key")
    add(network.national.key_connection_id, "national_key")
    add(network.national.box_key_connection_id, "national_box_key")
    return roles


def bucket_locations(network: Any) -> list[tuple[str, str]]:
    """(connection id, bucket) of every bucket the network uses, in file order, without duplicates."""
    out: list[tuple[str, str]] = []
    locations = [network.national.landing_zone]
    for platform in network.platforms:
        locations += [platform.intake, platform.outbox]
    for location in locations:
        pair = (location.connection_id, location.bucket)
        if pair not in out:
            out.append(pair)
    return out


# -- rendering --------------------------------------------------------------------------------------


def secrets_lookup(secrets_dir: Path = SECRETS_DIR, env: Mapping[str, str] | None = None) -> Lookup:
    """Resolve `${secret:..}`, `${key:..}` and `${env:..}` from Docker secrets and the environment."""
    env = os.environ if env is None else env
    keys: dict[str, str] | None = None

    def read_secret(name: str) -> str:
        path = secrets_dir / name
        try:
            value = path.read_text(encoding="utf-8").strip("\r\n")
        except OSError:
            raise ProvisionError(
                f"secret {name!r} is missing ({path}); run deploy/create-secrets.sh and declare it "
                "under `secrets:` of the airflow-init service"
            ) from None
        if not value:
            raise ProvisionError(f"secret {name!r} ({path}) is empty")
        return value

    def lookup(kind: str, name: str) -> str:
        nonlocal keys
        if kind == "secret":
            return read_secret(name)
        if kind == "key":
            name, sep, default = name.partition(":-")  # ${key:NAME:-default}: the default when NAME is absent
            if keys is None:
                loaded = yaml.safe_load(read_secret(KEYS_SECRET)) or {}
                if not isinstance(loaded, dict):
                    raise ProvisionError(f"secret {KEYS_SECRET!r} must be a YAML mapping of name: value")
                keys = {str(k): str(v) for k, v in loaded.items()}
            if name not in keys and sep:
                return default
            if name not in keys:
                raise ProvisionError(
                    f"no entry {name!r} in secret {KEYS_SECRET!r}; run deploy/create-secrets.sh, "
                    "which adds the keys of every *key_connection_id of config/network.yaml"
                )
            return keys[name]
        if kind == "env":
            var, sep, default = name.partition(":-")
            if var in env and env[var] != "":
                return env[var]
            if sep:
                return default
            raise ProvisionError(f"environment variable {var} is not set")
        raise ProvisionError(f"unknown placeholder kind {kind!r}")

    return lookup


def _resolve(value: Any, context: Mapping[str, str], lookup: Lookup) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, context, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, context, lookup) for v in value]
    if not isinstance(value, str):
        return value
    text = _VAR.sub(lambda m: context[m.group(1)], value)
    return _REF.sub(lambda m: lookup(m.group(1), m.group(2)), text)


def render_connections(
    template: Mapping[str, Any], roles: Mapping[str, Mapping[str, str]], lookup: Lookup
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Render the import file: ({conn_id: connection fields}, [conn ids whose database must exist])."""
    role_templates = template.get("roles") or {}
    overrides = template.get("overrides") or {}
    unknown = sorted(set(overrides) - set(roles))
    if unknown:
        raise ProvisionError(f"overrides name connections the network file does not use: {', '.join(unknown)}")
    connections: dict[str, dict[str, Any]] = {}
    databases: list[str] = []
    for conn_id, context in roles.items():
        role = context["role"]
        if role not in role_templates:
            raise ProvisionError(f"connections template has no role {role!r} (needed by {conn_id!r})")
        entry = _resolve(copy.deepcopy(role_templates[role]), context, lookup)
        override = _resolve(copy.deepcopy(overrides.get(conn_id) or {}), context, lookup)
        if isinstance(entry.get("extra"), dict) and isinstance(override.get("extra"), dict):
            override["extra"] = {**entry["extra"], **override["extra"]}
        entry.update(override)
        if entry.pop("x-create-database", False):
            databases.append(conn_id)
        entry = {k: v for k, v in entry.items() if not k.startswith("x-")}
        illegal = set(entry) - CONNECTION_FIELDS
        if illegal:
            raise ProvisionError(f"{conn_id}: not connection fields: {', '.join(sorted(illegal))}")
        if "conn_type" not in entry:
            raise ProvisionError(f"{conn_id}: role {role!r} has no conn_type")
        if isinstance(entry.get("extra"), dict):
            entry["extra"] = json.dumps(entry["extra"], sort_keys=True)
        if entry.get("port") not in (None, ""):
            try:
                entry["port"] = int(entry["port"])
            except (TypeError, ValueError):
                raise ProvisionError(f"{conn_id}: port {entry['port']!r} is not a number") from None
        connections[conn_id] = entry
    return connections, databases


def load_template(path: Path = DEFAULT_TEMPLATE) -> dict[str, Any]:
    template = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(template, dict) or not isinstance(template.get("roles"), dict):
        raise ProvisionError(f"{path}: expected a mapping with a `roles:` mapping")
    return template


# -- side effects (inside the airflow-init container) ---------------------------------------------


def _retry(what: str, action: Callable[[], Any], attempts: int = 20, delay: float = 3.0) -> Any:
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if attempt == attempts:
                raise ProvisionError(f"{what}: {exc}") from exc
            print(f"  {what}: {exc.__class__.__name__}, retrying ({attempt}/{attempts})", flush=True)
            time.sleep(delay)
    return None


def import_connections(connections: Mapping[str, Mapping[str, Any]]) -> None:
    """`airflow connections import --overwrite` from a private temporary file, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="eds-connections-") as tmp:
        path = Path(tmp) / "connections.json"
        write_private(path, json.dumps(connections))
        subprocess.run(["airflow", "connections", "import", "--overwrite", str(path)], check=True)


def create_databases(connections: Mapping[str, Mapping[str, Any]], conn_ids: list[str]) -> None:
    import psycopg
    from psycopg import sql

    for conn_id in conn_ids:
        conn = connections[conn_id]
        name = conn["schema"]

        def ensure(conn: Mapping[str, Any] = conn, name: str = name) -> str:
            with psycopg.connect(
                host=conn["host"],
                port=int(conn.get("port") or 5432),
                user=conn["login"],
                password=conn["password"],
                dbname="postgres",
                autocommit=True,
                connect_timeout=10,
            ) as db:
                if db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                    return "exists"
                db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                db.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
                return "created"

        print(f"  database {name} ({conn_id}): {_retry(f'database {name}', ensure)}", flush=True)


def ensure_buckets(connections: Mapping[str, Mapping[str, Any]], buckets: list[tuple[str, str]]) -> None:
    import boto3
    from botocore.exceptions import ClientError

    for conn_id, bucket in buckets:
        conn = connections[conn_id]
        extra = json.loads(conn.get("extra") or "{}")
        region = extra.get("region_name")
        client = boto3.client(
            "s3",
            endpoint_url=extra.get("endpoint_url"),
            region_name=region,
            aws_access_key_id=conn.get("login"),
            aws_secret_access_key=conn.get("password"),
            verify=extra.get("verify", True),
        )

        def ensure(client: Any = client, bucket: str = bucket, region: str | None = region) -> str:
            try:
                client.head_bucket(Bucket=bucket)
                return "exists"
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                    raise
            kwargs: dict[str, Any] = {"Bucket": bucket}
            if region and region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            client.create_bucket(**kwargs)
            return "created"

        print(f"  bucket {bucket} ({conn_id}): {_retry(f'bucket {bucket}', ensure)}", flush=True)


def connections_env(connections: Mapping[str, Mapping[str, Any]]) -> str:
    """The connections as Airflow `AIRFLOW_CONN_<ID>` environment variables (JSON form), one per line."""
    lines = []
    for conn_id, conn in connections.items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", conn_id):
            raise ProvisionError(f"{conn_id!r} cannot be an environment variable name")
        lines.append(f"AIRFLOW_CONN_{conn_id.upper()}={json.dumps(dict(conn), separators=(',', ':'))}")
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="list the connections, secrets masked")
    parser.add_argument("--export-env", type=Path, metavar="FILE", help="only write AIRFLOW_CONN_* lines to FILE")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    parser.add_argument("--config", help="network file (default: $EDS_NETWORK_CONFIG)")
    args = parser.parse_args(argv)

    from eds_network.core.config import load_network

    try:
        network = load_network(args.config)
        roles = connection_roles(network)
        connections, databases = render_connections(load_template(args.template), roles, secrets_lookup())
        print(f"network {network.name!r}: {len(connections)} connections", flush=True)
        for conn_id, conn in connections.items():
            where = conn.get("host") or json.loads(conn.get("extra") or "{}").get("endpoint_url", "")
            print(f"  {conn_id:<28} {roles[conn_id]['role']:<17} {conn['conn_type']:<8} {where}", flush=True)
        if args.export_env:
            write_private(args.export_env, connections_env(connections))
            print(f"wrote {args.export_env} (contains secrets: keep it out of git, delete it after use)")
            return 0
        if args.dry_run:
            return 0
        create_databases(connections, databases)
        import_connections(connections)
        ensure_buckets(connections, bucket_locations(network))
    except ProvisionError as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
