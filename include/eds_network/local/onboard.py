"""Onboarding a base: validate the operator's request, compare the source with OMOP 5.4, profile its history.

Used by `dags/eds_onboard_base.py` (one function per task); the backfill itself is
`eds_network.orchestration.backfill`. Everything logged or returned names tables, columns, counts and dates,
never a row value.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from eds_network import catalogue
from eds_network.core import omop
from eds_network.core.config import LocalBase, Network
from eds_network.core.errors import ConfigError, SourceError, db_error_is_transient

log = logging.getLogger(__name__)

AIRFLOW_API_CONNECTION_ID = "eds_airflow_api"
REPROCESS = ("none", "failed", "completed")
POLL_SECONDS = 15.0
DEFAULT_OPERATOR = "operator"

onboarding_report_t = catalogue.onboarding_report_t


# --------------------------------------------------------------------------------------------------
# The request (the Params form)


@dataclass(frozen=True)
class OnboardRequest:
    base: str
    start_date: dt.date
    end_date: dt.date
    tables: tuple[str, ...]
    dry_run: bool
    max_active_runs: int
    reprocess: str
    operator: str
    ignored_tables: tuple[str, ...] = ()

    def ref(self) -> dict:
        d = asdict(self)
        d["start_date"] = self.start_date.isoformat()
        d["end_date"] = self.end_date.isoformat()
        d["tables"] = list(self.tables)
        d["ignored_tables"] = list(self.ignored_tables)
        return d

    @classmethod
    def from_ref(cls, d: Mapping[str, Any]) -> OnboardRequest:
        return cls(
            **{
                **d,
                "start_date": dt.date.fromisoformat(d["start_date"]),
                "end_date": dt.date.fromisoformat(d["end_date"]),
                "tables": tuple(d["tables"]),
                "ignored_tables": tuple(d.get("ignored_tables", ())),
            }
        )

    def bounds(self, base: LocalBase) -> tuple[dt.datetime, dt.datetime]:
        """[start, end) at midnight in the base's time zone."""
        tz = ZoneInfo(base.timezone)
        return (
            dt.datetime.combine(self.start_date, dt.time(), tzinfo=tz),
            dt.datetime.combine(self.end_date, dt.time(), tzinfo=tz),
        )


