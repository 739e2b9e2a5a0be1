"""Key rotation and date shifting through the real stack (embedded PostgreSQL + S3), step by step (no Airflow).

A small network of its own (idf: hosp_b + hosp_c, onco: hosp_d, generated, sharing patients across sites and
platforms), its own source and warehouse databases and its own intake / outbox / landing-zone prefixes:

night 1  every base publishes under level-1 key v1; platforms consolidate and package; national transfer.
rotate   idf's level-1 key -> v2 (a new key: the stack's key files are left alone).
night 2  hosp_b re-keys first: the platform holds its package while hosp_c is still under v1; then hosp_c
         re-keys; the platform replaces the v1 rows, retires v1 and packages; national transfer.
Then a batch under the retired key is rejected, and the national key is rotated too.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import io
import secrets
import uuid

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from eds_network.core import omop, rowids
from eds_network.core.config import Network, load_network
from eds_network.core.crypto import Key
from eds_network.core.errors import IntegrityError
from eds_network.core.storage import S3Endpoint, read_json
from eds_network.dev import seed
from eds_network.dev.level1 import with_level1_key
from eds_network.local import extract, publish
from eds_network.national import transfer
from eds_network.platform import consolidate, warehouse
from eds_network.platform import package as packaging
from eds_network.platform.keyversions import KeyRotationInProgress

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("synthea_zip")]

UTC = dt.UTC
DAY1 = dt.datetime(2025, 5, 1, tzinfo=UTC)
DAY2 = DAY1 + dt.timedelta(days=1)
DAY3 = DAY2 + dt.timedelta(days=1)
SIZES = {"hosp_b": 40, "hosp_c": 25, "hosp_d": 20}
# Tables whose rows keep their (site-namespaced) key across a rotation; person and death are keyed by person.
EVENT_TABLES = [t for t in omop.DEFAULT_TABLES if omop.table(t).primary_key not in (None, "person_id")]
PERSON_KEYED = [t for t in omop.DEFAULT_TABLES if t not in EVENT_TABLES]


def _network(date_shift_days: int = 0) -> Network:
    """idf (hosp_b, hosp_c) and onco (hosp_d) only, resized, with prefixes of their own."""
    raw = load_network().model_dump(mode="json")
    run = f"test-rot-{uuid.uuid4().hex[:10]}"
    for p in raw["platforms"]:
        p["members"] = [m for m in p["members"] if m["id"] in SIZES]
        for m in p["members"]:
            m["seed"]["patients"] = SIZES[m["id"]]
            m["seed"]["shared_with"] = [b for b in m["seed"]["shared_with"] if b in SIZES]
        p["intake"]["prefix"] = f"{run}/{p['id']}"
        p["outbox"]["prefix"] = f"{run}/{p['id']}"
        p["pseudonymisation"] = {"date_shift_days": date_shift_days if p["id"] == "idf" else 0}
    raw["national"]["landing_zone"]["prefix"] = run
    return Network.model_validate(raw)


class World:
    """One small network on the test stack: sources, warehouses, resources per base / platform / national."""

    def __init__(self, stack, net: Network, new_db):
        self.stack, self.net = stack, net
        self.ep = S3Endpoint(stack.s3_endpoint, *stack.s3_login)
        self.src = {b.id: new_db() for b in net.local_bases}
        for b in net.local_bases:
            seed.seed_base(self.src[b.id], net, b.id, (DAY1, DAY2))
        self.wh = {p.id: new_db() for p in net.platforms}
        self.res = {
            b.id: stack.local_resources(
                net, b.id, source_dsn=self.src[b.id], intake_prefix=net.platform_of(b.id).intake.prefix
            )
            for b in net.local_bases
        }
        keys = stack.keys(net)
        box = keys[net.national.box_key_connection_id]
        nk = keys[net.national.key_connection_id]
        self.nres = transfer.NationalResources(
            outbox=self.ep,
            landing=self.ep,
            national_key=Key.from_secret(net.national.key_connection_id, nk["password"], nk["extra"]["version"]),
            box_private_key=base64.b64decode(box["password"]),
            box_key_version=box["extra"]["version"],
        )

    def pres(self, platform_id: str) -> consolidate.PlatformResources:
        return consolidate.PlatformResources(self.wh[platform_id], self.ep, self.ep)

    def rotate_platform_key(self, platform_id: str) -> Key:
        p = self.net.platform(platform_id)
        new = Key(secrets.token_bytes(32), "v2", p.key_connection_id)
        for b in p.members:
            self.res[b.id] = with_level1_key(self.res[b.id], new, p.id, b.finess or b.id)
        return new

    def local(self, base_id: str, start=DAY1, end=DAY2, res=None) -> tuple[dict[str, dict], dict]:
        b, r = self.net.base(base_id), res or self.res[base_id]
        refs = {t: extract.extract_table(b, t, start, end, r).ref() for t in b.tables}
        pub = publish.publish_batch(b, start, end, list(refs.values()), r)
        return refs, read_json(r.intake.client(), r.intake_bucket, pub.manifest_key)

    def consolidate(self, platform_id: str) -> consolidate.Consolidation:
        p = self.net.platform(platform_id)
        return consolidate.consolidate(p, p.intake.bucket, p.intake.prefix, self.pres(platform_id))

    def package(self, platform_id: str, c: consolidate.Consolidation) -> packaging.Package:
        return packaging.package(self.net.platform(platform_id), self.pres(platform_id), c.key_versions)

    def national(self, platform_id: str, nres=None, raw: dict | None = None) -> dict[str, dict[int, int]]:
        """Transfer the platform's latest package; returns per table {warehouse row key: national person_id}.

        Landing row ids are the national keyed permutation of the warehouse's: translated back here with the
        national key (every one must translate), their raw values collected in `raw`."""
        p = self.net.platform(platform_id)
        nres = nres or self.nres
        row_key = rowids.level_key(nres.national_key.secret, "national")
        back: dict[str, dict[int, int]] = {}
        for t, rows in self.warehouse(platform_id)["rows"].items():
            ids = pa.array(list(rows), pa.int64())
            back[t] = dict(zip(rowids.rekey(ids, row_key, "national-row").to_pylist(), rows, strict=True))
        d = transfer.transfer_platform(p, self.net.national, nres)
        assert d.status in ("delivered", "already_delivered"), d
        s3 = self.ep.client()
        bucket = self.net.national.landing_zone.bucket
        manifest = read_json(s3, bucket, d.manifest_key)
        out = {}
        for f in manifest["files"]:
            t = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=f["key"])["Body"].read()))
            key = warehouse.conflict_key(f["table"])
            if "person_id" in t.column_names:
                if key != "person_id":
                    landed = t.column(key).to_pylist()
                    if raw is not None:
                        raw.setdefault(f["table"], set()).update(landed)
                    assert set(landed) <= set(back[f["table"]]), f["table"]
                    rows = [back[f["table"]][i] for i in landed]
                    out[f["table"]] = dict(zip(rows, t.column("person_id").to_pylist(), strict=True))
                else:
                    out[f["table"]] = {i: i for i in t.column("person_id").to_pylist()}
        return out

    def warehouse(self, platform_id: str) -> dict:
        """Per table: {row key: person_id}; person_site overlap; key versions of the rows."""
        out: dict = {"rows": {}, "versions": set()}
        with psycopg.connect(self.wh[platform_id]) as conn:
            for t in omop.DEFAULT_TABLES:
                key = warehouse.conflict_key(t)
                rows = conn.execute(
                    sql.SQL("SELECT {}, person_id, _key_version FROM omop.{}").format(
                        sql.Identifier(key), sql.Identifier(t)
                    )
                ).fetchall()
                out["rows"][t] = {k: pid for k, pid, _ in rows}
                out["versions"] |= {v for _, _, v in rows}
            out["overlap"] = conn.execute(
                "SELECT a.base_id, b.base_id, count(*) FROM eds_platform.person_site a JOIN eds_platform.person_site b"
                " ON a.person_id = b.person_id AND a.base_id < b.base_id GROUP BY 1, 2 ORDER BY 1, 2"
            ).fetchall()
            out["key_registry"] = conn.execute(
                "SELECT version, retired_at IS NOT NULL FROM eds_platform.key_version ORDER BY seq"
            ).fetchall()
        return out


def _bijection(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    """old person id -> new person id, read off the same rows; fails unless it is one-to-one."""
    assert before.keys() == after.keys()
    m: dict[int, int] = {}
    for row, old in before.items():
        assert m.setdefault(old, after[row]) == after[row], "one old pseudonym became two new ones"
    assert len(set(m.values())) == len(m), "two old pseudonyms became one new one"
    return m


def test_rotating_a_platform_key_re_keys_every_row_consistently_and_keeps_national_ids(stack, new_db):
    net = _network()
    w = World(stack, net, new_db)
    for b in net.local_bases:
        _, manifest = w.local(b.id)
        assert manifest["key_versions"]["level1"] == "v1"
        assert not any(e["full"] for e in manifest["tables"].values())
    before, national_before = {}, {}
    for p in ("idf", "onco"):
        c = w.consolidate(p)
        assert not c.rejected
        w.package(p, c)
        before[p] = w.warehouse(p)
        national_before[p] = w.national(p)
    assert before["idf"]["overlap"], "hosp_b and hosp_c must share patients"
    assert before["idf"]["versions"] == {"v1"}
    shared_national = set(national_before["idf"]["person"]) & set(national_before["onco"]["person"])
    assert shared_national, "idf and onco must share patients at the national level"

    w.rotate_platform_key("idf")

    # hosp_b re-keys first: a full extraction under v2; the platform holds its package while hosp_c is on v1.
    refs_b, manifest_b = w.local("hosp_b", DAY2, DAY3)
    assert manifest_b["key_versions"]["level1"] == "v2"
    assert all(e["full"] for e in manifest_b["tables"].values())
    assert refs_b["person"]["extracted"] == SIZES["hosp_b"]  # the whole table, not the (empty) interval
    c = w.consolidate("idf")
    assert not c.rejected and c.retired_key_versions == []
    with pytest.raises(KeyRotationInProgress, match=r"v1 -> v2.*hosp_c: .*person"):
        w.package("idf", c)

    _, manifest_c = w.local("hosp_c", DAY2, DAY3)
    assert all(e["full"] for e in manifest_c["tables"].values())
    c = w.consolidate("idf")
    assert not c.rejected and c.retired_key_versions == ["v1"] and c.key_versions["level1"] == ["v2"]
    w.package("idf", c)
    after = w.warehouse("idf")

    # Every row is still there, under v2 only; every level-1 pseudonym changed, one-to-one, across tables.
    assert after["versions"] == {"v2"}
    assert after["key_registry"] == [("v1", True), ("v2", False)]
    for t in omop.DEFAULT_TABLES:
        assert len(after["rows"][t]) == len(before["idf"]["rows"][t]), t
    persons_before = set(before["idf"]["rows"]["person"])
    persons_after = set(after["rows"]["person"])
    assert len(persons_before) == len(persons_after) and not persons_before & persons_after
    old_to_new = {}
    for t in EVENT_TABLES:
        for old, new in _bijection(before["idf"]["rows"][t], after["rows"][t]).items():
            assert old_to_new.setdefault(old, new) == new, t  # the same patient, the same new id in every table
    assert set(old_to_new) <= persons_before and set(old_to_new.values()) <= persons_after
    assert {old_to_new[p] for p in before["idf"]["rows"]["death"]} == set(after["rows"]["death"])
    assert after["overlap"] == before["idf"]["overlap"]  # patients of both hospitals still linked

    # onco did not rotate: untouched. National: the national key did not rotate, so level-2 ids are unchanged.
    assert w.warehouse("onco")["rows"] == before["onco"]["rows"]
    national_after = w.national("idf")
    assert national_after == national_before["idf"]
    assert not (set(national_after["person"]) & (persons_before | persons_after))  # no level-1 id at the HDH

    # A batch still pseudonymised under the retired key is rejected; the warehouse does not move.
    old_res = with_level1_key(w.res["hosp_c"], Key(secrets.token_bytes(32), "v1", "eds_key_l1_idf"), "idf", "920000003")
    w.local("hosp_c", DAY1, DAY2, res=old_res)
    c = w.consolidate("idf")
    assert list(c.rejected.values()) and "retired" in next(iter(c.rejected.values()))
    assert w.warehouse("idf")["rows"] == after["rows"]

    # A batch never mixes key versions: a table pseudonymised under one version is not published under another.
    hosp_d = net.base("hosp_d")
    ref = extract.extract_table(hosp_d, "person", DAY2, DAY3, w.res["hosp_d"]).ref()
    other = with_level1_key(w.res["hosp_d"], Key(secrets.token_bytes(32), "v9", "eds_key_l1_onco"), "onco", "690000004")
    with pytest.raises(IntegrityError, match="another level-1 key version"):
        publish.publish_batch(hosp_d, DAY2, DAY3, [ref], other)


def test_rotating_the_national_key_changes_every_level2_id_consistently_across_platforms(stack, new_db):
    net = _network()
    w = World(stack, net, new_db)
    for b in net.local_bases:
        w.local(b.id)
    before = {}
    for p in ("idf", "onco"):
        w.package(p, w.consolidate(p))
        before[p] = w.national(p)
    new = dataclasses.replace(w.nres, national_key=Key(secrets.token_bytes(32), "v2", w.nres.national_key.name))
    raw_before: dict = {}
    raw_after: dict = {}
    for p in ("idf", "onco"):
        w.national(p, raw=raw_before)
    after = {p: w.national(p, new, raw=raw_after) for p in ("idf", "onco")}
    for t in EVENT_TABLES:  # rotating the national key changes every national row id too
        assert raw_before[t] and not raw_before[t] & raw_after[t], t
    mapping: dict[int, int] = {}
    for p in ("idf", "onco"):
        for t in EVENT_TABLES:
            for old, nid in _bijection(before[p][t], after[p][t]).items():
                assert mapping.setdefault(old, nid) == nid  # one patient, one new national id on both platforms
        for t in PERSON_KEYED:  # patients with no event row are not in the mapping: checked by count
            assert len(before[p][t]) == len(after[p][t]), t
            assert {mapping[i] for i in before[p][t] if i in mapping} <= set(after[p][t]), t
    assert not set(mapping) & set(mapping.values())
    assert (
        len(set(after["idf"]["person"]) & set(after["onco"]["person"]))
        == len(set(before["idf"]["person"]) & set(before["onco"]["person"]))
        > 0
    )


def test_date_shift_moves_each_patient_by_one_offset_at_every_site_and_in_every_table(stack, new_db):
    net = _network(date_shift_days=20)
    w = World(stack, net, new_db)
    for b in net.platform("idf").members:
        w.local(b.id)
    w.consolidate("idf")
    events = {
        "visit_occurrence": "visit_start_date",
        "condition_occurrence": "condition_start_date",
        "measurement": "measurement_date",
        "observation_period": "observation_period_start_date",
    }
    offsets: dict[int, set[int]] = {}
    checked = 0
    with psycopg.connect(w.wh["idf"]) as wh:
        for b in net.platform("idf").members:
            with psycopg.connect(w.src[b.id]) as src:
                for t, col in events.items():
                    key = omop.table(t).primary_key
                    q = sql.SQL("SELECT {k}, {c} FROM omop.{t}").format(
                        k=sql.Identifier(key), c=sql.Identifier(col), t=sql.Identifier(t)
                    )
                    source = dict(src.execute(q).fetchall())
                    row_key = rowids.level_key(w.res[b.id].transport_key.secret, f"level1|{b.finess or b.id}")
                    local = list(source)
                    published = rowids.rekey(pa.array(local, pa.int64()), row_key, "level1-row").to_pylist()
                    to_local = dict(zip(published, local, strict=True))
                    q = sql.SQL("SELECT {k}, {c}, person_id FROM omop.{t} WHERE _site = %s").format(
                        k=sql.Identifier(key), c=sql.Identifier(col), t=sql.Identifier(t)
                    )
                    for row_id, shifted, pid in wh.execute(q, (b.site_number,)):
                        offsets.setdefault(pid, set()).add((shifted - source[to_local[row_id]]).days)
                        checked += 1
        shared = [
            r[0] for r in wh.execute("SELECT person_id FROM eds_platform.person_site GROUP BY 1 HAVING count(*) > 1")
        ]
    assert checked > 500
    assert all(len(o) == 1 for o in offsets.values()), "a patient's rows were shifted by different offsets"
    values = [next(iter(o)) for o in offsets.values()]
    assert all(1 <= abs(v) <= 20 for v in values)
    assert len(set(values)) > 10  # offsets differ between patients
    assert shared and all(len(offsets[p]) == 1 for p in shared if p in offsets)  # one offset across the two sites


def test_a_level1_key_rotation_changes_every_person_id_and_no_date_offset(stack, new_db):
    """The date-shift key is its own: re-keying a platform gives every patient a new id and the same shifted dates
    (the two versions of a row cannot be differenced to learn an offset)."""
    net = _network(date_shift_days=20)
    w = World(stack, net, new_db)
    base = "hosp_b"

    def published(refs) -> dict[int, tuple]:
        ref = refs["visit_occurrence"]
        body = w.ep.client().get_object(Bucket=w.res[base].intake_bucket, Key=ref["key"])["Body"].read()
        t = pq.read_table(io.BytesIO(body), columns=["visit_occurrence_id", "person_id", "visit_start_date"])
        return {r["visit_occurrence_id"]: (r["person_id"], r["visit_start_date"]) for r in t.to_pylist()}

    before, _ = w.local(base)
    b = published(before)  # read now: the rerun below replaces the batch's files
    w.rotate_platform_key("idf")
    after, _ = w.local(base)
    assert after["visit_occurrence"]["full"]  # the new key version re-extracts the table
    a = published(after)
    assert len(b) > 50 and b.keys() == a.keys()  # row ids come from the transport key: unchanged here
    assert all(a[k][0] != b[k][0] for k in b)  # every person id changed
    assert all(a[k][1] == b[k][1] for k in b)  # every shifted date is the same
    assert any(b[k][1] is not None for k in b)
