"""A whole network night through Airflow on the real embedded stack, then the same night again.

The night is the session's (`network_night`, tests/conftest.py: identifiers planted in some sources, which must
arrive nowhere); the second night runs after every test of that night's outcome (`mutates_night`).
Asserts on what arrives: rows at the platform intake, the warehouse, the HDH landing zone and the catalogue;
that nothing identifying arrives anywhere; and that a second night changes nothing.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from eds_network import catalogue, cli
from eds_network.core import omop
from eds_network.core.config import load_network
from eds_network.core.storage import list_keys, read_json
from eds_network.dev import seed

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

NETWORK = load_network()


@pytest.fixture(scope="module")
def night(network_night):
    return {"first": network_night["results"], "lineage": network_night["lineage"]}


def _parquet_objects(s3, bucket: str, prefix: str = "") -> dict[str, pa.Table]:
    out = {}
    for key in list_keys(s3, bucket, prefix):
        if key.endswith(".parquet"):
            out[key] = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
    return out


def _identity_values(stack) -> dict[str, set[str]]:
    """Identity values of every hospital: NIR, IPP, e-mail, last name."""
    values: dict[str, set[str]] = {}
    for b in NETWORK.local_bases:
        with psycopg.connect(stack.dsn(f"src_{b.id}")) as conn:
            for col in ("nir", "ipp", "email", "last_name"):
                q = sql.SQL("SELECT DISTINCT {} FROM identity.patient WHERE {} IS NOT NULL").format(
                    sql.Identifier(col), sql.Identifier(col)
                )
                values.setdefault(col, set()).update(r[0] for r in conn.execute(q))
    values["last_name"] = {v for v in values["last_name"] if len(v) >= 5}
    return values


def _tokens(text: str) -> set[str]:
    """Every candidate an identity value could be: whole fields (NIR, IPP, e-mail) and words (names)."""
    out = set(re.split(r"[\t\n,;\"| ]+", text))
    out.update(re.findall(r"[A-Za-zÀ-ÿ'-]{5,}", text))
    return out


def _scan(haystacks: dict[str, str], values: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(where, which kind of identifier) for every hit; never the value itself."""
    hits = []
    for where, text in haystacks.items():
        toks = _tokens(text)
        hits += [(where, kind) for kind, vs in values.items() if toks & vs]
    return hits


def _scan_anywhere(haystacks: dict[str, str], values: dict[str, set[str]]) -> list[tuple[str, str]]:
    """`_scan`, the text also cut at every non-alphanumeric character (an identifier inside a path or a name)."""
    hits = []
    for where, text in haystacks.items():
        toks = _tokens(text) | set(re.split(r"[^0-9A-Za-zÀ-ÿ]+", text)) | set(re.findall(r"[\w.+-]+@[\w.-]+", text))
        hits += [(where, kind) for kind, vs in values.items() if toks & vs]
    return hits


def _text_of(table: pa.Table) -> str:
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    return buf.getvalue().decode("utf-8", "replace")


def test_every_dag_of_the_night_succeeds_through_airflow(night):
    failed = [dag_id for dag_id, ok, _ in night["first"] if not ok]
    assert failed == []


def test_local_rows_arrive_at_the_platform_intake_pseudonymised(night, stack):
    s3 = stack.s3_client()
    base = NETWORK.base("hosp_b")
    platform = NETWORK.platform(base.platform)
    objs = _parquet_objects(s3, platform.intake.bucket, f"{base.id}/")
    with psycopg.connect(stack.dsn(f"src_{base.id}")) as conn:
        objectors = [r[0] for r in conn.execute("SELECT person_id FROM identity.opposition")]
        for table in base.tables:
            tables = [
                t for k, t in objs.items() if k.split("/")[-1].startswith(f"{table}.") and ".tombstones." not in k
            ]
            assert len(tables) == 1, table
            expected = conn.execute(
                sql.SQL("SELECT count(*) FROM omop.{} WHERE person_id <> ALL(%s)").format(sql.Identifier(table)),
                (objectors,),
            ).fetchone()[0]
            assert tables[0].num_rows == expected, table
            assert expected > 0, table
        local_ids = {r[0] for r in conn.execute("SELECT person_id FROM omop.person")}
    person = next(t for k, t in objs.items() if k.split("/")[-1].startswith("person."))
    assert not (set(person.column("person_id").to_pylist()) & local_ids)
    assert set(person.column("month_of_birth").to_pylist()) == {None}
    assert set(person.column("person_source_value").to_pylist()) == {None}


