"""Least privilege in the embedded stack's stores: each trust zone's own PostgreSQL role and S3 user.

PostgreSQL (enforced by the server): one LOGIN role per zone, `principal(zone)` (`eds_local_hosp_a`, ...).
    local:<base>     CONNECT + SELECT on its own source database `src_<base>` only
    platform:<p>     owns its warehouse database `wh_<p>` (and everything in it) only
    national         owns the HDH database `hdh` (Iceberg SQL catalog + apply ledger) only
    keys:<p>, every  the catalogue through the NOLOGIN group `eds_task`: read/write on the catalogue's tables,
    zone             INSERT only on `catalogue.audit` (no SELECT, UPDATE, DELETE, TRUNCATE, no ownership)
    keys:<p>         also EXECUTE on `catalogue.key_evaluations_on` (migration 0006, SECURITY DEFINER): its
                     nightly count of evaluations per member, the one number its ceiling needs from the audit
The audit table and its append-only trigger stay owned by the stack's administrator (`eds`), a role no task
connection of a zone logs in with, so no task can disable the trigger. CONNECT is revoked from PUBLIC on every
database: a zone role reaches only the databases granted here.

S3 (moto server started with INITIAL_NO_AUTH_ACTION_COUNT, so it checks the SigV4 signature of every request and
evaluates the caller's IAM policies): one IAM user per zone with the policy `s3_policy(network, zone)`:
    local:<base>     read/write/delete `<intake bucket>/<intake prefix><base>/*` (its own batches only) and
                     its own prefix `<base>/` of its key holder's exchange area (blinded elements, evaluations)
    keys:<p>         read/write/delete its exchange area (every member's prefix)
    platform:<p>     read its intake (and delete batches the HDH acknowledged); read/write/delete its outbox
    national         read every outbox, write its `_ack.json` and delete the deletes files it applied;
                     everything in the landing zone bucket
The stack's administrator user (every action) creates buckets and users; it is the operator's credential, not a
zone's. Gap of moto 5.2: it does not evaluate `Condition` blocks against request values (a conditional Allow is
treated as a Deny), so ListBucket cannot be confined to a prefix there: in the embedded stack a hospital can
list (not read) the key names of the other members' batches in its platform's intake bucket and exchange
area. The MinIO policy
files (deploy/minio/policies, written by `write_minio_policies`) carry the `s3:prefix` condition.

Also the zones' Ed25519 signing keys and the trust store of their public keys.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

from eds_network.core import zones
from eds_network.core.config import Network
from eds_network.orchestration.zone_connections import (
    Login,
    ZoneLogins,
    all_zones,
    principal,
    signing_connection_id,
    trust_store,
)

TASK_GROUP = "eds_task"
LOCAL_STATE_SCHEMA = "eds_local"
ADMIN_S3_USER = "eds-admin"
# The requests moto serves before it enforces IAM: create the admin user, its policy and its access key.
MOTO_NO_AUTH_ACTIONS = 3
MINIO_POLICY_DIR = Path(__file__).resolve().parents[3] / "deploy" / "minio" / "policies"


# -- S3 policies -------------------------------------------------------------------------------------------
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


def write_minio_policies(network: Network, folder: Path = MINIO_POLICY_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, policy in minio_policies(network).items():
        path = folder / name
        path.write_text(json.dumps(policy, indent=2) + "\n")
        written.append(path)
    return written


# -- PostgreSQL roles --------------------------------------------------------------------------------------
NATIONAL_DATABASE = "hdh"  # the embedded stack's HDH database (connection `tables_connection_id`)


def pg_statements(network: Network, passwords: dict[str, str]) -> dict[str, list[str]]:
    """Database -> SQL that creates the zones' roles and grants (run as the administrator, idempotent).

    `passwords` maps each zone to its role's password. Database names are the embedded stack's
    (`src_<base>`, `wh_<platform>`, `catalogue`)."""
    q = _quote_literal
    server = [
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{TASK_GROUP}') "
        f"THEN CREATE ROLE {TASK_GROUP} NOLOGIN; END IF; END $$"
    ]
    for zone in all_zones(network):
        role = principal(zone)
        server += [
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
            f"THEN CREATE ROLE {role} LOGIN; END IF; END $$",
            f"ALTER ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD {q(passwords[zone])}",
            f"GRANT {TASK_GROUP} TO {role}",
        ]
    databases = ["airflow", "postgres", "catalogue"]
    databases += [f"src_{b.id}" for b in network.local_bases] + [f"wh_{p.id}" for p in network.platforms]
    databases += [NATIONAL_DATABASE]
    server += [f"REVOKE ALL ON DATABASE {db} FROM PUBLIC" for db in databases]
    server += [f"GRANT CONNECT, TEMPORARY ON DATABASE catalogue TO {TASK_GROUP}"]
    out = {"postgres": server, "catalogue": _catalogue_grants(network)}
    for b in network.local_bases:
        role = principal(zones.local(b.id))
        out[f"src_{b.id}"] = [
            f"GRANT CONNECT, TEMPORARY ON DATABASE src_{b.id} TO {role}",
            _for_each_schema(f"GRANT USAGE ON SCHEMA %I TO {role}"),
            _for_each_schema(f"GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {role}"),
            f"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {role}",
            f"ALTER DEFAULT PRIVILEGES GRANT USAGE ON SCHEMAS TO {role}",
            # its own state (quarantine, snapshot state, key state): the schema `eds_local`, which it owns
            f"CREATE SCHEMA IF NOT EXISTS {LOCAL_STATE_SCHEMA} AUTHORIZATION {role}",
            _reassign_to(role, LOCAL_STATE_SCHEMA),
        ]
    for p in network.platforms:
        role = principal(zones.platform(p.id))
        out[f"wh_{p.id}"] = [
            f"ALTER DATABASE wh_{p.id} OWNER TO {role}",
            f"GRANT CONNECT ON DATABASE wh_{p.id} TO {role}",
            f"ALTER SCHEMA public OWNER TO {role}",
            _reassign_to(role),
            f"ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO {role}",
            f"ALTER DEFAULT PRIVILEGES GRANT ALL ON SEQUENCES TO {role}",
        ]
    role = principal(zones.NATIONAL)
    out[NATIONAL_DATABASE] = [
        f"ALTER DATABASE {NATIONAL_DATABASE} OWNER TO {role}",
        f"GRANT CONNECT ON DATABASE {NATIONAL_DATABASE} TO {role}",
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


def apply_pg_roles(stack, network: Network) -> None:
    """Create (or refresh) every zone's role and its grants on the running embedded PostgreSQL."""
    import psycopg

    passwords = {z: login.password for z, login in pg_logins(stack, network).items()}
    for db, statements in pg_statements(network, passwords).items():
        with psycopg.connect(stack.dsn(db), autocommit=True) as conn:
            for stmt in statements:
                conn.execute(stmt)


