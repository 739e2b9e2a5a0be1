"""Every zone's credential of the embedded stack against every database and every bucket/prefix, read and write:
the stores themselves (PostgreSQL grants, moto's IAM) let each credential reach its own zone only.

Run with `-s` to see the matrices. What moto cannot enforce (ListBucket confined to a prefix) is asserted as the
documented gap, so a moto that starts enforcing it makes this test say so.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from botocore.exceptions import ClientError

from eds_network.core import zones
from eds_network.core.config import load_network
from eds_network.core.storage import s3_client
from eds_network.dev import access
from eds_network.orchestration.zone_connections import all_zones

NETWORK = load_network()
PROBE = "eds_access_probe"


def _databases() -> list[str]:
    return ["catalogue", *(f"src_{b.id}" for b in NETWORK.local_bases), *(f"wh_{p.id}" for p in NETWORK.platforms)]


def _expected_db(zone: str, db: str) -> str:
    """'rw', 'r' or '-' (cannot connect) for a zone's role on a database."""
    kind, ident = zones.kind(zone), zone.split(":", 1)[-1]
    if db == "catalogue":
        return "rw"
    if kind == "local" and db == f"src_{ident}":
        return "r"
    if kind == "platform" and db == f"wh_{ident}":
        return "rw"
    return "-"


