"""Mutualised level: standardise the members' rows to OMOP standard concepts and UCUM units.

- Vocabulary: CONCEPT, CONCEPT_RELATIONSHIP (+ VOCABULARY, DOMAIN) loaded once into the warehouse schema
  `vocab` (reloaded only when the vocabulary archive changes, recorded in `eds_platform.vocabulary_load`),
  with two derived lookup tables: `vocab.maps_to` (source concept -> one valid standard concept, through
  CONCEPT_RELATIONSHIP 'Maps to') and `vocab.unit_map` (verbatim unit -> UCUM concept + conversion factor).
- Concepts: in each staged batch, `<x>_concept_id` is set from `<x>_source_concept_id` through 'Maps to'
  where the current concept is 0, missing, or not a valid standard concept. It runs on the staging table,
  before the merge, so a batch is standardised exactly once however often consolidation runs.
- Units (measurement, observation): `unit_concept_id` is set from `unit_source_value` (kept verbatim, as
  OMOP wants) when it is 0: UCUM codes as they are, and a small table of common non-UCUM spellings with
  their conversion factor (values and ranges are converted to the UCUM unit).
- Rates: per table and member base, the rows whose concept is still 0 (or non-standard) in the warehouse, and
  the rows whose unit is still unknown, kept up to date by the warehouse's statistics triggers
  (`platform/stats.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from eds_network.core import omop
from eds_network.core.omopzip import load_vocabulary
from eds_network.core.storage import sha256_file

log = logging.getLogger(__name__)

VOCAB_SCHEMA = "vocab"

# Table -> (concept column, source concept column): the event's main concept, the one researchers query.
CONCEPT_COLUMNS: dict[str, tuple[str, str]] = {
    "visit_occurrence": ("visit_concept_id", "visit_source_concept_id"),
    "visit_detail": ("visit_detail_concept_id", "visit_detail_source_concept_id"),
    "condition_occurrence": ("condition_concept_id", "condition_source_concept_id"),
    "drug_exposure": ("drug_concept_id", "drug_source_concept_id"),
    "procedure_occurrence": ("procedure_concept_id", "procedure_source_concept_id"),
    "device_exposure": ("device_concept_id", "device_source_concept_id"),
    "measurement": ("measurement_concept_id", "measurement_source_concept_id"),
    "observation": ("observation_concept_id", "observation_source_concept_id"),
    "specimen": ("specimen_concept_id", None),
    "death": ("cause_concept_id", "cause_source_concept_id"),
}
UNIT_TABLES = ("measurement", "observation")

# Common non-UCUM spellings seen in French hospital lab systems -> (UCUM code, factor to the UCUM unit).
NON_UCUM_UNITS: dict[str, tuple[str, float]] = {
    "mmHg": ("mm[Hg]", 1.0),
    "mm Hg": ("mm[Hg]", 1.0),
    "mg/dl": ("mg/dL", 1.0),
    "g/dl": ("g/dL", 1.0),
    "g/l": ("g/L", 1.0),
    "mmol/l": ("mmol/L", 1.0),
    "µmol/l": ("umol/L", 1.0),
    "µg/l": ("ug/L", 1.0),
    "µg/dl": ("ug/dL", 1.0),
    "pg/ml": ("pg/mL", 1.0),
    "°C": ("Cel", 1.0),
    "bpm": ("/min", 1.0),
    "/mn": ("/min", 1.0),
    "kg/m²": ("kg/m2", 1.0),
    "G/L": ("10*9/L", 1.0),
    "T/L": ("10*12/L", 1.0),
    "10^3/µl": ("10*3/uL", 1.0),
    "10^6/µl": ("10*6/uL", 1.0),
    "fl": ("fL", 1.0),
    "lb": ("kg", 0.45359237),
    "lbs": ("kg", 0.45359237),
    "in": ("cm", 2.54),
    "g": ("kg", 0.001),
}


VOCABULARY_ENV = "EDS_VOCABULARY_ZIP"


def vocabulary_archive() -> Path | None:
    """The OMOP vocabulary archive (CONCEPT.csv, CONCEPT_RELATIONSHIP.csv…) named by $EDS_VOCABULARY_ZIP, or None
    when it is not set (standardisation is then skipped, and the consolidation says so in its log)."""
    import os

    value = os.environ.get(VOCABULARY_ENV)
    return Path(value) if value else None


def to_ucum(unit: str | None, known_ucum: set[str]) -> tuple[str, float] | None:
    """The UCUM code and conversion factor of a verbatim unit, or None when it is not known."""
    if unit is None:
        return None
    if unit in known_ucum:
        return unit, 1.0
    hit = NON_UCUM_UNITS.get(unit.strip())
    if hit and hit[0] in known_ucum:
        return hit
    return None


def concept_columns(table: str) -> tuple[str, str | None] | None:
    spec = CONCEPT_COLUMNS.get(table)
    if spec is None:
        return None
    t = omop.table(table)
    cc, scc = spec
    if not t.has(cc):
        return None
    return cc, (scc if scc and t.has(scc) else None)


def ensure_vocabulary(conn: psycopg.Connection, zip_path: Path) -> dict[str, int]:
    """Load the vocabulary into the warehouse unless this very archive is already loaded. Commits.

    Returns rows per vocabulary table when it (re)loaded, {} when it was already there.
    """

    zip_path = Path(zip_path)
    digest = sha256_file(zip_path)
    conn.commit()  # the lock below is held by the load's own transaction only
    # One loader at a time per warehouse (two platform runs could start together).
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('eds_network.vocabulary'))")
    if (
        conn.execute("SELECT 1 FROM eds_platform.vocabulary_load WHERE archive_sha256 = %s", (digest,)).fetchone()
        and conn.execute("SELECT to_regclass('vocab.unit_map')").fetchone()[0]
    ):
        conn.commit()
        return {}
    counts = load_vocabulary(conn, zip_path, schema=VOCAB_SCHEMA)
    _build_lookups(conn)
    import json

    conn.execute("DELETE FROM eds_platform.vocabulary_load")
    conn.execute(
        "INSERT INTO eds_platform.vocabulary_load (archive_sha256, archive, rows) VALUES (%s, %s, %s)",
        (digest, zip_path.name, json.dumps(counts)),
    )
    conn.commit()
    log.info("vocabulary %s loaded: %s", zip_path.name, ", ".join(f"{t}={n}" for t, n in counts.items()))
    return counts


def _build_lookups(conn: psycopg.Connection) -> None:
    v = sql.Identifier(VOCAB_SCHEMA)
    conn.execute(
        sql.SQL(
            "DROP TABLE IF EXISTS {v}.maps_to; "
            "CREATE TABLE {v}.maps_to AS "
            "SELECT r.concept_id_1 AS source_concept_id, min(r.concept_id_2) AS target_concept_id, "
            "count(*) AS targets "
            "FROM {v}.concept_relationship r JOIN {v}.concept c ON c.concept_id = r.concept_id_2 "
            "WHERE r.relationship_id = 'Maps to' AND r.invalid_reason IS NULL "
            "AND c.standard_concept = 'S' AND c.invalid_reason IS NULL "
            "GROUP BY r.concept_id_1; "
            "ALTER TABLE {v}.maps_to ADD PRIMARY KEY (source_concept_id); "
            "DROP TABLE IF EXISTS {v}.standard_concept; "
            "CREATE TABLE {v}.standard_concept AS SELECT concept_id FROM {v}.concept "
            "WHERE standard_concept = 'S' AND invalid_reason IS NULL; "
            "ALTER TABLE {v}.standard_concept ADD PRIMARY KEY (concept_id); "
            "DROP TABLE IF EXISTS {v}.unit_map; "
            "CREATE TABLE {v}.unit_map (unit_source_value text PRIMARY KEY, unit_concept_id bigint NOT NULL, "
            "factor double precision NOT NULL); "
            "INSERT INTO {v}.unit_map SELECT DISTINCT ON (concept_code) concept_code, concept_id, 1.0 "
            "FROM {v}.concept WHERE vocabulary_id = 'UCUM' AND standard_concept = 'S' AND invalid_reason IS NULL "
            "ORDER BY concept_code, concept_id"
        ).format(v=v)
    )
    ucum = dict(
        conn.execute(sql.SQL("SELECT unit_source_value, unit_concept_id FROM {}.unit_map").format(v)).fetchall()
    )
    extra = [(src, ucum[code], f) for src, (code, f) in NON_UCUM_UNITS.items() if code in ucum and src not in ucum]
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO {}.unit_map VALUES (%s, %s, %s)").format(v),
            extra,
        )
    for t in ("maps_to", "standard_concept", "unit_map"):
        conn.execute(sql.SQL("ANALYZE {}.{}").format(v, sql.Identifier(t)))


@dataclass(frozen=True)
class StageResult:
    mapped: int  # rows whose concept was set through 'Maps to'
    units: int  # rows whose unit concept was set (converted when the factor is not 1)


def standardise_stage(conn: psycopg.Connection, table: str, stage: sql.Composable) -> StageResult:
    """Map concepts and units of one staged batch table, in place (inside the batch's transaction)."""
    v = sql.Identifier(VOCAB_SCHEMA)
    mapped = units = 0
    cols = concept_columns(table)
    if cols and cols[1]:
        cc, scc = (sql.Identifier(c) for c in cols)
        cur = conn.execute(
            sql.SQL(
                "UPDATE {stage} s SET {cc} = m.target_concept_id FROM {v}.maps_to m "
                "WHERE m.source_concept_id = s.{scc} AND s.{scc} <> 0 AND (s.{cc} IS NULL OR s.{cc} = 0 "
                "OR NOT EXISTS (SELECT 1 FROM {v}.standard_concept c WHERE c.concept_id = s.{cc}))"
            ).format(stage=stage, cc=cc, scc=scc, v=v)
        )
        mapped = cur.rowcount
    if table in UNIT_TABLES and omop.table(table).has("unit_source_value"):
        scaled = [c for c in ("value_as_number", "range_low", "range_high") if omop.table(table).has(c)]
        sets = [sql.SQL("unit_concept_id = u.unit_concept_id")] + [
            sql.SQL("{c} = s.{c} * u.factor").format(c=sql.Identifier(c)) for c in scaled
        ]
        cur = conn.execute(
            sql.SQL(
                "UPDATE {stage} s SET {sets} FROM {v}.unit_map u "
                "WHERE u.unit_source_value = s.unit_source_value AND coalesce(s.unit_concept_id, 0) = 0"
            ).format(stage=stage, sets=sql.SQL(", ").join(sets), v=v)
        )
        units = cur.rowcount
    return StageResult(mapped, units)
