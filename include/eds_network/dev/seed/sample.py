"""The Synthea27Nj sample (OMOP CDM 5.4 zip, shared beside the repository): where it is, and its persons."""

from __future__ import annotations

import datetime as dt
import logging
import os
from functools import cache
from pathlib import Path

from eds_network.core.config import REPO_ROOT
from eds_network.core.errors import SourceError
from eds_network.core.nir import make_nir, nir_is_valid, nir_key  # noqa: F401 (re-exported)
from eds_network.core.omopzip import SQL_TYPE, copy_tables, load_vocabulary, read_zip_csv, zip_member  # noqa: F401

log = logging.getLogger(__name__)

SYNTHEA_ZIP_ENV = "EDS_SYNTHEA_ZIP"
GENDER_CONCEPT = {"M": 8507, "F": 8532}
_CONCEPT_GENDER = {v: k for k, v in GENDER_CONCEPT.items()}


def synthea_zip_path() -> Path:
    """$EDS_SYNTHEA_ZIP, else <repo>/../shared/datasets/synthea27nj/Synthea27Nj_5.4.zip."""
    env = os.environ.get(SYNTHEA_ZIP_ENV)
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "datasets" / "synthea27nj" / "Synthea27Nj_5.4.zip"
    if not path.is_file():
        raise SourceError(
            f"Synthea27Nj sample not found at {path} (set ${SYNTHEA_ZIP_ENV} to the Synthea27Nj_5.4.zip file)"
        )
    return path


@cache
def _synthea_persons_cached(zip_path: str, mtime: float) -> tuple[tuple[int, dt.date, str], ...]:
    t = read_zip_csv(Path(zip_path), "person", typed=True)
    if t is None:
        raise SourceError(f"{zip_path}: PERSON.csv not found", table="person")
    rows = []
    for pid, g, y, m, d in zip(
        *(
            t.column(c).to_pylist()
            for c in ("person_id", "gender_concept_id", "year_of_birth", "month_of_birth", "day_of_birth")
        ),
        strict=True,
    ):
        rows.append((int(pid), dt.date(int(y), int(m or 1), int(d or 1)), _CONCEPT_GENDER.get(int(g), "F")))
    return tuple(sorted(rows))


def _synthea_persons(zip_path: Path) -> tuple[tuple[int, dt.date, str], ...]:
    """(person_id, birth date, sex) of the sample's persons, by person_id."""
    p = Path(zip_path).resolve()
    return _synthea_persons_cached(str(p), p.stat().st_mtime)
