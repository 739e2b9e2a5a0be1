"""The scrubber of coded values recognises a NIR with or without its key and any separators, French phones in
every usual spelling and e-mails; ordinary codes pass."""

from __future__ import annotations

import datetime as dt

import pytest

from eds_network.core.nir import make_nir
from eds_network.local.pseudonymise import looks_like_identifier

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