@pytest.fixture(scope="module")
def probes(stack):
    """A probe table in every source and warehouse (created by the administrator, as the seed does), grants
    then re-applied as at every stack start."""
    for db in _databases()[1:]:
        with psycopg.connect(stack.dsn(db), autocommit=True) as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS public.{PROBE} (v text)")
            conn.execute(f"INSERT INTO public.{PROBE} VALUES ('x')")
    with psycopg.connect(stack.dsn("catalogue"), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS catalogue.{PROBE} (v text)")
    access.apply_pg_roles(stack, NETWORK)
    return stack


def _dsn(stack, login, db: str) -> str:
    return f"postgresql://{login.login}:{login.password}@127.0.0.1:{stack.pg_port}/{db}"


def _try_db(stack, login, db: str) -> str:
    table = f"catalogue.{PROBE}" if db == "catalogue" else f"public.{PROBE}"
    try:
        conn = psycopg.connect(_dsn(stack, login, db), autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        assert "permission denied" in str(exc), exc
        return "-"
    with conn:
        out = ""
        for mode, stmt in (("r", f"SELECT count(*) FROM {table}"), ("w", f"INSERT INTO {table} VALUES ('y')")):
            try:
                conn.execute(stmt)
                out += mode
            except psycopg.errors.InsufficientPrivilege:
                pass
        return out or "c"


def test_postgres_matrix(probes):
    stack = probes
    logins = access.pg_logins(stack, NETWORK)
    dbs = _databases()
    rows, wrong = [], []
    for zone in all_zones(NETWORK):
        got = [_try_db(stack, logins[zone], db) for db in dbs]
        rows.append(f"{zone:16}" + "".join(f"{g:>14}" for g in got))
        wrong += [(zone, db, g) for db, g in zip(dbs, got, strict=True) if g != _expected_db(zone, db)]
    print("\nPostgreSQL: r = read, w = write, - = cannot connect\n" + " " * 16 + "".join(f"{d:>14}" for d in dbs))
    print("\n".join(rows))
    assert not wrong, f"(zone, database, got) differing from least privilege: {wrong}"


def test_audit_is_insert_only_for_every_zone(probes):
    stack = probes
    for zone, login in access.pg_logins(stack, NETWORK).items():
        with psycopg.connect(_dsn(stack, login, "catalogue"), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO catalogue.audit (actor, action, object) VALUES (%s, 'access-test', 'audit')", (zone,)
            )
            for stmt in (
                "SELECT count(*) FROM catalogue.audit",
                "UPDATE catalogue.audit SET action = 'x'",
                "DELETE FROM catalogue.audit",
                "TRUNCATE catalogue.audit",
                "ALTER TABLE catalogue.audit DISABLE TRIGGER audit_append_only",
                "DROP TRIGGER audit_append_only ON catalogue.audit",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(stmt)
    with psycopg.connect(stack.dsn("catalogue")) as conn:  # the trigger is still there, enabled
        state = conn.execute(
            "SELECT tgenabled FROM pg_trigger WHERE tgname = 'audit_append_only' AND tgrelid = 'catalogue.audit'::regclass"
        ).fetchone()
    assert state == ("O",)


def test_only_the_key_holders_count_their_evaluations_and_only_that_number(probes):
    """The key holder's ceiling needs its count of today's evaluations, which only the audit holds: it gets that
    one number through `catalogue.key_evaluations_on` (SECURITY DEFINER), every other zone is refused it."""
    stack = probes
    p = NETWORK.platforms[0]
    base = p.members[0].id
    count = "SELECT catalogue.key_evaluations_on(%s, %s, (now() AT TIME ZONE 'UTC')::date)"
    logins = access.pg_logins(stack, NETWORK)
    with psycopg.connect(_dsn(stack, logins[zones.keys(p.id)], "catalogue"), autocommit=True) as conn:
        before = conn.execute(count, (p.id, base)).fetchone()[0]
        conn.execute(
            "INSERT INTO catalogue.audit (actor, action, object, details) VALUES (%s, 'key.evaluated', %s, %s)",
            (zones.keys(p.id), f"base:{base}", json.dumps({"platform": p.id, "evaluated": 7})),
        )
        assert conn.execute(count, (p.id, base)).fetchone()[0] == before + 7
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # still no read of the audit itself
            conn.execute("SELECT count(*) FROM catalogue.audit")
    for zone, login in logins.items():
        if zones.kind(zone) == "keys":
            continue
        with psycopg.connect(_dsn(stack, login, "catalogue"), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(count, (p.id, base))


# -- S3 -------------------------------------------------------------------------------------------------------
def _areas() -> list[tuple[str, str, str]]:
    """(name, bucket, prefix) of every area of the object stores."""
    out = []
    for p in NETWORK.platforms:
        out += [(f"intake/{b.id}", p.intake.bucket, f"{p.intake.prefix}{b.id}/") for b in p.members]
        ex = p.key_holder.exchange
        out += [(f"keyx/{b.id}", ex.bucket, f"{ex.prefix}{b.id}/") for b in p.members]
        out.append((f"outbox/{p.id}", p.outbox.bucket, p.outbox.prefix))
    lz = NETWORK.national.landing_zone
    return [*out, ("landing", lz.bucket, lz.prefix + "/" if lz.prefix and not lz.prefix.endswith("/") else lz.prefix)]


def _expected_s3(zone: str, area: str) -> str:
    """'rw', 'r' or '-' for reading/writing objects of an area."""
    kind, ident = zones.kind(zone), zone.split(":", 1)[-1]
    where, _, what = area.partition("/")
    if kind == "local":
        return "rw" if area in (f"intake/{ident}", f"keyx/{ident}") else "-"
    if kind == "keys":
        return "rw" if where == "keyx" and NETWORK.platform_of(what).id == ident else "-"
    if kind == "platform":
        p = NETWORK.platform(ident)
        if where == "intake" and what in {b.id for b in p.members}:
            return "r"
        return "rw" if area == f"outbox/{ident}" else "-"
    if kind == zones.NATIONAL:
        return "rw" if area == "landing" else ("r" if where == "outbox" else "-")
    return "-"


def _denied(exc: ClientError) -> bool:
    return exc.response["Error"]["Code"] in ("AccessDenied", "403", "InvalidAccessKeyId")


def _try_s3(client, bucket: str, prefix: str) -> tuple[str, bool]:
    """('r'/'w' flags for objects, whether listing the prefix works)."""
    out = ""
    try:
        client.get_object(Bucket=bucket, Key=f"{prefix}{PROBE}.txt")["Body"].read()
        out += "r"
    except ClientError as exc:
        assert _denied(exc), exc
    try:
        client.put_object(Bucket=bucket, Key=f"{prefix}{PROBE}-written.txt", Body=b"y")
        out += "w"
    except ClientError as exc:
        assert _denied(exc), exc
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        listed = True
    except ClientError as exc:
        assert _denied(exc), exc
        listed = False
    return out or "-", listed


def test_s3_matrix(stack):
    admin = stack.s3_client()
    areas = _areas()
    for _, bucket, prefix in areas:
        admin.put_object(Bucket=bucket, Key=f"{prefix}{PROBE}.txt", Body=b"x")
    users = access.s3_logins(stack)
    rows, wrong, listed = [], [], {}
    for zone in all_zones(NETWORK):
        login = users.get(zone)
        assert login is not None, zone
        client = s3_client(stack.s3_endpoint, login.login, login.password, "eu-west-3")
        got = []
        for name, bucket, prefix in areas:
            rw, can_list = _try_s3(client, bucket, prefix)
            got.append(rw)
            listed[(zone, name)] = can_list
            if rw != _expected_s3(zone, name):
                wrong.append((zone, name, rw))
        rows.append(f"{zone:16}" + "".join(f"{g:>14}" for g in got))
    print("\nS3 objects: r = read, w = write, - = denied\n" + " " * 16 + "".join(f"{a[0]:>14}" for a in areas))
    print("\n".join(rows))
    assert not wrong, f"(zone, area, got) differing from least privilege: {wrong}"
    # Listing follows the buckets: a zone lists the buckets it may read, never another one.
    for (zone, name), can_list in listed.items():
        assert can_list == (_expected_s3(zone, name) != "-" or _same_bucket_as_own(zone, name)), (zone, name)


def _same_bucket_as_own(zone: str, area: str) -> bool:
    """moto gap (see dev/access.py): ListBucket is granted on the whole intake bucket, so a hospital lists (never
    reads) the key names of the other members of its platform."""
    if zones.kind(zone) != "local" or not area.startswith(("intake/", "keyx/")):
        return False
    other = area.split("/", 1)[1]
    return NETWORK.platform_of(other).id == NETWORK.platform_of(zone.split(":", 1)[1]).id


def test_s3_wrong_secret_and_unknown_key_are_refused(stack):
    login = access.s3_logins(stack)[zones.local(NETWORK.local_bases[0].id)]
    bucket = NETWORK.platform_of(NETWORK.local_bases[0].id).intake.bucket
    for key, secret in ((login.login, "not-the-secret"), ("AKIAUNKNOWN000000000", login.password)):
        with pytest.raises(ClientError) as info:
            s3_client(stack.s3_endpoint, key, secret, "eu-west-3").list_objects_v2(Bucket=bucket)
        assert info.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "403")
