"""The network catalogue (PostgreSQL, SQLAlchemy 2): where each base stands, and what every run did.

Every DAG writes here through this module only. Tables:
  platform, base                 the configured network (+ reference bases of the national catalogue)
  milestone                      onboarding milestones with dates (contract_signed, documentation,
                                 preparation, transfer_channel, available) — reached in any order
  run, run_table                 one row per level run, row accounting per table
  delivery                       national deliveries: files, bytes, SHA-256, key versions, receipt
  national_linkage               per pair of national deliveries: persons sharing a level-2 pseudonym
  audit                          append-only trail of status changes and actions
  platform_table_stats           per platform, member base and table: rows in the warehouse, unmapped
                                 concepts (rate) and units, duplicate events flagged (latest consolidation)
  member_arrival                 per platform, member and night: arrived / late / rejected at consolidation
  onboarding_report              per base and onboarding DAG run: schema comparison, volume profile, backfill
  quality_check                  one DQD-style result per check, run and table (local and mutualised levels)
  quality_table                  per run and table: engine, rows checked, quarantine, GX Data Docs path (UI link)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine

from eds_network.core.config import Network
from eds_network.core.errors import AccountingError

SCHEMA = "catalogue"
MILESTONES = ("contract_signed", "documentation", "preparation", "transfer_channel", "available")
LEVELS = ("local", "mutualised", "national")

metadata = MetaData(schema=SCHEMA)

platform_t = Table(
    "platform",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("label", Text, nullable=False),
    Column("kind", String(32), nullable=False),
)
base_t = Table(
    "base",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("label", Text, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("platform_id", String(64), ForeignKey(f"{SCHEMA}.platform.id"), nullable=True),
    Column("holder", Text),
    Column("reference", Boolean, nullable=False, server_default="false"),
)
milestone_t = Table(
    "milestone",
    metadata,
    Column("base_id", String(64), ForeignKey(f"{SCHEMA}.base.id"), primary_key=True),
    Column("milestone", String(32), primary_key=True),
    Column("reached_on", Date, nullable=False),
    Column("evidence", Text),
    Column("recorded_by", Text, nullable=False),
)
run_t = Table(
    "run",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("level", String(16), nullable=False),
    Column("scope_id", String(64), nullable=False),
    Column("batch_id", Text, nullable=False),
    Column("dag_run_id", Text),
    Column("data_interval_start", DateTime(timezone=True)),
    Column("data_interval_end", DateTime(timezone=True)),
    Column("status", String(16), nullable=False),
    Column("details", JSON),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("level", "scope_id", "batch_id", name="run_once_per_batch"),
)
run_table_t = Table(
    "run_table",
    metadata,
    Column("run_id", BigInteger, ForeignKey(f"{SCHEMA}.run.id", ondelete="CASCADE"), primary_key=True),
    Column("table_name", String(64), primary_key=True),
    Column("extracted", BigInteger, nullable=False),
    Column("published", BigInteger, nullable=False),
    Column("quarantined", BigInteger, nullable=False),
    Column("excluded_objection", BigInteger, nullable=False),
    Column("tombstones", BigInteger, nullable=False, server_default="0"),
)
delivery_t = Table(
    "delivery",
    metadata,
    Column("id", Text, primary_key=True),
    Column("platform_id", String(64), nullable=False),
    Column("level", String(16), nullable=False),
    Column("status", String(32), nullable=False),
    Column("manifest_key", Text),
    Column("files", JSON),
    Column("bytes", BigInteger),
    Column("rows", JSON),
    Column("key_versions", JSON),
    Column("receipt", JSON),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
national_linkage_t = Table(
    "national_linkage",
    metadata,
    Column("delivery_a", Text, primary_key=True),
    Column("delivery_b", Text, primary_key=True),
    Column("platform_a", String(64), nullable=False),
    Column("platform_b", String(64), nullable=False),
    Column("shared_persons", BigInteger, nullable=False),
    Column("summary_key", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
audit_t = Table(
    "audit",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("object", Text, nullable=False),
    Column("details", JSON),
)

platform_table_stats_t = Table(
    "platform_table_stats",
    metadata,
    Column("platform_id", String(64), primary_key=True),
    Column("base_id", String(64), primary_key=True),
    Column("table_name", String(64), primary_key=True),
    Column("rows", BigInteger, nullable=False),
    Column("unmapped_concepts", BigInteger, nullable=False),
    Column("unmapped_rate", Float, nullable=False),
    Column("unmapped_units", BigInteger, nullable=False, server_default="0"),
    Column("duplicate_events", BigInteger, nullable=False, server_default="0"),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
member_arrival_t = Table(
    "member_arrival",
    metadata,
    Column("platform_id", String(64), primary_key=True),
    Column("base_id", String(64), primary_key=True),
    Column("night_end", DateTime(timezone=True), primary_key=True),
    Column("status", String(16), nullable=False),  # arrived | late | rejected | arrived_late
    Column("dag_run_id", Text),
    Column("reason", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
onboarding_report_t = Table(
    "onboarding_report",
    metadata,
    Column("base_id", String(64), nullable=False),
    Column("dag_run_id", Text, nullable=False),
    Column("kind", String(16), nullable=False),  # schema | profile | backfill
    Column("report", JSON, nullable=False),
    Column("recorded_by", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("base_id", "dag_run_id", "kind", name="onboarding_report_once"),
)

# Data quality (see eds_network.quality): a DQD-style result per check; `base_id` is the base the result is
# about (the scope itself at the local level, a member base or the platform at the mutualised level).
quality_check_t = Table(
    "quality_check",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("level", String(16), nullable=False),
    Column("scope_id", String(64), nullable=False),
    Column("batch_id", Text, nullable=False),
    Column("table_name", String(64), nullable=False),
    Column("base_id", String(64), nullable=False),
    Column("check_id", Text, nullable=False),
    Column("check_name", String(64), nullable=False),
    Column("check_level", String(16), nullable=False),
    Column("field_name", String(64), nullable=False, server_default=""),
    Column("concept_id", BigInteger),
    Column("unit_concept_id", BigInteger),
    Column("category", String(32), nullable=False),
    Column("subcategory", String(32), nullable=False, server_default=""),
    Column("context", String(16), nullable=False, server_default=""),
    Column("severity", String(24), nullable=False),
    Column("rows_checked", BigInteger, nullable=False),
    Column("violating_rows", BigInteger, nullable=False),
    Column("violating_pct", Float, nullable=False),
    Column("threshold_pct", Float, nullable=False),
    Column("passed", Boolean),  # NULL: not evaluated (not applicable or disabled)
    Column("status", String(16), nullable=False),  # passed / failed / not_applicable / disabled
    Column("action", String(24), nullable=False),  # none / warn / quarantine_rows / fail_batch
    Column("note", Text),  # not-applicable or disabled reason, override key
    Column("description", Text),
    Column("engine", String(16), nullable=False),
    Column("dag_run_id", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint(
        "level", "scope_id", "batch_id", "table_name", "base_id", "check_id", name="quality_check_once_per_run"
    ),
)
quality_table_t = Table(
    "quality_table",
    metadata,
    Column("level", String(16), primary_key=True),
    Column("scope_id", String(64), primary_key=True),
    Column("batch_id", Text, primary_key=True),
    Column("table_name", String(64), primary_key=True),
    Column("engine", String(16), nullable=False),
    Column("rows_checked", BigInteger, nullable=False),
    Column("quarantined_rows", BigInteger, nullable=False, server_default="0"),
    Column("batch_fatal", Boolean, nullable=False, server_default="false"),
    Column("checks", BigInteger, nullable=False),
    Column("failed", JSON),  # severity -> number of failed checks
    Column("data_docs_path", Text),  # GX Data Docs index.html in the state folder (operator UI link)
    Column("gx_sample_rows", BigInteger),
    Column("gx_mismatches", BigInteger),  # checks where GX and the Arrow engine disagree on the sample
    Column("dag_run_id", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


_engines: dict[str, Engine] = {}

MIGRATIONS = Path(__file__).parent / "migrations"
BASELINE_REVISION = "0001_initial"  # what create_all built before the catalogue had migrations
_MIGRATION_LOCK = 7_305_011_001  # pg_advisory_xact_lock key: one migrator at a time per database


def engine(dsn: str) -> Engine:
    url = dsn.replace("postgresql://", "postgresql+psycopg://", 1) if dsn.startswith("postgresql://") else dsn
    if url not in _engines:
        _engines[url] = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)
    return _engines[url]


def alembic_config(connection=None):
    """The Alembic configuration of the catalogue migrations (no alembic.ini: everything is set here)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("version_locations", str(MIGRATIONS / "versions"))
    cfg.set_main_option("file_template", "%%(rev)s")  # rev ids are NNNN_<slug>: the file name is the id
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(dsn: str, revision: str = "head") -> str | None:
    """Migrate the catalogue to `revision` (default: head) under an advisory lock; returns the revision reached.

    A catalogue built before migrations existed (tables present, no `catalogue.alembic_version`) is first
    stamped at the baseline revision, then upgraded."""
    from alembic import command

    with engine(dsn).begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        found = set(
            conn.execute(
                text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"), {"s": SCHEMA}
            ).scalars()
        )
        cfg = alembic_config(conn)
        if "base" in found and "alembic_version" not in found:
            command.stamp(cfg, BASELINE_REVISION)
        command.upgrade(cfg, revision)
    return current_revision(dsn)


