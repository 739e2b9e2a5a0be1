"""The trust zones' grants in the data stores: one definition, applied to the embedded stack and to docker-compose.

PostgreSQL (enforced by the server): one LOGIN role per zone, `principal(zone)` (`eds_local_hosp_a`, ...).
    local:<base>     CONNECT + SELECT on its own source database only (and owns its state schema `eds_local`)
    platform:<p>     owns its warehouse database (and everything in it) only
    national         owns the HDH database (Iceberg SQL catalog + apply ledger) only
    every zone       the catalogue through the NOLOGIN group `eds_task`: read/write on the catalogue's tables,
    (and operator)   INSERT only on `catalogue.audit` (no SELECT, UPDATE, DELETE, TRUNCATE, no ownership)
    keys:<p>         also EXECUTE on `catalogue.key_evaluations_on` (catalogue migration 0006, SECURITY DEFINER)
The audit table and its append-only trigger stay owned by the administrator that ran the catalogue's migrations
(`eds` in the embedded stack, `eds_admin` in compose), a role no zone's connection logs in with, so no task can
disable the trigger. CONNECT is revoked from PUBLIC on every database.

`pg_statements(network, passwords, databases)` is the SQL, run as that administrator: the embedded stack
(`dev/access.apply_pg_roles`) and the compose `airflow-init` job (`deploy/airflow/provision.py`) both run it; only
the database names differ (`embedded_databases`, `compose_databases`).

S3: one user per zone with the policy `s3_policy(network, zone)`:
    local:<base>     read/write/delete `<intake bucket>/<intake prefix><base>/*` (its own batches only) and
                     its own prefix `<base>/` of its key holder's exchange area (blinded elements, evaluations)
    keys:<p>         read/write/delete its exchange area (every member's prefix)
    platform:<p>     read its intake (and delete batches the HDH acknowledged); read/write/delete its outbox
    national         read every outbox, write its `_ack.json` and delete the deletes files it applied;
                     everything in the landing zone bucket
`minio_policies` gives the compose MinIO's policy files (deploy/minio/policies), with the `s3:prefix` condition
on ListBucket that moto (the embedded endpoint) cannot evaluate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from eds_network.core import zones
from eds_network.core.config import Network
from eds_network.orchestration.zone_connections import all_zones, principal

TASK_GROUP = "eds_task"
LOCAL_STATE_SCHEMA = "eds_local"
_IDENT = re.compile(r"[a-z_][a-z0-9_]*")


# -- S3 policies ----------------------------------------------------------------------------------------
def _arn(bucket: str, key: str | None = None) -> str:
    return f"arn:aws:s3:::{bucket}" + ("" if key is None else f"/{key}")


def _area(bucket: str, prefix: str, actions: list[str], *, prefix_conditions: bool) -> list[dict]:
    """Statements granting `actions` on the objects under `bucket/prefix` and listing that prefix."""
    listing: dict = {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [_arn(bucket)]}
    if prefix and prefix_conditions:
        listing["Condition"] = {"StringLike": {"s3:prefix": [f"{prefix}*"]}}
    objects = {"Effect": "Allow", "Action": actions, "Resource": [_arn(bucket, f"{prefix}*")]}
    return [listing, objects]


READ = ["s3:GetObject"]
WRITE = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]


def s3_policy(network: Network, zone: str, *, prefix_conditions: bool = True) -> dict | None:
    """The IAM policy of `zone`'s S3 user (None: the zone has no S3 access). `prefix_conditions=False` leaves out
    the `s3:prefix` conditions on ListBucket, which moto cannot evaluate (see the module doc)."""
    kind, stmts = zones.kind(zone), []
    pc = {"prefix_conditions": prefix_conditions}
    if kind == "local":
        base = network.base(zone.split(":", 1)[1])
        intake = network.platform_of(base.id).intake
        exchange = network.platform_of(base.id).key_holder.exchange
        stmts = [
            *_area(intake.bucket, f"{intake.prefix}{base.id}/", WRITE, **pc),
            *_area(exchange.bucket, f"{exchange.prefix}{base.id}/", WRITE, **pc),
        ]
    elif kind == "keys":
        exchange = network.platform(zone.split(":", 1)[1]).key_holder.exchange
        stmts = _area(exchange.bucket, exchange.prefix, WRITE, **pc)
    elif kind == "platform":
        p = network.platform(zone.split(":", 1)[1])
        stmts = [
            *_area(p.intake.bucket, p.intake.prefix, [*READ, "s3:DeleteObject"], **pc),
            *_area(p.outbox.bucket, p.outbox.prefix, WRITE, **pc),
        ]
    elif kind == zones.NATIONAL:
        for p in network.platforms:
            stmts += _area(p.outbox.bucket, p.outbox.prefix, READ, **pc)
            # its signed acknowledgement of what the national tables hold (national/ack.py), nothing else
            stmts.append(
                {
                    "Effect": "Allow",
                    "Action": ["s3:PutObject"],
                    "Resource": [_arn(p.outbox.bucket, f"{p.outbox.prefix}_ack.json")],
                }
            )
            # and the deletes files of the deliveries it applied (national/ack.py purge_applied_deletes)
            stmts.append(
                {
                    "Effect": "Allow",
                    "Action": ["s3:DeleteObject"],
                    "Resource": [_arn(p.outbox.bucket, f"{p.outbox.prefix}*.deletes.*")],
                }
            )
        landing = network.national.landing_zone.bucket
        stmts.append({"Effect": "Allow", "Action": ["s3:*"], "Resource": [_arn(landing), _arn(landing, "*")]})
    if not stmts:
        return None
    return {"Version": "2012-10-17", "Statement": stmts}


def minio_policies(network: Network) -> dict[str, dict]:
    """File name -> policy of every zone with S3 access, as deploy/minio/policies holds them."""
    out = {}
    for zone in all_zones(network):
        policy = s3_policy(network, zone)
        if policy is not None:
            out[f"{principal(zone)}.json"] = policy
    return out


# -- PostgreSQL roles ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Databases:
    """The names of the databases the zones' grants name, in one PostgreSQL server."""

    catalogue: str
    sources: dict[str, str]  # base id -> its source database
    warehouses: dict[str, str]  # platform id -> its warehouse database
    national: str  # the HDH's tables database
    others: tuple[str, ...] = field(default=())  # only CONNECT revoked from PUBLIC (metadata DB, maintenance DB)

    def all(self) -> list[str]:
        return [*self.others, self.catalogue, *self.sources.values(), *self.warehouses.values(), self.national]


