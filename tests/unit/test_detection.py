"""The scrubber of coded values recognises a NIR with or without its key and any separators, French phones in
every usual spelling, e-mails, every surname of the identity table (any length, whole tokens) and the hospital's
IPP formats; ordinary codes pass. The quarantine's JSON is strict whatever the row holds."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from eds_network.core.config import LocalBase
from eds_network.core.nir import make_nir
from eds_network.local.pseudonymise import Detector, looks_like_identifier, scrub_identifiers

NIR = make_nir("F", dt.date(1971, 2, 17), "2A", "004", 7)
PARTS = [NIR[0], NIR[1:3], NIR[3:5], NIR[5:7], NIR[7:10], NIR[10:13]]

SPELLINGS = [
    NIR,
    NIR[:13],  # without its key
    " ".join([*PARTS, NIR[13:]]),
    ".".join(PARTS),
    "-".join([*PARTS, NIR[13:]]),
    f"nir {NIR[:13]} noted",
    "0612345678",
    "06 12 34 56 78",
    "06.12.34.56.78",
    "06-12-34-56-78",
    "+33 6 12 34 56 78",
    "+33612345678",
    "+33 (0)6 12 34 56 78",
    "0033 6 12 34 56 78",
    "marie.dupont@example.fr",
]


@pytest.mark.parametrize("value", SPELLINGS)
def test_every_spelling_of_an_identifier_is_recognised(value):
    assert looks_like_identifier(value)


@pytest.mark.parametrize("value", ["E11.9", "8480-6", "C50.9", "250.00", "mg/dL", "12345", "3400930000000", "I10"])
def test_ordinary_codes_pass(value):
    assert not looks_like_identifier(value)


def test_a_quarantined_row_with_nan_or_infinity_is_strict_json():
    import json

    from eds_network.local.quarantine import row_json

    text = row_json({"value_as_number": float("nan"), "range_high": float("inf"), "low": float("-inf"), "n": 1})
    assert json.loads(text) == {"value_as_number": "NaN", "range_high": "Infinity", "low": "-Infinity", "n": 1}
    assert "NaN," not in text.replace('"NaN"', "")  # no bare NaN literal PostgreSQL's json would reject


# --------------------------------------------------------------------------------------------------
# E-mails, surnames of the identity table (any length, whole tokens), IPP formats per hospital

SURNAMES = ["Li", "Roy", "Côté", "Le Gall", "Martin", "N'Diaye"]
DETECT = Detector(SURNAMES, ipp_formats=[r"8\d{9}", r"IPP-\d{6}"])


@pytest.mark.parametrize(
    "value",
    [
        "Marie.Dupont@Example.FR",
        "a+b@x.example",
        "mailto:j_doe-7@chu.example.fr",
        "contact <li.roy@mail.example>",
    ],
)
def test_every_spelling_of_an_email_is_recognised(value):
    assert looks_like_identifier(value) and DETECT(value)


@pytest.mark.parametrize(
    "value",
    ["Li", "LI", "li", "Mme Li", "ROY", "roy.", "Dr Côté", "COTE", "cote", "vu par Le Gall", "LE GALL", "MARTIN",
     "n'diaye", "N'DIAYE"],
)  # fmt: skip
def test_every_surname_of_the_identity_table_is_found_whatever_its_length(value):
    assert DETECT(value)


@pytest.mark.parametrize(
    "value", ["lithium", "Royal", "LIT", "Coteaux", "Legall", "Gallium", "Martinez", "Saint-Martin", "E11.9", "mg/dL"]
)
def test_a_surname_is_found_only_as_whole_tokens(value):
    assert not DETECT(value)


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("8001234567", True),
        ("ipp 8001234567 lu", True),
        ("IPP-123456", True),
        ("98001234567", False),  # inside a longer number
        ("80012345678", False),
        ("7001234567", False),  # another format
        ("IPP-1234567", False),
    ],
)
def test_ipp_formats_of_the_hospital_are_matched_as_whole_tokens(value, found):
    assert DETECT(value) is found


def test_scrub_uses_the_hospitals_detector():
    col = pa.array(["C50.9", "Li", "8001234567", "I10", None])
    assert scrub_identifiers(col, DETECT).to_pylist() == ["C50.9", None, None, "I10", None]
    assert scrub_identifiers(col).to_pylist() == ["C50.9", "Li", "8001234567", "I10", None]  # no names: codes stay


def _base(**kw):
    return dict(id="hosp_x", label="X", site_number=9, source_connection_id="c", **kw)


@pytest.mark.parametrize(
    ("formats", "problem"),
    [
        (["8[0-9"], "not a regular expression"),
        (["^8\\d{9}$"], "no anchors"),
        (["\\d+"], "too broad"),
        (["\\d{0,4}"], "too broad"),
        (["(8)\\d{9}"], "non-capturing"),
    ],
)
def test_ipp_formats_are_validated(formats, problem):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=problem):
        LocalBase(**_base(ipp_formats=formats))
    assert LocalBase(**_base(ipp_formats=[r"8\d{9}", r"(?:IPP|ipp)-\d{6}"])).ipp_formats


def test_the_network_configures_an_ipp_format_for_each_hospital():
    from eds_network.core.config import load_network

    for b in load_network().local_bases:
        assert b.ipp_formats, b.id


# --------------------------------------------------------------------------------------------------
# The quarantine never quotes a value: NaN and ±Infinity at any depth, in any numeric type


def test_nan_and_infinity_are_strict_json_at_any_depth_and_type():
    import json
    from decimal import Decimal

    import numpy as np

    from eds_network.local.quarantine import row_json

    rec = {
        "list": [1.0, float("nan")],
        "struct": {"x": float("-inf")},
        "decimal": Decimal("NaN"),
        "numpy": np.float64("inf"),
        "f32": np.float32("nan"),
        "nul": "a\x00b",
        "ok": Decimal("1.5"),
    }
    text = row_json(rec)
    assert json.loads(text) == {
        "list": [1.0, "NaN"],
        "struct": {"x": "-Infinity"},
        "decimal": "NaN",
        "numpy": "Infinity",
        "f32": "NaN",
        "nul": "ab",
        "ok": "1.5",
    }
    for bare in ("NaN", "Infinity"):
        assert bare not in text.replace(f'"{bare}"', "").replace('"-Infinity"', "")
