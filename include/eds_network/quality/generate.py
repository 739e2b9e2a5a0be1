"""Generation of the GX 1.x suites (`expectations/<table>.json`) from the OHDSI DQD catalogue; the CLI behind `make expectations`:

    python -m eds_network.quality.generate generate [--dqd DIR] [--out expectations/] [--tables person measurement ...]
    python -m eds_network.quality.generate generate --check      # exit 1 if the committed suites are stale

Generation is deterministic (sorted expectations, sorted JSON keys, no GX ids, no dates): regenerating is
byte-identical. What the suites contain, and the mapping of DQD checks to GX expectations: `quality.dqd`."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from eds_network.core import omop
from eds_network.quality.dqd import (
    _CONCEPT_CHECKS,
    _FIELD_CHECKS,
    BATCH,
    CROSS_TABLE,
    DEFAULT_DQD_DIR,
    DEFAULT_SUITES_DIR,
    NOT_IMPLEMENTED,
    SEVERITIES,
    SUITE_PREFIX,
    Check,
)
from eds_network.quality.dqd_builder import SuiteBuilder
from eds_network.quality.dqd_catalogue import (
    _catalogue,
    _read_csv,
)


def _sort_key(order: Mapping[str, int]):
    def key(c: Check) -> tuple:
        names = _FIELD_CHECKS if c.level == "FIELD" else _CONCEPT_CHECKS
        return (
            c.level != "FIELD",
            order.get(c.column, len(order)),
            c.column,
            names.index(c.check_name) if c.check_name in names else len(names),
            c.check_name,
            c.concept_id if c.concept_id is not None else -1,
            c.unit_concept_id if c.unit_concept_id is not None else -1,
        )

    return key


def build_checks(
    dqd_dir: Path | str = DEFAULT_DQD_DIR, tables: Iterable[str] = omop.DEFAULT_TABLES
) -> dict[str, list[Check]]:
    """Per OMOP table (lower case), the DQD checks of the catalogue in `dqd_dir`, deterministically sorted."""
    types, fields, concepts = _catalogue(Path(dqd_dir).resolve())
    out: dict[str, list[Check]] = {}
    for table in tables:
        table = table.lower()
        b = SuiteBuilder(types, table)
        for row in fields:
            if row["cdmTableName"].lower() == table:
                b.field(row)
        for row in concepts:
            if row["cdmTableName"].lower() == table:
                b.concept(row)
        if not b.checks:
            raise KeyError(f"table {table!r} has no field in the DQD catalogue {dqd_dir}")
        order = {c: i for i, c in enumerate(omop.table(table).column_names)} if table in omop.schema() else {}
        out[table] = sorted(b.checks, key=_sort_key(order))
    return out


def _not_implemented(dqd_dir: Path, table: str) -> list[dict[str, str]]:
    _, fields, concepts = _catalogue(dqd_dir)
    names: set[str] = set()
    for row in fields:
        if row["cdmTableName"].lower() == table:
            names.update(n for n in ("sourceValueCompleteness", "withinVisitDates") if row.get(n, "").lower() == "yes")
    for row in concepts:
        if row["cdmTableName"].lower() == table and row.get("plausibleGenderUseDescendants"):
            names.add("plausibleGenderUseDescendants")
    tl = _read_csv(dqd_dir / "OMOP_CDMv5.4_Table_Level.csv")
    for row in tl:
        if row["cdmTableName"].lower() == table:
            names.add("cdmTable")
            names.update(
                n
                for n in (
                    "measurePersonCompleteness",
                    "measureConditionEraCompleteness",
                    "measureObservationPeriodOverlap",
                )
                if row.get(n, "").lower() == "yes"
            )
    return [{"check_name": n, "reason": NOT_IMPLEMENTED[n]} for n in sorted(names)]


def suite_dict(table: str, checks: Sequence[Check], dqd_dir: Path | str = DEFAULT_DQD_DIR) -> dict[str, Any]:
    """A GX 1.x ExpectationSuite as JSON (loadable with `gx.ExpectationSuite(**suite)`)."""
    return {
        "name": f"{SUITE_PREFIX}{table}",
        "expectations": [c.expectation() for c in checks],
        "meta": {
            "generated_by": "python -m eds_network.quality.dqd generate",
            "source": "OHDSI DataQualityDashboard OMOP_CDMv5.4 check catalogue (Apache License 2.0)",
            "table": table,
            "counts": {
                "expectations": len(checks),
                BATCH: sum(c.scope == BATCH for c in checks),
                CROSS_TABLE: sum(c.scope == CROSS_TABLE for c in checks),
                **{s: sum(c.severity == s for c in checks) for s in SEVERITIES},
            },
            "suite_parameters": ["tomorrow", "next_year"],
            "not_implemented": _not_implemented(Path(dqd_dir).resolve(), table),
        },
        "notes": None,
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_suites(dqd_dir: Path | str = DEFAULT_DQD_DIR, tables: Iterable[str] = omop.DEFAULT_TABLES) -> dict[str, str]:
    """File name -> JSON text of every suite."""
    checks = build_checks(dqd_dir, tables)
    return {f"{t}.json": dumps(suite_dict(t, cs, dqd_dir)) for t, cs in checks.items()}


def write_suites(
    out_dir: Path | str = DEFAULT_SUITES_DIR,
    dqd_dir: Path | str = DEFAULT_DQD_DIR,
    tables: Iterable[str] = omop.DEFAULT_TABLES,
) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_suites(dqd_dir, tables).items():
        path = out / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eds_network.quality.generate", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write one GX expectation suite JSON per OMOP table")
    gen.add_argument("--dqd", type=Path, default=DEFAULT_DQD_DIR, help="DQD catalogue folder")
    gen.add_argument("--out", type=Path, default=DEFAULT_SUITES_DIR, help="output folder (expectations/)")
    gen.add_argument("--tables", nargs="+", default=list(omop.DEFAULT_TABLES), metavar="TABLE")
    gen.add_argument("--check", action="store_true", help="write nothing; exit 1 if a suite differs")
    args = parser.parse_args(argv)

    if args.check:
        stale = []
        for name, text in render_suites(args.dqd, args.tables).items():
            path = args.out / name
            current = path.read_text(encoding="utf-8") if path.exists() else ""
            if current != text:
                stale.append(name)
                sys.stdout.writelines(
                    list(difflib.unified_diff(current.splitlines(True), text.splitlines(True), str(path), name))[:40]
                )
        if stale:
            print(f"stale suites: {', '.join(stale)} (run `make expectations`)", file=sys.stderr)
            return 1
        print(f"{len(args.tables)} suites up to date in {args.out}")
        return 0
    paths = write_suites(args.out, args.dqd, args.tables)
    for p in paths:
        n = len(json.loads(p.read_text(encoding="utf-8"))["expectations"])
        print(f"{p}: {n} expectations")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
