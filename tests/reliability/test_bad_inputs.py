"""Bad inputs, table-driven: each gets a clear error naming base / table / column (never a patient value), a
quarantine at the hospital where rows are concerned, and the rest of the network goes on.

Driven through the step functions on the real embedded PostgreSQL and S3 (fast): every source case runs on a
clone (`CREATE DATABASE … TEMPLATE`) of one small seeded hospital, so cases never see each other's damage.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import io
import json
import uuid
from collections.abc import Callable

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from eds_network.core import exchange
from eds_network.core.config import load_network
from eds_network.core.crypto import Key
from eds_network.core.errors import ConfigError, EdsError, SourceError, TransferError
from eds_network.core.nir import make_nir
from eds_network.core.storage import S3Endpoint, list_keys, read_json
from eds_network.dev import seed
from eds_network.local import extract, publish
from eds_network.national import transfer
from eds_network.platform import consolidate

pytestmark = [pytest.mark.integration]

UTC = dt.UTC
DAY1 = dt.datetime(2025, 3, 1, tzinfo=UTC)
DAY2 = DAY1 + dt.timedelta(days=1)
IN_DAY1 = DAY1 + dt.timedelta(hours=3)
NET = load_network().resized("hosp_c", 30).resized("hosp_b", 30)
BASE = NET.base("hosp_c")
OTHER = NET.base("hosp_b")  # same platform: its batch must still be applied when hosp_c's is refused


def _clone(stack, world, base_id: str = BASE.id) -> str:
    return world["clone"](base_id)


def _identity_values(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT nir, ipp, last_name, first_name, email, phone, address FROM identity.patient")
        return [v for row in rows for v in row if v and len(v) >= 5]


def _quarantine(dsn: str, table: str) -> list[tuple[str, dict | None]]:
    with psycopg.connect(dsn) as conn:
        if not conn.execute("SELECT to_regclass('eds_local.quarantine')").fetchone()[0]:
            return []
        return conn.execute(
            "SELECT reason, row_data FROM eds_local.quarantine WHERE table_name = %s ORDER BY 1", (table,)
        ).fetchall()


def _one_row(table: str) -> str:
    key = "person_id" if table in ("person", "death") else f"{table}_id"
    return f"{key} = (SELECT min({key}) FROM omop.{table})"


# --------------------------------------------------------------------------------------------------
# Source cases: the hospital's data is bad. `mutate` runs on a clone; then `table` is extracted.


@dataclasses.dataclass(frozen=True)
class SourceCase:
    id: str
    table: str
    mutate: Callable[[psycopg.Connection], None]
    error: type[EdsError] | None = None  # None: the table is published
    column: str | None = None
    message: str = ""
    quarantined: int = 0  # rows kept at the hospital
    reason: str = ""  # the quarantine reason names the column
    check: Callable[[dict, pa.Table], None] | None = None  # (ref, the published file)


def _sql(*stmts: str, params: tuple = ()) -> Callable[[psycopg.Connection], None]:
    def run(conn):
        for s in stmts:
            conn.execute(s, params if "%s" in s else ())

    return run


def _future_dates(conn):
    conn.execute(
        f"UPDATE omop.condition_occurrence SET condition_start_date = DATE '2099-01-01', "
        f"condition_start_datetime = TIMESTAMP '2099-01-01', _updated_at = %s WHERE {_one_row('condition_occurrence')}",
        (IN_DAY1,),
    )


def _death_before_birth(conn):
    conn.execute(
        "UPDATE omop.death d SET death_date = make_date(p.year_of_birth::int - 5, 1, 1), death_datetime = NULL, "
        "_updated_at = %s FROM omop.person p WHERE p.person_id = d.person_id AND d.person_id = "
        "(SELECT min(person_id) FROM omop.death)",
        (IN_DAY1,),
    )


def _invalid_nir(conn):
    # Every patient's NIR gets a wrong control key: linkage falls back to the site-scoped identity.
    conn.execute(
        "UPDATE identity.patient SET nir = left(nir, 13) || CASE WHEN right(nir, 2) = '01' THEN '02' ELSE '01' END "
        "WHERE nir IS NOT NULL"
    )


def _non_utf8(conn):
    pass  # see test_non_utf8_source_text_is_refused_naming_the_column (needs a SQL_ASCII database)


def _huge_text(conn):
    conn.execute("ALTER TABLE omop.observation ALTER COLUMN observation_source_value TYPE text")
    conn.execute("ALTER TABLE omop.observation ALTER COLUMN value_as_string TYPE text")
    conn.execute(
        f"UPDATE omop.observation SET observation_source_value = repeat('x', 10 * 1024 * 1024), "
        f"value_as_string = repeat('y', 10 * 1024 * 1024), _updated_at = %s WHERE {_one_row('observation')}",
        (IN_DAY1,),
    )


def _published_no_value_over(limit: int):
    def check(ref, published):
        assert ref["published"] == published.num_rows > 0 and ref["quarantined"] == 0
        for col in ("observation_source_value", "value_as_string"):
            lengths = [len(v) for v in published.column(col).to_pylist() if v is not None]
            assert max(lengths, default=0) <= limit, col

    return check


def _reported(check_key: str):
    def check(ref, published):
        assert ref["quality"][check_key]["violating_rows"] == 1, ref["quality"].get(check_key)
        assert ref["quarantined"] == 0 and ref["published"] == published.num_rows

    return check


def _nir_fallback_check(ref, published):
    assert ref["published"] == published.num_rows > 0 and ref["quarantined"] == 0


def _empty_check(ref, published):
    assert ref["extracted"] == ref["published"] == published.num_rows == 0


SOURCE_CASES = [
    SourceCase("missing_table", "observation", _sql("DROP TABLE omop.observation"), SourceError, None, "not found"),
    SourceCase(
        "missing_column",
        "drug_exposure",
        _sql("ALTER TABLE omop.drug_exposure DROP COLUMN route_concept_id"),
        SourceError,
        "route_concept_id",
        "missing",
    ),
    SourceCase(
        "missing_change_column",
        "visit_occurrence",
        _sql("ALTER TABLE omop.visit_occurrence DROP COLUMN _updated_at CASCADE"),
        SourceError,
        "_updated_at",
        "change column missing",
    ),
    SourceCase(
        "wrong_type",
        "procedure_occurrence",
        _sql("ALTER TABLE omop.procedure_occurrence ALTER COLUMN procedure_concept_id TYPE text"),
        SourceError,
        "procedure_concept_id",
        "does not match",
    ),
    SourceCase(
        "value_not_convertible",
        "measurement",
        _sql(
            "ALTER TABLE omop.measurement ALTER COLUMN measurement_datetime TYPE timestamptz "
            "USING measurement_datetime AT TIME ZONE 'UTC'"
        ),
        SourceError,
        "measurement_datetime",
        "does not fit",
    ),
    SourceCase(
        "null_primary_key",
        "measurement",
        _sql(
            "ALTER TABLE omop.measurement DROP CONSTRAINT IF EXISTS measurement_pkey CASCADE",
            "ALTER TABLE omop.measurement ALTER COLUMN measurement_id DROP NOT NULL",
            f"UPDATE omop.measurement SET measurement_id = NULL, _updated_at = %s WHERE {_one_row('measurement')}",
            params=(IN_DAY1,),
        ),
        quarantined=1,
    ),
    SourceCase(
        "duplicate_primary_key",
        "measurement",
        _sql(
            "ALTER TABLE omop.measurement DROP CONSTRAINT IF EXISTS measurement_pkey CASCADE",
            "INSERT INTO omop.measurement SELECT * FROM omop.measurement WHERE measurement_id = "
            "(SELECT min(measurement_id) FROM omop.measurement)",
        ),
        quarantined=1,  # the first row of the key is published, the duplicate stays at the hospital
    ),
    SourceCase(
        "negative_id",
        "condition_occurrence",
        _sql(
            f"UPDATE omop.condition_occurrence SET condition_occurrence_id = -7, _updated_at = %s "
            f"WHERE {_one_row('condition_occurrence')}",
            params=(IN_DAY1,),
        ),
        quarantined=1,
        reason="condition_occurrence_id: id outside",
    ),
    SourceCase(
        "future_dates",
        "condition_occurrence",
        _future_dates,
        quarantined=1,
        reason="condition_start_date: event in the future",
    ),
    SourceCase(
        "death_before_birth", "death", _death_before_birth, quarantined=1, reason="death_date: before the year of birth"
    ),
    SourceCase(
        "unknown_concept",
        "condition_occurrence",
        _sql(
            f"UPDATE omop.condition_occurrence SET condition_concept_id = 2147000001, _updated_at = %s "
            f"WHERE {_one_row('condition_occurrence')}",
            params=(IN_DAY1,),
        ),
        quarantined=0,
    ),
    SourceCase(
        "person_without_identity",
        "visit_occurrence",
        _sql(
            "ALTER TABLE omop.visit_occurrence DROP CONSTRAINT IF EXISTS visit_occurrence_person_id_fkey",
            f"UPDATE omop.visit_occurrence SET person_id = 987654321, _updated_at = %s "
            f"WHERE {_one_row('visit_occurrence')}",
            params=(IN_DAY1,),
        ),
        quarantined=1,
    ),
    SourceCase("invalid_nir_key", "person", _invalid_nir, check=_nir_fallback_check),
    SourceCase("text_of_10_mb", "observation", _huge_text, check=_published_no_value_over(50)),
    SourceCase("empty_table", "death", _sql("DELETE FROM omop.death", "DELETE FROM omop._deleted"), check=_empty_check),
]


@pytest.mark.parametrize("case", SOURCE_CASES, ids=lambda c: c.id)
def test_bad_source_data_is_refused_or_quarantined_and_the_rest_still_publishes(stack, world, case):
    dsn = _clone(stack, world)
    with psycopg.connect(dsn, autocommit=True) as conn:
        case.mutate(conn)
    prefix = f"test-bad-{uuid.uuid4().hex[:8]}/"
    res = stack.local_resources(NET, BASE.id, source_dsn=dsn, intake_prefix=prefix)
    secrets = _identity_values(dsn)
    target = None
    if case.error:
        with pytest.raises(case.error) as info:
            extract.extract_table(BASE, case.table, DAY1, DAY2, res)
        msg = str(info.value)
        assert f"base={BASE.id}" in msg and f"table={case.table}" in msg, msg
        if case.column:
            assert f"column={case.column}" in msg, msg
        assert case.message in msg, msg
        assert not [s for s in secrets if s in msg], "the error message carries a patient value"
    else:
        target = extract.extract_table(BASE, case.table, DAY1, DAY2, res).ref()
        assert target["extracted"] == target["published"] + target["quarantined"] + target["excluded_objection"]
        assert target["quarantined"] == case.quarantined, target
        rows = _quarantine(dsn, case.table)
        assert len([r for r in rows if r[1] is not None]) == case.quarantined, rows
        assert all(case.reason in reason for reason, _ in rows), rows
        if case.check:
            body = res.intake.client().get_object(Bucket=res.intake_bucket, Key=target["key"])["Body"].read()
            case.check(target, pq.read_table(io.BytesIO(body)))
    # The rest goes on: the other tables of the base extract, the batch publishes listing what failed.
    refs = [target] if target else []
    for t in BASE.tables:
        if t != case.table:
            refs.append(extract.extract_table(BASE, t, DAY1, DAY2, res).ref())
    pub = publish.publish_batch(BASE, DAY1, DAY2, refs, res)
    assert pub.failed_tables == ([case.table] if case.error else [])
    assert set(read_json(res.intake.client(), res.intake_bucket, pub.manifest_key)["tables"]) == {
        r["table"] for r in refs
    }


def test_non_utf8_source_text_is_refused_naming_the_column(stack, world):
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'").format(
                sql.Identifier(name)
            )
        )
    world["clones"].append(name)
    dsn = stack.dsn(name)
    seed.seed_base(dsn, NET, BASE.id, (DAY1, DAY2), tables=["person", "observation_period", "condition_occurrence"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Stored in LATIN1: the COPY sends byte 0xE9, which is not UTF-8.
        conn.execute(
            f"UPDATE omop.condition_occurrence SET condition_source_value = 'C50.9 sein gauche opéré', "
            f"_updated_at = %s WHERE {_one_row('condition_occurrence')}",
            (IN_DAY1,),
        )
    res = stack.local_resources(NET, BASE.id, source_dsn=dsn, intake_prefix=f"test-bad-{uuid.uuid4().hex[:8]}/")
    with pytest.raises(SourceError) as info:
        extract.extract_table(BASE, "condition_occurrence", DAY1, DAY2, res)
    msg = str(info.value)
    assert f"base={BASE.id}" in msg and "table=condition_occurrence" in msg and "UTF-8" in msg.replace("UTF8", "UTF-8")
    assert extract.extract_table(BASE, "person", DAY1, DAY2, res).published > 0  # the rest goes on


# --------------------------------------------------------------------------------------------------
# Interval and connection cases


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (DAY2, DAY1, "empty data interval"),
        (DAY1, DAY1, "empty data interval"),
        (
            dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(days=1),
            dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(days=2),
            "future",
        ),
    ],
    ids=["expired_interval_end_before_start", "empty_interval", "future_interval"],
)
def test_bad_data_interval_is_refused_naming_base_and_table(stack, world, start, end, message):
    res = stack.local_resources(NET, BASE.id, source_dsn=stack.dsn(world["templates"][BASE.id]), intake_prefix="x/")
    with pytest.raises(SourceError, match=message) as info:
        extract.extract_table(BASE, "person", start, end, res)
    assert f"base={BASE.id}" in str(info.value) and "table=person" in str(info.value)


def test_unreachable_source_names_base_and_table_without_the_password(stack, world):
    dsn = stack.dsn(world["templates"][BASE.id]).replace(f":{stack.pg_port}/", ":1/")
    res = stack.local_resources(NET, BASE.id, source_dsn=dsn, intake_prefix="x/")
    with pytest.raises(SourceError, match="unreachable") as info:
        extract.extract_table(BASE, "person", DAY1, DAY2, res)
    assert "table=person" in str(info.value) and stack.pg_password not in str(info.value)


def test_malformed_yaml_and_unknown_base_are_config_errors(tmp_path):
    bad = tmp_path / "network.yaml"
    bad.write_text("platforms: [\n  - id: a\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: malformed YAML"):
        load_network(bad)
    with pytest.raises(ConfigError, match="unknown base 'hosp_z'"):
        NET.base("hosp_z")


def test_missing_connection_is_a_config_error_naming_the_connection(stack, monkeypatch):
    from eds_network.orchestration import connections as airflow_adapter

    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", stack.airflow_env()["AIRFLOW__SECRETS__BACKEND"])
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND_KWARGS", stack.airflow_env()["AIRFLOW__SECRETS__BACKEND_KWARGS"])
    with pytest.raises(ConfigError, match="'eds_src_nowhere' is not defined") as info:
        airflow_adapter.pg_dsn("eds_src_nowhere", "source of base hosp_z")
    assert "source of base hosp_z" in str(info.value)


def test_plain_http_landing_zone_is_refused_before_anything_is_sent(stack):
    p = NET.platforms[0]
    keys = stack.keys(NET)
    box = keys[NET.national.box_key_connection_id]
    ep = S3Endpoint(stack.s3_endpoint, *stack.s3_login)
    res = transfer.NationalResources(
        outbox=ep,
        landing=ep,
        national_key=Key.from_secret("n", keys[NET.national.key_connection_id]["password"], "v1"),
        box_private_key=base64.b64decode(box["password"]),
        box_key_version="v1",
    )
    remote = dataclasses.replace(res, landing=S3Endpoint("http://hdh.example.org", "a", "b"))
    with pytest.raises(TransferError, match=r"http://hdh\.example\.org is not TLS"):
        transfer.transfer_platform(p, NET.national, remote)


# --------------------------------------------------------------------------------------------------
# Platform cases: a batch in the intake is bad. The good batches are copied to a prefix of the case's own,
# hosp_c's batch is damaged, and the platform consolidates into a fresh warehouse.


def _copy_batches(s3, bucket: str, src: str, dst: str) -> None:
    """Copy every batch under `src` to `dst`, manifests rewritten to list the copies."""
    for key in list_keys(s3, bucket, src):
        new = dst + key[len(src) :]
        if key.endswith(exchange.MANIFEST):
            m = read_json(s3, bucket, key)
            for entry in m["tables"].values():
                for f in ("key", "tombstones_key"):
                    if entry.get(f):
                        entry[f] = dst + entry[f][len(src) :]
            s3.put_object(Bucket=bucket, Key=new, Body=json.dumps(m).encode())
        else:
            s3.copy_object(Bucket=bucket, Key=new, CopySource={"Bucket": bucket, "Key": key})


def _edit_manifest(s3, bucket, key, fn):
    m = read_json(s3, bucket, key)
    fn(m, s3, bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(m).encode())


def _tamper_rows(m, s3, bucket):
    m["tables"]["measurement"]["sha256"] = "0" * 64


def _missing_file(m, s3, bucket):
    s3.delete_object(Bucket=bucket, Key=m["tables"]["condition_occurrence"]["key"])


def _corrupt_parquet(m, s3, bucket):
    key = m["tables"]["drug_exposure"]["key"]
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=body[: len(body) // 2])


def _wrong_key_version(m, s3, bucket):
    m["key_versions"]["level1"] = "v0"


def _wrong_schema_version(m, s3, bucket):
    m["schema_version"] = "OMOP CDM 5.3"


PLATFORM_CASES = [
    ("tampered_manifest", _tamper_rows, "measurement", "does not match the manifest SHA-256"),
    ("manifest_points_to_missing_file", _missing_file, "condition_occurrence", "is missing"),
    ("corrupted_parquet_in_intake", _corrupt_parquet, "drug_exposure", "does not match the manifest SHA-256"),
    ("wrong_key_version", _wrong_key_version, None, "level-1 key version 'v0'"),
    ("wrong_schema_version", _wrong_schema_version, None, "schema version"),
]


@pytest.mark.parametrize(("case", "damage", "table", "message"), PLATFORM_CASES, ids=[c[0] for c in PLATFORM_CASES])
def test_bad_batch_in_intake_is_rejected_naming_base_and_table_and_other_bases_still_load(
    stack, world, case, damage, table, message
):
    p = NET.platform(BASE.platform)
    s3 = stack.s3_client()
    prefix = f"test-bad-{uuid.uuid4().hex[:8]}/"
    _copy_batches(s3, p.intake.bucket, world["prefix"], prefix)
    bad_key = prefix + world["published"][BASE.id].manifest_key[len(world["prefix"]) :]
    _edit_manifest(s3, p.intake.bucket, bad_key, damage)
    wh = _clone_empty(stack, world)
    ep = S3Endpoint(stack.s3_endpoint, *stack.s3_login)
    version = stack.keys(NET)[p.key_connection_id]["extra"]["version"]
    c = consolidate.consolidate(
        p, p.intake.bucket, prefix, consolidate.PlatformResources(wh, ep, ep, level1_key_version=version)
    )
    bad_bid = world["published"][BASE.id].batch_id
    assert c.applied == [world["published"][OTHER.id].batch_id]
    assert list(c.rejected) == [bad_bid]
    reason = c.rejected[bad_bid]
    assert f"base={BASE.id}" in reason and message in reason, reason
    if table:
        assert f"table={table}" in reason, reason
    with psycopg.connect(wh) as conn:
        assert conn.execute("SELECT count(*) FROM eds_platform.rejected").fetchone()[0] == 1
        sites = {r[0] for r in conn.execute("SELECT DISTINCT base_id FROM eds_platform.person_site")}
        assert sites == {OTHER.id}
        assert conn.execute("SELECT count(*) FROM omop.measurement").fetchone()[0] > 0
    # The rejected batch is left in intake, untouched.
    assert s3.head_object(Bucket=p.intake.bucket, Key=bad_key)


def _clone_empty(stack, world) -> str:
    return world["empty"]()


def test_a_parquet_file_readable_but_of_the_wrong_schema_is_rejected_naming_the_table(stack, world):
    p = NET.platform(BASE.platform)
    s3 = stack.s3_client()
    prefix = f"test-bad-{uuid.uuid4().hex[:8]}/"
    _copy_batches(s3, p.intake.bucket, world["prefix"], prefix)
    bad_key = prefix + world["published"][BASE.id].manifest_key[len(world["prefix"]) :]

    def wrong_schema(m, s3, bucket):
        entry = m["tables"]["observation_period"]
        t = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=entry["key"])["Body"].read()))
        buf = io.BytesIO()
        pq.write_table(t.drop_columns(["period_type_concept_id"]), buf)
        entry["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
        s3.put_object(Bucket=bucket, Key=entry["key"], Body=buf.getvalue())

    _edit_manifest(s3, p.intake.bucket, bad_key, wrong_schema)
    ep = S3Endpoint(stack.s3_endpoint, *stack.s3_login)
    c = consolidate.consolidate(
        p, p.intake.bucket, prefix, consolidate.PlatformResources(_clone_empty(stack, world), ep, ep)
    )
    reason = c.rejected[world["published"][BASE.id].batch_id]
    assert "table=observation_period" in reason and "period_type_concept_id" in reason
    assert c.applied == [world["published"][OTHER.id].batch_id]


def test_person_with_invalid_nir_key_is_linked_by_site_not_across_sites():
    from eds_network.local.pseudonymise import linkage_identity

    good = make_nir("F", dt.date(1980, 2, 3), "75", 101, 5)
    bad = good[:13] + ("01" if good[13:] != "01" else "02")
    assert linkage_identity(good, "1980-02-03", "F", "0100000001", "A") == linkage_identity(
        good, "1980-02-03", "F", "0200000009", "B"
    )
    assert linkage_identity(bad, "1980-02-03", "F", "0100000001", "A") != linkage_identity(
        bad, "1980-02-03", "F", "0200000009", "B"
    )
