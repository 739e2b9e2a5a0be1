"""What `planted_night` (conftest.py) plants in the sources, shared with the tests that check it."""

from __future__ import annotations

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
