"""The French NIR (numéro d'inscription au répertoire): format and control key.

15 characters: sex (1/2), year (2), month (2), département (2, Corsica 2A/2B), commune (3), order (3),
key (2) = 97 - (the first 13 as a number, 2A -> 19 and 2B -> 18) mod 97.
"""

from __future__ import annotations

import datetime as dt
import re

_CORSICA = {"2A": "19", "2B": "18"}
_NIR13 = re.compile(r"^[0-9]{5}(?:[0-9]{2}|2A|2B)[0-9]{6}$")
_NIR15 = re.compile(r"^[12][0-9]{2}(?:0[1-9]|1[0-2]|[2-3][0-9]|4[0-2]|[5-9][0-9])(?:[0-9]{2}|2A|2B)[0-9]{8}$")


def nir_key(nir13: str) -> str:
    """Control key of a 13-character NIR: 97 - (NIR mod 97), two digits (Corsica: 2A -> 19, 2B -> 18)."""
    nir13 = nir13.replace(" ", "").upper()
    if not _NIR13.match(nir13):
        raise ValueError("an NIR without its key has 13 characters: digits, département 2A/2B allowed")
    digits = nir13[:5] + _CORSICA.get(nir13[5:7], nir13[5:7]) + nir13[7:]
    return f"{97 - int(digits) % 97:02d}"


def nir_is_valid(nir15: str | None) -> bool:
    """True for a well-formed 15-character NIR (spaces ignored) whose key matches."""
    if not nir15:
        return False
    nir15 = nir15.replace(" ", "").upper()
    if not _NIR15.match(nir15):
        return False
    return nir_key(nir15[:13]) == nir15[13:]


def make_nir(sex: str | int, birth_date: dt.date, dept: str, commune: str | int, order: int) -> str:
    """Build a 15-character NIR: sex (1/2), yy, mm, département (2), commune (3), order (3), key (2)."""
    s = {"M": "1", "F": "2", "1": "1", "2": "2"}.get(str(sex).upper())
    if s is None:
        raise ValueError("sex must be 'M'/'F' (or 1/2)")
    dept = str(dept).upper()
    if not re.fullmatch(r"[0-9]{2}|2A|2B", dept):
        raise ValueError("département must be two digits, 2A or 2B")
    commune = int(commune)
    if not 0 <= commune <= 999:
        raise ValueError("commune must be 0..999")
    if not 1 <= int(order) <= 999:
        raise ValueError("order must be 1..999")
    nir13 = f"{s}{birth_date.year % 100:02d}{birth_date.month:02d}{dept}{commune:03d}{int(order):03d}"
    return nir13 + nir_key(nir13)