def test_row_accounting_holds_for_every_table_of_every_base(night, stack):
    runs = {(r["level"], r["scope_id"]): r for r in catalogue.latest_runs(stack.dsn("catalogue"))}
    for b in NETWORK.local_bases:
        run = runs[("local", b.id)]
        assert run["status"] == "success"
        assert set(run["tables"]) == set(b.tables)
        for t, r in run["tables"].items():
            assert r["extracted"] == r["published"] + r["quarantined"] + r["excluded_objection"], (b.id, t)
        assert sum(r["excluded_objection"] for r in run["tables"].values()) > 0, b.id


LOCAL_TASKS = ("announce_key", "blind_identities", "evaluate_blinded", "finalize_pseudonyms", "extract_table")
LOCAL_TASKS += ("publish_batch", "record_run")
PLATFORM_TASKS = ("consolidate", "package", "record_run", "check_warehouse")
NATIONAL_TASKS = ("transfer", "receipt", "tables", "upkeep", "linkage")


def _completes(events: list[dict], job: str) -> list[dict]:
    return [e for e in events if e["job"]["name"] == job and e["eventType"] == "COMPLETE"]


def _names(datasets: list[dict]) -> set[tuple[str, str]]:
    return {(d["namespace"], d["name"]) for d in datasets}