def current_revision(dsn: str) -> str | None:
    from alembic.migration import MigrationContext

    with engine(dsn).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table_schema": SCHEMA})
        return ctx.get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def schema_diff(dsn: str, target: MetaData | None = None) -> list:
    """What the SQLAlchemy metadata has that the database has not (or the reverse): Alembic's autogenerate
    comparison, limited to the catalogue schema. Empty when the migrations create exactly the metadata."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine(dsn).connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "target_metadata": target if target is not None else metadata,
                "include_schemas": True,
                "include_name": lambda name, type_, parents: name == SCHEMA if type_ == "schema" else True,
                "version_table_schema": SCHEMA,
                "compare_type": True,
                "compare_server_default": True,
            },
        )
        return compare_metadata(ctx, target if target is not None else metadata)


def create_schema(dsn: str) -> None:
    """Create or migrate the catalogue schema: Alembic upgrade to head (idempotent, safe to run concurrently)."""
    upgrade(dsn)


def audit(conn, actor: str, action: str, obj: str, details: dict | None = None) -> None:
    conn.execute(audit_t.insert().values(actor=actor, action=action, object=obj, details=details or {}))


def register_network(dsn: str, network: Network, actor: str = "eds-network") -> None:
    """Upsert the configured platforms and bases (idempotent)."""
    with engine(dsn).begin() as conn:
        for p in network.platforms:
            conn.execute(
                insert(platform_t)
                .values(id=p.id, label=p.label, kind=p.kind.value)
                .on_conflict_do_update(index_elements=["id"], set_={"label": p.label, "kind": p.kind.value})
            )
            for b in p.members:
                values = {"label": b.label, "kind": b.kind.value, "platform_id": p.id, "holder": p.label}
                res = conn.execute(
                    insert(base_t)
                    .values(id=b.id, **values)
                    .on_conflict_do_update(index_elements=["id"], set_=values)
                    .returning(text("xmax = 0"))
                )
                if res.scalar():
                    audit(conn, actor, "base.registered", f"base:{b.id}", {"platform": p.id})


def set_milestone(
    dsn: str, base_id: str, milestone: str, reached_on: dt.date, *, evidence: str | None, recorded_by: str
) -> None:
    if milestone not in MILESTONES:
        raise ValueError(f"unknown milestone {milestone!r}; expected one of {', '.join(MILESTONES)}")
    with engine(dsn).begin() as conn:
        conn.execute(
            insert(milestone_t)
            .values(
                base_id=base_id, milestone=milestone, reached_on=reached_on, evidence=evidence, recorded_by=recorded_by
            )
            .on_conflict_do_update(
                index_elements=["base_id", "milestone"],
                set_={"reached_on": reached_on, "evidence": evidence, "recorded_by": recorded_by},
            )
        )
        audit(
            conn,
            recorded_by,
            "milestone.set",
            f"base:{base_id}",
            {"milestone": milestone, "reached_on": reached_on.isoformat()},
        )


def milestones(dsn: str, base_id: str) -> dict[str, dt.date]:
    with engine(dsn).connect() as conn:
        rows = conn.execute(
            select(milestone_t.c.milestone, milestone_t.c.reached_on).where(milestone_t.c.base_id == base_id)
        ).all()
    return dict(rows)


def stage(reached: Iterable[str]) -> str:
    """The onboarding stage, in the national catalogue's order. Milestones may be reached out of order; a base
    is `available` only when all five are reached, `ready` when the first four are."""
    got = set(reached)
    if set(MILESTONES) <= got:
        return "available"
    if set(MILESTONES[:4]) <= got:
        return "ready"
    for m in reversed(MILESTONES[:4]):
        if m in got:
            return m
    return "registered"


def rows_passed_through(rows: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Row accounting of a level that forwards every row it holds (platform package, national delivery)."""
    return {t: {"extracted": n, "published": n, "quarantined": 0, "excluded_objection": 0} for t, n in rows.items()}


