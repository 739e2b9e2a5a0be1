"""The Arrow engine: evaluates every check of a table's suite on one batch with pyarrow / numpy."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from eds_network.core import omop
from eds_network.quality import dqd
from eds_network.quality.dqd import BATCH, Check
from eds_network.quality.reference import Reference, _array, _as_date, _count, _int64, _KeyIndex, _Unevaluable
from eds_network.quality.results import CheckResult, _pct
from eds_network.quality.suites import _find_override


class _Eval:
    """Evaluates one batch with pyarrow; keeps the lookups it computed for the next checks."""

    def __init__(self, plan, batch, reference, known_person_ids, today, overrides, base):
        self.plan = plan
        self.batch = batch
        self.rows = batch.num_rows
        self.ref = reference or Reference()
        self.known_person_ids = _int64(known_person_ids) if known_person_ids is not None else None
        self.params = dqd.suite_parameters(today)
        self.overrides = overrides or {}
        self.base = base
        self.omop = omop.table(plan.table) if plan.table in omop.schema() else None
        self._cols: dict[str, Any] = {}
        self._pos: dict[str, Any] = {}
        self._known_person: _KeyIndex | None = None
        self.results: list[CheckResult] = []
        self.masks: list[pa.Array] = []  # row-level fatal violations (True = quarantine)
        self.numerators: dict[str, int] = {}  # check_id -> Arrow numerator (for the GX cross-check)
        self.notes: list[str] = []  # warnings that belong to no single check

    # ---- columns and lookups
    def has(self, name: str) -> bool:
        return name in self.batch.column_names

    def col(self, name: str):
        if name not in self._cols:
            if self.has(name):
                a = self.batch.column(name)
                if pa.types.is_integer(a.type) and a.type != pa.int64():
                    a = pc.cast(a, pa.int64())
            else:
                t = self.omop.column(name).arrow_type if self.omop and self.omop.has(name) else pa.null()
                a = pa.nulls(self.rows, t)
            self._cols[name] = a
        return self._cols[name]

    def known(self, fk_table: str) -> _KeyIndex | None:
        if fk_table == "person" and self.known_person_ids is not None:
            if self._known_person is None:
                self._known_person = _KeyIndex(self.known_person_ids)
            return self._known_person
        return self.ref.index(f"ids:{fk_table}")

    def pos(self, kind: str, column: str = "person_id"):
        """Position of each row's key in a lookup (`person`, `death`, `concept`, `ids:<table>`), null if absent."""
        key = f"{kind}:{column}"
        if key not in self._pos:
            index = self.known(kind[4:]) if kind.startswith("ids:") else self.ref.index(kind)
            self._pos[key] = index.positions(self.col(column))
        return self._pos[key]

    def distinct(self, column: str) -> tuple[pa.Array, np.ndarray]:
        """Distinct non-null values of a column and their row counts (cached)."""
        key = f"distinct:{column}"
        if key not in self._pos:
            a = self.col(column)
            if a.null_count == len(a):
                self._pos[key] = (pa.array([], pa.int64()), np.zeros(0, dtype=np.int64))
            else:
                vc = pc.value_counts(pc.drop_null(a))
                self._pos[key] = (_int64(vc.field("values")), vc.field("counts").to_numpy(zero_copy_only=False))
        return self._pos[key]

    def lookup(self, kind: str, value: str, column: str = "person_id"):
        return pc.take(getattr(self.ref, f"{kind}s")[value], self.pos(kind, column))

    def bound(self, value: Any, like: pa.DataType) -> pa.Scalar:
        if isinstance(value, dict) and "$PARAMETER" in value:
            value = self.params[value["$PARAMETER"]]
        if isinstance(value, str):
            d = dt.datetime.fromisoformat(value)
            if pa.types.is_date(like):
                return pa.scalar(d.date(), pa.date32())
            if pa.types.is_timestamp(like):
                return pa.scalar(d, like)
            raise _Unevaluable(f"date bound on a {like} column")
        return pa.scalar(value)

    # ---- result bookkeeping
    def add(
        self,
        check: Check,
        rows: int,
        violating: int,
        *,
        mask: Any = None,
        na: str | None = None,
    ) -> None:
        concept_id, unit = check.concept_id, check.unit_concept_id
        key, o = _find_override(check, concept_id, unit, self.overrides)
        threshold = o.threshold_pct if o is not None and o.threshold_pct is not None else check.threshold_pct
        disabled = o.reason.strip() if o is not None and o.disabled else None
        if na is not None or disabled is not None:
            rows, violating, mask = (rows if na is None else 0), (violating if na is None else 0), None
        pct = _pct(violating, rows)
        result = CheckResult(
            check_name=check.check_name,
            table=check.table,
            column=check.column,
            category=check.category,
            subcategory=check.subcategory,
            severity=check.severity,
            threshold_pct=threshold,
            rows=rows,
            violating_rows=violating,
            violating_pct=pct,
            passed=disabled is not None or na is not None or pct <= threshold,
            expectation_type=check.expectation_type,
            scope=check.scope,
            context=check.context,
            level=check.level,
            concept_id=concept_id,
            unit_concept_id=unit,
            check_id=check.check_id,
            description=check.description,
            not_applicable_reason=na,
            disabled_reason=disabled,
            override=key,
            base=self.base,
        )
        self.results.append(result)
        if na is None and disabled is None:
            self.numerators[check.check_id] = violating
        if mask is not None and check.row_level and disabled is None and violating:
            self.masks.append(mask)

    # ---- field-level checks
    def run(self) -> None:
        for c in self.plan.field_checks:
            try:
                getattr(self, f"_{c.check_name}")(c)
            except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError, _Unevaluable) as exc:
                kind = type(exc).__name__
                self.add(c, 0, 0, na=f"cannot evaluate on this column type ({kind})")
        groups = [(self._gender, col, cs) for col, cs in self.plan.gender.items()]
        groups += [(self._units, col, cs) for col, cs in self.plan.units.items()]
        groups += [(lambda _col, cs: self._concept_range(cs[0]), c.column, (c,)) for c in self.plan.ranges]
        for fn, column, checks in groups:
            try:
                fn(column, checks)
            except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError, _Unevaluable) as exc:
                note = f"concept-level checks on {column} not evaluated ({type(exc).__name__})"
                if note not in self.notes:
                    self.notes.append(note)

    def _cdmField(self, c: Check) -> None:
        self.add(c, 1, 0 if self.has(c.column) else 1)

    def _isRequired(self, c: Check) -> None:
        a = self.col(c.column)
        n = a.null_count
        self.add(c, self.rows, n, mask=pc.is_null(a) if c.row_level and n else None)

    _measureValueCompleteness = _isRequired

    def _cdmDatatype(self, c: Check) -> None:
        a = self.col(c.column)
        ok = pa.types.is_integer(a.type) or pa.types.is_null(a.type)
        self.add(c, self.rows, 0 if ok else self.rows - a.null_count)

    def _isPrimaryKey(self, c: Check) -> None:
        a = self.col(c.column)
        nonnull = self.rows - a.null_count
        if nonnull < 2:
            self.add(c, self.rows, 0)
            return
        dup_keys = None
        if pa.types.is_integer(a.type):
            v = pc.drop_null(a).to_numpy() if a.null_count else _array(a).to_numpy()
            if bool(np.all(v[1:] > v[:-1])):  # the usual case: ids extracted in key order
                self.add(c, self.rows, 0)
                return
            lo, hi = int(v.min()), int(v.max())
            if hi - lo < 4 * len(v) + 1024:  # compact ids: count them in a direct-address table
                counts = np.bincount(v - lo)
                dup_keys = pa.array(np.flatnonzero(counts > 1) + lo)
        if dup_keys is None:
            vc = pc.value_counts(pc.drop_null(a))
            dup_keys = pc.filter(vc.field("values"), pc.greater(vc.field("counts"), 1))
        if len(dup_keys) == 0:
            self.add(c, self.rows, 0)
            return
        # Only the rows of duplicated keys: DQD counts all of them; the first of each is kept.
        rows = np.flatnonzero(np.asarray(pc.fill_null(pc.is_in(a, value_set=dup_keys), False), dtype=bool))
        sub = pa.table({"k": pc.take(a, pa.array(rows)), "i": pa.array(rows)})
        first = sub.group_by("k", use_threads=False).aggregate([("i", "min")])["i_min"].to_numpy()
        quarantine = np.zeros(self.rows, dtype=bool)
        quarantine[rows] = True
        quarantine[first] = False
        self.add(c, self.rows, len(rows), mask=pa.array(quarantine))

    def _isForeignKey(self, c: Check) -> None:
        fk = c.params["fk_table"]
        a = self.col(c.column)
        if fk == "concept":
            # Concept columns have few distinct values: test the distinct values, weight by their counts.
            # Concept 0 ("no matching concept") is always valid.
            if self.ref.concept is None and "concept" not in self.ref.ids:
                self.add(c, 0, 0, na="no CONCEPT vocabulary given")
                return
            values, counts = self.distinct(c.column)
            index = self.ref.index("concept" if self.ref.concept is not None else "ids:concept")
            unknown = pc.and_(pc.is_null(index.positions(values)), pc.not_equal(values, 0))
            self.add(c, self.rows, int(counts[np.asarray(unknown, dtype=bool)].sum()))
            return
        if self.known(fk) is None:
            self.add(c, 0, 0, na=f"no {fk.upper()} ids given")
            return
        if a.null_count == len(a):
            self.add(c, self.rows, 0)
            return
        bad = pc.and_(pc.is_valid(a), pc.is_null(self.pos(f"ids:{fk}", c.column)))
        n = _count(bad)
        self.add(c, self.rows, n, mask=bad if c.row_level and n else None)

    def _concept_attr(self, c: Check, attr: str, expected: str | None) -> None:
        if self.ref.concept is None:
            self.add(c, 0, 0, na="no CONCEPT vocabulary given")
            return
        if attr not in self.ref.concepts:
            self.add(c, 0, 0, na=f"CONCEPT vocabulary has no {attr}")
            return
        values, counts = self.distinct(c.column)
        value = pc.take(self.ref.concepts[attr], self.ref.index("concept").positions(values))
        wrong = pc.invert(value) if expected is None else pc.not_equal(value, expected)
        # DQD joins CONCEPT: unknown concepts (null lookup) and concept 0 are not counted here.
        bad = pc.fill_null(pc.and_(wrong, pc.not_equal(values, 0)), False)
        self.add(c, self.rows, int(counts[np.asarray(bad, dtype=bool)].sum()))

    def _fkDomain(self, c: Check) -> None:
        self._concept_attr(c, "domain_id", c.params["fk_domain"])

    def _fkClass(self, c: Check) -> None:
        self._concept_attr(c, "concept_class_id", c.params["fk_class"])

    def _isStandardValidConcept(self, c: Check) -> None:
        self._concept_attr(c, "standard_valid", None)

    def _standardConceptRecordCompleteness(self, c: Check) -> None:
        self.add(c, self.rows, _count(pc.equal(self.col(c.column), 0)))

    _sourceConceptRecordCompleteness = _standardConceptRecordCompleteness

    def _plausibleValueLow(self, c: Check) -> None:
        a = self.col(c.column)
        b = self.bound(c.params["bound"], a.type)
        op = pc.less if c.check_name == "plausibleValueLow" else pc.greater
        self.add(c, self.rows - a.null_count, _count(op(a, b)))

    _plausibleValueHigh = _plausibleValueLow

    def _pair(self, a, b):
        """Make two temporal columns comparable (a date against a timestamp compares as dates)."""
        if a.type != b.type and (pa.types.is_date(a.type) or pa.types.is_date(b.type)):
            return _as_date(a), _as_date(b)
        return a, b

    def _plausibleTemporalAfter(self, c: Check) -> None:
        a = self.col(c.column)
        if c.scope == BATCH:
            a, other = self._pair(a, self.col(c.params["after_field"]))
            self.add(c, self.rows, _count(pc.greater(other, a)))
            return
        if self.ref.person is None:
            self.add(c, 0, 0, na="no PERSON lookup given")
            return
        birth = self.lookup("person", "birth_date")
        self.add(c, self.rows, _count(pc.less(_as_date(a), birth)))

    def _plausibleAfterBirth(self, c: Check) -> None:
        if self.ref.person is None:
            self.add(c, 0, 0, na="no PERSON lookup given")
            return
        a = self.col(c.column)
        birth = self.lookup("person", "birth_date")
        self.add(c, self.rows - a.null_count, _count(pc.less(_as_date(a), birth)))

    def _plausibleDuringLife(self, c: Check) -> None:
        if self.ref.death is None:
            self.add(c, 0, 0, na="no DEATH lookup given")
            return
        a = self.col(c.column)
        death = self.lookup("death", "death_date")
        days = pc.add(pc.cast(death, pa.int32()), pa.scalar(int(c.params["grace_days"]), pa.int32()))
        limit = pc.cast(days, pa.date32())
        denominator = _count(pc.is_valid(self.pos("death")))
        self.add(c, denominator, _count(pc.greater(_as_date(a), limit)))

    _plausibleBeforeDeath = _plausibleDuringLife

    def _plausibleStartBeforeEnd(self, c: Check) -> None:
        start, end = self._pair(self.col(c.column), self.col(c.params["end_field"]))
        both = _count(pc.and_(pc.is_valid(start), pc.is_valid(end)))
        self.add(c, both, _count(pc.greater(start, end)))

    # ---- concept-level checks: one grouped count per concept column, then per-concept sums
    def _pair_counts(self, concept_col: str, other, rows_mask=None) -> list[tuple[int, Any, int]]:
        """(concept, other value, rows) for every distinct pair among the rows of `rows_mask`."""
        t = pa.table({"c": self.col(concept_col), "o": other})
        if rows_mask is not None:
            t = t.filter(rows_mask)
        g = t.filter(pc.is_valid(t["c"])).group_by(["c", "o"], use_threads=False).aggregate([([], "count_all")])
        return list(zip(g["c"].to_pylist(), g["o"].to_pylist(), g["count_all"].to_pylist(), strict=True))

    def _emit(self, checks: Sequence[Check], denom: Mapping[int, int], viol: Mapping[int, int], na=None) -> None:
        for c in checks:
            n = denom.get(c.concept_id, 0)
            if n:  # only the concepts present in the batch
                self.add(c, n, viol.get(c.concept_id, 0), na=na)

    def _gender(self, column: str, checks: Sequence[Check]) -> None:
        if self.rows == 0:
            return
        by_concept = {c.concept_id: c.params["gender_concept_id"] for c in checks}
        if self.ref.person is None:
            values, counts = self.distinct(column)
            denom = {v: int(n) for v, n in zip(values.to_pylist(), counts, strict=True) if v in by_concept}
            self._emit(checks, denom, {}, na="no PERSON lookup given")
            return
        denom: dict[int, int] = {}
        viol: dict[int, int] = {}
        for concept, gender, n in self._pair_counts(column, self.lookup("person", "gender_concept_id")):
            if concept in by_concept:
                denom[concept] = denom.get(concept, 0) + n
                if gender is not None and gender != by_concept[concept]:  # unknown person/gender: not counted
                    viol[concept] = viol.get(concept, 0) + n
        self._emit(checks, denom, viol)

    def _units(self, column: str, checks: Sequence[Check]) -> None:
        if self.rows == 0:
            return
        allowed = {c.concept_id: set(c.params["unit_concept_ids"]) for c in checks}
        value = self.col(checks[0].params["value_column"])
        denom: dict[int, int] = {}
        viol: dict[int, int] = {}
        for concept, unit, n in self._pair_counts(column, self.col("unit_concept_id"), pc.is_valid(value)):
            if concept in allowed:
                denom[concept] = denom.get(concept, 0) + n
                if unit is not None and unit not in allowed[concept]:  # SQL `NULL NOT IN (…)` is not true
                    viol[concept] = viol.get(concept, 0) + n
        self._emit(checks, denom, viol)

    def _concept_range(self, c: Check) -> None:
        if self.rows == 0:
            return
        concept = self.col(c.column)
        value = self.col(c.params["value_column"])
        sel = pc.equal(concept, c.concept_id)
        if c.unit_concept_id is not None:
            sel = pc.and_(sel, pc.equal(self.col(c.params["unit_column"]), c.unit_concept_id))
        sel = pc.fill_null(pc.and_(sel, pc.is_valid(value)), False)
        n = _count(sel)
        if n:
            op = pc.less if c.check_name == "plausibleValueLow" else pc.greater
            self.add(c, n, _count(pc.and_(sel, op(value, pa.scalar(c.params["bound"])))))