def test_openlineage_events_of_every_task_with_datasets_facets_and_no_identifier(night, stack):
    """The OpenLineage provider's file transport caught the night: START and COMPLETE of every task instance,
    the datasets each level read and wrote, our facets with the catalogue's counts, and no identifier."""
    texts = {str(f): f.read_text() for f in night["lineage"]}
    events = [json.loads(t) for t in texts.values()]
    assert events and all(e["job"]["namespace"] == "eds-network" for e in events)
    runs: dict[str, set[str]] = {}
    for e in events:
        if "." in e["job"]["name"]:  # task instances (a DAG run's job is the bare dag_id)
            runs.setdefault(e["run"]["runId"], set()).add(e["eventType"])
    assert runs and all(types == {"START", "COMPLETE"} for types in runs.values()), "a task without START/COMPLETE"
    jobs = {e["job"]["name"] for e in events}
    expected = {f"{b.dag_id}.{t}" for b in NETWORK.local_bases for t in LOCAL_TASKS}
    expected |= {f"{p.dag_id}.{t}" for p in NETWORK.platforms for t in PLATFORM_TASKS}
    expected |= {f"eds_national.{t}" for t in NATIONAL_TASKS}
    assert expected <= jobs, sorted(expected - jobs)

    pg = f"postgres://127.0.0.1:{stack.pg_port}"
    latest = {(r["level"], r["scope_id"]): r for r in catalogue.latest_runs(stack.dsn("catalogue"))}
    for b in NETWORK.local_bases:
        run = latest[("local", b.id)]
        intake = f"s3://{NETWORK.platform(b.platform).intake.bucket}"
        extracts = _completes(events, f"{b.dag_id}.extract_table")
        assert len(extracts) == len(b.tables)
        assert set().union(*(_names(e["inputs"]) for e in extracts)) == {(pg, f"src_{b.id}.omop.{t}") for t in b.tables}
        for e in extracts:
            (out,) = e["outputs"]
            table = out["name"].rsplit("/", 1)[1]
            assert (out["namespace"], out["name"]) == (intake, f"{b.id}/{run['batch_id']}/{table}")
            want = run["tables"][table]
            facet = e["run"]["facets"]["eds_rowAccounting"]
            got = (facet["extracted"], facet["published"], facet["quarantined"], facet["excluded"])
            assert got == (want["extracted"], want["published"], want["quarantined"], want["excluded_objection"])
            assert facet["balanced"] and out["facets"]["eds_rowAccounting"]["published"] == want["published"]
            assert out["outputFacets"]["outputStatistics"]["rowCount"] == want["published"]
            pseudo = e["run"]["facets"]["eds_pseudonymisation"]
            assert pseudo["level"] == 1 and pseudo["keyVersions"]["level1"] == run["details"]["key_versions"]["level1"]
            assert e["run"]["facets"]["eds_quality"]["verdict"] in ("passed", "warnings", "failed")
            assert e["run"]["facets"]["eds_quality"]["checks"] > 0
        (publish,) = _completes(events, f"{b.dag_id}.publish_batch")
        assert _names(publish["outputs"]) == {(intake, f"{b.id}/{run['batch_id']}")}
        total = publish["run"]["facets"]["eds_rowAccounting"]
        assert total["extracted"] == sum(r["extracted"] for r in run["tables"].values()) > 0
        assert total["excluded"] == sum(r["excluded_objection"] for r in run["tables"].values()) > 0
    for p in NETWORK.platforms:
        (cons,) = _completes(events, f"{p.dag_id}.consolidate")
        batches = {(f"s3://{p.intake.bucket}", f"{m.id}/{latest[('local', m.id)]['batch_id']}") for m in p.members}
        assert batches <= _names(cons["inputs"])
        warehouse = {n for ns, n in _names(cons["outputs"]) if ns == pg}
        assert {n.split(".", 1)[1] for n in warehouse} >= {"omop.person", "omop.visit_occurrence"}
        assert cons["run"]["facets"]["eds_pseudonymisation"]["level"] == 1
        (chk,) = _completes(events, f"{p.dag_id}.check_warehouse")
        assert chk["run"]["facets"]["eds_quality"]["checks"] > 0
    lz = f"s3://{NETWORK.national.landing_zone.bucket}"
    prefix = NETWORK.national.landing_zone.prefix
    delivered = {d["id"]: d for d in catalogue.deliveries(stack.dsn("catalogue")) if d["level"] == "national"}
    transfers = [e for e in _completes(events, "eds_national.transfer") if e["outputs"]]
    assert len(transfers) == len(NETWORK.platforms)
    for e in transfers:
        delivery = e["outputs"][0]["name"].split("/")[-2]
        assert {n for _, n in _names(e["outputs"])} == {
            f"{prefix}deliveries/{delivery}/{t}" for t in delivered[delivery]["rows"]
        }
        assert e["run"]["facets"]["eds_rowAccounting"]["published"] == sum(delivered[delivery]["rows"].values())
        assert e["run"]["facets"]["eds_pseudonymisation"]["level"] == 2
    assert all(
        e["run"]["facets"]["eds_quality"]["verdict"] == "passed" for e in _completes(events, "eds_national.receipt")
    )
    national = set().union(*(_names(e["outputs"]) for e in _completes(events, "eds_national.tables")))
    assert (lz, f"{prefix}iceberg/omop.db/person") in national

    # nothing identifying in any event: identity values (also inside a dataset name or a path) and key material
    values = _identity_values(stack)
    assert _scan_anywhere(texts, values) == []
    nir, planted = next(iter(values["nir"])), json.dumps(transfers[0])  # the scan finds one planted in a name
    assert _scan_anywhere({"planted": planted.replace("deliveries/", f"deliveries/{nir}_", 1)}, values)
    keys = _key_spellings(stack)
    assert not [f for f, t in texts.items() if any(k in t for ks in keys.values() for k in ks)]


