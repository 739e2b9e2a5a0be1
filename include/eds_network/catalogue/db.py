"""The catalogue's database: one engine per DSN, and its Alembic migrations (upgrade under an advisory lock)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData, create_engine, text
from sqlalchemy.engine import Engine

from eds_network.catalogue.tables import SCHEMA, metadata

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