def record_run(
    dsn: str,
    *,
    level: str,
    scope_id: str,
    batch_id: str,
    status: str,
    tables: dict[str, dict] | None = None,
    dag_run_id: str | None = None,
    interval: tuple[dt.datetime, dt.datetime] | None = None,
    details: dict[str, Any] | None = None,
    actor: str = "airflow",
) -> int:
    """Record (or replace, on rerun) one level run and its row accounting. Returns the run id."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}")
    for t, r in (tables or {}).items():
        if r["extracted"] != r["published"] + r["quarantined"] + r["excluded_objection"]:
            raise AccountingError("row accounting does not balance", base=scope_id, table=t)
    values = {
        "status": status,
        "dag_run_id": dag_run_id,
        "details": details or {},
        "data_interval_start": interval[0] if interval else None,
        "data_interval_end": interval[1] if interval else None,
        "recorded_at": func.now(),
    }
    with engine(dsn).begin() as conn:
        run_id = conn.execute(
            insert(run_t)
            .values(level=level, scope_id=scope_id, batch_id=batch_id, **values)
            .on_conflict_do_update(constraint="run_once_per_batch", set_=values)
            .returning(run_t.c.id)
        ).scalar_one()
        conn.execute(run_table_t.delete().where(run_table_t.c.run_id == run_id))
        for t, r in (tables or {}).items():
            conn.execute(
                run_table_t.insert().values(
                    run_id=run_id,
                    table_name=t,
                    extracted=r["extracted"],
                    published=r["published"],
                    quarantined=r["quarantined"],
                    excluded_objection=r["excluded_objection"],
                    tombstones=r.get("tombstones", 0),
                )
            )
        audit(conn, actor, f"run.{level}.{status}", f"{level}:{scope_id}", {"batch_id": batch_id})
    return run_id


def record_delivery(
    dsn: str,
    *,
    delivery_id: str,
    platform_id: str,
    level: str,
    status: str,
    manifest_key: str | None,
    files: list[dict],
    rows: dict,
    key_versions: dict,
    receipt: dict | None = None,
    actor: str = "airflow",
) -> None:
    values = {
        "platform_id": platform_id,
        "level": level,
        "status": status,
        "manifest_key": manifest_key,
        "files": files,
        "bytes": sum(f.get("bytes", 0) for f in files),
        "rows": rows,
        "key_versions": key_versions,
        "receipt": receipt,
        "recorded_at": func.now(),
    }
    with engine(dsn).begin() as conn:
        conn.execute(
            insert(delivery_t)
            .values(id=delivery_id, **values)
            .on_conflict_do_update(index_elements=["id"], set_=values)
        )
        audit(conn, actor, f"delivery.{status}", f"delivery:{delivery_id}", {"platform": platform_id, "level": level})


def record_skipped_delivery(
    dsn: str, *, platform_id: str, source_delivery: str, skipped: dict[str, list[str]], actor: str = "airflow"
) -> None:
    """A platform delivery held back by missing milestones: a national run `skipped` with the reasons, and one
    audit entry per blocking base naming the milestones it lacks."""
    record_run(
        dsn,
        level="national",
        scope_id=platform_id,
        batch_id=f"skipped:{source_delivery}",
        status="skipped",
        details={"reason": "milestones", "missing_milestones": skipped},
        actor=actor,
    )
    with engine(dsn).begin() as conn:
        for base_id, missing in skipped.items():
            audit(
                conn,
                actor,
                "delivery.skipped",
                f"base:{base_id}",
                {"platform": platform_id, "source_delivery": source_delivery, "missing_milestones": missing},
            )


def mark_transfer_channel(
    dsn: str, base_ids: Iterable[str], on: dt.date | None = None, actor: str = "eds-national"
) -> list[str]:
    """A first accepted national receipt proves the transfer channel: record the milestone where missing."""
    done = []
    for b in base_ids:
        if "transfer_channel" not in milestones(dsn, b):
            set_milestone(
                dsn,
                b,
                "transfer_channel",
                on or dt.date.today(),
                evidence="national receipt accepted",
                recorded_by=actor,
            )
            done.append(b)
    return done


def record_already_delivered(dsn: str, *, platform_id: str, delivery_id: str, actor: str = "airflow") -> bool:
    """A national run found its delivery already in the landing zone: the run that delivered it becomes the
    platform's latest again (its row accounting and receipt kept). Returns whether that run is known here."""
    with engine(dsn).begin() as conn:
        n = conn.execute(
            run_t.update()
            .where(run_t.c.level == "national", run_t.c.scope_id == platform_id, run_t.c.batch_id == delivery_id)
            .values(recorded_at=func.now())
        ).rowcount
        audit(conn, actor, "delivery.already_delivered", f"delivery:{delivery_id}", {"platform": platform_id})
    return bool(n)