def test_healthdcat_of_the_real_night_conforms_for_every_base_and_the_catalogue(night, stack, tmp_path):
    """`eds catalogue dcat --validate` on the catalogue a real night filled (national tables included): the 4
    network bases, the 7 reference bases and the dcat:Catalog conform to HealthDCAT-AP + DCAT-AP 3."""
    from eds_network.catalogue import shacl

    assert cli.main(["catalogue", "dcat", "--out", str(tmp_path), "--dsn", stack.dsn("catalogue"), "--validate"]) == 0
    docs = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in tmp_path.glob("*.jsonld")}
    assert len(docs) == 12 and "catalog" in docs and {b.id for b in NETWORK.local_bases} <= set(docs)
    hosp_a = shacl.validate(docs["hosp_a"])
    assert hosp_a.conforms
    assert "dqv:hasQualityAnnotation" in json.dumps(docs["hosp_a"])  # the EHDS label computed from the night


def test_shared_patients_are_one_person_and_overlap_matches_ground_truth(night, stack):
    truth = seed.ground_truth(NETWORK)["overlap"]
    for p in NETWORK.platforms:
        with psycopg.connect(stack.dsn(f"wh_{p.id}")) as conn:
            dup = conn.execute("SELECT count(*) - count(DISTINCT person_id) FROM omop.person").fetchone()[0]
            assert dup == 0
            got = {
                (a, b): n
                for a, b, n in conn.execute(
                    "SELECT a.base_id, b.base_id, count(*) FROM eds_platform.person_site a JOIN eds_platform.person_site b"
                    " ON a.person_id = b.person_id AND a.base_id < b.base_id GROUP BY 1, 2"
                )
            }
        members = [m.id for m in p.members]
        for a in members:
            for b in members:
                if a < b:
                    want = truth.get(a, {}).get(b, 0) or truth.get(b, {}).get(a, 0)
                    assert got.get((a, b), 0) == want, (a, b)
    assert any(got for got in [truth["hosp_a"].get("hosp_b", 0)]), "the demo must have shared patients"


def test_each_platform_delivery_reaches_the_landing_zone_with_a_receipt(night, stack):
    s3 = stack.s3_client()
    zone = NETWORK.national.landing_zone
    manifests = [k for k in list_keys(s3, zone.bucket, zone.prefix) if k.endswith("/_manifest.json")]
    assert {read_json(s3, zone.bucket, k)["platform"] for k in manifests} == {p.id for p in NETWORK.platforms}
    for k in manifests:
        m = read_json(s3, zone.bucket, k)
        receipt = read_json(s3, zone.bucket, k.replace("_manifest.json", "_receipt.json"))
        assert receipt["status"] == "accepted"
        assert sum(f["rows"] for f in m["files"]) > 0
        for f in m["files"]:
            head = s3.head_object(Bucket=zone.bucket, Key=f["key"])
            assert head["ServerSideEncryption"] in ("AES256", "aws:kms")
    delivered = {d["platform_id"] for d in catalogue.deliveries(stack.dsn("catalogue")) if d["status"] == "received"}
    assert delivered == {p.id for p in NETWORK.platforms}


