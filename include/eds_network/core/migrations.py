"""Alembic migrations of the schemas a zone owns in its own database, one environment per schema.

| environment | package | version table | schemas it owns | database |
| --- | --- | --- | --- | --- |
| `hospital` | `local/migrations` | `eds_local.alembic_version` | `eds_local` (quarantine, snapshots, published state, level-1 map) | each hospital's source DB |
| `warehouse` | `platform/migrations` | `eds_platform.alembic_version` | `omop` (the consolidated OMOP tables), `eds_platform` | each platform's warehouse |
| `national` | `national/migrations` | `eds_national.alembic_version` | `eds_national` (the tables' delivery ledger) | the HDH's database |

(The catalogue has its own environment, `catalogue/migrations`, with `catalogue.alembic_version`.)

A step calls `MIGRATIONS.ensure(dsn)` where it first needs its schema: it reads the version table (one SELECT)
and, only when the database is behind (its first use, a release with a new revision), upgrades it to head under
a PostgreSQL advisory lock (`pg_advisory_xact_lock`, one key per environment) in one transaction, so that
concurrent first runs (sibling table tasks of a first night) serialise and the later ones find the work done.
No DDL runs on every consolidation or extraction. A new table or column is a new revision file in the
environment's `versions/` (`NNNN_<slug>.py`, `down_revision` the previous head).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

VERSION_TABLE = "alembic_version"


@dataclass(frozen=True)
class Migrations:
    """One Alembic environment: its scripts, the schema holding its version table, its advisory-lock key."""

    name: str
    directory: Path  # env.py + versions/
    schema: str  # the version table's schema (created by the first upgrade)
    lock_key: int  # pg_advisory_xact_lock key: one migrator at a time per database

    def config(self, connection=None):
        """The Alembic configuration (no alembic.ini: everything is set here)."""
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("path_separator", "os")
        cfg.set_main_option("script_location", str(self.directory))
        cfg.set_main_option("version_locations", str(self.directory / "versions"))
        cfg.set_main_option("file_template", "%%(rev)s")  # rev ids are NNNN_<slug>: the file name is the id
        cfg.attributes["connection"] = connection
        cfg.attributes["migrations"] = self
        return cfg

    @cached_property
    def head(self) -> str | None:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self.config()).get_current_head()

    def current(self, dsn: str) -> str | None:
        """The revision the database is at (None: never migrated)."""
        eng = _engine(dsn)
        try:
            with eng.connect() as conn:
                return self._current(conn)
        finally:
            eng.dispose()

    def _current(self, conn) -> str | None:
        from sqlalchemy import text

        qualified = f"{self.schema}.{VERSION_TABLE}"
        if conn.execute(text("SELECT to_regclass(:t)"), {"t": qualified}).scalar() is None:
            return None
        return conn.execute(text(f"SELECT version_num FROM {qualified}")).scalar()  # noqa: S608 (constants)

    def upgrade(self, dsn: str, revision: str = "head") -> str | None:
        """Migrate the database to `revision` in one transaction, under the environment's advisory lock; returns
        the revision reached. Idempotent: at that revision already, it changes nothing."""
        from alembic import command
        from sqlalchemy import text

        eng = _engine(dsn)
        try:
            with eng.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": self.lock_key})
                if revision == "head" and self._current(conn) == self.head:
                    return self.head  # a concurrent first run did it while this one waited for the lock
                if conn.execute(text("SELECT to_regnamespace(:s)"), {"s": self.schema}).scalar() is None:
                    # only when missing: a zone's role may own its schema (made by the grants) without the right
                    # to create schemas, which PostgreSQL checks even for IF NOT EXISTS of one that exists
                    conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
                command.upgrade(self.config(conn), revision)
                return self._current(conn)
        finally:
            eng.dispose()

    def ensure(self, dsn: str) -> None:
        """The schema at head before a step uses it: one read of the version table, an upgrade only when the
        database is behind (its first use, or a release with a new revision)."""
        if self.current(dsn) != self.head:
            self.upgrade(dsn)


def _engine(dsn: str):
    """A one-connection engine on a libpq DSN (URI or key=value), psycopg 3 underneath."""
    import psycopg
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), poolclass=NullPool)


def run_environment() -> None:
    """The body of every environment's env.py: online only, on the connection `Migrations.upgrade` hands over."""
    from alembic import context

    if context.is_offline_mode():
        raise SystemExit("these migrations run online only: they are applied by the steps that need the schema")
    migrations: Migrations = context.config.attributes["migrations"]
    context.configure(
        connection=context.config.attributes["connection"],
        target_metadata=None,
        version_table=VERSION_TABLE,
        version_table_schema=migrations.schema,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()
