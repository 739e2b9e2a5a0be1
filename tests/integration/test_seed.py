"""Seeding hospital source databases on the real embedded PostgreSQL (fixture `fresh_db`)."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from eds_network.core import omop, omopzip
from eds_network.core.config import Network, load_network
from eds_network.core.nir import nir_is_valid
from eds_network.dev import seed

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("synthea_zip")]

UTC = dt.UTC
STAMP = (dt.datetime(2025, 3, 1, tzinfo=UTC), dt.datetime(2025, 3, 2, tzinfo=UTC))
# Synthea27Nj sample (shared/datasets/synthea27nj/README.md).
SYNTHEA_COUNTS = {
    "person": 28,
    "observation_period": 28,
    "visit_occurrence": 1791,
    "condition_occurrence": 470,
    "drug_exposure": 883,
    "procedure_occurrence": 1649,
    "measurement": 10040,
    "observation": 8099,
    "death": 3,
}
# Event date column(s) per table, checked against birth and death.
EVENT_DATES = {
    "visit_occurrence": ("visit_start_date", "visit_end_date"),
    "condition_occurrence": ("condition_start_date", "condition_end_date"),
    "drug_exposure": ("drug_exposure_start_date", "drug_exposure_end_date"),
    "procedure_occurrence": ("procedure_date", "procedure_end_date"),
    "measurement": ("measurement_date",),
    "observation": ("observation_date",),
    "observation_period": ("observation_period_start_date", "observation_period_end_date"),
    "death": ("death_date",),
}


def _network(patients: int = 40) -> Network:
    """The demo network, with hosp_c (generated, shares with hosp_b) resized."""
    return load_network().resized("hosp_c", patients)


def _scalar(conn: psycopg.Connection, query: sql.Composable | str, params: tuple = ()):
    return conn.execute(query, params).fetchone()[0]


def _count(conn: psycopg.Connection, schema: str, table: str) -> int:
    return _scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table)))


def _content_hashes(conn: psycopg.Connection, tables) -> dict[str, str]:
    out = {}
    for schema, table in [("omop", t) for t in tables] + [("identity", "patient"), ("identity", "opposition")]:
        out[f"{schema}.{table}"] = _scalar(
            conn,
            sql.SQL("SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {} AS t").format(
                sql.Identifier(schema, table)
            ),
        )
    return out


def _published_keys(conn: psycopg.Connection) -> tuple[list[str], list[int]]:
    rows = conn.execute(
        """
        SELECT p.person_id, p.nir, p.birth_date, p.sex, o.person_id IS NOT NULL
          FROM identity.patient p LEFT JOIN identity.opposition o USING (person_id)
         ORDER BY p.person_id
        """
    ).fetchall()
    keys = sorted(
        f"{nir}|{birth.isoformat()}|{sex}" for _, nir, birth, sex, obj in rows if not obj and nir_is_valid(nir)
    )
    objectors = [pid for pid, *_, obj in rows if obj]
    return keys, objectors


def test_synthea_base_matches_the_sample(fresh_db):
    net = load_network()
    counts = seed.seed_base(fresh_db, net, "hosp_a", STAMP)
    assert counts == SYNTHEA_COUNTS
    gt = seed.ground_truth(net)["bases"]["hosp_a"]
    with psycopg.connect(fresh_db) as conn:
        for table, n in SYNTHEA_COUNTS.items():
            assert _count(conn, "omop", table) == n, table
            lo, hi = conn.execute(
                sql.SQL("SELECT min(_updated_at), max(_updated_at) FROM {}").format(sql.Identifier("omop", table))
            ).fetchone()
            assert STAMP[0] <= lo and hi < STAMP[1], table
        assert _count(conn, "identity", "patient") == 28
        # Identity birth date and sex agree with the OMOP person row.
        mismatches = _scalar(
            conn,
            """
            SELECT count(*) FROM identity.patient i JOIN omop.person p USING (person_id)
             WHERE i.birth_date <> make_date(p.year_of_birth::int, p.month_of_birth::int, p.day_of_birth::int)
                OR i.sex <> CASE p.gender_concept_id WHEN 8507 THEN 'M' ELSE 'F' END
            """,
        )
        assert mismatches == 0
        assert _scalar(conn, "SELECT count(DISTINCT ipp) FROM identity.patient") == 28
        keys, objectors = _published_keys(conn)
        assert keys == gt["linkage_keys"]
        assert objectors == gt["objectors"]
        recorded = _scalar(conn, "SELECT max(recorded_at) FROM identity.opposition")
        assert recorded < STAMP[0]


def test_generated_base(fresh_db):
    n = 60
    net = _network(n)
    counts = seed.seed_base(fresh_db, net, "hosp_c", STAMP)
    assert counts["person"] == n
    assert counts["observation_period"] == n
    assert set(counts) == set(omop.DEFAULT_TABLES)
    # Volumes follow the Synthea sample's per-person ratios (loosely: the generator is random).
    per_person = {t: counts[t] / n for t in counts}
    assert 25 < per_person["visit_occurrence"] < 130
    assert 150 < per_person["measurement"] < 700
    assert per_person["measurement"] > per_person["observation"] > per_person["procedure_occurrence"]
    assert counts["death"] < n / 2
    with psycopg.connect(fresh_db) as conn:
        assert _scalar(conn, "SELECT array_agg(person_id ORDER BY person_id) FROM omop.person") == list(range(1, n + 1))
        assert _scalar(conn, "SELECT count(*) FROM omop.person WHERE person_source_value !~ '^[0-9a-f-]{36}$'") == 0
        for table in omop.DEFAULT_TABLES:
            t = sql.Identifier("omop", table)
            assert _count(conn, "omop", table) == counts[table], table
            orphans = _scalar(
                conn,
                sql.SQL(
                    "SELECT count(*) FROM {} e WHERE NOT EXISTS (SELECT 1 FROM omop.person p WHERE p.person_id = e.person_id)"
                ).format(t),
            )
            assert orphans == 0, table
            lo, hi = conn.execute(sql.SQL("SELECT min(_updated_at), max(_updated_at) FROM {}").format(t)).fetchone()
            assert STAMP[0] <= lo and hi < STAMP[1], table
            tdef = omop.table(table)
            if tdef.primary_key:
                assert (
                    _scalar(
                        conn, sql.SQL("SELECT count(DISTINCT {}) FROM {}").format(sql.Identifier(tdef.primary_key), t)
                    )
                    == counts[table]
                )
            for col in EVENT_DATES.get(table, ()):
                c = sql.Identifier(col)
                bad = _scalar(
                    conn,
                    sql.SQL(
                        """
                        SELECT count(*) FROM {} e JOIN omop.person p USING (person_id)
                          LEFT JOIN omop.death d USING (person_id)
                         WHERE e.{c} < make_date(p.year_of_birth::int, p.month_of_birth::int, p.day_of_birth::int)
                            OR extract(year FROM e.{c}) < p.year_of_birth
                            OR e.{c} > d.death_date
                        """
                    ).format(t, c=c),
                )
                assert bad == 0, f"{table}.{col}"
            if tdef.has("visit_occurrence_id") and table != "visit_occurrence":
                wrong_visit = _scalar(
                    conn,
                    sql.SQL(
                        """
                        SELECT count(*) FROM {} e LEFT JOIN omop.visit_occurrence v USING (visit_occurrence_id)
                         WHERE e.visit_occurrence_id IS NOT NULL AND (v.person_id IS DISTINCT FROM e.person_id)
                        """
                    ).format(t),
                )
                assert wrong_visit == 0, table
        # Indexes dropped for the bulk load are back; triggers are in place.
        for table in omop.DEFAULT_TABLES:
            defs = [
                r[0]
                for r in conn.execute(
                    "SELECT indexdef FROM pg_indexes WHERE schemaname = 'omop' AND tablename = %s", (table,)
                )
            ]
            assert any("(_updated_at)" in d for d in defs), table
            pk = omop.table(table).primary_key
            assert pk is None or any(f"UNIQUE INDEX {table}_pkey" in d and f"({pk})" in d for d in defs), table
            triggers = _scalar(
                conn,
                "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'omop' AND c.relname = %s AND NOT t.tgisinternal",
                (table,),
            )
            assert triggers == 2, table
        # Events inside the person's observation period.
        outside = _scalar(
            conn,
            """
            SELECT count(*) FROM omop.measurement m JOIN omop.observation_period o USING (person_id)
             WHERE m.measurement_date NOT BETWEEN o.observation_period_start_date AND o.observation_period_end_date
            """,
        )
        assert outside == 0
        # Concepts come from the Synthea sample (vocabulary mapping works downstream).
        concepts = {r[0] for r in conn.execute("SELECT DISTINCT measurement_concept_id FROM omop.measurement")}
        assert 3025315 in concepts or len(concepts) > 20
        assert _count(conn, "identity", "patient") == n
        keys, objectors = _published_keys(conn)
        gt = seed.ground_truth(net)["bases"]["hosp_c"]
        assert keys == gt["linkage_keys"]
        assert objectors == gt["objectors"] and len(objectors) == net.base("hosp_c").seed.objectors


def test_seeding_twice_gives_identical_content(fresh_db):
    net = _network(30)
    tables = list(omop.DEFAULT_TABLES)
    hashes = []
    for base_id in ("hosp_c", "hosp_c", "hosp_a", "hosp_a"):
        seed.seed_base(fresh_db, net, base_id, STAMP)
        with psycopg.connect(fresh_db) as conn:
            hashes.append(_content_hashes(conn, tables))
    assert hashes[0] == hashes[1]
    assert hashes[2] == hashes[3]
    assert hashes[0]["omop.measurement"] != hashes[2]["omop.measurement"]


def test_update_and_delete_triggers(fresh_db):
    net = _network(20)
    seed.seed_base(fresh_db, net, "hosp_c", STAMP)
    with psycopg.connect(fresh_db) as conn:
        mid, before = conn.execute(
            "SELECT measurement_id, _updated_at FROM omop.measurement ORDER BY measurement_id LIMIT 1"
        ).fetchone()
        conn.execute("UPDATE omop.measurement SET value_as_number = 42 WHERE measurement_id = %s", (mid,))
        after = _scalar(conn, "SELECT _updated_at FROM omop.measurement WHERE measurement_id = %s", (mid,))
        assert after > before and after > STAMP[1]
        # An UPDATE that sets the change column itself keeps its value.
        forced = dt.datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
        conn.execute("UPDATE omop.measurement SET _updated_at = %s WHERE measurement_id = %s", (forced, mid))
        assert _scalar(conn, "SELECT _updated_at FROM omop.measurement WHERE measurement_id = %s", (mid,)) == forced
        # Untouched rows keep theirs.
        assert _scalar(conn, "SELECT count(*) FROM omop.measurement WHERE _updated_at >= %s", (STAMP[1],)) == 1

        conn.execute("DELETE FROM omop.measurement WHERE measurement_id = %s", (mid,))
        vid = _scalar(conn, "SELECT max(visit_occurrence_id) FROM omop.visit_occurrence")
        conn.execute("DELETE FROM omop.measurement WHERE visit_occurrence_id = %s", (vid,))
        n_visit_meas = conn.execute("SELECT count(*) FROM omop._deleted WHERE table_name = 'measurement'").fetchone()[0]
        conn.execute("DELETE FROM omop.death")
        conn.execute(
            "INSERT INTO omop.death (person_id, death_date, death_type_concept_id, _updated_at) VALUES (7, '2024-01-01', 32817, %s)",
            (STAMP[0],),
        )
        conn.execute("DELETE FROM omop.death WHERE person_id = 7")
        rows = conn.execute("SELECT table_name, row_id, deleted_at FROM omop._deleted ORDER BY deleted_at").fetchall()
        assert rows[0][:2] == ("measurement", mid)
        assert n_visit_meas >= 1
        assert ("death", 7) in [(t, r) for t, r, _ in rows]
        assert all(r is not None for _, r, _ in rows)
        assert all(d > STAMP[1] for *_, d in rows)
        conn.rollback()


def test_shared_patients_have_identical_nir(fresh_db):
    net = load_network()
    gt = seed.ground_truth(net)
    seen: dict[str, dict[str, tuple]] = {}
    for base_id in ("hosp_a", "hosp_b"):
        seed.seed_base(fresh_db, net, base_id, STAMP)
        with psycopg.connect(fresh_db) as conn:
            rows = conn.execute(
                "SELECT nir, last_name, first_name, birth_date, sex, ipp FROM identity.patient"
            ).fetchall()
            seen[base_id] = {r[0]: r for r in rows if r[0]}
            keys, _ = _published_keys(conn)
            assert keys == gt["bases"][base_id]["linkage_keys"]
    common = set(seen["hosp_a"]) & set(seen["hosp_b"])
    valid_common = {n for n in common if nir_is_valid(n)}
    assert len(valid_common) == gt["overlap"]["hosp_a"]["hosp_b"] > 0
    assert len(common) >= gt["bases"]["hosp_b"]["shared_with"]["hosp_a"]
    for nir in valid_common:
        a, b = seen["hosp_a"][nir], seen["hosp_b"][nir]
        assert a[1:5] == b[1:5]  # same names, birth date, sex
        assert a[5] != b[5]  # IPP is site-specific


def test_load_vocabulary(fresh_db, synthea_zip):
    with psycopg.connect(fresh_db) as conn:
        first = omopzip.load_vocabulary(conn, synthea_zip)
        conn.commit()
        second = omopzip.load_vocabulary(conn, synthea_zip)  # idempotent
        conn.commit()
        assert first == second
        assert first["concept"] == 2294
        assert first["concept_relationship"] == 266588
        assert _count(conn, "vocab", "concept") == 2294
        assert _count(conn, "vocab", "concept_relationship") == 266588
        indexed = {r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'vocab'")}
        assert any("(concept_id)" in d and ".concept " in d for d in indexed)
        assert any("(concept_id_1, relationship_id)" in d for d in indexed)
        maps_to = _scalar(
            conn,
            """
            SELECT count(*) FROM vocab.concept_relationship r JOIN vocab.concept c ON c.concept_id = r.concept_id_2
             WHERE r.relationship_id = 'Maps to'
            """,
        )
        assert maps_to > 0
        assert _scalar(conn, "SELECT count(*) FROM vocab.concept WHERE standard_concept = ''") == 0