def _date(name: str, value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a date (expected YYYY-MM-DD)") from None


def default_start(end: dt.date, months: int = 6) -> dt.date:
    """The first day of the month `months` months before `end`'s month: the default start of a history."""
    start = end.replace(day=1)
    for _ in range(months):
        start = (start - dt.timedelta(days=1)).replace(day=1)
    return start


def check_range(start: Any, end: Any, today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """The onboarding range: start before end, neither in the future. Messages name both dates.

    An empty end is today, an empty start six months before the end (`default_start`): the DAG's Params have
    static defaults, so these dates are decided when the run starts, never when the DAG file is parsed."""
    today = today or dt.date.today()
    e = _date("end_date", end) if end not in (None, "") else today
    s = _date("start_date", start) if start not in (None, "") else default_start(e)
    if s >= e:
        raise ConfigError(f"start_date {s} must be before end_date {e}: the range [{s}, {e}) is empty")
    if e > today:
        raise ConfigError(f"end_date {e} is in the future (today is {today}): only past intervals can be backfilled")
    return s, e


def parse_request(
    network: Network, params: Mapping[str, Any], operator: str | None = None, today: dt.date | None = None
) -> OnboardRequest:
    """Validate the Params form (also when triggered through the REST API with a hand-written conf)."""
    base_id = str(params.get("base") or "")
    base = network.base(base_id)  # ConfigError naming the configured bases
    start, end = check_range(params.get("start_date"), params.get("end_date"), today)
    wanted = [str(t).lower() for t in (params.get("tables") or base.tables)]
    unknown = sorted(t for t in wanted if t not in omop.CLINICAL_TABLES)
    if unknown:
        raise ConfigError(f"tables: {', '.join(unknown)} not OMOP CDM 5.4 clinical tables", base=base.id)
    tables = tuple(t for t in base.tables if t in wanted)
    ignored = tuple(sorted(set(wanted) - set(base.tables)))
    if not tables:
        raise ConfigError(
            f"tables: none of {', '.join(wanted)} is in the base's scope ({', '.join(base.tables)})", base=base.id
        )
    mar = int(params.get("max_active_runs") or 2)
    if not 1 <= mar <= 32:
        raise ConfigError(f"max_active_runs: {mar} is out of range (1 to 32)", base=base.id)
    reprocess = str(params.get("reprocess") or "failed")
    if reprocess not in REPROCESS:
        raise ConfigError(f"reprocess: {reprocess!r} is not one of {', '.join(REPROCESS)}", base=base.id)
    dry_run = params.get("dry_run", True)
    if isinstance(dry_run, str):
        dry_run = dry_run.strip().lower() not in ("false", "0", "no")
    return OnboardRequest(
        base=base.id,
        start_date=start,
        end_date=end,
        tables=tables,
        dry_run=bool(dry_run),
        max_active_runs=mar,
        reprocess=reprocess,
        operator=operator or DEFAULT_OPERATOR,
        ignored_tables=ignored,
    )


# --------------------------------------------------------------------------------------------------
# 1. Catalogue: register the base, milestones, audit


def register(dsn: str, network: Network, req: OnboardRequest, dag_run_id: str) -> None:
    """The base in the catalogue (idempotent), an audit entry naming the operator, and (not in a dry run)
    the `preparation` milestone, reached on the day onboarding starts unless it was recorded before."""
    catalogue.create_schema(dsn)  # the onboarding_report table on catalogues created before it existed
    catalogue.register_network(dsn, network, actor=req.operator)
    with catalogue.engine(dsn).begin() as conn:
        catalogue.audit(
            conn,
            req.operator,
            "onboarding.dry_run" if req.dry_run else "onboarding.started",
            f"base:{req.base}",
            {
                "dag_run_id": dag_run_id,
                "start_date": req.start_date.isoformat(),
                "end_date": req.end_date.isoformat(),
                "tables": list(req.tables),
                "max_active_runs": req.max_active_runs,
                "reprocess": req.reprocess,
            },
        )
    if not req.dry_run and "preparation" not in catalogue.milestones(dsn, req.base):
        catalogue.set_milestone(
            dsn,
            req.base,
            "preparation",
            dt.date.today(),
            evidence=f"onboarding run {dag_run_id}",
            recorded_by=req.operator,
        )


def store_report(dsn: str, base_id: str, dag_run_id: str, kind: str, report: dict, recorded_by: str) -> None:
    values = {"report": report, "recorded_by": recorded_by, "recorded_at": func.now()}
    with catalogue.engine(dsn).begin() as conn:
        conn.execute(
            insert(onboarding_report_t)
            .values(base_id=base_id, dag_run_id=dag_run_id, kind=kind, **values)
            .on_conflict_do_update(constraint="onboarding_report_once", set_=values)
        )


def reports(dsn: str, base_id: str, dag_run_id: str | None = None) -> dict[str, dict]:
    """The latest report of each kind for a base (or for one onboarding run)."""
    q = select(onboarding_report_t).where(onboarding_report_t.c.base_id == base_id)
    if dag_run_id:
        q = q.where(onboarding_report_t.c.dag_run_id == dag_run_id)
    with catalogue.engine(dsn).connect() as conn:
        rows = conn.execute(q.order_by(onboarding_report_t.c.recorded_at)).all()
    return {r.kind: r.report for r in rows}


# --------------------------------------------------------------------------------------------------
# 2. Connectivity and schema comparison with OMOP 5.4

_COMPATIBLE = {
    "bigint": {"bigint", "integer", "smallint"},
    "double precision": {"double precision", "real", "numeric", "bigint", "integer"},
    "date": {"date"},
    "timestamp": {"timestamp without time zone", "timestamp with time zone"},
}
_TEXT = {"character varying", "text", "character"}


@dataclass(frozen=True)
class TableSchema:
    table: str
    found: bool
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    mistyped: tuple[dict, ...] = ()  # {column, source, expected}
    change_column: bool = True

    @property
    def ok(self) -> bool:
        return self.found and not self.missing and not self.mistyped and self.change_column


@dataclass(frozen=True)
class SchemaReport:
    base: str
    server_version: str
    tables: tuple[TableSchema, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)

    def ref(self) -> dict:
        return {
            "base": self.base,
            "ok": self.ok,
            "server_version": self.server_version,
            "tables": {
                t.table: {
                    "ok": t.ok,
                    "found": t.found,
                    "missing": list(t.missing),
                    "extra": list(t.extra),
                    "mistyped": [dict(m) for m in t.mistyped],
                    "change_column": t.change_column,
                }
                for t in self.tables
            },
        }


def connect_source(dsn: str, base_id: str) -> psycopg.Connection:
    try:
        return psycopg.connect(dsn, connect_timeout=10, autocommit=True, application_name="eds-onboard")
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"source database unreachable: {first}", base=base_id, transient=db_error_is_transient(exc)
        ) from None


def compare_schema(conn: psycopg.Connection, base_id: str, tables: Sequence[str]) -> SchemaReport:
    """Every table's columns against OMOP 5.4: missing, extra and mistyped columns, and the change column."""
    version = conn.execute("SHOW server_version").fetchone()[0]
    out = []
    for table in tables:
        spec = omop.table(table)
        types = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'omop' AND table_name = %s ORDER BY ordinal_position",
                (table,),
            ).fetchall()
        )
        if not types:
            out.append(TableSchema(table, found=False, missing=tuple(spec.column_names), change_column=False))
            continue
        expected = {c.name: c for c in spec.columns}
        missing = tuple(c for c in spec.column_names if c not in types)
        extra = tuple(c for c in types if c not in expected and c != omop.CHANGE_COLUMN)
        mistyped = tuple(
            {"column": name, "source": types[name], "expected": c.datatype}
            for name, c in expected.items()
            if name in types and types[name] not in _COMPATIBLE.get(c.sql_type, _TEXT)
        )
        out.append(TableSchema(table, True, missing, extra, mistyped, omop.CHANGE_COLUMN in types))
    return SchemaReport(base_id, version, tuple(out))


