"""Alembic migrations of the catalogue schema (`eds catalogue upgrade|current|history|revision`).

The environment is driven from Python (`eds_network.catalogue.upgrade()`), no alembic.ini needed; the
version table is `catalogue.alembic_version`. One revision per schema change under `versions/`, named
`NNNN_<what>.py`; `tests/integration/test_catalogue_migrations.py` fails while the SQLAlchemy metadata in
`catalogue.py` has anything the migrations do not create.
"""
