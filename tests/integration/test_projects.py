"""Research projects on the demo network after a real night through Airflow: feasibility counts (protected).

The session's night (`network_night`, tests/conftest.py) fills the platform warehouses (per-base counts: each
event row still has its site) and the national Iceberg tables (per-platform and network-wide counts under the
national pseudonym).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import uuid

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eds_network import cli, project_cli
from eds_network.catalogue import projects
from eds_network.core import omop
from eds_network.core.cohort import Cohort
from eds_network.core.config import load_network
from eds_network.national.projects import extract as project_extract_mod
from eds_network.national.projects import feasibility as national_feasibility
from eds_network.orchestration import project_tasks
from tests.feasibility_attacks import differences_hit, published, recoverable

# a night under a busy machine can outlast the default 900 s of its first test
pytestmark = [pytest.mark.integration, pytest.mark.timeout(2700)]

NETWORK = load_network()
K = 11
T0 = dt.datetime(2026, 3, 1, 2, 0, tzinfo=dt.UTC)
T1 = dt.datetime(2026, 3, 2, 2, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def night(network_night, stack):
    """The session's network night (tests/conftest.py) filled the warehouses and the national tables."""
    results = network_night["results"]
    assert all(ok for _, ok, _ in results), results
    warehouses, national = project_cli._resources(stack, NETWORK)
    return {"warehouses": warehouses, "national": national}


def _cohort(concept: int, **extra) -> Cohort:
    doc = {
        "name": f"c{concept}",
        "period": {"start": "2000-01-01", "end": "2027-01-01"},
        "criteria": [{"table": "condition_occurrence", "concepts": [concept]}],
    }
    doc.update(extra)
    return Cohort.model_validate(doc)


def _small_cell_concept(stack) -> int:
    """A condition concept with persons in [1, k-1] at some base and >= k at another (found on the warehouses)."""
    per: dict[int, list[int]] = {}
    for p in NETWORK.platforms:
        with psycopg.connect(stack.dsn(f"wh_{p.id}")) as conn:
            rows = conn.execute(
                "SELECT condition_concept_id, _site, count(DISTINCT person_id) FROM omop.condition_occurrence"
                " WHERE condition_concept_id <> 0 GROUP BY 1, 2"
            ).fetchall()
        for concept, _, n in rows:
            per.setdefault(concept, []).append(n)
    good = sorted(c for c, ns in per.items() if any(0 < n < K for n in ns) and any(n >= 3 * K for n in ns))
    assert good, "the demo network has no concept with a small cell"
    return good[0]


def test_feasibility_counts_per_base_platform_and_network_with_small_cells_suppressed(night, stack):
    cohort = _cohort(_small_cell_concept(stack))
    raw = project_tasks.raw_counts(NETWORK, night["warehouses"], night["national"], cohort)
    ans = project_tasks.feasibility(NETWORK, night["warehouses"], night["national"], cohort, k=K)
    per_base, per_platform, network = raw["per_base"], raw["per_platform"], raw["network"]
    # every base of every platform is answered for, and the deduplication is real
    assert set(per_base) == {(p.id, b.id) for p in NETWORK.platforms for b in p.members}
    for (p, _), n in per_base.items():
        assert n <= per_platform[p] <= network
    assert network <= sum(per_platform.values())
    small = [f"{p}/{b}" for (p, b), n in per_base.items() if 0 < n < K]
    assert small, raw
    assert set(small) <= set(ans["suppressed"]["primary"])
    # nothing in [1, k-1] is published; nothing suppressed can be solved for (linear algebra, differences)
    assert all(v == 0 or v >= K for v in published(ans))
    assert recoverable(ans, per_base) == []
    assert differences_hit(ans, per_base, per_platform, network) == []
    # what is published is the real count
    for (p, b), n in per_base.items():
        assert ans["bases"][p][b] in (None, n)
    assert ans["network"] in (None, network)


