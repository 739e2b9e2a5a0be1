"""Leak scan: identifiers planted in the sources reach no output of a network night, and the scanner is not blind.

The scanner (`eds_network.dev.leakscan`, also `eds leak-scan`) reads every output place: intake, outbox and landing
zone objects (Parquet decoded), warehouses, catalogue, Airflow's metadata DB (XCom, rendered fields,
dag_run.conf, …), files of the state folder (task logs, data docs) and the summary text.
"""

from __future__ import annotations

import io
import json

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from planting import PLANTED_BASES, SHORT_SURNAMES, SPELLINGS
from psycopg import sql

from eds_network import cli
from eds_network.core.config import load_network
from eds_network.dev import leakscan
from eds_network.local.pseudonymise import looks_like_identifier, scrub_identifiers

NETWORK = load_network()

# --------------------------------------------------------------------------------------------------
# The scanner on its own (no stack)

IDS = leakscan.Identifiers(
    {
        "nir": ["185057505601205"],
        "ipp": ["0212345678"],
        "last_name": ["Lefèvre", "Roy"],
        "first_name": ["Mathilde"],
        "address": ["12 rue de l'Église"],
        "phone": ["06 12 34 56 78"],
        "email": ["mathilde.lefevre7@poste.example"],
    }
)


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("patient 185057505601205 admitted", {"nir"}),
        ("NIR: 1 85 05 75 056 012 05", {"nir"}),
        ("ipp=0212345678;", {"ipp"}),
        ("dr. LEFEVRE saw", {"last_name"}),
        ('{"name": "mathilde"}', {"first_name"}),
        ("lives 12 Rue de l'Eglise, Paris", {"address"}),
        ("tel 0612345678", {"phone"}),
        ("tel 06 12 34 56 78", {"phone"}),
        ("<td>mathilde.lefevre7@poste.example</td>", {"email"}),
        ("id 90212345678 and sha 0212345678ab", set()),  # not inside a longer number or a checksum
        ("Mme Roy, vue ce jour", {"last_name"}),  # a short surname, written as a name is
        ("ROY Jean", {"last_name"}),
        ("<li>royalty, destroy, roy-alty</li>", set()),  # not a whole token written as a name
        ("NIR 1.85.05.75.056.012.05 noted", {"nir"}),
        ("nir sans cle 1850575056012", {"nir"}),
        ("nir 1 85 05 75 056 012", {"nir"}),
        ("NIR 1-85-05-75-056-012-05", {"nir"}),
        ("tel +33 6 12 34 56 78", {"phone"}),
        ("tel +33612345678", {"phone"}),
        ("tel 0033 6 12 34 56 78", {"phone"}),
        ("tel +33 (0)6 12 34 56 78", {"phone"}),
        ("tel 06.12.34.56.78", {"phone"}),
        ("tel 06-12-34-56-78", {"phone"}),
        ("value 12.5 on 2025-03-01, version 1.2.3", set()),
        ('{"n": "Dr Lef\\u00e8vre"}', {"last_name"}),  # JSON-escaped accents
        ("GIF89a\x00\x01 Roy \ufffd\ufffd\x00", set()),  # bytes of an image: short names are not looked for
        ("12 rue de la Paix", set()),
        ("tok 3q2+7wUv9A/Roy/K0xNp4rT8sYz1bCd6eFg==", set()),  # base64 (a sealed token): random letters cut by '/'
        ("sig: mZ4/ROY/aQ7+Lk2Jp9Hw3Xs5Vt8Nc1Bd0Ef=", set()),
        ("Mme Roy, dossier 3/4, vue le 2025/03/01", {"last_name"}),  # a '/' in text a person wrote
    ],
)
def test_scanner_finds_each_kind_of_identifier_and_only_whole_tokens(text, kinds):
    assert IDS.kinds_in(text) == kinds


def test_scanner_reads_parquet_and_reports_place_and_kind_never_the_value(tmp_path):
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": pa.array([1, 2]), "note": pa.array(["ok", "mathilde.lefevre7@poste.example"])}), buf)
    (tmp_path / "f.parquet").write_bytes(buf.getvalue())
    (tmp_path / "task.log").write_text("INFO extracted 3 rows\n" * 10_000 + "WARNING patient 185057505601205\n")
    report = leakscan.scan(leakscan.file_places(tmp_path), IDS)
    assert {(h.where.rsplit("/", 1)[-1], h.kind) for h in report.hits} == {
        ("f.parquet", "email"),
        ("task.log", "nir"),
    }
    assert "185057505601205" not in report.text() and "poste.example" not in report.text()