def render_schema(report: SchemaReport) -> str:
    lines = [
        f"Schema of base {report.base} vs OMOP CDM 5.4 (source PostgreSQL {report.server_version}): "
        + ("compatible" if report.ok else "NOT compatible"),
        f"{'table':24s} {'status':8s} {'missing':>7s} {'extra':>5s} {'mistyped':>8s}  details",
    ]
    for t in report.tables:
        status = "ok" if t.ok else ("absent" if not t.found else "problem")
        details = []
        if not t.found:
            details.append("table not found in schema 'omop'")
        else:
            if t.missing:
                details.append("missing: " + ", ".join(t.missing))
            if t.mistyped:
                details.append(
                    "mistyped: "
                    + ", ".join(f"{m['column']} ({m['source']}, expected {m['expected']})" for m in t.mistyped)
                )
            if not t.change_column:
                details.append(f"no change column {omop.CHANGE_COLUMN}: cannot extract incrementally")
            if t.extra:
                details.append("extra (not published): " + ", ".join(t.extra))
        lines.append(
            f"{t.table:24s} {status:8s} {len(t.missing):>7d} {len(t.extra):>5d} {len(t.mistyped):>8d}  "
            + "; ".join(details)
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# 3. Volume profile per table and month, proposed per-base quality thresholds

COMPLETENESS_CHECKS = ("measureValueCompleteness", "standardConceptRecordCompleteness")
THRESHOLD_MARGIN_PCT = 2.0


def profile(
    conn: psycopg.Connection, base: LocalBase, tables: Sequence[str], start: dt.datetime, end: dt.datetime
) -> dict:
    """Rows changed per table and calendar month (base time zone) in [start, end), and the completeness
    of the columns DQD checks, over the same range: counts only."""
    from eds_network.quality import dqd

    months = _months(start, end)
    out: dict[str, Any] = {"base": base.id, "start": start.isoformat(), "end": end.isoformat(), "months": months}
    per_table: dict[str, dict] = {}
    proposals: dict[str, dict] = {}
    for table in tables:
        present = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'omop' AND table_name = %s",
                (table,),
            )
        }
        if omop.CHANGE_COLUMN not in present:
            per_table[table] = {"rows": 0, "by_month": {}, "skipped": "no change column"}
            continue
        by_month = dict.fromkeys(months, 0)
        q = sql.SQL(
            "SELECT to_char(date_trunc('month', {chg} AT TIME ZONE %s), 'YYYY-MM'), count(*) FROM omop.{t} "
            "WHERE {chg} >= %s AND {chg} < %s GROUP BY 1"
        ).format(chg=sql.Identifier(omop.CHANGE_COLUMN), t=sql.Identifier(table))
        for month, n in conn.execute(q, (base.timezone, start, end)):
            by_month[month] = int(n)
        checks = [
            c
            for c in dqd.load_checks(table)
            if c.check_name in COMPLETENESS_CHECKS and c.concept_id is None and c.column in present
        ]
        counts = {}
        if checks:
            exprs = [sql.SQL("count(*)")]
            for c in checks:
                col = sql.Identifier(c.column)
                exprs.append(
                    sql.SQL("count(*) FILTER (WHERE {} IS NULL)").format(col)
                    if c.check_name == "measureValueCompleteness"
                    else sql.SQL("count(*) FILTER (WHERE {} = 0)").format(col)
                )
            row = conn.execute(
                sql.SQL("SELECT {} FROM omop.{} WHERE {chg} >= %s AND {chg} < %s").format(
                    sql.SQL(", ").join(exprs), sql.Identifier(table), chg=sql.Identifier(omop.CHANGE_COLUMN)
                ),
                (start, end),
            ).fetchone()
            total = int(row[0])
            for c, n in zip(checks, row[1:], strict=True):
                pct = 100.0 * int(n) / total if total else 0.0
                counts[c.check_id] = {"violating_rows": int(n), "pct": round(pct, 3), "default_pct": c.threshold_pct}
                if total and pct > c.threshold_pct:
                    proposals[c.check_id] = {
                        "threshold_pct": min(100.0, float(math.ceil(pct + THRESHOLD_MARGIN_PCT))),
                        "observed_pct": round(pct, 3),
                        "default_pct": c.threshold_pct,
                    }
        values = list(by_month.values())
        nonzero = sorted(v for v in values if v)
        per_table[table] = {
            "rows": sum(values),
            "by_month": by_month,
            "median_month": _median(nonzero),
            "empty_months": [m for m, v in by_month.items() if not v],
            "completeness": counts,
        }
    out["tables"] = per_table
    out["proposed_overrides"] = proposals
    out["proposed_volume"] = {
        t: {"volumeDrop_pct": 50, "median_rows_per_month": p["median_month"]}
        for t, p in per_table.items()
        if p.get("median_month")
    }
    return out