def test_shared_patients_count_once_network_wide(night):
    """A frequent condition: the generated hospitals share patients across platforms, counted once."""
    cohort = _cohort(4251306)
    raw = project_tasks.raw_counts(NETWORK, night["warehouses"], night["national"], cohort)
    assert raw["network"] < sum(raw["per_platform"].values())
    assert raw["per_platform"]["idf"] < sum(n for (p, _), n in raw["per_base"].items() if p == "idf")
    # filters narrow the cohort
    women = project_tasks.raw_counts(NETWORK, night["warehouses"], night["national"], _cohort(4251306, sex=["F"]))
    assert 0 < women["network"] < raw["network"]


def test_eds_project_feasibility_prints_the_protected_answer(night, tmp_path, capsys, stack):
    concept = _small_cell_concept(stack)
    path = tmp_path / "cohort.json"
    path.write_text(json.dumps(_cohort(concept).model_dump(mode="json")))
    assert cli.main(["project", "feasibility", "--cohort", str(path), "--json"]) == 0
    ans = json.loads(capsys.readouterr().out)
    assert ans["suppressed"]["primary"] and ans["pins"]
    assert all(v == 0 or v >= K for v in published(ans))
    assert cli.main(["project", "feasibility", "--cohort", str(path)]) == 0
    text = capsys.readouterr().out
    assert "suppressed" in text and "network" in text


# ---------------------------------------------------------------------------------------------------------
# projects and permits in the catalogue


def _uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def _audit(stack, project_id: str) -> list[str]:
    with psycopg.connect(stack.dsn("catalogue")) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT action FROM catalogue.audit WHERE object = %s ORDER BY id", (f"project:{project_id}",)
            )
        ]


def test_a_project_moves_through_its_permit_timeline_and_every_access_is_audited(night, stack):
    dsn = stack.dsn("catalogue")
    pid = _uid("timeline")
    p = project_tasks.create_project(
        NETWORK,
        dsn,
        night["warehouses"],
        pid,
        cohort=_cohort(4251306),
        tables={"person": ["person_id", "year_of_birth"]},
        bases=["hosp_d"],
        title="Sinusitis",
        purpose="test",
        requester="a researcher",
        actor="test",
    )
    assert p["status"] == "requested" and p["permit_reference"] is None
    with pytest.raises(projects.ProjectError, match="cannot become extracted"):
        projects.set_status(dsn, pid, "extracted", actor="test")
    with pytest.raises(projects.ProjectError, match="not in the future"):
        projects.grant(dsn, pid, permit_reference="P-1", issuer="HDH", expires_on=dt.date(2020, 1, 1), actor="test")
    projects.grant(dsn, pid, permit_reference="DAB-2026-001", issuer="HDH", expires_on=dt.date(2099, 1, 1), actor="hdh")
    p = projects.get(dsn, pid, actor="test")
    assert p["status"] == "permit_granted" and p["permit_reference"] == "DAB-2026-001"
    assert [e["status"] for e in p["timeline"]] == ["requested", "permit_granted"]
    assert p["lead_time_days"] is None  # no delivery yet
    with pytest.raises(projects.ProjectError, match="already exists"):
        project_tasks.create_project(
            NETWORK, dsn, night["warehouses"], pid, cohort=_cohort(1), tables={"person": ["person_id"]},
            bases=["hosp_d"], title="t", purpose="t", requester="r", actor="test",
        )  # fmt: skip
    assert _audit(stack, pid) == ["project.requested", "project.read", "project.permit_granted", "project.read"]


# ---------------------------------------------------------------------------------------------------------
# project datasets on the demo network

PERMIT_A = {
    "person": ["person_id", "gender_concept_id", "year_of_birth"],
    "condition_occurrence": ["condition_occurrence_id", "person_id", "condition_concept_id", "condition_start_date"],
}
PERMIT_B = {
    "person": ["person_id", "year_of_birth"],
    "measurement": ["measurement_id", "person_id", "measurement_concept_id", "measurement_date", "value_as_number"],
}
PERIOD = {"start": "2015-01-01", "end": "2026-01-01"}


