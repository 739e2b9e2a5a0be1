"""Local coding of generated hospitals, so that the platform has something to standardise."""

from __future__ import annotations

import logging
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from eds_network.core import omop
from eds_network.core.nir import make_nir, nir_is_valid, nir_key  # noqa: F401 (re-exported)
from eds_network.core.omopzip import SQL_TYPE, copy_tables, load_vocabulary, read_zip_csv, zip_member  # noqa: F401

log = logging.getLogger(__name__)

# Local coding of generated hospitals, so that the platform has something to standardise:
# - SOURCE_CODED_RATE of the rows whose standard concept has a source code ('Maps to' from another
#   vocabulary) carry that source code only (concept 0, as a source system that does not map would);
# - UNMAPPABLE_RATE of the rows carry a local code with no vocabulary concept at all (both ids 0);
# - LOCAL_UNIT_RATE of the measurements with a unit use a hospital's spelling of it (`mmHg`, `mg/dl`…)
#   with no unit concept.
SOURCE_CODED_RATE = 0.08
UNMAPPABLE_RATE = 0.02
LOCAL_UNIT_RATE = 0.3
_LOCAL_UNITS = {
    "mm[Hg]": "mmHg",
    "mg/dL": "mg/dl",
    "mmol/L": "mmol/l",
    "g/dL": "g/dl",
    "Cel": "°C",
    "/min": "bpm",
    "kg/m2": "kg/m²",
    "pg/mL": "pg/ml",
    "g/L": "g/l",
    "fL": "fl",
}
_CODED_TABLES = {
    "condition_occurrence": ("condition_concept_id", "condition_source_concept_id"),
    "drug_exposure": ("drug_concept_id", "drug_source_concept_id"),
    "procedure_occurrence": ("procedure_concept_id", "procedure_source_concept_id"),
    "measurement": ("measurement_concept_id", "measurement_source_concept_id"),
    "observation": ("observation_concept_id", "observation_source_concept_id"),
}


@cache
def _source_codes_cached(zip_path: str, mtime: float) -> dict[int, int]:
    """Standard concept -> one source concept that 'Maps to' it and to nothing else (smallest id)."""
    with zipfile.ZipFile(zip_path) as zf:
        member = zip_member(zf, "concept_relationship")
        if member is None:
            return {}
        data = zf.read(member)
    t = pacsv.read_csv(
        pa.BufferReader(data),
        convert_options=pacsv.ConvertOptions(
            include_columns=["concept_id_1", "concept_id_2", "relationship_id", "invalid_reason"],
            column_types={"concept_id_1": pa.int64(), "concept_id_2": pa.int64(), "invalid_reason": pa.string()},
            strings_can_be_null=True,
        ),
    )
    t = t.filter(pc.and_(pc.equal(t["relationship_id"], "Maps to"), pc.is_null(t["invalid_reason"])))
    t = t.filter(pc.not_equal(t["concept_id_1"], t["concept_id_2"]))
    targets: dict[int, set[int]] = {}
    for a, b in zip(t["concept_id_1"].to_pylist(), t["concept_id_2"].to_pylist(), strict=True):
        targets.setdefault(a, set()).add(b)
    out: dict[int, int] = {}
    for src in sorted(targets):
        tg = targets[src]
        if len(tg) == 1:
            out.setdefault(next(iter(tg)), src)
    return out


def source_codes(zip_path: Path) -> dict[int, int]:
    p = Path(zip_path).resolve()
    return _source_codes_cached(str(p), p.stat().st_mtime)


def _local_coding(
    cols: dict[str, pa.Array], tdef: omop.Table, zip_path: Path, rng: np.random.Generator
) -> dict[str, pa.Array]:
    spec = _CODED_TABLES.get(tdef.name)
    if spec is None or spec[0] not in cols:
        return cols
    cc, scc = spec

    def ints(a: pa.Array) -> np.ndarray:
        return pc.fill_null(a, 0).to_numpy(zero_copy_only=False).astype(np.int64)

    concept = ints(cols[cc])
    n = concept.size
    if n == 0:
        return cols
    codes = source_codes(zip_path)
    source = np.array([codes.get(int(c), 0) for c in concept], dtype=np.int64)
    u = rng.random(n)
    coded = (u < SOURCE_CODED_RATE) & (source != 0)
    unmappable = (u >= SOURCE_CODED_RATE) & (u < SOURCE_CODED_RATE + UNMAPPABLE_RATE)
    old_source = ints(cols[scc]) if scc in cols else np.zeros(n, dtype=np.int64)
    cols[cc] = pa.array(np.where(coded | unmappable, 0, concept))
    cols[scc] = pa.array(np.where(coded, source, np.where(unmappable, 0, old_source)))
    if tdef.name == "measurement" and "unit_source_value" in cols and "unit_concept_id" in cols:
        units = cols["unit_source_value"].to_pylist()
        local = rng.random(n) < LOCAL_UNIT_RATE
        new_units = [_LOCAL_UNITS.get(x, x) if (x and loc) else x for x, loc in zip(units, local, strict=True)]
        changed = np.array([a != b for a, b in zip(units, new_units, strict=True)])
        cols["unit_source_value"] = pa.array(new_units, pa.string())
        unit_c = cols["unit_concept_id"]
        cols["unit_concept_id"] = pc.if_else(pa.array(changed), pa.scalar(0, unit_c.type), unit_c)
    return cols


# ---------------------------------------------------------------------------------------------------
# One base, end to end
# ---------------------------------------------------------------------------------------------------