def record_national_linkage(dsn: str, summary: dict) -> int:
    """Store a national linkage summary (see transfer.national_linkage): one row per pair of deliveries."""
    with engine(dsn).begin() as conn:
        for pair in summary.get("pairs", []):
            (pa_, pb), (da, db) = pair["platforms"], pair["deliveries"]
            values = {
                "platform_a": pa_,
                "platform_b": pb,
                "shared_persons": pair["shared_persons"],
                "summary_key": summary.get("summary_key"),
                "recorded_at": func.now(),
            }
            conn.execute(
                insert(national_linkage_t)
                .values(delivery_a=da, delivery_b=db, **values)
                .on_conflict_do_update(index_elements=["delivery_a", "delivery_b"], set_=values)
            )
    return len(summary.get("pairs", []))


def national_linkage(dsn: str) -> list[dict]:
    with engine(dsn).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(national_linkage_t))]


def record_key_event(dsn: str, action: str, obj: str, details: dict, actor: str = "airflow") -> None:
    """Audit a key's use, rotation or retirement: connection ids and versions only, never key material."""
    with engine(dsn).begin() as conn:
        audit(conn, actor, action, obj, details)


def latest_runs(dsn: str) -> list[dict]:
    """Per (level, scope): the latest run with its table totals — what the demo summary and the UI show."""
    q = text(f"""
        SELECT DISTINCT ON (r.level, r.scope_id) r.id, r.level, r.scope_id, r.batch_id, r.status, r.details,
               r.recorded_at
        FROM {SCHEMA}.run r ORDER BY r.level, r.scope_id, r.recorded_at DESC""")
    with engine(dsn).connect() as conn:
        runs = [dict(r._mapping) for r in conn.execute(q)]
        for r in runs:
            r["tables"] = {
                row.table_name: dict(row._mapping)
                for row in conn.execute(select(run_table_t).where(run_table_t.c.run_id == r["id"]))
            }
    return runs