@pytest.mark.parametrize(
    ("value", "identifier"),
    [
        ("185057505601205", True),
        ("NIR 1 85 05 75 056 012 05", True),
        ("185057505601206", False),  # wrong key: a code, not an NIR
        ("a.b@c.example", True),
        ("06 12 34 56 78", True),
        ("+33 6 12 34 56 78", True),
        ("44054006", False),
        ("1231000119100", False),
        ("C50.9", False),
        ("mmol/L", False),
    ],
)
def test_coded_values_carrying_an_identifier_are_recognised(value, identifier):
    assert looks_like_identifier(value) is identifier


def test_scrub_nulls_only_identifier_values():
    col = pa.array(["C50.9", "185057505601205", None, "a.b@c.example", "C50.9"])
    assert scrub_identifiers(col).to_pylist() == ["C50.9", None, None, None, "C50.9"]


# --------------------------------------------------------------------------------------------------
# A network night with planted identifiers


@pytest.fixture(scope="module")
def scanned(planted_night, night_scan):
    """The session's one scan of the night's every output (`night_scan`, tests/conftest.py: `leakscan.scan` of
    `leakscan.stack_places`, what `eds leak-scan` runs), after every other reader of the night."""
    assert planted_night["planted"] >= 3 * len(NETWORK.local_bases)
    return night_scan["report"], night_scan["ids"]


@pytest.mark.integration
@pytest.mark.airflow
@pytest.mark.timeout(3600)  # includes the shared night (fixture setup counts): ~3 min idle, 20+ min on a loaded machine
def test_the_night_with_planted_identifiers_succeeds(planted_night):
    assert [d for d, ok, _ in planted_night["results"] if not ok] == []


@pytest.mark.integration
@pytest.mark.airflow
@pytest.mark.timeout(3600)  # includes the shared night (fixture setup counts): ~3 min idle, 20+ min on a loaded machine
def test_no_identifier_in_any_output_of_the_night(scanned):
    report, ids = scanned
    assert set(ids.counts) == set(leakscan.KINDS) and all(ids.counts[k] > 0 for k in leakscan.KINDS), ids.counts
    assert report.hits == [], report.text()
    # Every kind of place was actually read, with content in it.
    for area in ("s3", "warehouse", "national_db", "catalogue", "airflow_db", "files", "pg_logs", "summary"):
        assert report.chars.get(area, 0) > 0, area


def _spelled(stack, expr: str, cond: str, table: str, column: str) -> tuple[list[str], int]:
    """The values a spelling gave in the sources (planted) and how many source rows still carry one."""
    values, rows = [], 0
    for base_id in PLANTED_BASES:
        if table not in NETWORK.base(base_id).tables:
            continue
        with psycopg.connect(stack.dsn(f"src_{base_id}")) as conn:
            got = conn.execute(
                sql.SQL(
                    "SELECT o.{c}, count(*) FROM omop.{t} o JOIN identity.patient i USING (person_id) "
                    "WHERE {cond} AND o.{c} = left({e}, 50) GROUP BY 1"
                ).format(c=sql.Identifier(column), t=sql.Identifier(table), cond=sql.SQL(cond), e=sql.SQL(expr))
            ).fetchall()
        values += [v for v, _ in got]
        rows += sum(n for _, n in got)
    return values, rows


