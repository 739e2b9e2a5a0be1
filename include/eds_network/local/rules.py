"""Rows no step downstream could carry, quarantined at the hospital: ids outside the namespace range, events starting in the future, deaths before birth."""

from __future__ import annotations

import datetime as dt

import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from eds_network.core import omop


def event_start_columns(table: str) -> list[str]:
    """Columns dating when the recorded event started (OMOP naming): `<x>_start_date(time)`, `<x>_date(time)` of
    the event tables, `death_date`. End dates may legitimately lie ahead (an ongoing prescription)."""
    stem = table.replace("_occurrence", "").replace("_exposure", "")
    names = omop.table(table).column_names
    return [
        c
        for c in names
        if c.endswith(("_start_date", "_start_datetime")) or c in (f"{stem}_date", f"{stem}_datetime", "death_date")
    ]


def unpublishable_rows(batch: pa.Table, table: str, now: dt.datetime) -> list[tuple[str, pa.Array]]:
    """(reason naming the column, mask) for each rule a row breaks; masks are disjoint and never null.

    One min/max pass per column; a mask is only built for a column whose range breaks the rule (rare)."""
    from eds_network.local.pseudonymise import ID_NAMESPACE

    if not batch.num_rows:
        return []
    spec = omop.table(table)
    rules: list[tuple[str, pa.Array]] = []
    for name in batch.column_names:
        c = spec.column(name) if spec.has(name) else None
        if c is not None and c.is_id and name != "person_id":
            col = batch.column(name)
            lo, hi = pc.min_max(col).values()
            if lo.is_valid and (lo.as_py() < 0 or hi.as_py() >= ID_NAMESPACE):
                mask = pc.or_(pc.less(col, 0), pc.greater_equal(col, ID_NAMESPACE))
                rules.append((f"{name}: id outside [0, {ID_NAMESPACE})", mask))
    limit = (now.astimezone(dt.UTC) + dt.timedelta(days=1)).replace(tzinfo=None)
    for name in event_start_columns(table):
        if name in batch.column_names:
            col = batch.column(name)
            bound = pa.scalar(limit.date() if pa.types.is_date(col.type) else limit, col.type)
            latest = pc.max(col)
            if latest.is_valid and latest.as_py() > bound.as_py():
                rules.append((f"{name}: event in the future", pc.greater(col, bound)))
    out: list[tuple[str, pa.Array]] = []
    taken = None
    for reason, mask in rules:
        mask = pc.fill_null(mask, False)
        if taken is not None:
            mask = pc.and_(mask, pc.invert(taken))
        if pc.any(mask).as_py():
            out.append((reason, mask))
            taken = mask if taken is None else pc.or_(taken, mask)
    return out


def death_before_birth(conn: psycopg.Connection, batch: pa.Table, rules: list) -> list[tuple[str, pa.Array]]:
    """DEATH rows dated before the person's year of birth (impossible, not merely implausible): quarantined."""
    ids = pc.unique(batch.column("person_id")).to_pylist()
    births = conn.execute(
        "SELECT person_id, year_of_birth FROM omop.person WHERE person_id = ANY(%s) AND year_of_birth IS NOT NULL",
        (ids,),
    ).fetchall()
    if not births:
        return []
    known = pa.array([p for p, _ in births], pa.int64())
    years = pa.array([int(y) for _, y in births], pa.int64())
    pos = pc.index_in(batch.column("person_id"), value_set=known)
    birth_year = pc.take(years, pos)
    death_year = pc.year(batch.column("death_date"))
    mask = pc.fill_null(pc.less(death_year, birth_year), False)
    if rules:
        mask = pc.and_(mask, pc.invert(any_mask(m for _, m in rules)))
    return [("death_date: before the year of birth", mask)] if pc.any(mask).as_py() else []


def any_mask(masks) -> pa.Array:
    out = None
    for m in masks:
        out = m if out is None else pc.or_(out, m)
    return out
