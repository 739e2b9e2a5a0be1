"""Provision the docker-compose stack from config/network.yaml (run by the `airflow-init` job).

1. render every Airflow connection the network file names, from connections.template.yaml and the Docker
   secrets; each database connection logs in with its zone's own PostgreSQL role (`eds_local_<base>`,
   `eds_platform_<p>`, `eds_national`; the catalogue with the operator's `eds_operator`);
2. as the eds-db superuser `eds_admin`: create the catalogue, warehouse, source (demo) and HDH tables databases
   (`x-create-database`), migrate the catalogue schema (so `eds_admin` owns its audit table and trigger), and
   apply the zones' roles and grants, the very statements the embedded stack applies
   (`eds_network.orchestration.grants.pg_statements`), with each role's password from its Docker secret
   `pg_password_<role>` (deploy/create-secrets.sh);
3. write each zone's connections file (`orchestration/zone_connections.zone_connections`, as the embedded cluster
   does) with the zone's own PostgreSQL role and MinIO user, into `$EDS_ZONES_DIR/<queue>/connections.json`, the
   zone's volume, mounted in that zone's Edge worker only;
4. import into the metadata DB the central side's connections only: the operator's catalogue connection (no
   zone's login, no key). Buckets and MinIO users are minio-init's (deploy/minio/minio-init.sh).

The template and the secrets are the source of truth: re-running (every `make compose-up`) re-imports
the connections and rewrites the zone files, so a rotated secret reaches Airflow without manual edits (restart the
zone's worker).

    python provision.py             # everything (inside airflow-init)
    python provision.py --dry-run   # list the connections it would import (secrets masked)
    EDS_SECRETS_DIR=deploy/secrets python deploy/airflow/provision.py --zone-files DIR [--zone local:hosp_a]
                                    # only write each zone's connections file, DIR/<queue>/connections.json
                                    # (mode 0600), e.g. for a zone's worker on its own host or in Kubernetes
    EDS_SECRETS_DIR=deploy/secrets EDS_DB_HOST=127.0.0.1 EDS_DB_PORT=5433 \
        python deploy/airflow/provision.py --seed-connections FILE
                                    # the demo's seeding file (catalogue and sources as eds_admin, mode 0600)
                                    # for `eds seed --connections FILE`
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
_VAR = re.compile(r"\{(conn_id|platform|base|principal|zone)\}")
ADMIN_PASSWORD_SECRET = "eds_db_admin_password"
_REF = re.compile(r"\$\{(secret|key|env):([^}]*)\}")

Lookup = Callable[[str, str], str]


class ProvisionError(RuntimeError):
    """A configuration problem the operator must fix; the message says how."""


# -- which connection plays which role -------------------------------------------------------------


def connection_roles(network: Any) -> dict[str, dict[str, str]]:
    """Map every connection id named by the network configuration to its role and context.

    `network` is an `eds_network.core.config.Network`. Returns {conn_id: {"role", "conn_id", "platform", "base",
    "principal"}}: `principal` is the PostgreSQL role of the zone a database connection belongs to."""
    from eds_network.core import zones
    from eds_network.orchestration.zone_connections import (
        CENTRAL_CONNECTION_IDS,
        principal,
        signing_connection_id,
        signing_zones,
    )

    roles: dict[str, dict[str, str]] = {}

    def add(conn_id: str, role: str, platform: str = "", base: str = "", zone: str = "") -> None:
        seen = roles.get(conn_id)
        if seen is None:
            roles[conn_id] = {
                "role": role,
                "conn_id": conn_id,
                "platform": platform,
                "base": base,
                "principal": principal(zone) if zone else "",
                "zone": zone,
            }
        elif seen["role"] != role:
            raise ProvisionError(
                f"connection {conn_id!r} is named both as {seen['role']} and as {role} in the network file; "
                "give each role its own connection id"
            )

    landing = network.national.landing_zone.connection_id
    add(network.catalogue_connection_id, "catalogue", zone=zones.OPERATOR)
    add(landing, "hdh_landing")
    add(network.national.tables_connection_id, "national_tables", zone=zones.NATIONAL)
    for platform in network.platforms:
        add(platform.warehouse_connection_id, "warehouse", platform=platform.id, zone=zones.platform(platform.id))
        add(platform.key_connection_id, "platform_key", platform=platform.id)
        for location in (platform.intake, platform.outbox):
            if location.connection_id != landing:
                add(location.connection_id, "object_storage")
        for base in platform.members:
            add(base.source_connection_id, "source", platform=platform.id, base=base.id, zone=zones.local(base.id))
    add(network.transport_key_connection_id, "transport_key")
    add(network.national.key_connection_id, "national_key")
    add(network.national.box_key_connection_id, "national_box_key")
    if any(b.pseudonymisation.date_shift_days for b in network.local_bases):
        add(network.date_shift_key_connection_id, "date_shift_key")
    for zone in signing_zones(network):
        add(signing_connection_id(zone), "signing_key", zone=zone)
    for conn_id in CENTRAL_CONNECTION_IDS:  # the operator's worker: Airflow's REST API (onboarding backfills)
        add(conn_id, "airflow_api", zone=zones.OPERATOR)
    return roles


def database_zones(network: Any) -> list[str]:
    """The zones with a PostgreSQL role on eds-db: every zone of the network, and the operator (catalogue)."""
    from eds_network.core import zones
    from eds_network.orchestration.zone_connections import all_zones

    return [*all_zones(network), zones.OPERATOR]


def pg_password_secret(zone: str) -> str:
    """The Docker secret holding `zone`'s PostgreSQL password (`pg_password_eds_local_hosp_a`)."""
    from eds_network.orchestration.zone_connections import principal

    return f"pg_password_{principal(zone)}"