@pytest.mark.integration
@pytest.mark.airflow
@pytest.mark.timeout(3600)  # includes the shared night (fixture setup counts): ~3 min idle, 20+ min on a loaded machine
def test_every_planted_spelling_is_in_a_source_and_found_when_planted_directly_in_an_output(scanned, stack):
    """Issue 19's spellings (NIR with/without key, spaces/dots/dashes; +33, dotted, compact phones; e-mail; IPP;
    short and long surnames), planted in coded columns by `planted_night`: the clean scan above is not vacuous —
    each value is in a source, and each is found once written in an output (an object of the landing zone, a line
    of the PostgreSQL server log)."""
    _, ids = scanned
    s3 = stack.s3_client()
    bucket = NETWORK.national.landing_zone.bucket
    prefix = "zz-probe-spellings/"
    expected, short_seen = set(), set()
    try:
        for k, (label, kind, table, column, expr, cond) in enumerate(SPELLINGS):
            values, rows = _spelled(stack, expr, cond, table, column)
            assert rows > 0 and values, f"{label}: planted in no source row"
            short_seen |= {v for v in values if kind == "last_name" and len(v) < 5}
            key = f"{prefix}{k:02d}.json"
            s3.put_object(Bucket=bucket, Key=key, Body=json.dumps({"value_source_value": values[0]}).encode())
            expected.add((f"s3://{bucket}/{key}", kind))
        got = {(h.where, h.kind) for h in leakscan.scan(leakscan.s3_places(s3, bucket, prefix), ids).hits}
    finally:
        for k in range(len(SPELLINGS)):
            s3.delete_object(Bucket=bucket, Key=f"{prefix}{k:02d}.json")
    assert got == expected
    assert short_seen & set(SHORT_SURNAMES)  # a short surname given to patients, planted and found

    # The PostgreSQL server log: a line quoting a dotted NIR without its key, found there.
    nir_dotted = _spelled(stack, *SPELLINGS[3][4:], *SPELLINGS[3][2:4])[0][0]
    log = stack.pg_root / "postgres.log"
    original = log.read_bytes()
    try:
        with open(log, "ab") as f:
            f.write(f'ERROR:  invalid input syntax for type bigint: "{nir_dotted}"\n'.encode())
        hits = leakscan.scan(leakscan.pg_log_places(stack), ids).hits
    finally:
        with open(log, "r+b") as f:
            f.truncate(len(original))
    assert {(h.where, h.kind) for h in hits} == {(str(log), "nir")}


@pytest.mark.integration
@pytest.mark.airflow
@pytest.mark.timeout(3600)  # includes the shared night (fixture setup counts): ~3 min idle, 20+ min on a loaded machine
def test_the_scan_reads_xcom_rendered_fields_dag_run_conf_and_task_logs(scanned, planted_night, stack):
    report, _ = scanned
    with psycopg.connect(stack.dsn("airflow")) as conn:
        assert conn.execute("SELECT count(*) FROM xcom").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM rendered_task_instance_fields").fetchone()[0] > 0
    # `airflow dags test` runs tasks in its own process: the task logs are its output, one file per DAG.
    logs = [stack.logs / f"{d}.log" for d, _, _ in planted_night["results"]]
    assert all(p.stat().st_size > 0 for p in logs)
    assert "extract_table" in logs[0].read_text()
    assert report.places["files"] >= len(logs)


def _first_row(conn, query: str):
    row = conn.execute(query).fetchone()
    assert row is not None, query
    return row


