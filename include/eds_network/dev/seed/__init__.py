"""Demo and test source databases of the hospitals: OMOP tables plus synthetic identities.

A real hospital EDS holds identities (IPP, NIR, names, address) that never leave it. The seed gives
every demo hospital such an identity table, with realistic-looking synthetic values, so that
pseudonymisation and linkage are exercised on identifiers shaped like the real ones:

- `plan_identities(network)` plans, from the configuration alone, who is treated where. Patients shared
  between bases (`seed.shared_with` / `seed.shared_fraction`) are the same people (same NIR, names,
  birth date, sex); some patients have no NIR or an NIR with a wrong key (site-scoped fallback).
- `ground_truth(network)` derives what linkage must find: keys per base, objectors, overlap matrix.
- `seed_base(dsn, network, base_id, stamp)` creates one hospital's source database: schemas `omop`
  (clinical tables with the change column `_updated_at`, update/delete triggers, `omop._deleted`)
  and `identity` (`patient`, `opposition`), filled from the Synthea27Nj sample or generated.

Modules: `identities` (the plan), `schema` (source schemas), `sample` and `synthea` (the Synthea27Nj
sample), `generate` and `coding` (generated hospitals). Everything is deterministic. Logs carry counts
only, never an identity value.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

import psycopg
from psycopg import sql

from eds_network.core.config import Network
from eds_network.dev.seed.generate import generate
from eds_network.dev.seed.identities import (
    _PLAN_CACHE,
    BAD_KEY_RATE,
    HISTORY_END,
    NO_NIR_RATE,
    SOURCE_SCHEMA,
    Identity,
    _plan,
    ground_truth,
    plan_identities,
    planned_objectors,
    planned_person_ids,
)
from eds_network.dev.seed.sample import SYNTHEA_ZIP_ENV, _synthea_persons, synthea_zip_path
from eds_network.dev.seed.schema import create_source_schema
from eds_network.dev.seed.synthea import load_synthea, register_objectors

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# One base, end to end
# ---------------------------------------------------------------------------------------------------


def seed_base(
    dsn: str,
    network: Network,
    base_id: str,
    stamp: tuple[dt.datetime, dt.datetime],
    tables: Sequence[str] | None = None,
) -> dict[str, int]:
    """(Re)create one hospital's demo source database in one transaction. Returns rows per omop table."""
    base = network.base(base_id)
    tables = [t.lower() for t in tables] if tables is not None else list(base.tables)
    plan = _plan(network)[base_id]
    identities = list(plan.identities)
    with psycopg.connect(dsn, autocommit=False) as conn:
        create_source_schema(conn, tables)
        if base.seed.source == "synthea27nj":
            counts = load_synthea(conn, synthea_zip_path(), tables, identities, stamp, site_number=base.site_number)
        else:
            counts = generate(conn, base, tables, identities, stamp)
        register_objectors(conn, [plan.person_ids[i] for i in plan.objectors], stamp)
        with conn.cursor() as cur:
            for name in tables:
                cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(SOURCE_SCHEMA, name)))
        conn.commit()
    log.info("base %s seeded: %d persons, %d rows", base_id, len(identities), sum(counts.values()))
    return counts


__all__ = [
    "_PLAN_CACHE",
    "BAD_KEY_RATE",
    "HISTORY_END",
    "NO_NIR_RATE",
    "SYNTHEA_ZIP_ENV",
    "Identity",
    "_synthea_persons",
    "create_source_schema",
    "generate",
    "ground_truth",
    "load_synthea",
    "plan_identities",
    "planned_objectors",
    "planned_person_ids",
    "register_objectors",
    "seed_base",
    "synthea_zip_path",
]