def s3_key_secrets(zone: str) -> tuple[str, str]:
    """The Docker secrets holding `zone`'s MinIO access key and secret key (`s3_access_key_eds_national`, ...)."""
    from eds_network.orchestration.zone_connections import principal

    return f"s3_access_key_{principal(zone)}", f"s3_secret_key_{principal(zone)}"


def zone_connection_files(
    network: Any, connections: Mapping[str, Mapping[str, Any]], lookup: Lookup
) -> dict[str, dict[str, Any]]:
    """Zone -> the connections file its Edge worker alone reads: `zone_connections` (the function the embedded
    cluster uses, orchestration/zone_connections.py) over the rendered connections, with the zone's own PostgreSQL
    role and MinIO user. The operator's holds the catalogue (role eds_operator) and Airflow's REST API (the onboarding
    DAG's backfills), as the embedded cluster's operator worker does, and no data connection."""
    from eds_network.core import zones
    from eds_network.orchestration.grants import minio_policies
    from eds_network.orchestration.zone_connections import (
        CENTRAL_CONNECTION_IDS,
        TRUST_STORE_CONNECTION_ID,
        Login,
        ZoneLogins,
        principal,
        signing_connection_id,
        signing_zones,
        trust_store,
        zone_connections,
    )

    full = {}
    for conn_id, conn in connections.items():
        extra = conn.get("extra")
        full[conn_id] = {**conn, "extra": json.loads(extra)} if isinstance(extra, str) else dict(conn)
    # the trust store: every signing zone's public key (no secret), in every zone's file
    public = {z: full[signing_connection_id(z)]["extra"]["public_key"] for z in signing_zones(network)}
    full[TRUST_STORE_CONNECTION_ID] = trust_store(public)
    with_s3 = minio_policies(network)
    out = {}
    for zone in database_zones(network):
        if zone == zones.OPERATOR:
            ids = [network.catalogue_connection_id, *CENTRAL_CONNECTION_IDS]
            out[zone] = {c: full[c] for c in ids if c in full}
            continue
        s3 = None
        if f"{principal(zone)}.json" in with_s3:
            access, secret = s3_key_secrets(zone)
            s3 = Login(lookup("secret", access), lookup("secret", secret))
        pg = Login(principal(zone), lookup("secret", pg_password_secret(zone)))
        out[zone] = zone_connections(network, zone, full, ZoneLogins(pg=pg, s3=s3))
    return out