def deliveries(dsn: str) -> list[dict]:
    with engine(dsn).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(delivery_t).order_by(delivery_t.c.recorded_at))]


def count(dsn: str, table: Table) -> int:
    with engine(dsn).connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def record_platform_stats(
    dsn: str, platform_id: str, standardisation: dict[str, dict[str, dict]], duplicates: dict[str, dict[str, int]]
) -> None:
    """Replace the platform's per base and table statistics with the latest consolidation's."""
    with engine(dsn).begin() as conn:
        conn.execute(platform_table_stats_t.delete().where(platform_table_stats_t.c.platform_id == platform_id))
        for base_id, per_table in standardisation.items():
            for t, st in per_table.items():
                conn.execute(
                    platform_table_stats_t.insert().values(
                        platform_id=platform_id,
                        base_id=base_id,
                        table_name=t,
                        rows=st["rows"],
                        unmapped_concepts=st["unmapped_concepts"],
                        unmapped_rate=st["unmapped_rate"],
                        unmapped_units=st.get("unmapped_units", 0),
                        duplicate_events=duplicates.get(base_id, {}).get(t, 0),
                    )
                )


def platform_stats(dsn: str, platform_id: str | None = None) -> list[dict]:
    q = select(platform_table_stats_t).order_by(
        platform_table_stats_t.c.platform_id, platform_table_stats_t.c.base_id, platform_table_stats_t.c.table_name
    )
    if platform_id:
        q = q.where(platform_table_stats_t.c.platform_id == platform_id)
    with engine(dsn).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def record_arrivals(
    dsn: str,
    platform_id: str,
    arrivals: dict[str, dict],
    *,
    dag_run_id: str | None = None,
    actor: str = "airflow",
) -> None:
    """Record each member's arrival for its night ({base: {status, night_end, reason}}). A member recorded
    late that arrives afterwards becomes `arrived_late` (the lateness is never erased); every status other
    than `arrived` is audited once."""
    with engine(dsn).begin() as conn:
        for base_id, a in arrivals.items():
            night_end = dt.datetime.fromisoformat(a["night_end"])
            status = a["status"]
            before = conn.execute(
                select(member_arrival_t.c.status).where(
                    member_arrival_t.c.platform_id == platform_id,
                    member_arrival_t.c.base_id == base_id,
                    member_arrival_t.c.night_end == night_end,
                )
            ).scalar()
            if status == "arrived" and before in ("late", "arrived_late"):
                status = "arrived_late"
            values = {"status": status, "dag_run_id": dag_run_id, "reason": a.get("reason"), "recorded_at": func.now()}
            conn.execute(
                insert(member_arrival_t)
                .values(platform_id=platform_id, base_id=base_id, night_end=night_end, **values)
                .on_conflict_do_update(index_elements=["platform_id", "base_id", "night_end"], set_=values)
            )
            if status != before and status != "arrived":
                audit(
                    conn,
                    actor,
                    f"member.{status}",
                    f"base:{base_id}",
                    {"platform": platform_id, "night_end": night_end.isoformat()},
                )


