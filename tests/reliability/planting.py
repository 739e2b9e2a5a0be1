"""What the session's network night (`network_night`, tests/conftest.py) plants in the sources before it runs,
shared with the tests that check it."""

from __future__ import annotations

import datetime as dt

import psycopg
from psycopg import sql

PLANTED_BASES = ("hosp_a", "hosp_b", "hosp_d")

# Every spelling of issue 19, planted in coded (published, so scrubbed) columns and one free-text column:
# (label, kind found by the scanner, table, column, SQL of the spelled value from identity row `i`, condition on
# `i`). `d` stands for the phone's digits.
_D = "regexp_replace(i.phone, '[^0-9]', '', 'g')"
_NIR_GROUPS = "substr(i.nir,1,1), substr(i.nir,2,2), substr(i.nir,4,2), substr(i.nir,6,2), substr(i.nir,8,3), substr(i.nir,11,3)"  # noqa: E501  # fmt: skip
SHORT_SURNAMES = ("Li", "Roy")
SPELLINGS = (
    ("nir with key", "nir", "condition_occurrence", "condition_source_value", "i.nir", "i.nir IS NOT NULL"),
    ("nir without key", "nir", "procedure_occurrence", "procedure_source_value", "left(i.nir, 13)", "i.nir IS NOT NULL"),
    ("nir spaced", "nir", "observation", "observation_source_value",
     f"concat_ws(' ', {_NIR_GROUPS}, substr(i.nir,14,2))", "i.nir IS NOT NULL"),
    ("nir dotted without key", "nir", "measurement", "measurement_source_value", f"concat_ws('.', {_NIR_GROUPS})",
     "i.nir IS NOT NULL"),
    ("nir dashed", "nir", "drug_exposure", "drug_source_value", f"concat_ws('-', {_NIR_GROUPS}, substr(i.nir,14,2))",
     "i.nir IS NOT NULL"),
    ("phone +33", "phone", "condition_occurrence", "condition_source_value",
     f"'+33 ' || substr({_D},2,1) || ' ' || substr({_D},3,2) || ' ' || substr({_D},5,2) || ' ' || substr({_D},7,2)"
     f" || ' ' || substr({_D},9,2)", "length(regexp_replace(i.phone, '[^0-9]', '', 'g')) = 10"),
    ("phone dotted", "phone", "procedure_occurrence", "procedure_source_value",
     f"concat_ws('.', substr({_D},1,2), substr({_D},3,2), substr({_D},5,2), substr({_D},7,2), substr({_D},9,2))",
     "length(regexp_replace(i.phone, '[^0-9]', '', 'g')) = 10"),
    ("phone compact", "phone", "observation", "observation_source_value", _D,
     "length(regexp_replace(i.phone, '[^0-9]', '', 'g')) = 10"),
    ("e-mail", "email", "measurement", "measurement_source_value", "i.email", "i.email IS NOT NULL"),
    ("ipp", "ipp", "condition_occurrence", "condition_source_value", "i.ipp", "i.ipp IS NOT NULL"),
    ("short surname", "last_name", "drug_exposure", "drug_source_value", "i.last_name", "length(i.last_name) < 5"),
    ("short surname (free text)", "last_name", "observation", "value_as_string", "i.last_name",
     "i.last_name IN ('Li', 'Roy')"),
    ("long surname", "last_name", "procedure_occurrence", "procedure_source_value", "i.last_name",
     "length(i.last_name) >= 5"),
)  # fmt: skip


def give_short_surnames(conn, n_each: int = 2) -> int:
    """Short surnames ("Li", "Roy") for a few patients who have events (not part of the linkage identity)."""
    done = 0
    for k, name in enumerate(SHORT_SURNAMES):
        done += conn.execute(
            "UPDATE identity.patient SET last_name = %s WHERE person_id IN (SELECT DISTINCT person_id FROM "
            "omop.observation ORDER BY person_id OFFSET %s LIMIT %s)",
            (name, k * n_each, n_each),
        ).rowcount
    return done


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


def plant_identifiers(stack, network, start: dt.datetime, bases=PLANTED_BASES, rows_per_plant: int = 3) -> int:
    """Write identity values of each row's own patient into OMOP columns, stamped inside the night that starts at
    `start`; returns the number of rows touched."""
    stamp = start + dt.timedelta(hours=2)
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


def planted_rows(stack, network) -> int:
    """Rows of the sources still carrying a planted identity value (an earlier `plant_identifiers`)."""
    n = 0
    for base_id in PLANTED_BASES:
        with psycopg.connect(stack.dsn(f"src_{base_id}")) as conn:
            for table, column, ident in PLANTS:
                if table in network.base(base_id).tables:
                    n += conn.execute(
                        sql.SQL(
                            "SELECT count(*) FROM omop.{t} o JOIN identity.patient i USING (person_id) "
                            "WHERE o.{c} = left(i.{ident}::text, 50)"
                        ).format(t=sql.Identifier(table), c=sql.Identifier(column), ident=sql.Identifier(ident))
                    ).fetchone()[0]
    return n
