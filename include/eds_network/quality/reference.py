"""Lookups for the cross-table checks (known ids, PERSON, DEATH, CONCEPT rows) and the Arrow helpers they use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# --------------------------------------------------------------------------------------------------
# Lookups for cross-table checks


class _KeyIndex:
    """Position of int64 keys in a key array. Dense keys (ids of one base: a compact range) use a
    numpy direct-address table (one gather per row); sparse keys (concept ids) use Arrow's hash."""

    DENSE_MAX = 1 << 24  # at most 16 M slots (64 MB of int32) for a direct-address table

    def __init__(self, keys: pa.Array):
        keys = pc.drop_null(_int64(keys))
        self.keys = keys
        self.table: np.ndarray | None = None
        if len(keys):
            k = keys.to_numpy()
            lo, hi = int(k.min()), int(k.max())
            if hi - lo < min(self.DENSE_MAX, max(1 << 20, 16 * len(k))):
                table = np.full(hi - lo + 1, -1, dtype=np.int32)
                table[k - lo] = np.arange(len(k), dtype=np.int32)  # a duplicated key maps to one of its rows
                self.table, self.lo, self.hi = table, lo, hi

    def positions(self, values: pa.Array | pa.ChunkedArray) -> pa.Array:
        """int32 positions, null where the value is null or unknown."""
        values = _int64(values)
        if self.table is None:
            return pc.index_in(values, value_set=self.keys)
        v = pc.fill_null(values, self.lo - 1).to_numpy()
        inside = (v >= self.lo) & (v <= self.hi)
        pos = np.full(len(v), -1, dtype=np.int32)
        pos[inside] = self.table[v[inside] - self.lo]
        return pa.array(pos, mask=pos < 0)


@dataclass(frozen=True, eq=False)
class Reference:
    """What cross-table checks look up; everything is optional (missing -> check not applicable).

    - `ids`: referenced table -> its known primary keys, e.g. {"person": …, "visit_occurrence": …}.
    - `person`: PERSON rows: person_id, year_of_birth, optional month_of_birth, day_of_birth,
      birth_datetime, gender_concept_id. Its person_ids also serve as known person ids.
    - `death`: DEATH rows: person_id, death_date.
    - `concept`: CONCEPT rows (the vocabulary): concept_id, optional domain_id, concept_class_id,
      standard_concept, invalid_reason.
    Build it once per run (its derived arrays are cached) and pass it to every `check_batch`.
    """

    ids: Mapping[str, pa.Array | pa.ChunkedArray] = field(default_factory=dict)
    person: pa.Table | None = None
    death: pa.Table | None = None
    concept: pa.Table | None = None

    def known_ids(self, table: str) -> pa.Array | None:
        if table in self.ids:
            return _int64(self.ids[table])
        if table == "person" and self.person is not None:
            return self.persons["person_id"]
        if table == "concept" and self.concept is not None:
            return self.concepts["concept_id"]
        return None

    def index(self, kind: str) -> _KeyIndex | None:
        """Cached key index: `ids:<table>` (known ids), `person`, `death` or `concept` (lookup rows)."""
        cache = self.__dict__.setdefault("_indexes", {})
        if kind not in cache:
            if kind.startswith("ids:"):
                keys = self.known_ids(kind[4:])
            elif kind == "concept":
                keys = self.concepts["concept_id"] if self.concept is not None else None
            else:
                data = getattr(self, f"{kind}s") if getattr(self, kind) is not None else None
                keys = data["person_id"] if data is not None else None
            cache[kind] = _KeyIndex(keys) if keys is not None else None
        return cache[kind]

    @cached_property
    def persons(self) -> dict[str, pa.Array]:
        """person_id, birth date (birth_datetime, else year/month/day of birth with 1 for missing parts), gender."""
        p = self.person
        n = p.num_rows
        pid = _int64(p["person_id"])

        def part(name: str) -> np.ndarray:
            if name not in p.column_names:
                return np.ones(n, dtype="int64")
            a = pc.fill_null(_int64(p[name]), 1)
            return np.clip(a.to_numpy(zero_copy_only=False), 1, 31 if name == "day_of_birth" else 12)

        if "year_of_birth" in p.column_names:
            y = np.asarray(pc.fill_null(_int64(p["year_of_birth"]), 1).to_numpy(zero_copy_only=False), dtype="int64")
            composed = (
                (y - 1970).astype("datetime64[Y]").astype("datetime64[M]")
                + (part("month_of_birth") - 1).astype("timedelta64[M]")
            ).astype("datetime64[D]") + (part("day_of_birth") - 1).astype("timedelta64[D]")
            composed = pa.array(composed, type=pa.date32())
            composed = pc.if_else(pc.is_null(p["year_of_birth"]), pa.scalar(None, pa.date32()), composed)
        else:
            composed = pa.nulls(n, pa.date32())
        if "birth_datetime" in p.column_names:
            birth = pc.coalesce(_as_date(p["birth_datetime"]), composed)
        else:
            birth = composed
        gender = _int64(p["gender_concept_id"]) if "gender_concept_id" in p.column_names else pa.nulls(n, pa.int64())
        return {"person_id": pid, "birth_date": _array(birth), "gender_concept_id": gender}

    @cached_property
    def deaths(self) -> dict[str, pa.Array]:
        """person_id -> earliest death date."""
        d = pa.table({"person_id": _int64(self.death["person_id"]), "death_date": _as_date(self.death["death_date"])})
        g = d.filter(pc.is_valid(d["death_date"])).group_by("person_id").aggregate([("death_date", "min")])
        return {"person_id": _array(g["person_id"]), "death_date": _array(g["death_date_min"])}

    @cached_property
    def concepts(self) -> dict[str, pa.Array]:
        c = self.concept
        out = {"concept_id": _int64(c["concept_id"])}
        for name in ("domain_id", "concept_class_id", "standard_concept", "invalid_reason"):
            if name in c.column_names:
                out[name] = _array(c[name])
        if "standard_concept" in out:
            std = pc.fill_null(pc.equal(out["standard_concept"], "S"), False)
            if "invalid_reason" in out:
                std = pc.and_(std, pc.is_null(out["invalid_reason"]))
            out["standard_valid"] = std
        return out


class _Unevaluable(Exception):
    """A check cannot run on this batch's column type (reported as not applicable)."""


def _array(a: pa.Array | pa.ChunkedArray) -> pa.Array:
    return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a


def _int64(a: pa.Array | pa.ChunkedArray | Sequence[int]) -> pa.Array:
    if not isinstance(a, pa.Array | pa.ChunkedArray):
        a = pa.array(a, type=pa.int64())
    a = _array(a)
    return a if a.type == pa.int64() else pc.cast(a, pa.int64())


def _as_date(a: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    if pa.types.is_date32(a.type):
        return a
    if pa.types.is_timestamp(a.type) or pa.types.is_date64(a.type):
        return pc.cast(a, pa.date32(), safe=False)
    if pa.types.is_null(a.type):
        return pc.cast(a, pa.date32())
    raise _Unevaluable(f"not a date type: {a.type}")


def _count(mask: Any) -> int:
    v = pc.sum(mask).as_py() if not isinstance(mask, int) else mask
    return int(v or 0)