def test_national_tables_hold_exactly_each_platforms_delivered_rows(night, stack, tmp_path):
    """Read by DuckDB from the data files the Iceberg manifests list, as an HDH engine would."""
    import duckdb

    from eds_network.core.storage import S3Endpoint
    from eds_network.national import tables

    s3 = stack.s3_client()
    zone = NETWORK.national.landing_zone
    expected: dict[tuple[str, str], int] = {}
    for k in list_keys(s3, zone.bucket, zone.prefix):
        if k.endswith("/_manifest.json") and "/deliveries/" in k:
            m = read_json(s3, zone.bucket, k)
            for f in m["files"]:
                expected[(f["table"], m["platform"])] = f["rows"]
    res = tables.NationalTables(stack.dsn("hdh"), S3Endpoint(stack.s3_endpoint, *stack.s3_login))
    catalog = res.catalog(NETWORK.national)
    got: dict[tuple[str, str], int] = {}
    for name in tables.table_names(catalog):
        paths = []
        for i, task in enumerate(catalog.load_table(("omop", name)).scan().plan_files()):
            bucket, key = task.file.file_path.removeprefix("s3://").split("/", 1)
            s3.download_file(bucket, key, str(tmp_path / f"{name}-{i}.parquet"))
            paths.append(str(tmp_path / f"{name}-{i}.parquet"))
        if paths:
            for platform, n in duckdb.sql(
                f"SELECT _platform, count(*) FROM read_parquet({paths!r}) GROUP BY 1"
            ).fetchall():
                got[(name, platform)] = n
    assert {k: v for k, v in expected.items() if v} == got
    assert {p for _, p in got} == {p.id for p in NETWORK.platforms}


def test_one_patient_at_two_platforms_has_one_national_id(night, stack):
    s3 = stack.s3_client()
    zone = NETWORK.national.landing_zone
    persons = {}
    for key, t in _parquet_objects(s3, zone.bucket, zone.prefix).items():
        if key.split("/")[-1].startswith("person."):
            platform = read_json(s3, zone.bucket, key.rsplit("/", 1)[0] + "/_manifest.json")["platform"]
            persons[platform] = set(t.column("person_id").to_pylist())
    truth = seed.ground_truth(NETWORK)["bases"]
    idf_keys = {k for b in ("hosp_a", "hosp_b", "hosp_c") for k in truth[b]["linkage_keys"]}
    expected = len(idf_keys & set(truth["hosp_d"]["linkage_keys"]))
    assert expected > 0
    assert len(persons["idf"] & persons["onco"]) == expected


def test_no_identifier_reaches_intake_warehouse_landing_zone_or_catalogue(night_scan, stack):
    """The text of these places is read once, with the leak scanner's pass over the night (`night_scan`,
    tests/conftest.py), and searched here with this module's own tokens."""
    values = _identity_values(stack)
    assert len(values["nir"]) > 100
    s3 = stack.s3_client()
    texts = night_scan["texts"]
    buckets = [NETWORK.national.landing_zone.bucket] + [
        b for p in NETWORK.platforms for b in (p.intake.bucket, p.outbox.bucket)
    ]
    objects = [f"s3://{bucket}/{key}" for bucket in buckets for key in list_keys(s3, bucket, "")]
    tables = [f"wh_{p.id}:omop.{t}" for p in NETWORK.platforms for t in omop.DEFAULT_TABLES]
    tables += [
        f"catalogue:catalogue.{t}"
        for t in ("run", "run_table", "delivery", "audit", "milestone", "quality_check", "quality_table")
    ]
    pages = [str(page) for page in (stack.root / "datadocs").rglob("*.html")]  # GX Data Docs of the local level
    assert objects and pages
    missing = [w for w in [*objects, *tables, *pages] if w not in texts]
    assert missing == []  # every place of this test was read by the pass
    haystacks = {w: texts[w] for w in [*objects, *tables, *pages]}
    assert _scan(haystacks, values) == []
    # The scan is not vacuous: one planted NIR in one place is found, and only there.
    where = sorted(haystacks)[0]
    planted = {**haystacks, where: haystacks[where] + " " + sorted(values["nir"])[0]}
    assert _scan(planted, values) == [(where, "nir")]