def central_connections(network: Any, connections: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What the central metadata DB holds: the operator's catalogue connection only (no zone's login, no key)."""
    return {network.catalogue_connection_id: connections[network.catalogue_connection_id]}


def write_zone_files(files: Mapping[str, Mapping[str, Any]], folder: Path, *, create: bool = False) -> None:
    """Each zone's file into its own folder `<folder>/<queue>/connections.json` (a volume mounted in its worker);
    `create`: make the folders, mode 0700 (`--zone-files`, outside the containers)."""
    from eds_network.core import zones

    for zone, conns in files.items():
        target = folder / zones.queue(zone)
        if create:
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not target.is_dir():
            raise ProvisionError(f"{target} is missing: mount the zone's volume in airflow-init (compose.zones.yaml)")
        tmp = target / "connections.json.tmp"
        write_private(tmp, json.dumps(conns, indent=2, sort_keys=True))
        tmp.replace(target / "connections.json")
        print(f"  zone {zone}: {len(conns)} connections -> {target}/connections.json", flush=True)


def seed_connections(
    network: Any, connections: Mapping[str, Mapping[str, Any]], lookup: Lookup
) -> dict[str, dict[str, Any]]:
    """The demo's seeding file for `eds seed --connections FILE`: the catalogue and every source database as the
    eds-db superuser (the zones' roles cannot create the demo schemas; the superuser's default privileges give each
    hospital's role SELECT on what it creates). No zone's login, no key."""
    admin = {
        "login": lookup("env", "EDS_DB_ADMIN_USER:-eds_admin"),
        "password": lookup("secret", ADMIN_PASSWORD_SECRET),
    }
    ids = [network.catalogue_connection_id, *(b.source_connection_id for b in network.local_bases)]
    return {c: {**connections[c], **admin} for c in ids}


def zone_passwords(network: Any, lookup: Lookup) -> dict[str, str]:
    return {zone: lookup("secret", pg_password_secret(zone)) for zone in database_zones(network)}


def eds_db_databases(network: Any, connections: Mapping[str, Mapping[str, Any]], created: list[str]) -> Any:
    """The `Databases` of eds-db the grants apply to: those provisioning creates there (`x-create-database`); a
    source pointed at a hospital's own server by an override is granted by that hospital, not here."""
    from eds_network.orchestration.grants import Databases

    def on_eds_db(conn_id: str) -> str | None:
        return connections[conn_id]["schema"] if conn_id in created else None

    catalogue = on_eds_db(network.catalogue_connection_id)
    national = on_eds_db(network.national.tables_connection_id)
    if catalogue is None or national is None:
        raise ProvisionError("the catalogue and the HDH tables databases must be created on eds-db (x-create-database)")
    sources = {b.id: on_eds_db(b.source_connection_id) for b in network.local_bases}
    warehouses = {p.id: on_eds_db(p.warehouse_connection_id) for p in network.platforms}
    return Databases(
        catalogue=catalogue,
        sources={k: v for k, v in sources.items() if v},
        warehouses={k: v for k, v in warehouses.items() if v},
        national=national,
        others=("postgres",),
    )


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


def admin_connect(lookup: Lookup, dbname: str) -> Any:
    """A connection to eds-db as its superuser (EDS_DB_ADMIN_USER, default eds_admin), retried while it starts."""
    import psycopg

    params = {
        "host": lookup("env", "EDS_DB_HOST:-eds-db"),
        "port": int(lookup("env", "EDS_DB_PORT:-5432")),
        "user": lookup("env", "EDS_DB_ADMIN_USER:-eds_admin"),
        "password": lookup("secret", ADMIN_PASSWORD_SECRET),
        "dbname": dbname,
        "autocommit": True,
        "connect_timeout": 10,
    }
    return _retry(f"connect to eds-db/{dbname}", lambda: psycopg.connect(**params))


def admin_dsn(lookup: Lookup, dbname: str) -> str:
    from urllib.parse import quote

    user = quote(lookup("env", "EDS_DB_ADMIN_USER:-eds_admin"), safe="")
    password = quote(lookup("secret", ADMIN_PASSWORD_SECRET), safe="")
    host, port = lookup("env", "EDS_DB_HOST:-eds-db"), lookup("env", "EDS_DB_PORT:-5432")
    return f"postgresql+psycopg://{user}:{password}@{host}:{port}/{dbname}"


def create_databases(lookup: Lookup, databases: Any) -> None:
    """Every database of `databases` (a grants.Databases) that is missing, created by the superuser."""
    from psycopg import sql

    with admin_connect(lookup, "postgres") as db:
        for name in databases.all():
            if name in databases.others:
                continue
            if db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                state = "exists"
            else:
                db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                state = "created"
            print(f"  database {name}: {state}", flush=True)


def migrate_catalogue(lookup: Lookup, databases: Any, network: Any) -> None:
    """The catalogue schema at head and the network registered, as the superuser (who then owns the audit table)."""
    from eds_network import catalogue

    dsn = admin_dsn(lookup, databases.catalogue)
    _retry("catalogue migration", lambda: catalogue.create_schema(dsn))
    catalogue.register_network(dsn, network)
    print(f"  catalogue {databases.catalogue}: migrated, network registered", flush=True)


def apply_grants(lookup: Lookup, network: Any, databases: Any) -> int:
    """The zones' roles and grants (`grants.pg_statements`, as in the embedded stack), as the superuser."""
    from eds_network.orchestration.grants import pg_statements

    statements = pg_statements(network, zone_passwords(network, lookup), databases)
    count = 0
    for dbname, stmts in statements.items():
        with admin_connect(lookup, dbname) as db:
            for stmt in stmts:
                db.execute(stmt)
                count += 1
    print(f"  grants: {count} statements on {len(statements)} databases, {len(database_zones(network))} roles")
    return count


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
    parser.add_argument("--zone-files", type=Path, metavar="DIR", help="only write the zones' connections files to DIR")
    parser.add_argument("--zone", action="append", help="with --zone-files: this zone only (repeatable)")
    parser.add_argument("--seed-connections", type=Path, metavar="FILE", help="only write the demo's seeding file")
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
        lookup = secrets_lookup()
        if args.seed_connections:
            write_private(args.seed_connections, json.dumps(seed_connections(network, connections, lookup), indent=2))
            print(f"wrote {args.seed_connections} (the eds-db superuser's password: delete it after `eds seed`)")
            return 0
        files = zone_connection_files(network, connections, lookup)
        if args.zone_files:
            unknown = sorted(set(args.zone or ()) - set(files))
            if unknown:
                raise ProvisionError(f"unknown zone(s) {', '.join(unknown)}; the zones are {', '.join(files)}")
            chosen = {z: c for z, c in files.items() if not args.zone or z in args.zone}
            write_zone_files(chosen, args.zone_files, create=True)
            print(f"wrote {len(chosen)} zone file(s) under {args.zone_files} (secrets: hand each to its zone only)")
            return 0
        on_eds_db = eds_db_databases(network, connections, databases)
        create_databases(lookup, on_eds_db)
        migrate_catalogue(lookup, on_eds_db, network)
        apply_grants(lookup, network, on_eds_db)
        write_zone_files(files, Path(os.environ.get("EDS_ZONES_DIR", "/opt/eds/zones")))
        import_connections(central_connections(network, connections))
    except ProvisionError as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