# -- logins (generated once, kept in the stack's secrets folder) ---------------------------------------------
def _logins_file(stack) -> Path:
    return stack.secrets_dir / "zone_logins.json"


def pg_logins(stack, network: Network) -> dict[str, Login]:
    """Each zone's PostgreSQL role and password (generated once into .eds/secrets/zone_logins.json)."""
    path = _logins_file(stack)
    data = json.loads(path.read_text()) if path.exists() else {}
    changed = False
    for zone in all_zones(network):
        if zone not in data:
            data[zone] = secrets.token_urlsafe(24)
            changed = True
    if changed:
        _write_secret(path, data)
    return {z: Login(principal(z), data[z]) for z in all_zones(network)}


def _s3_users_file(stack) -> Path:
    return stack.secrets_dir / "s3_users.json"


def s3_logins(stack) -> dict[str, Login]:
    """The S3 access keys of the running moto server (admin + one per zone), {} when it has none yet."""
    path = _s3_users_file(stack)
    if not path.exists():
        return {}
    return {k: Login(**v) for k, v in json.loads(path.read_text()).items()}


def forget_s3_users(stack) -> None:
    """moto keeps its users in memory: once it stops, their keys mean nothing."""
    _s3_users_file(stack).unlink(missing_ok=True)


def create_s3_users(stack, network: Network) -> dict[str, Login]:
    """On a freshly started moto (IAM not yet enforced): the admin user first, then one user per zone."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=stack.s3_endpoint,
        verify=stack.s3_verify,
        region_name="us-east-1",
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    users = {
        ADMIN_S3_USER: _iam_user(
            iam,
            ADMIN_S3_USER,
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]},
        )
    }
    _write_secret(_s3_users_file(stack), {k: vars(v) for k, v in users.items()})
    admin = users[ADMIN_S3_USER]
    iam = boto3.client(
        "iam",
        endpoint_url=stack.s3_endpoint,
        verify=stack.s3_verify,
        region_name="us-east-1",
        aws_access_key_id=admin.login,
        aws_secret_access_key=admin.password,
    )
    for zone in all_zones(network):
        policy = s3_policy(network, zone, prefix_conditions=False)
        if policy is not None:
            users[zone] = _iam_user(iam, principal(zone), policy)
    _write_secret(_s3_users_file(stack), {k: vars(v) for k, v in users.items()})
    return users


def _iam_user(iam, name: str, policy: dict) -> Login:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=f"{name}-s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return Login(key["AccessKeyId"], key["SecretAccessKey"])


def _write_secret(path: Path, data: dict) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    tmp.replace(path)


def zone_logins(stack, network: Network, zone: str) -> ZoneLogins:
    """The zone's own logins in the stack's stores."""
    return ZoneLogins(pg=pg_logins(stack, network)[zone], s3=s3_logins(stack).get(zone))


# -- signing keys --------------------------------------------------------------------------------------------
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


__all__ = [
    "Login",
    "ZoneLogins",
    "apply_pg_roles",
    "create_s3_users",
    "minio_policies",
    "new_signing_key",
    "pg_statements",
    "s3_policy",
    "signing_zones",
    "trust_store_of",
    "zone_logins",
]