@pytest.mark.integration
@pytest.mark.airflow
@pytest.mark.timeout(3600)  # includes the shared night (fixture setup counts): ~3 min idle, 20+ min on a loaded machine
def test_the_scanner_finds_a_leak_planted_in_each_kind_of_place(scanned, stack, tmp_path):
    """So that a clean scan cannot be vacuous: one identifier per place, each found there and only there."""
    _, ids = scanned
    with psycopg.connect(stack.dsn("src_hosp_b")) as conn:
        nir, ipp, email, last, address, phone = _first_row(
            conn,
            "SELECT nir, ipp, email, last_name, address, phone FROM identity.patient WHERE nir IS NOT NULL AND "
            "email IS NOT NULL AND length(last_name) >= 5 AND address IS NOT NULL AND phone IS NOT NULL LIMIT 1",
        )
    s3 = stack.s3_client()
    p = NETWORK.platforms[0]
    zone = NETWORK.national.landing_zone
    undo = []
    try:
        # S3: a Parquet object in an intake, a JSON object in the landing zone.
        buf = io.BytesIO()
        pq.write_table(pa.table({"value_as_string": [nir]}), buf)
        s3.put_object(Bucket=p.intake.bucket, Key="zz-probe/leak.parquet", Body=buf.getvalue())
        undo.append(lambda: s3.delete_object(Bucket=p.intake.bucket, Key="zz-probe/leak.parquet"))
        s3.put_object(Bucket=zone.bucket, Key="zz-probe/leak.json", Body=json.dumps({"contact": email}).encode())
        undo.append(lambda: s3.delete_object(Bucket=zone.bucket, Key="zz-probe/leak.json"))
        # Warehouse, catalogue and Airflow metadata (XCom, rendered fields, dag_run.conf): changed, then restored.
        probes = [
            (f"wh_{p.id}", "CREATE TABLE public.zz_probe (v text)", "INSERT INTO public.zz_probe VALUES (%s)", ipp),
            ("catalogue", "CREATE TABLE public.zz_probe (v text)", "INSERT INTO public.zz_probe VALUES (%s)", last),
        ]
        for db, ddl, ins, v in probes:
            with psycopg.connect(stack.dsn(db), autocommit=True) as conn:
                conn.execute(ddl)
                conn.execute(ins, (v,))

            def drop(db=db):
                with psycopg.connect(stack.dsn(db), autocommit=True) as c:
                    c.execute("DROP TABLE IF EXISTS public.zz_probe")

            undo.append(drop)
        with psycopg.connect(stack.dsn("airflow"), autocommit=True) as conn:
            for table, col, pk, v in (
                ("xcom", "value", "dag_run_id, task_id, map_index, key", {"email": email}),
                ("rendered_task_instance_fields", "rendered_fields", "dag_id, task_id, run_id, map_index", {"op": nir}),
                ("dag_run", "conf", "id", {"note": address}),
            ):
                where = _first_row(conn, f"SELECT {pk}, {col}::text FROM {table} ORDER BY 1 LIMIT 1")
                keys, old = where[:-1], where[-1]
                cond = " AND ".join(f"{k.strip()} = %s" for k in pk.split(","))
                conn.execute(f"UPDATE {table} SET {col} = %s WHERE {cond}", (json.dumps(v), *keys))

                def restore(table=table, col=col, cond=cond, keys=keys, old=old):
                    with psycopg.connect(stack.dsn("airflow"), autocommit=True) as c:
                        c.execute(f"UPDATE {table} SET {col} = %s WHERE {cond}", (old, *keys))

                undo.append(restore)
        # Files: a task log line and a quality data-docs page under the state folder.
        log = stack.logs / "eds_local__hosp_b.log"
        original = log.read_bytes()
        log.write_bytes(original + f"INFO phone {phone}\n".encode())
        undo.append(lambda: log.write_bytes(original))
        docs = stack.root / "zz-probe-data-docs"
        docs.mkdir(exist_ok=True)
        (docs / "index.html").write_text(f"<td>{last}</td>", encoding="utf-8")
        undo.append(lambda: [f.unlink() for f in docs.iterdir()] and docs.rmdir())

        places = [
            *leakscan.s3_places(s3, p.intake.bucket, "zz-probe/"),
            *leakscan.s3_places(s3, zone.bucket, "zz-probe/"),
            *leakscan.pg_places(stack.dsn(f"wh_{p.id}"), f"wh_{p.id}", area="warehouse", exclude_schemas=["vocab"]),
            *leakscan.pg_places(stack.dsn("catalogue"), "catalogue", area="catalogue"),
            *leakscan.pg_places(stack.dsn("airflow"), "airflow", area="airflow_db"),
            *leakscan.file_places(stack.logs),
            *leakscan.file_places(docs),
            leakscan.text_place("summary", cli.summary(NETWORK) + f"\n{email}\n"),
        ]
        got = {(h.where, h.kind) for h in leakscan.scan(places, ids).hits}
    finally:
        for f in reversed(undo):
            f()
    expected = {
        (f"s3://{p.intake.bucket}/zz-probe/leak.parquet", "nir"),
        (f"s3://{zone.bucket}/zz-probe/leak.json", "email"),
        (f"wh_{p.id}:public.zz_probe", "ipp"),
        ("catalogue:public.zz_probe", "last_name"),
        ("airflow:public.xcom", "email"),
        ("airflow:public.rendered_task_instance_fields", "nir"),
        ("airflow:public.dag_run", "address"),
        (str(log), "phone"),
        (str(docs / "index.html"), "last_name"),
        ("summary", "email"),
    }
    assert got == expected


@pytest.mark.integration
@pytest.mark.airflow
@pytest.mark.timeout(3600)  # includes the shared night (fixture setup counts): ~3 min idle, 20+ min on a loaded machine
@pytest.mark.slow  # a second whole scan: the scan itself is covered above
def test_eds_leak_scan_cli_exits_0_on_a_clean_stack(planted_night, capsys):
    assert cli.main(["leak-scan"]) == 0
    out = capsys.readouterr().out
    assert "no direct identifier found" in out