def arrivals(dsn: str, platform_id: str | None = None) -> list[dict]:
    q = select(member_arrival_t).order_by(member_arrival_t.c.night_end, member_arrival_t.c.base_id)
    if platform_id:
        q = q.where(member_arrival_t.c.platform_id == platform_id)
    with engine(dsn).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


# --------------------------------------------------------------------------------------------------
# Data quality results (written through eds_network.quality; counts, percentages and check names only)


def record_quality(
    dsn: str,
    *,
    level: str,
    scope_id: str,
    batch_id: str,
    table_name: str,
    checks: list[dict],
    summary: dict,
    dag_run_id: str | None = None,
) -> int:
    """Replace the quality results of one (level, scope, batch, table): rerunning a night replaces them.

    `checks`: rows of `quality_check` (without the run key); `summary`: the `quality_table` row's values."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}")
    key = {"level": level, "scope_id": scope_id, "batch_id": batch_id, "table_name": table_name}
    with engine(dsn).begin() as conn:
        conn.execute(quality_check_t.delete().where(*(quality_check_t.c[k] == v for k, v in key.items())))
        if checks:
            conn.execute(quality_check_t.insert(), [{**c, **key, "dag_run_id": dag_run_id} for c in checks])
        values = {**summary, "dag_run_id": dag_run_id, "recorded_at": func.now()}
        conn.execute(
            insert(quality_table_t).values(**key, **values).on_conflict_do_update(index_elements=list(key), set_=values)
        )
    return len(checks)


def quality_batches(dsn: str, level: str, scope_id: str) -> list[str]:
    """Batch ids with quality results for one scope, the most recently recorded first."""
    q = (
        select(quality_table_t.c.batch_id, func.max(quality_table_t.c.recorded_at).label("at"))
        .where(quality_table_t.c.level == level, quality_table_t.c.scope_id == scope_id)
        .group_by(quality_table_t.c.batch_id)
        .order_by(text("at DESC"))
    )
    with engine(dsn).connect() as conn:
        return [r.batch_id for r in conn.execute(q)]


def quality_results(dsn: str, level: str, scope_id: str, batch_id: str) -> tuple[list[dict], list[dict]]:
    """(checks, tables) of one batch: `quality_check` rows and `quality_table` rows, as dicts."""
    with engine(dsn).connect() as conn:
        checks = [
            dict(r._mapping)
            for r in conn.execute(
                select(quality_check_t)
                .where(
                    quality_check_t.c.level == level,
                    quality_check_t.c.scope_id == scope_id,
                    quality_check_t.c.batch_id == batch_id,
                )
                .order_by(quality_check_t.c.table_name, quality_check_t.c.base_id, quality_check_t.c.check_id)
            )
        ]
        tables = [
            dict(r._mapping)
            for r in conn.execute(
                select(quality_table_t)
                .where(
                    quality_table_t.c.level == level,
                    quality_table_t.c.scope_id == scope_id,
                    quality_table_t.c.batch_id == batch_id,
                )
                .order_by(quality_table_t.c.table_name)
            )
        ]
    return checks, tables


def table_volumes(dsn: str, base_id: str, table_name: str, *, before: dt.datetime | None = None, nights: int = 8):
    """(data_interval_start, extracted rows) of the base's latest local runs of one table, newest first."""
    q = (
        select(run_t.c.data_interval_start, run_table_t.c.extracted)
        .join(run_table_t, run_table_t.c.run_id == run_t.c.id)
        .where(
            run_t.c.level == "local",
            run_t.c.scope_id == base_id,
            run_table_t.c.table_name == table_name,
            run_t.c.data_interval_start.is_not(None),
        )
        .order_by(run_t.c.data_interval_start.desc())
        .limit(nights)
    )
    if before is not None:
        q = q.where(run_t.c.data_interval_start < before)
    with engine(dsn).connect() as conn:
        return [(r.data_interval_start, r.extracted) for r in conn.execute(q)]