def test_quality_results_of_every_table_and_platform_are_in_the_catalogue_with_data_docs(night, stack):
    dsn = stack.dsn("catalogue")
    for b in NETWORK.local_bases:
        batch = catalogue.quality_batches(dsn, "local", b.id)[0]
        checks, tables = catalogue.quality_results(dsn, "local", b.id, batch)
        assert {t["table_name"] for t in tables} == set(b.tables), b.id
        assert not [r["check_id"] for r in checks if r["severity"] == "fatal" and r["action"] == "fail_batch"], b.id
        assert all(
            t["data_docs_path"] and (stack.root / "datadocs") in Path(t["data_docs_path"]).parents for t in tables
        )
        assert all(Path(t["data_docs_path"]).is_file() and t["gx_mismatches"] == 0 for t in tables), b.id
    for p in NETWORK.platforms:
        batch = catalogue.quality_batches(dsn, "mutualised", p.id)[0]
        checks, _ = catalogue.quality_results(dsn, "mutualised", p.id, batch)
        names = {r["check_name"] for r in checks}
        assert {"isForeignKey", "crossSiteDuplicates", "volumeDrop"} <= names, p.id
        assert {r["base_id"] for r in checks if r["check_name"] == "volumeDrop"} == {m.id for m in p.members}


@pytest.mark.mutates_night
def test_a_second_night_changes_nothing_and_is_not_delivered_twice(night, stack):
    def snapshot():
        counts = {}
        for p in NETWORK.platforms:
            with psycopg.connect(stack.dsn(f"wh_{p.id}")) as conn:
                for t in omop.DEFAULT_TABLES:
                    counts[(p.id, t)] = conn.execute(
                        sql.SQL("SELECT count(*), count(DISTINCT {}) FROM omop.{}").format(
                            sql.Identifier(omop.table(t).primary_key or "person_id"), sql.Identifier(t)
                        )
                    ).fetchone()
        zone = NETWORK.national.landing_zone
        keys = sorted(list_keys(stack.s3_client(), zone.bucket, zone.prefix))
        return counts, keys

    before = snapshot()
    again = cli.run_night(NETWORK)
    assert [d for d, ok, _ in again if not ok] == []
    after = snapshot()
    assert after == before
    assert all(n == d for n, d in after[0].values())


def _key_spellings(stack) -> dict[str, set[str]]:
    """Every pseudonymisation key of the stack in each spelling it could leak in: as stored, hex, base64."""
    import base64

    out: dict[str, set[str]] = {}
    for conn_id, k in stack.keys(NETWORK).items():
        text = k["password"]
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = base64.b64decode(text)
        out[conn_id] = {text, raw.hex(), base64.b64encode(raw).decode()}
    return out


def test_no_key_appears_in_any_task_log_of_the_night(night, stack):
    logs = {p: p.read_text(errors="replace") for p in stack.logs.glob("eds_*.log")}
    logs |= {p: p.read_text(errors="replace") for p in (stack.airflow_home / "logs").rglob("*.log")}
    text = "\n".join(logs.values())
    # the task logs of the night are really here (after the second night the national step finds its
    # delivery already in the landing zone)
    assert "extracted" in text and ("transferred" in text or "already in the landing zone" in text)
    leaked = [conn_id for conn_id, spellings in _key_spellings(stack).items() if any(s in text for s in spellings)]
    assert leaked == []


def test_no_key_and_no_level1_pseudonym_reaches_the_landing_zone(night, stack):
    level1: set[int] = set()
    for p in NETWORK.platforms:
        with psycopg.connect(stack.dsn(f"wh_{p.id}")) as conn:
            level1 |= {r[0] for r in conn.execute("SELECT person_id FROM omop.person")}
    assert len(level1) > 100
    s3 = stack.s3_client()
    zone = NETWORK.national.landing_zone
    spellings = {s for ss in _key_spellings(stack).values() for s in ss}
    national_ids: set[int] = set()
    for key in list_keys(s3, zone.bucket, zone.prefix):
        body = s3.get_object(Bucket=zone.bucket, Key=key)["Body"].read()
        if key.endswith(".parquet"):
            t = pq.read_table(io.BytesIO(body))
            for name in t.column_names:
                if pa.types.is_integer(t.schema.field(name).type):
                    assert not (set(t.column(name).to_pylist()) & level1), (key, name)
            if "person_id" in t.column_names:
                national_ids |= set(t.column("person_id").to_pylist())
            text = _text_of(t)
        else:
            text = body.decode("utf-8", "replace")
        assert not [s for s in spellings if s in text], key
    assert len(national_ids) > 100  # the scan saw the delivered persons


