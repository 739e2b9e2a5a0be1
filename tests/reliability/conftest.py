"""Reliability and privacy suite: one network night per session, with identifiers planted in the sources.

`planted_night` seeds the demo network, then writes identity values (NIR, IPP, names, address, phone, e-mail,
taken from the hospital's own identity registry) into OMOP columns of the sources — free-text columns that
must be emptied and coded columns that must be scrubbed — stamped inside the night's interval, and runs one
whole network night through Airflow. Tests of this folder share it.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid

import psycopg
import pytest
from planting import PLANTED_BASES, SPELLINGS, give_short_surnames  # tests/reliability/planting.py
from psycopg import sql

from eds_network import cli
from eds_network.core.config import load_network
from eds_network.dev import seed
from eds_network.local import extract, publish

NETWORK = load_network()
START, END = cli.demo_interval()

# (table, column, identity column): where each kind of identifier is planted. Coded (allow-listed) columns
# first: they are published, so a planted value must be recognised and removed; the others are free text.
PLANTS = (
    ("condition_occurrence", "condition_source_value", "nir"),
    ("observation", "observation_source_value", "email"),
    ("measurement", "measurement_source_value", "phone"),
    ("person", "person_source_value", "ipp"),
    ("observation", "value_as_string", "last_name"),
    ("visit_occurrence", "visit_source_value", "address"),
    ("measurement", "value_source_value", "first_name"),
    ("procedure_occurrence", "procedure_source_value", "nir"),
)


def plant_identifiers(stack, network=NETWORK, bases=PLANTED_BASES, rows_per_plant: int = 3) -> int:
    """Write identity values of each row's own patient into OMOP columns; returns the number of rows touched."""
    stamp = START + dt.timedelta(hours=2)
    n = 0
    for base_id in bases:
        base = network.base(base_id)
        with psycopg.connect(stack.dsn(f"src_{base_id}"), autocommit=True) as conn:
            give_short_surnames(conn)
            for k, (_, _, table, column, expr, cond) in enumerate(SPELLINGS):
                if table not in base.tables:
                    continue
                key = f"{table}_id"
                # rows of their own (an offset per spelling), far from the rows PLANTS below takes
                n += conn.execute(
                    sql.SQL(
                        "UPDATE omop.{t} o SET {c} = left({e}, 50), _updated_at = %s FROM identity.patient i"
                        " WHERE i.person_id = o.person_id AND o.{k} IN ("
                        " SELECT o2.{k} FROM omop.{t} o2 JOIN identity.patient i USING (person_id)"
                        " WHERE {cond} ORDER BY o2.{k} DESC OFFSET %s LIMIT %s)"
                    ).format(
                        t=sql.Identifier(table),
                        c=sql.Identifier(column),
                        e=sql.SQL(expr),
                        k=sql.Identifier(key),
                        cond=sql.SQL(cond),
                    ),
                    (stamp, k * rows_per_plant, rows_per_plant),
                ).rowcount
            for table, column, ident in PLANTS:
                if table not in base.tables:
                    continue
                key = "person_id" if table == "person" else f"{table}_id"
                cur = conn.execute(
                    sql.SQL(
                        "UPDATE omop.{t} o SET {c} = left(i.{ident}::text, 50), _updated_at = %s FROM identity.patient i"
                        " WHERE i.person_id = o.person_id AND i.{ident} IS NOT NULL AND o.{k} IN ("
                        " SELECT o2.{k} FROM omop.{t} o2 JOIN identity.patient i2 USING (person_id)"
                        " WHERE i2.{ident} IS NOT NULL AND length(i2.{ident}::text) >= 5 ORDER BY o2.{k} LIMIT %s)"
                    ).format(
                        t=sql.Identifier(table),
                        c=sql.Identifier(column),
                        ident=sql.Identifier(ident),
                        k=sql.Identifier(key),
                    ),
                    (stamp, rows_per_plant),
                )
                n += cur.rowcount
    return n


@pytest.fixture(scope="session")
def planted_night(stack):
    if os.environ.get("EDS_REUSE_NIGHT"):  # iterate on the scans: reuse the planted night already on the stack
        return {"results": [(d, True, 0.0) for d in _dag_ids()], "planted": _planted_rows(stack)}
    cli.seed_network(NETWORK, (START, END))
    planted = plant_identifiers(stack)
    results = cli.run_night(NETWORK)
    return {"results": results, "planted": planted}


def _dag_ids() -> list[str]:
    return [*(b.dag_id for b in NETWORK.local_bases), *(p.dag_id for p in NETWORK.platforms), "eds_national"]


def _planted_rows(stack) -> int:
    """Rows of the sources still carrying a planted identity value (an earlier `plant_identifiers`)."""
    n = 0
    for base_id in PLANTED_BASES:
        with psycopg.connect(stack.dsn(f"src_{base_id}")) as conn:
            for table, column, ident in PLANTS:
                if table in NETWORK.base(base_id).tables:
                    n += conn.execute(
                        sql.SQL(
                            "SELECT count(*) FROM omop.{t} o JOIN identity.patient i USING (person_id) "
                            "WHERE o.{c} = left(i.{ident}::text, 50)"
                        ).format(t=sql.Identifier(table), c=sql.Identifier(column), ident=sql.Identifier(ident))
                    ).fetchone()[0]
    return n


# --------------------------------------------------------------------------------------------------
# A small world for step-level cases: two generated hospitals of one platform, 30 patients each.

DAY1 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
DAY2 = DAY1 + dt.timedelta(days=1)
SMALL = load_network().resized("hosp_c", 30).resized("hosp_b", 30)


@pytest.fixture(scope="session")
def world(stack):
    """Seeded template sources of hosp_c and hosp_b, a good published batch of each under a prefix of its own,
    and factories of source clones (`clone(base_id)`) and empty databases (`empty()`), dropped at the end."""
    names = {b: f"tmpl_{b}_{uuid.uuid4().hex[:8]}" for b in ("hosp_c", "hosp_b")}
    for b, name in names.items():
        seed.seed_base(stack.create_database(name), SMALL, b, (DAY1, DAY2))
    prefix = f"test-world-{uuid.uuid4().hex[:8]}/"
    pubs = {}
    for b in names:
        base = SMALL.base(b)
        res = stack.local_resources(SMALL, b, source_dsn=stack.dsn(names[b]), intake_prefix=prefix)
        refs = [extract.extract_table(base, t, DAY1, DAY2, res).ref() for t in base.tables]
        pubs[b] = publish.publish_batch(base, DAY1, DAY2, refs, res)
    made: list[str] = []

    def clone(base_id: str) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(names[base_id]))
            )
        made.append(name)
        return stack.dsn(name)

    def empty() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        made.append(name)
        return stack.create_database(name)

    yield {"templates": names, "prefix": prefix, "published": pubs, "clones": made, "clone": clone, "empty": empty}
    with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
        for n in [*made, *names.values()]:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(n)))
