"""Filling a demo base from the Synthea27Nj sample: its persons re-identified with the planned identities, identities and the opposition registry."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from eds_network.core import omop
from eds_network.core.nir import make_nir, nir_is_valid, nir_key  # noqa: F401 (re-exported)
from eds_network.core.omopzip import SQL_TYPE, copy_tables, load_vocabulary, read_zip_csv, zip_member  # noqa: F401
from eds_network.dev.seed.identities import IDENTITY_SCHEMA, SOURCE_SCHEMA, Identity, _crc, _rng
from eds_network.dev.seed.sample import _synthea_persons

log = logging.getLogger(__name__)


def _stamps(rng: np.random.Generator, n: int, stamp: tuple[dt.datetime, dt.datetime]) -> pa.Array:
    """`n` change timestamps spread uniformly (and deterministically) over [stamp[0], stamp[1])."""
    lo, hi = (_aware(s) for s in stamp)
    span = (hi - lo) // dt.timedelta(microseconds=1)
    if span <= 0:
        raise ValueError("stamp range is empty: stamp[1] must be after stamp[0]")
    lo_us = (lo - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    utc = pa.array(lo_us + rng.integers(0, span, n), pa.timestamp("us"))
    # As text with an explicit UTC offset: Arrow's CSV writer is slow on zoned timestamps.
    return pc.binary_join_element_wise(pc.cast(utc, pa.string()), "+00", "")


def _aware(d: dt.datetime) -> dt.datetime:
    """Naive datetimes are taken as UTC."""
    return d.replace(tzinfo=dt.UTC) if d.tzinfo is None else d


# ---------------------------------------------------------------------------------------------------
# Identity registry and opposition
# ---------------------------------------------------------------------------------------------------


def _ipp(site_number: int, person_ids: Sequence[int], salt: int) -> list[str]:
    """Site-specific patient number: 2-digit site + 8 digits (a bijection of person_id, not equal to it)."""
    offset = salt % 10**8
    return [f"{site_number:02d}{(pid * 7919 + offset) % 10**8:08d}" for pid in person_ids]


def _insert_identities(
    conn: psycopg.Connection, identities: Sequence[Identity], person_ids: Sequence[int], site_number: int, salt: int
) -> int:
    cols = ("person_id", "ipp", "nir", "last_name", "first_name", "birth_date", "sex", "postcode", "address", "city", "phone", "email")  # fmt: skip
    with conn.cursor() as cur:
        with cur.copy(
            sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(IDENTITY_SCHEMA, "patient"), sql.SQL(", ").join(map(sql.Identifier, cols))
            )
        ) as cp:
            for pid, ipp, ident in zip(person_ids, _ipp(site_number, person_ids, salt), identities, strict=True):
                cp.write_row(
                    (pid, ipp, ident.nir, ident.last_name, ident.first_name, ident.birth_date, ident.sex,
                     ident.postcode, ident.address, ident.city, ident.phone, ident.email)
                )  # fmt: skip
    return len(identities)


def register_objectors(
    conn: psycopg.Connection, person_ids: Sequence[int], stamp: tuple[dt.datetime, dt.datetime]
) -> int:
    """Put patients in identity.opposition, recorded (deterministically) before the stamp range."""
    start = _aware(stamp[0])
    channels = ("courrier", "courrier", "formulaire_web", "consultation")
    rows = [
        (pid, start - dt.timedelta(days=3 * (i + 1), hours=i % 7, minutes=11 * i % 60), channels[i % len(channels)])
        for i, pid in enumerate(sorted(person_ids))
    ]
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO {} (person_id, recorded_at, channel) VALUES (%s, %s, %s)").format(
                sql.Identifier(IDENTITY_SCHEMA, "opposition")
            ),
            rows,
        )
    log.info("opposition registry: %d objectors", len(rows))
    return len(rows)


# ---------------------------------------------------------------------------------------------------
# Synthea27Nj sample
# ---------------------------------------------------------------------------------------------------


def load_synthea(
    conn: psycopg.Connection,
    zip_path: Path,
    tables: Sequence[str],
    identities: Sequence[Identity],
    stamp: tuple[dt.datetime, dt.datetime],
    *,
    site_number: int = 1,
) -> dict[str, int]:
    """Load the Synthea27Nj sample (read in place from the zip) into omop.<table>, fill identity.patient.

    `identities` are the planned identities of this base, in person_id order (birth date and sex must
    match PERSON.csv). Every row's `_updated_at` is spread deterministically over [stamp[0], stamp[1]).
    Does not commit. Returns rows per table.
    """
    zip_path = Path(zip_path)
    persons = _synthea_persons(zip_path)
    if len(identities) != len(persons):
        raise ValueError(f"{len(identities)} identities for {len(persons)} persons in the Synthea sample")
    for (_, birth, sex), ident in zip(persons, identities, strict=True):
        if ident.birth_date != birth or ident.sex != sex:
            raise ValueError("identities do not match PERSON.csv (birth date / sex): plan them with plan_identities")
    counts: dict[str, int] = {}
    with conn.cursor() as cur:
        for name in tables:
            tdef = omop.table(name)
            data = read_zip_csv(zip_path, name, typed=False, tdef=tdef)
            if data is None:
                counts[name] = 0
                continue
            data = data.append_column(
                omop.CHANGE_COLUMN, _stamps(_rng(name, "synthea", data.num_rows), data.num_rows, stamp)
            )
            chunks = (pa.Table.from_batches([rb]) for rb in data.to_batches(max_chunksize=100_000))
            counts[name] = copy_tables(cur, SOURCE_SCHEMA, tdef.name, chunks)
            log.info("synthea %s: %d rows", name, counts[name])
    _insert_identities(conn, identities, [p[0] for p in persons], site_number, salt=_crc(f"synthea{site_number}"))
    return counts