def test_catalogue_audit_records_the_key_versions_each_level_used(night, stack):
    with psycopg.connect(stack.dsn("catalogue")) as conn:
        used = conn.execute("SELECT object, details FROM catalogue.audit WHERE action = 'key.used'").fetchall()
    by_object = {}
    for obj, details in used:
        by_object.setdefault(obj, []).append(details)
    for b in NETWORK.local_bases:
        versions = by_object[f"local:{b.id}"][-1]["key_versions"]
        assert versions == {"level1": "v1", "transport": "v1", "national_box": "v1"}, b.id
    for p in NETWORK.platforms:
        assert by_object[f"national:{p.id}"][-1]["key_versions"] == {"national": "v1", "national_box": "v1"}
    # versions and ids only: no key material in the audit
    spellings = {s for ss in _key_spellings(stack).values() for s in ss}
    text = json.dumps(used, default=str)
    assert not [s for s in spellings if s in text]


def test_national_linkage_states_shared_persons_per_platform_pair_as_the_ground_truth(night, stack):
    truth = seed.ground_truth(NETWORK)["bases"]
    idf_keys = {k for b in ("hosp_a", "hosp_b", "hosp_c") for k in truth[b]["linkage_keys"]}
    expected = len(idf_keys & set(truth["hosp_d"]["linkage_keys"]))
    # the latest pair recorded: the test stack's catalogue also holds other modules' nights
    rows = sorted(catalogue.national_linkage(stack.dsn("catalogue")), key=lambda r: r["recorded_at"])
    assert rows
    latest = rows[-1]
    assert (latest["platform_a"], latest["platform_b"], latest["shared_persons"]) == ("idf", "onco", expected)
    s3 = stack.s3_client()
    summary = read_json(s3, NETWORK.national.landing_zone.bucket, latest["summary_key"])
    assert summary["pairs"][0]["shared_persons"] == expected
    assert set(summary["deliveries"]) == {"idf", "onco"}


def test_landing_zone_holds_no_level1_pseudonym_nor_transport_token(night, stack):
    s3 = stack.s3_client()
    level1: set[int] = set()
    tokens: set[str] = set()
    for p in NETWORK.platforms:
        for key, t in _parquet_objects(s3, p.outbox.bucket).items():
            if key.split("/")[-1].startswith("person."):
                level1 |= set(t.column("person_id").to_pylist())
                tokens |= set(t.column("_transport_token").to_pylist())
    assert len(level1) > 100 and len(tokens) > 100
    zone = NETWORK.national.landing_zone
    national: set[int] = set()
    texts: dict[str, str] = {}
    for key in list_keys(s3, zone.bucket, zone.prefix):
        body = s3.get_object(Bucket=zone.bucket, Key=key)["Body"].read()
        if key.endswith(".parquet"):
            t = pq.read_table(io.BytesIO(body))
            if "person_id" in t.column_names:
                national |= set(t.column("person_id").to_pylist())
            texts[key] = _text_of(t)
        else:
            texts[key] = body.decode("utf-8", "replace")
    assert national and not national & level1
    forbidden = {str(i) for i in level1} | tokens
    assert [k for k, text in texts.items() if _tokens(text) & forbidden] == []