NATIONAL_DATABASE = "hdh"  # the embedded stack's HDH database (connection `tables_connection_id`)


def embedded_databases(network: Network) -> Databases:
    """The embedded stack's databases: `catalogue`, `src_<base>`, `wh_<platform>`, `hdh` (and `airflow`)."""
    return Databases(
        catalogue="catalogue",
        sources={b.id: f"src_{b.id}" for b in network.local_bases},
        warehouses={p.id: f"wh_{p.id}" for p in network.platforms},
        national=NATIONAL_DATABASE,
        others=("airflow", "postgres"),
    )


def compose_databases(network: Network) -> Databases:
    """docker-compose's `eds-db` databases: each named after the connection that reaches it (the `schema` of
    deploy/airflow/connections.template.yaml); the Airflow metadata DB is another server (`airflow-db`)."""
    return Databases(
        catalogue=network.catalogue_connection_id,
        sources={b.id: b.source_connection_id for b in network.local_bases},
        warehouses={p.id: p.warehouse_connection_id for p in network.platforms},
        national=network.national.tables_connection_id,
        others=("postgres",),
    )


def pg_statements(
    network: Network, passwords: dict[str, str], databases: Databases | None = None
) -> dict[str, list[str]]:
    """Database -> SQL that creates the zones' roles and grants (run as the administrator, idempotent).

    `passwords` maps each zone (and optionally `operator`) to its role's password; `databases` names the databases (default: the embedded
    stack's, `embedded_databases`). The first key is the maintenance database (`postgres`): roles and
    database-level grants; then the catalogue's, each source's, each warehouse's and the HDH's statements."""
    db = databases or embedded_databases(network)
    for name in db.all():
        if not _IDENT.fullmatch(name):
            raise ValueError(f"database name {name!r} is not a plain lower-case identifier")
    q = _quote_literal
    server = [
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{TASK_GROUP}') "
        f"THEN CREATE ROLE {TASK_GROUP} NOLOGIN; END IF; END $$"
    ]
    # the operator (compose's central catalogue connection) is a catalogue user like any zone, when given a password
    for zone in [*all_zones(network), *([zones.OPERATOR] if zones.OPERATOR in passwords else [])]:
        role = principal(zone)
        server += [
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
            f"THEN CREATE ROLE {role} LOGIN; END IF; END $$",
            f"ALTER ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD {q(passwords[zone])}",
            f"GRANT {TASK_GROUP} TO {role}",
        ]
    server += [f"REVOKE ALL ON DATABASE {name} FROM PUBLIC" for name in db.all()]
    server += [f"GRANT CONNECT, TEMPORARY ON DATABASE {db.catalogue} TO {TASK_GROUP}"]
    out = {"postgres": server, db.catalogue: _catalogue_grants(network)}
    for b in network.local_bases:
        role, src = principal(zones.local(b.id)), db.sources[b.id]
        out[src] = [
            f"GRANT CONNECT, TEMPORARY ON DATABASE {src} TO {role}",
            _for_each_schema(f"GRANT USAGE ON SCHEMA %I TO {role}"),
            _for_each_schema(f"GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {role}"),
            f"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {role}",
            f"ALTER DEFAULT PRIVILEGES GRANT USAGE ON SCHEMAS TO {role}",
            # its own state (quarantine, snapshot state, key state): the schema `eds_local`, which it owns
            f"CREATE SCHEMA IF NOT EXISTS {LOCAL_STATE_SCHEMA} AUTHORIZATION {role}",
            _reassign_to(role, LOCAL_STATE_SCHEMA),
        ]
    for p in network.platforms:
        role, wh = principal(zones.platform(p.id)), db.warehouses[p.id]
        out[wh] = [
            f"ALTER DATABASE {wh} OWNER TO {role}",
            f"GRANT CONNECT ON DATABASE {wh} TO {role}",
            f"ALTER SCHEMA public OWNER TO {role}",
            _reassign_to(role),
            f"ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO {role}",
            f"ALTER DEFAULT PRIVILEGES GRANT ALL ON SEQUENCES TO {role}",
        ]
    role = principal(zones.NATIONAL)
    out[db.national] = [
        f"ALTER DATABASE {db.national} OWNER TO {role}",
        f"GRANT CONNECT ON DATABASE {db.national} TO {role}",
        f"ALTER SCHEMA public OWNER TO {role}",
        _reassign_to(role),
    ]
    return out


