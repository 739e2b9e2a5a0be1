"""Alembic environment of the catalogue: online only, on the connection handed over by `catalogue.upgrade()`
(or on `sqlalchemy.url` when alembic is driven another way). Only the `catalogue` schema is compared."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from eds_network.catalogue import SCHEMA, metadata

VERSION_TABLE = "alembic_version"


def include_name(name, type_, parent_names) -> bool:
    if type_ == "schema":
        return name == SCHEMA
    return True


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        version_table_schema=SCHEMA,
        include_schemas=True,
        include_name=include_name,
        compare_type=True,
        compare_server_default=True,
    )


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    eng = create_engine(context.config.get_main_option("sqlalchemy.url"))
    with eng.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
        conn.commit()


if context.is_offline_mode():
    raise SystemExit("the catalogue migrations run online only: use `eds catalogue upgrade`")
run_online()
