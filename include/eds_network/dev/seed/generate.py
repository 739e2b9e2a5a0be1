"""Generated hospitals: per-person volumes and dates drawn from the Synthea27Nj sample's tables as templates, in blocks of persons (bounded memory)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from eds_network.core import omop
from eds_network.core.config import LocalBase
from eds_network.core.errors import SourceError
from eds_network.core.nir import make_nir, nir_is_valid, nir_key  # noqa: F401 (re-exported)
from eds_network.core.omopzip import SQL_TYPE, copy_tables, load_vocabulary, read_zip_csv, zip_member  # noqa: F401
from eds_network.dev.seed.coding import _local_coding
from eds_network.dev.seed.identities import (
    BLOCK_PERSONS,
    HISTORY_END,
    SOURCE_SCHEMA,
    VOLUME_SCALE,
    Identity,
    _crc,
    _rng,
)
from eds_network.dev.seed.sample import GENDER_CONCEPT, _synthea_persons, synthea_zip_path
from eds_network.dev.seed.schema import _indexes_deferred
from eds_network.dev.seed.synthea import _insert_identities, _stamps

log = logging.getLogger(__name__)


# Event date column of each table (others: the first date column of the table).
_ANCHOR = {
    "visit_occurrence": "visit_start_date",
    "visit_detail": "visit_detail_start_date",
    "condition_occurrence": "condition_start_date",
    "drug_exposure": "drug_exposure_start_date",
    "procedure_occurrence": "procedure_date",
    "device_exposure": "device_exposure_start_date",
    "measurement": "measurement_date",
    "observation": "observation_date",
    "specimen": "specimen_date",
}
# Columns generated per row instead of sampled from the Synthea templates.
_UUID_COLUMNS = {"visit_source_value", "visit_detail_source_value", "person_source_value"}
_SKIP_COLUMNS = {"measurement_time"}
_JITTER_TABLES = {"measurement", "observation"}
_DAY = np.timedelta64(1, "D")


@dataclass
class _Template:
    """Rows of one Synthea table, sampled jointly so that concepts, units and source values stay coherent."""

    table: pa.Table
    anchor: str | None
    offsets: dict[str, tuple[np.ndarray, np.ndarray]]  # date column -> (days after anchor, valid mask)

    @property
    def n(self) -> int:
        return self.table.num_rows


def _dates(arr: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_timestamp(arr.type):
        return arr.to_numpy().astype("datetime64[D]")
    return arr.cast(pa.date32()).to_numpy(zero_copy_only=False).astype("datetime64[D]")


def _is_day(c: omop.Column) -> bool:
    """A day-level event date: `date` columns, and the `datetime`-typed `*_date` columns (eras)."""
    d = c.datatype.lower()
    return d == "date" or (d == "datetime" and c.name.endswith("_date"))


@cache
def _template_cached(zip_path: str, mtime: float, table: str) -> _Template | None:
    tdef = omop.table(table)
    data = read_zip_csv(Path(zip_path), table, typed=True, tdef=tdef)
    if data is None or data.num_rows == 0:
        return None
    date_cols = [c.name for c in tdef.columns if _is_day(c) and c.name in data.column_names]
    starts = [c for c in date_cols if "start" in c]
    anchor = _ANCHOR.get(table) or (starts or date_cols or [None])[0]
    offsets = {}
    if anchor and anchor in data.column_names:
        a = _dates(data.column(anchor))
        for c in date_cols:
            if c == anchor:
                continue
            d = _dates(data.column(c))
            valid = ~np.isnat(d) & ~np.isnat(a)
            off = np.where(valid, (np.where(valid, d, a) - a) // _DAY, 0).astype(np.int64)
            offsets[c] = (np.maximum(off, 0), valid)
    return _Template(data, anchor, offsets)


def _template(zip_path: Path, table: str) -> _Template | None:
    p = Path(zip_path).resolve()
    return _template_cached(str(p), p.stat().st_mtime, table)


def _uuids(rng: np.random.Generator, n: int) -> pa.Array:
    """UUID-looking strings (8-4-4-4-12 lower-case hex), vectorised."""
    hexdig = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    nib = hexdig[rng.integers(0, 16, (n, 32), dtype=np.uint8)]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    pos = [i for i in range(36) if i not in (8, 13, 18, 23)]
    out[:, pos] = nib
    return pa.array(np.ascontiguousarray(out).view("S36").ravel()).cast(pa.string())


def _date_array(d: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(d.astype("datetime64[D]"), pa.date32(), mask=mask)


def _ts_array(d: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(d.astype("datetime64[us]"), pa.timestamp("us"), mask=mask)


@dataclass
class _People:
    """Person-level arrays of a generated base (index i <-> person_id i + 1)."""

    birth: np.ndarray  # datetime64[D]
    sex: np.ndarray  # 'M'/'F'
    obs_start: np.ndarray
    obs_end: np.ndarray
    dead: np.ndarray  # bool
    nvisits: np.ndarray  # int64
    visit_offset: np.ndarray  # int64, len N+1 (exclusive cumsum)


def _people(seed: int, base_id: str, identities: Sequence[Identity], visits_per_person: float) -> _People:
    rng = _rng(seed, base_id, "people")
    n = len(identities)
    birth = np.array([i.birth_date for i in identities], dtype="datetime64[D]")
    sex = np.array([i.sex for i in identities])
    end = np.datetime64(HISTORY_END, "D")
    birth_c = np.minimum(birth, end)
    lookback = (rng.uniform(1.0, 25.0, n) * 365.25).astype(np.int64) * _DAY
    obs_start = np.maximum(birth_c, end - lookback)
    age = (end - birth_c) / _DAY / 365.25
    p_death = 0.01 + np.clip((age - 40.0) / 50.0, 0.0, 1.0) ** 2
    p_death = np.minimum(p_death * (0.10 / p_death.mean()), 0.9) if n else p_death
    dead = rng.random(n) < p_death
    span = (end - obs_start) // _DAY
    death = obs_start + (span * rng.uniform(0.2, 1.0, n)).astype(np.int64) * _DAY
    obs_end = np.where(dead, death, end)
    years = ((obs_end - obs_start) / _DAY) / 365.25 + 0.25
    activity = rng.gamma(2.0, 0.5, n)
    mean_v = visits_per_person * VOLUME_SCALE * years / (years.mean() if n else 1.0) * activity
    nvisits = 1 + rng.poisson(np.maximum(mean_v - 1.0, 0.0))
    offset = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(nvisits, out=offset[1:])
    return _People(birth, sex, obs_start, obs_end, dead, nvisits.astype(np.int64), offset)


@dataclass
class _Visits:
    person: np.ndarray  # local person index (0-based, in the whole base)
    start: np.ndarray
    end: np.ndarray
    ids: np.ndarray
    tpl_idx: np.ndarray
    preceding: np.ndarray  # id of the person's previous visit, 0 = none


def _block_visits(seed: int, base_id: str, people: _People, tpl: _Template, b: int, p0: int, p1: int) -> _Visits:
    """Visits of persons [p0, p1): regenerated identically for every table that needs them."""
    rng = _rng(seed, base_id, "visits", b)
    nv = people.nvisits[p0:p1]
    person = np.repeat(np.arange(p0, p1), nv)
    start0 = people.obs_start[person]
    width = (people.obs_end[person] - start0) // _DAY + 1
    start = start0 + (rng.random(person.size) * width).astype(np.int64) * _DAY
    tpl_idx = rng.integers(0, tpl.n, person.size)
    order = np.lexsort((tpl_idx, start, person))
    person, start, tpl_idx = person[order], start[order], tpl_idx[order]
    off, valid = tpl.offsets.get("visit_end_date", (np.zeros(tpl.n, np.int64), np.ones(tpl.n, bool)))
    end = np.minimum(start + np.where(valid[tpl_idx], off[tpl_idx], 0) * _DAY, people.obs_end[person])
    ids = people.visit_offset[p0] + np.arange(1, person.size + 1, dtype=np.int64)
    preceding = np.zeros(person.size, dtype=np.int64)
    if person.size > 1:
        same = person[1:] == person[:-1]
        preceding[1:] = np.where(same, ids[:-1], 0)
    return _Visits(person, start, end, ids, tpl_idx, preceding)


def _jitter(values: pa.Array, rng: np.random.Generator) -> pa.Array:
    """Perturb sampled lab values a little (integers stay integers, others keep one decimal)."""
    v = values.to_numpy(zero_copy_only=False).astype(np.float64)
    mask = np.isnan(v)
    f = np.exp(rng.normal(0.0, 0.08, v.size))
    integral = np.equal(np.mod(np.nan_to_num(v), 1.0), 0.0)
    out = np.where(integral, np.round(v * f), np.round(v * f, 1))
    return pa.array(np.where(mask, 0.0, out), pa.float64(), mask=mask)


def _event_chunk(
    tdef: omop.Table,
    tpl: _Template,
    rng: np.random.Generator,
    ids: np.ndarray,
    person: np.ndarray,
    anchor: np.ndarray,
    obs_end: np.ndarray,
    visit_ids: np.ndarray | None,
    idx: np.ndarray | None = None,
) -> dict[str, pa.Array]:
    """Columns of one chunk of a generated event table: template rows `idx` (default: sampled) re-dated on `anchor`."""
    if idx is None:
        idx = rng.integers(0, tpl.n, ids.size)
    idx_pa = pa.array(idx)
    cols: dict[str, pa.Array] = {}
    dates: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for c in tdef.columns:
        name = c.name
        dtype = c.datatype.lower()
        if name == tdef.primary_key:
            cols[name] = pa.array(ids)
        elif name == "person_id":
            cols[name] = pa.array(person + 1)
        elif name == "visit_occurrence_id" and visit_ids is not None:
            cols[name] = pa.array(visit_ids)
        elif c.is_id or name in _SKIP_COLUMNS:
            continue
        elif _is_day(c):
            missing: np.ndarray | None = None
            if name == tpl.anchor:
                d = anchor
            elif name in tpl.offsets:
                off, valid = tpl.offsets[name]
                v = valid[idx] | c.required
                d = np.minimum(anchor + np.where(v, off[idx], 0) * _DAY, np.maximum(obs_end, anchor))
                missing = ~v
            elif c.required:
                d = anchor
            else:
                continue
            dates[name] = (d, missing)
            cols[name] = _ts_array(d, missing) if dtype == "datetime" else _date_array(d, missing)
        elif dtype == "datetime":
            continue  # after the dates, below
        elif name in _UUID_COLUMNS:
            cols[name] = _uuids(rng, ids.size)
        elif name in tpl.table.column_names:
            cols[name] = tpl.table.column(name).take(idx_pa).combine_chunks()
    for c in tdef.columns:
        if c.datatype.lower() == "datetime" and c.name not in cols:
            d = dates.get(c.name.replace("_datetime", "_date"))
            if d is not None:
                cols[c.name] = _ts_array(d[0], d[1])
    if tdef.name in _JITTER_TABLES and "value_as_number" in cols:
        cols["value_as_number"] = _jitter(cols["value_as_number"], rng)
        if "value_source_value" in cols:
            num = cols["value_as_number"]
            as_text = pc.cast(num, pa.string())
            keep = pc.or_(pc.is_null(num), pc.is_null(cols["value_source_value"]))
            cols["value_source_value"] = pc.if_else(keep, cols["value_source_value"], as_text)
    return cols


def _person_chunk(rng: np.random.Generator, people: _People, p0: int, p1: int) -> dict[str, pa.Array]:
    birth = people.birth[p0:p1]
    sex = people.sex[p0:p1]
    month_start = birth.astype("datetime64[M]")
    n = p1 - p0
    return {
        "person_id": pa.array(np.arange(p0 + 1, p1 + 1, dtype=np.int64)),
        "gender_concept_id": pa.array(np.where(sex == "M", GENDER_CONCEPT["M"], GENDER_CONCEPT["F"]).astype(np.int64)),
        "year_of_birth": pa.array(birth.astype("datetime64[Y]").astype(np.int64) + 1970),
        "month_of_birth": pa.array(month_start.astype(np.int64) % 12 + 1),
        "day_of_birth": pa.array((birth - month_start.astype("datetime64[D]")) // _DAY + 1),
        "birth_datetime": _ts_array(birth),
        # French EDS: no race / ethnicity collected (OMOP "no matching concept").
        "race_concept_id": pa.array(np.zeros(n, dtype=np.int64)),
        "ethnicity_concept_id": pa.array(np.zeros(n, dtype=np.int64)),
        "person_source_value": _uuids(rng, n),
        "gender_source_value": pa.array(sex.astype(str)),
        "gender_source_concept_id": pa.array(np.zeros(n, dtype=np.int64)),
        "race_source_concept_id": pa.array(np.zeros(n, dtype=np.int64)),
        "ethnicity_source_concept_id": pa.array(np.zeros(n, dtype=np.int64)),
    }


def generate(
    conn: psycopg.Connection,
    base: LocalBase,
    tables: Sequence[str],
    identities: Sequence[Identity],
    stamp: tuple[dt.datetime, dt.datetime],
    *,
    zip_path: Path | None = None,
) -> dict[str, int]:
    """Synthetic OMOP rows for `identities` (person_id 1..N), deterministic from `base.seed.seed`.

    Volumes per person follow the Synthea27Nj sample's ratios (x VOLUME_SCALE); concepts, type
    concepts, units and source values are sampled jointly from the sample's rows of the same table.
    Dates lie in each person's observation period (after birth, not after death). Persons are
    generated in blocks of BLOCK_PERSONS and streamed with COPY, so memory stays bounded.
    Also fills identity.patient. Does not commit. Returns rows per table.
    """
    zip_path = Path(zip_path) if zip_path else synthea_zip_path()
    seed = base.seed.seed
    n = len(identities)
    vtpl = _template(zip_path, "visit_occurrence")
    if vtpl is None:
        raise SourceError(f"{zip_path}: VISIT_OCCURRENCE.csv is needed to generate data", base=base.id)
    n_tpl_persons = max(len(_synthea_persons(zip_path)), 1)
    people = _people(seed, base.id, identities, vtpl.n / n_tpl_persons)
    blocks = [(b, p0, min(p0 + BLOCK_PERSONS, n)) for b, p0 in enumerate(range(0, n, BLOCK_PERSONS))]
    counts: dict[str, int] = {}

    def stamped(name: str, b: int, cols: dict[str, pa.Array]) -> pa.Table:
        rows = len(next(iter(cols.values()))) if cols else 0
        cols[omop.CHANGE_COLUMN] = _stamps(_rng(seed, base.id, name, "stamp", b), rows, stamp)
        return pa.table(cols)

    with conn.cursor() as cur:
        for name in tables:
            tdef = omop.table(name)
            maker = _chunk_maker(name, tdef, zip_path, seed, base.id, people, vtpl, tables)
            if maker is None:
                counts[name] = 0
                log.info("generated %s: not generated (0 rows)", name)
                continue
            chunks = (stamped(name, b, maker(b, p0, p1)) for b, p0, p1 in blocks)
            with _indexes_deferred(cur, SOURCE_SCHEMA, tdef.name):
                counts[name] = copy_tables(cur, SOURCE_SCHEMA, tdef.name, chunks)
            log.info("generated %s: %d rows", name, counts[name])
    _insert_identities(conn, identities, range(1, n + 1), base.site_number, salt=_crc(f"{base.id}:{seed}"))
    return counts


def _chunk_maker(
    name: str,
    tdef: omop.Table,
    zip_path: Path,
    seed: int,
    base_id: str,
    people: _People,
    vtpl: _Template,
    tables: Sequence[str],
) -> Callable[[int, int, int], dict[str, pa.Array]] | None:
    """Function (block, p0, p1) -> columns of that block's rows for table `name`, or None if not generated."""
    if name == "person":
        return lambda b, p0, p1: _person_chunk(_rng(seed, base_id, name, b), people, p0, p1)

    tpl = _template(zip_path, name)
    if name == "observation_period":
        period_type = tpl.table.column("period_type_concept_id")[0].as_py() if tpl else 44814724

        def op(b: int, p0: int, p1: int) -> dict[str, pa.Array]:
            ids = np.arange(p0 + 1, p1 + 1, dtype=np.int64)
            return {
                "observation_period_id": pa.array(ids),
                "person_id": pa.array(ids),
                "observation_period_start_date": _date_array(people.obs_start[p0:p1]),
                "observation_period_end_date": _date_array(people.obs_end[p0:p1]),
                "period_type_concept_id": pa.array(np.full(p1 - p0, period_type, dtype=np.int64)),
            }

        return op
    if tpl is None or not tdef.has("person_id"):
        return None
    if name == "death":

        def death(b: int, p0: int, p1: int) -> dict[str, pa.Array]:
            person = np.arange(p0, p1)[people.dead[p0:p1]]
            rng = _rng(seed, base_id, name, b)
            return _event_chunk(
                tdef, tpl, rng, person + 1, person, people.obs_end[person], people.obs_end[person], None
            )

        return death
    if name == "visit_occurrence":

        def visits(b: int, p0: int, p1: int) -> dict[str, pa.Array]:
            v = _block_visits(seed, base_id, people, vtpl, b, p0, p1)
            rng = _rng(seed, base_id, name, b)
            cols = _event_chunk(
                tdef, vtpl, rng, v.ids, v.person, v.start, people.obs_end[v.person], None, idx=v.tpl_idx
            )
            cols["preceding_visit_occurrence_id"] = pa.array(v.preceding, mask=v.preceding == 0)
            return cols

        return visits

    # Event tables: counts per person proportional to the person's visits, at the sample's ratio.
    rate = VOLUME_SCALE * tpl.n / vtpl.n
    counts = _rng(seed, base_id, name, "counts").poisson(rate * people.nvisits)
    offset = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offset[1:])
    with_visit = tdef.has("visit_occurrence_id") and "visit_occurrence" in tables

    def events(b: int, p0: int, p1: int) -> dict[str, pa.Array]:
        v = _block_visits(seed, base_id, people, vtpl, b, p0, p1)
        rng = _rng(seed, base_id, name, b)
        cnt = counts[p0:p1]
        person = np.repeat(np.arange(p0, p1), cnt)
        # Pick one of the person's visits, and a day inside it.
        local_off = people.visit_offset[person] - people.visit_offset[p0]
        k = local_off + (rng.random(person.size) * people.nvisits[person]).astype(np.int64)
        vs, ve = v.start[k], v.end[k]
        anchor = vs + (rng.random(person.size) * ((ve - vs) // _DAY + 1)).astype(np.int64) * _DAY
        ids = offset[p0] + np.arange(1, person.size + 1, dtype=np.int64)
        cols = _event_chunk(
            tdef, tpl, rng, ids, person, anchor, people.obs_end[person], v.ids[k] if with_visit else None
        )
        return _local_coding(cols, tdef, zip_path, _rng(seed, base_id, name, "coding", b))

    return events