def _catalogue_grants(network: Network) -> list[str]:
    g = TASK_GROUP
    # the key holder's nightly ceiling: its count of evaluations (one number), never a read of the audit
    count = "catalogue.key_evaluations_on(text, text, date)"
    keys = ", ".join(principal(zones.keys(p.id)) for p in network.platforms)
    return [
        f"GRANT USAGE ON SCHEMA catalogue TO {g}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA catalogue TO {g}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA catalogue TO {g}",
        f"REVOKE ALL ON catalogue.audit FROM {g}",
        f"GRANT INSERT ON catalogue.audit TO {g}",
        f"REVOKE ALL ON FUNCTION {count} FROM PUBLIC, {g}",
        *([f"GRANT EXECUTE ON FUNCTION {count} TO {keys}"] if keys else []),
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA catalogue GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {g}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA catalogue GRANT USAGE, SELECT ON SEQUENCES TO {g}",
        "REVOKE ALL ON SCHEMA public FROM PUBLIC",
    ]


def _for_each_schema(template: str) -> str:
    return (
        "DO $$ DECLARE s text; BEGIN FOR s IN SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
        f"AND nspname <> 'information_schema' LOOP EXECUTE format('{template}', s); END LOOP; END $$"
    )


def _reassign_to(role: str, schema: str | None = None) -> str:
    """Every table, sequence and view of the database's own schemas (or of `schema`) owned by someone else, and
    the schemas themselves, go to `role`."""
    only = f"AND nspname = '{schema}' " if schema else ""
    return (
        "DO $$ DECLARE r record; BEGIN FOR r IN SELECT n.nspname, c.relname, c.relkind FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','v','m','S') "
        "AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' "
        f"{only}AND c.relowner <> '{role}'::regrole AND NOT (c.relkind = 'S' AND EXISTS (SELECT FROM pg_depend d "
        "WHERE d.objid = c.oid AND d.deptype IN ('a','i'))) LOOP "
        "EXECUTE format(CASE r.relkind WHEN 'S' THEN 'ALTER SEQUENCE %I.%I OWNER TO ' "
        "WHEN 'v' THEN 'ALTER VIEW %I.%I OWNER TO ' WHEN 'm' THEN 'ALTER MATERIALIZED VIEW %I.%I OWNER TO ' "
        f"ELSE 'ALTER TABLE %I.%I OWNER TO ' END || '{role}', r.nspname, r.relname); END LOOP; "
        "FOR r IN SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> "
        f"'information_schema' {only}LOOP EXECUTE format('ALTER SCHEMA %I OWNER TO {role}', r.nspname); END LOOP; END $$"
    )


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


__all__ = [
    "LOCAL_STATE_SCHEMA",
    "READ",
    "TASK_GROUP",
    "WRITE",
    "Databases",
    "compose_databases",
    "embedded_databases",
    "minio_policies",
    "pg_statements",
    "s3_policy",
]