def _median(values: Sequence[int]) -> float:
    if not values:
        return 0.0
    n = len(values)
    mid = n // 2
    return float(values[mid]) if n % 2 else (values[mid - 1] + values[mid]) / 2


def _months(start: dt.datetime, end: dt.datetime) -> list[str]:
    y, m = start.year, start.month
    out = []
    while (y, m) < (end.year, end.month) or (
        (y, m) == (end.year, end.month) and end > end.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    ):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def render_profile(p: dict) -> str:
    months = p["months"]
    lines = [f"Volume profile of base {p['base']}: rows changed per month, [{p['start']}, {p['end']})"]
    lines.append(f"{'table':24s} " + " ".join(f"{m:>8s}" for m in months) + f" {'total':>10s}")
    for t, d in p["tables"].items():
        lines.append(f"{t:24s} " + " ".join(f"{d['by_month'].get(m, 0):>8,d}" for m in months) + f" {d['rows']:>10,d}")
        if d.get("empty_months"):
            lines.append(f"{'':24s} no row in {', '.join(d['empty_months'])}")
    if p["proposed_overrides"]:
        lines.append("Proposed quality_overrides for this base (observed above DQD's default threshold):")
        for k, v in sorted(p["proposed_overrides"].items()):
            lines.append(
                f"  {k}: {{threshold_pct: {v['threshold_pct']:g}}}   # observed {v['observed_pct']:g}%, "
                f"default {v['default_pct']:g}%"
            )
    else:
        lines.append("Proposed quality_overrides: none (every completeness check within DQD's default threshold)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# 4. The backfill, through Airflow's REST API


def require_schema_ok(schema: Mapping[str, Any], base_id: str) -> None:
    if not schema.get("ok"):
        bad = [t for t, v in schema.get("tables", {}).items() if not v["ok"]]
        raise SourceError(
            f"the source is not OMOP 5.4 compatible for {', '.join(bad)}: see the schema report of "
            "check_schema (task log and catalogue.onboarding_report); no backfill launched",
            base=base_id,
        )