def _granted(stack, night, name: str, tables: dict, bases: list[str], *, expires=dt.date(2099, 1, 1)) -> str:
    dsn = stack.dsn("catalogue")
    pid = _uid(name)
    cohort = _cohort(4251306, period=PERIOD)
    project_tasks.create_project(
        NETWORK, dsn, night["warehouses"], pid, cohort=cohort, tables=tables, bases=bases,
        title=name, purpose="a study", requester="a researcher", actor="test",
    )  # fmt: skip
    projects.grant(dsn, pid, permit_reference=f"DAB-{pid}", issuer="HDH", expires_on=expires, actor="hdh")
    return pid


def _objects(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]  # fmt: skip
    return {k[len(prefix) :]: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _national_ids(night, table: str, column: str) -> set[int]:
    catalog = night["national"].catalog(NETWORK.national)
    tbl = catalog.load_table(("omop", table))
    return set(tbl.scan(selected_fields=(column,)).to_arrow().column(column).to_pylist())


@pytest.fixture(scope="module")
def datasets(night, stack):
    res = project_cli._project_resources(stack, NETWORK)
    catalog = res.national.catalog(NETWORK.national)
    pins = national_feasibility.current_pins(catalog)
    a = _granted(stack, night, "study-a", PERMIT_A, ["hosp_a", "hosp_b", "hosp_c", "hosp_d"])
    b = _granted(stack, night, "study-b", PERMIT_B, ["hosp_d"])
    out = {}
    for pid in (a, b):
        out[pid] = project_tasks.extract_project(NETWORK, res, pid, actor="test", pins=pins)
    return {"res": res, "pins": pins, "a": a, "b": b, "out": out}


def _tables_of(stack, ds: dict) -> dict[str, pa.Table]:
    s3 = stack.s3_client()
    objs = _objects(s3, NETWORK.national.landing_zone.bucket, ds["prefix"])
    return {n[: -len(".parquet")]: pq.read_table(io.BytesIO(b)) for n, b in objs.items() if n.endswith(".parquet")}


def test_two_projects_share_no_person_id_with_each_other_nor_with_the_national_tables(night, stack, datasets):
    a = _tables_of(stack, datasets["out"][datasets["a"]])
    b = _tables_of(stack, datasets["out"][datasets["b"]])
    ids_a, ids_b = set(a["person"].column("person_id").to_pylist()), set(b["person"].column("person_id").to_pylist())
    national = _national_ids(night, "person", "person_id")
    assert ids_a and ids_b
    assert ids_a & ids_b == set()
    assert ids_a & national == set() and ids_b & national == set()
    # row ids too: a project's condition ids are not the national ones
    cond = set(a["condition_occurrence"].column("condition_occurrence_id").to_pylist())
    assert cond and cond & _national_ids(night, "condition_occurrence", "condition_occurrence_id") == set()


def test_each_dataset_holds_only_its_permitted_tables_columns_period_and_cohort(night, stack, datasets):
    res, pins = datasets["res"], datasets["pins"]
    catalog = res.national.catalog(NETWORK.national)
    for pid, permit in ((datasets["a"], PERMIT_A), (datasets["b"], PERMIT_B)):
        got = _tables_of(stack, datasets["out"][pid])
        assert set(got) == set(permit)
        for t, tbl in got.items():
            assert tbl.column_names == [c for c in omop.table(t).column_names if c in permit[t]]  # OMOP order
        project = projects.get(stack.dsn("catalogue"), pid, actor="test")
        p = project_tasks.permit_of(NETWORK, project)
        cohort_national = national_feasibility.cohort_persons(catalog, p.cohort, pins, platforms=p.platforms)["*"]
        expected = project_extract_mod.project_pseudonyms(sorted(cohort_national), res.national_key.secret, pid)
        assert set(got["person"].column("person_id").to_pylist()) == expected  # exactly the cohort
        assert got["person"].num_rows == len(expected)  # one row per person (OMOP PERSON)
        for t, tbl in got.items():
            if t != "person":
                assert set(tbl.column("person_id").to_pylist()) <= expected
                date = {"condition_occurrence": "condition_start_date", "measurement": "measurement_date"}[t]
                days = tbl.column(date).to_pylist()
                assert days and min(days) >= dt.date(2015, 1, 1) and max(days) < dt.date(2026, 1, 1)
    # B is restricted to its bases' platform: fewer patients than the whole network's cohort
    assert datasets["out"][datasets["b"]]["persons"] < datasets["out"][datasets["a"]]["persons"]


def test_the_same_permit_and_pins_give_the_same_bytes_and_a_signed_manifest(night, stack, datasets):
    from eds_network.core.signing import public_key_of, verify_document

    pid = datasets["a"]
    first = datasets["out"][pid]
    s3 = stack.s3_client()
    bucket = NETWORK.national.landing_zone.bucket
    before = {n: hashlib.sha256(b).hexdigest() for n, b in _objects(s3, bucket, first["prefix"]).items()}
    # the dataset removed, extracted again from the same permit and pins: every file identical (SHA-256)
    project_extract_mod.delete_area(s3, bucket, pid)
    again = project_tasks.extract_project(NETWORK, datasets["res"], pid, actor="test", pins=datasets["pins"])
    after = {n: hashlib.sha256(b).hexdigest() for n, b in _objects(s3, bucket, again["prefix"]).items()}
    assert again["extract_id"] == first["extract_id"] and after == before and len(before) >= 5
    manifest = json.loads(_objects(s3, bucket, first["prefix"])["_manifest.json"])
    verify_document(manifest, public_key_of(datasets["res"].signing_key), what="project dataset")
    assert {f["name"]: f["sha256"] for f in manifest["files"]} == {
        n: h for n, h in before.items() if n != "_manifest.json"
    }
    # the catalogue knows the dataset once, with its size and the lead time permit -> delivery
    p = projects.get(stack.dsn("catalogue"), pid, actor="test")
    assert len(p["datasets"]) == 1 and p["dataset_bytes"] == first["bytes"] > 0
    assert p["status"] == "delivered" and p["lead_time_days"] is not None
    assert [e["status"] for e in p["timeline"]] == ["requested", "permit_granted", "extracted", "delivered"]


# ---------------------------------------------------------------------------------------------------------
# expiry and withdrawal


def test_permit_expiry_deletes_the_dataset_and_records_it(night, stack, datasets):
    pid = _granted(stack, night, "expiring", PERMIT_B, ["hosp_d"], expires=dt.date.today() + dt.timedelta(days=30))
    res = datasets["res"]
    ds = project_tasks.extract_project(NETWORK, res, pid, actor="test", pins=datasets["pins"])
    s3 = stack.s3_client()
    bucket = NETWORK.national.landing_zone.bucket
    assert _objects(s3, bucket, f"projects/{pid}/")
    # the day before expiry nothing goes; at expiry every object of the area goes, and the catalogue says so
    assert pid not in [
        d["project"] for d in project_tasks.expire_due(NETWORK, res, actor="test", today=dt.date.today())
    ]
    done = project_tasks.expire_due(NETWORK, res, actor="test", today=dt.date.today() + dt.timedelta(days=30))
    mine = next(d for d in done if d["project"] == pid)
    assert mine["objects_deleted"] == ds["files"] + 1 and mine["objects_left"] == 0
    assert _objects(s3, bucket, f"projects/{pid}/") == {}
    p = projects.get(stack.dsn("catalogue"), pid, actor="test")
    assert p["status"] == "expired" and p["datasets"][0]["deleted_at"] is not None
    assert p["datasets"][0]["deletion"]["objects_left"] == 0 and p["dataset_bytes"] == 0
    assert "project.dataset_deleted" in _audit(stack, pid)
    with pytest.raises(projects.ProjectError, match="expired"):
        project_tasks.extract_project(NETWORK, res, pid, actor="test")


@pytest.fixture
def small_hdh(stack, fresh_db):
    """A national table state of its own (fresh HDH database, own landing prefix): objections change it."""
    from eds_network.core.storage import S3Endpoint
    from eds_network.national import tables

    zone = NETWORK.national.landing_zone.model_copy(update={"prefix": f"t-{uuid.uuid4().hex[:8]}/"})
    network = NETWORK.model_copy(update={"national": NETWORK.national.model_copy(update={"landing_zone": zone})})
    national = tables.NationalTables(fresh_db, S3Endpoint(stack.s3_endpoint, *stack.s3_login))
    base = project_cli._project_resources(stack, NETWORK)
    res = project_tasks.ProjectResources(
        catalogue_dsn=base.catalogue_dsn,
        national=national,
        area=national.landing,
        national_key=base.national_key,
        signing_key=base.signing_key,
    )
    return network, res


def _small_delivery(persons: list[int]) -> dict[str, pa.Table]:
    n = len(persons)
    return {
        "person": pa.table(
            {
                "person_id": pa.array(persons, pa.int64()),
                "gender_concept_id": pa.array([8532] * n, pa.int64()),
                "year_of_birth": pa.array([1970] * n, pa.int64()),
            }
        ),
        "condition_occurrence": pa.table(
            {
                "condition_occurrence_id": pa.array([10_000 + p for p in persons], pa.int64()),
                "person_id": pa.array(persons, pa.int64()),
                "condition_concept_id": pa.array([4251306] * n, pa.int64()),
                "condition_start_date": pa.array([dt.date(2020, 5, 1)] * n, pa.date32()),
            }
        ),
    }


def test_an_objection_gives_a_withdrawal_notice_and_the_next_extract_is_without_the_patient(stack, small_hdh):
    from eds_network.national import tables
    from tests.integration.test_national_tables import land

    network, res = small_hdh
    target = network.national
    persons = list(range(101, 131))
    tables.apply_delivery(target, res.national, land(target, res.national, "idf", _small_delivery(persons), T0))
    dsn = res.catalogue_dsn
    ids = {}
    for name in ("wd-a", "wd-b"):
        pid = _uid(name)
        projects.create(
            dsn, pid, title=name, purpose="p", requester="r", bases=["hosp_a", "hosp_b", "hosp_c"],
            tables={"person": ["person_id", "year_of_birth"]},
            cohort=json.loads(_cohort(4251306).model_dump_json()), actor="test",
        )  # fmt: skip
        projects.grant(dsn, pid, permit_reference="DAB", issuer="HDH", expires_on=dt.date(2099, 1, 1), actor="hdh")
        ids[name] = pid
        first = project_tasks.extract_project(network, res, pid, actor="test")
        assert first["persons"] == 30
    # patient 117 objects: the platform's next full delivery is without them, applied to the national tables
    later = [p for p in persons if p != 117]
    tables.apply_delivery(target, res.national, land(target, res.national, "idf", _small_delivery(later), T1))
    mine = list(ids.values())
    notices = project_tasks.withdrawal_notices(network, res, actor="test", project_ids=mine)
    assert notices[ids["wd-a"]] == 1 and notices[ids["wd-b"]] == 1
    for pid in ids.values():
        (notice,) = projects.withdrawals(dsn, pid, actor="test")
        expected = project_extract_mod.project_pseudonyms([117], res.national_key.secret, pid)
        assert {notice["project_person_id"]} == expected  # by the project's pseudonym, never the national id
        assert notice["project_person_id"] != 117
        again = project_tasks.extract_project(network, res, pid, actor="test")
        assert again["persons"] == 29
        got = pq.read_table(io.BytesIO(stack.s3_client().get_object(
            Bucket=target.landing_zone.bucket, Key=again["prefix"] + "person.parquet")["Body"].read()))  # fmt: skip
        assert notice["project_person_id"] not in set(got.column("person_id").to_pylist())
    # the notices are not repeated
    assert project_tasks.withdrawal_notices(network, res, actor="test", project_ids=mine) == {
        ids["wd-a"]: 0,
        ids["wd-b"]: 0,
    }
    # the dataset that held the patient is gone from the project's area: only the new one is left
    (live,) = [d for d in projects.get(dsn, ids["wd-a"], actor="test")["datasets"] if d["deleted_at"] is None]
    left = _objects(stack.s3_client(), target.landing_zone.bucket, f"projects/{ids['wd-a']}/")
    assert {k.split("/")[0] for k in left} == {live["extract_id"]}
    wa = {w["project_person_id"] for w in projects.withdrawals(dsn, ids["wd-a"], actor="test")}
    wb = {w["project_person_id"] for w in projects.withdrawals(dsn, ids["wd-b"], actor="test")}
    assert wa != wb  # two projects' notices name two different pseudonyms of the one patient
    for pid in ids.values():  # closed: this national state of its own is gone after the test
        project_tasks.close_project(network, res, pid, actor="test", reason="test over")


def test_closing_a_project_deletes_its_dataset_and_records_the_closure(stack, small_hdh, capsys):
    from eds_network.national import tables
    from tests.integration.test_national_tables import land

    network, res = small_hdh
    target = network.national
    tables.apply_delivery(
        target, res.national, land(target, res.national, "idf", _small_delivery(list(range(1, 21))), T0)
    )
    dsn = res.catalogue_dsn
    pid, idle = _uid("closing"), _uid("closing-idle")
    for p in (pid, idle):
        projects.create(
            dsn, p, title=p, purpose="p", requester="r", bases=["hosp_a", "hosp_b", "hosp_c"],
            tables={"person": ["person_id", "year_of_birth"]},
            cohort=json.loads(_cohort(4251306).model_dump_json()), actor="test",
        )  # fmt: skip
        projects.grant(dsn, p, permit_reference="DAB", issuer="HDH", expires_on=dt.date(2099, 1, 1), actor="hdh")
    ds = project_tasks.extract_project(network, res, pid, actor="test")
    s3, bucket = stack.s3_client(), target.landing_zone.bucket
    assert len(_objects(s3, bucket, f"projects/{pid}/")) == ds["files"] + 1
    done = project_tasks.close_project(network, res, pid, actor="hdh", reason="study finished")
    assert done["objects_deleted"] == ds["files"] + 1 and done["objects_left"] == 0
    assert _objects(s3, bucket, f"projects/{pid}/") == {}  # nothing left under the area
    p = projects.get(dsn, pid, actor="test")
    assert p["status"] == "closed" and p["dataset_bytes"] == 0
    last = p["timeline"][-1]
    assert last["status"] == "closed" and last["actor"] == "hdh"
    assert last["details"]["objects_deleted"] == ds["files"] + 1 and last["details"]["reason"] == "study finished"
    assert p["datasets"][0]["deleted_at"] is not None and p["datasets"][0]["deletion"]["objects_left"] == 0
    assert {"project.dataset_deleted", "project.closed"} <= set(_audit(stack, pid))
    with pytest.raises(projects.ProjectError, match="closed"):
        project_tasks.extract_project(network, res, pid, actor="test")
    with pytest.raises(projects.ProjectError, match="already closed"):
        project_tasks.close_project(network, res, pid, actor="test")
    # the command line: a project with no dataset yet is closed too, the closure on its timeline
    assert cli.main(["project", "close", idle, "--reason", "permit withdrawn"]) == 0
    assert "closed" in capsys.readouterr().out
    q = projects.get(dsn, idle, actor="test")
    assert q["status"] == "closed" and q["timeline"][-1]["details"]["reason"] == "permit withdrawn"


def test_the_extract_dag_runs_in_the_national_zone_through_airflow(night, stack, datasets):
    pid = _granted(stack, night, "via-dag", PERMIT_B, ["hosp_d"])
    assert cli.main(["project", "extract", pid, "--airflow"]) == 0
    p = projects.get(stack.dsn("catalogue"), pid, actor="test")
    assert p["status"] == "delivered" and len(p["datasets"]) == 1
    assert any(e["actor"].startswith("airflow:") for e in p["timeline"])
    # the project's own login reads its area and nothing else
    from botocore.exceptions import ClientError

    from eds_network.core.storage import s3_client
    from eds_network.dev.project_access import project_area_login

    login = project_area_login(stack, NETWORK, pid)
    s3 = s3_client(stack.s3_endpoint, login.login, login.password)
    bucket = NETWORK.national.landing_zone.bucket
    s3.get_object(Bucket=bucket, Key=p["datasets"][0]["prefix"] + "_manifest.json")
    other = datasets["out"][datasets["b"]]["prefix"] + "_manifest.json"
    with pytest.raises(ClientError):
        s3.get_object(Bucket=bucket, Key=other)


def test_the_operator_page_lists_projects_with_timeline_lead_time_size_and_feasibility(
    night, stack, datasets, tmp_path
):
    from fastapi.testclient import TestClient

    from eds_network import ui

    # a published feasibility answer with a suppressed cell
    path = tmp_path / "cohort.json"
    path.write_text(json.dumps(_cohort(_small_cell_concept(stack)).model_dump(mode="json")))
    assert cli.main(["project", "feasibility", "--cohort", str(path)]) == 0
    client = TestClient(ui.create_app(lambda: stack.dsn("catalogue"), load_network))
    html = client.get("/projects").text
    pid = datasets["a"]
    p = projects.get(stack.dsn("catalogue"), pid, actor="test")
    assert f"data-project='{pid}'" in html and f"DAB-{pid}" in html
    assert f"data-bytes='{p['dataset_bytes']}'" in html and p["dataset_bytes"] > 0
    assert "permit_granted" in html and "delivered" in html and " h</td>" in html
    assert "data-count='suppressed'" in html
    api = {x["id"]: x for x in client.get("/api/projects").json()}
    assert api[pid]["lead_time_days"] == p["lead_time_days"]
    answers = client.get("/api/feasibility").json()
    published = [v for a in answers for b in a["answer"]["bases"].values() for v in b.values() if v is not None]
    assert all(v == 0 or v >= K for v in published)


def test_the_operator_page_shows_one_projects_permit_timeline_and_datasets(stack):
    from fastapi.testclient import TestClient

    from eds_network import ui

    dsn = stack.dsn("catalogue")
    pid = _uid("view")
    cohort = json.loads(_cohort(4251306, age_min=18, sex=["F"]).model_dump_json())
    projects.create(
        dsn, pid, title="Sinusitis in women", purpose="a study", requester="r", bases=["hosp_d"],
        tables={"person": ["person_id", "year_of_birth"]}, cohort=cohort, actor="test",
    )  # fmt: skip
    projects.grant(dsn, pid, permit_reference=f"DAB-{pid}", issuer="HDH", expires_on=dt.date(2099, 1, 1), actor="hdh")
    extract_id = f"{pid}__0123456789abcdef"
    projects.record_dataset(
        dsn, pid,
        {"extract_id": extract_id, "pins": {"person": 42}, "prefix": f"projects/{pid}/{extract_id}/",
         "manifest_sha256": "0" * 64, "files": 3, "bytes": 4_321, "rows": {"person": 17}, "persons": 17},
        actor="test",
    )  # fmt: skip
    projects.record_deletion(
        dsn, pid, extract_id, {"objects_deleted": 4, "objects_left": 0, "reason": "study finished"},
        actor="hdh", status="closed",
    )  # fmt: skip
    client = TestClient(ui.create_app(lambda: dsn, load_network))
    html = client.get(f"/projects/{pid}").text
    assert "data-status='closed'" in html and f"DAB-{pid}" in html and "Sinusitis in women" in html
    for status in ("requested", "permit_granted", "extracted", "delivered", "closed"):
        assert f"data-event='{status}'" in html
    assert "<td>hdh</td>" in html and "reason study finished" in html  # who closed it, and why
    assert (
        f"data-dataset='{extract_id}'" in html
        and "data-state='deleted'" in html
        and "4 objects deleted, 0 left" in html
    )
    assert "<div>person 42</div>" in html and "data-bytes='4321'" in html  # its pins and size
    assert "<code>person</code>: person_id, year_of_birth" in html and "data-criterion='condition_occurrence'" in html
    assert "age min 18" in html and "data-lead-hours=" in html
    api = client.get(f"/api/projects/{pid}").json()
    assert api["status"] == "closed" and api["datasets"][0]["deletion"]["reason"] == "study finished"
    assert client.get("/projects/no-such-project").status_code == 404
    assert client.get("/api/projects/Not%20an%20id").status_code == 404
    assert _audit(stack, pid).count("project.read") >= 2  # reading the page is an audited access
    assert f"data-project-link='{pid}'" in client.get("/projects").text  # the list links to the project's view
    page = client.get("/").text  # the operator page's overview: projects per status, link to the projects
    assert "id='projects-summary'" in page and "data-projects-status='closed'" in page
