"""Reliability and privacy suite. The session's network night (`network_night`, tests/conftest.py) plants
identifiers in the sources before it runs (tests/reliability/planting.py); `planted_night` is that night, for
the tests of this folder that scan for them.
"""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
import pytest
from psycopg import sql

from eds_network.core.config import load_network
from eds_network.dev import seed
from eds_network.local import extract, publish


@pytest.fixture(scope="session")
def planted_night(network_night):
    """The session's one network night, run on sources with identifiers planted (tests/conftest.py)."""
    return network_night


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
