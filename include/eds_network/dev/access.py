"""Least privilege in the embedded stack's stores: each trust zone's own PostgreSQL role and S3 user.

What each zone may do is defined once, in production code (`orchestration/grants.py`: `pg_statements`,
`s3_policy`, `minio_policies`); docker-compose's `airflow-init` job applies the same statements
(deploy/airflow/provision.py). This module applies them to the embedded stack:

PostgreSQL: `apply_pg_roles` runs `pg_statements` on the embedded server's databases (`src_<base>`, `wh_<p>`,
`hdh`, `catalogue`) as the stack's administrator (`eds`), who owns the catalogue's audit table and its trigger;
each zone's password is generated once into .eds/secrets/zone_logins.json.

S3 (moto server started with INITIAL_NO_AUTH_ACTION_COUNT, so it checks the SigV4 signature of every request and
evaluates the caller's IAM policies): one IAM user per zone with the policy `s3_policy(network, zone)`.
The stack's administrator user (every action) creates buckets and users; it is the operator's credential, not a
zone's. Gap of moto 5.2: it does not evaluate `Condition` blocks against request values (a conditional Allow is
treated as a Deny), so ListBucket cannot be confined to a prefix there: in the embedded stack a hospital can
list (not read) the key names of the other members' batches in its platform's intake bucket and exchange
area. The MinIO policy files (deploy/minio/policies, written by `write_minio_policies`) carry the `s3:prefix`
condition.

Also the zones' Ed25519 signing keys and the trust store of their public keys.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

from eds_network.core.config import Network
from eds_network.orchestration.grants import (
    embedded_databases,
    minio_policies,
    pg_statements,
    s3_policy,
)
from eds_network.orchestration.zone_connections import (
    Login,
    ZoneLogins,
    all_zones,
    principal,
    signing_connection_id,
    signing_zones,
    trust_store,
)

ADMIN_S3_USER = "eds-admin"
# The requests moto serves before it enforces IAM: create the admin user, its policy and its access key.
MOTO_NO_AUTH_ACTIONS = 3
MINIO_POLICY_DIR = Path(__file__).resolve().parents[3] / "deploy" / "minio" / "policies"


# -- S3 policies (orchestration/grants.py) ----------------------------------------------------------------
def write_minio_policies(network: Network, folder: Path = MINIO_POLICY_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, policy in minio_policies(network).items():
        path = folder / name
        path.write_text(json.dumps(policy, indent=2) + "\n")
        written.append(path)
    return written


# -- PostgreSQL roles (orchestration/grants.py) -----------------------------------------------------------
def apply_pg_roles(stack, network: Network) -> None:
    """Create (or refresh) every zone's role and its grants on the running embedded PostgreSQL."""
    import psycopg

    passwords = {z: login.password for z, login in pg_logins(stack, network).items()}
    for db, statements in pg_statements(network, passwords, embedded_databases(network)).items():
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
