"""The linkage identity of a patient: what the level-1 pseudonym and the transport token are computed from.

    "NIR|<NIR, 15 characters>|<birth date YYYY-MM-DD>|<sex 1/2>"   when the NIR is present and its key valid,
    "SITE|<site>|<IPP>"                                               otherwise (site-scoped: never links sites).

Normalised before use, so that the same patient gives the same identity whatever the spelling at the source:
the NIR without separators (spaces, dots, dashes), upper case; the birth date as an ISO date whatever its
type or spelling (date, datetime, 'YYYY-MM-DD', 'DD/MM/YYYY', 'YYYYMMDD'); the sex coded 1 (male) / 2 (female)
whatever the source coding (M/F, H/F, 1/2, male/female…); accents, case and spaces removed (NFKD).
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata

from eds_network.core.nir import nir_is_valid

_SEPARATORS = re.compile(r"[\s.\-_/]")
_SEX = {"M": "1", "H": "1", "1": "1", "MALE": "1", "HOMME": "1", "F": "2", "2": "2", "FEMALE": "2", "FEMME": "2"}


def normalise(text: str) -> str:
    """Case, accents and spaces do not change a linkage identity."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return "".join(stripped.upper().split())


def canonical_nir(nir: str | None) -> str | None:
    if nir is None:
        return None
    return _SEPARATORS.sub("", str(nir)).upper() or None


def canonical_date(value: object) -> str:
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    text = str(value).strip()
    for fmt in ("%Y-%m-%d", "%d/%m/%Y", "%Y%m%d", "%d-%m-%Y", "%d.%m.%Y"):
        try:
            return dt.datetime.strptime(text[:10], fmt).date().isoformat()
        except ValueError:
            continue
    return normalise(text)  # not a date we can read: kept as is (the identity is then site-specific in effect)


def canonical_sex(value: object) -> str:
    text = normalise(str(value))
    return _SEX.get(text, text)


def linkage_identity(nir: str | None, birth_date: object, sex: object, ipp: str, site: str) -> str:
    nir = canonical_nir(nir)
    if nir_is_valid(nir):
        return normalise(f"NIR|{nir}|{canonical_date(birth_date)}|{canonical_sex(sex)}")
    return normalise(f"SITE|{site}|{ipp}")