def test_the_real_night_fills_protected_statistics_and_a_conforming_healthdcat_export(night, stack, tmp_path):
    """After the real pipeline: every network base has small-cell protected statistics (nothing in [1, k-1]);
    `eds catalogue dcat --out DIR --validate` writes the 11 bases + the catalogue, all conforming."""
    from eds_network.catalogue import base_stats

    dsn = stack.dsn("catalogue")
    recorded = base_stats.latest(dsn)
    assert set(recorded) == {b.id for b in NETWORK.local_bases}
    for doc in recorded.values():
        assert base_stats.is_publishable(doc) and list(base_stats.published_counts(doc))
    assert cli.main(["catalogue", "dcat", "--out", str(tmp_path), "--dsn", dsn, "--validate"]) == 0
    assert len(list(tmp_path.glob("*.jsonld"))) == 12


def test_the_operator_page_links_every_table_to_the_data_docs_the_night_built(night, stack):
    """The page's Data Docs links come from what the pipeline recorded, under the one configured root, and serve."""
    from fastapi.testclient import TestClient

    from eds_network import ui

    client = TestClient(
        ui.create_app(lambda: stack.dsn("catalogue"), load_network, data_docs_dir=stack.root / "datadocs")
    )
    bases = {b["id"]: b for b in client.get("/api/bases").json()}
    for b in NETWORK.local_bases:
        links = bases[b.id]["links"]["data_docs_tables"]
        assert set(links) == set(b.tables), b.id
        for table, url in links.items():
            assert url == f"/eds/data-docs/local/{b.id}/{table}/index.html"
            r = client.get(url.removeprefix("/eds"))
            assert r.status_code == 200 and "<html" in r.text.lower(), (b.id, table)


def _id_columns(table: str, names) -> list[str]:
    spec = omop.table(table)
    return [n for n in names if spec.has(n) and (spec.column(n).is_id or n == "person_id")]


def _db_ids(dsn: str) -> set[int]:
    """Every value of every *_id column (row ids and references, person_id included) of the omop schema."""
    out: set[int] = set()
    with psycopg.connect(dsn) as conn:
        tables = [
            r[0]
            for r in conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'omop'")
            if r[0].lower() in omop.schema()
        ]
        for t in tables:
            cols = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'omop' AND table_name = %s",
                    (t,),
                )
            ]
            for c in _id_columns(t, cols):
                q = sql.SQL("SELECT DISTINCT {} FROM omop.{} WHERE {} IS NOT NULL").format(
                    sql.Identifier(c), sql.Identifier(t), sql.Identifier(c)
                )
                out |= {r[0] for r in conn.execute(q)}
    return out


def test_no_landing_id_leads_back_to_a_source_or_a_warehouse(night, stack):
    """Issue 19: every *_id of the landing zone is re-keyed at every level: none equals a source id or a warehouse
    id, none gives back a source id modulo a power of ten beyond chance (site * 10**12 + id did: 200 of 200)."""
    s3 = stack.s3_client()
    zone = NETWORK.national.landing_zone
    landing: set[int] = set()
    for key, t in _parquet_objects(s3, zone.bucket, zone.prefix).items():
        table = key.split("/")[-1].split(".")[0]
        if table in omop.schema():
            for c in _id_columns(table, t.column_names):
                landing |= {v for v in t.column(c).to_pylist() if v is not None}
    sources: set[int] = set()
    for b in NETWORK.local_bases:
        sources |= _db_ids(stack.dsn(f"src_{b.id}"))
    warehouses: set[int] = set()
    for p in NETWORK.platforms:
        warehouses |= _db_ids(stack.dsn(f"wh_{p.id}"))
    assert len(landing) > 1000 and len(sources) > 1000 and len(warehouses) > 1000
    assert not landing & sources
    assert not landing & warehouses  # no id joins the landing zone to a warehouse
    assert not warehouses & (sources - set(range(0, 100)))  # nor a warehouse to its sources (tiny ids: chance)
    for p in range(1, 19):
        hits = sum(1 for i in landing if i % 10**p in sources)
        chance = len(landing) * len({s for s in sources if s < 10**p}) / 10**p
        if chance < 0.01:
            assert hits == 0, p
        else:
            assert hits <= 3 * chance + 5, (p, hits, chance)
