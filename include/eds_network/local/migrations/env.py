"""Alembic environment: the shared body in `eds_network.core.migrations` (online only, one transaction)."""

from eds_network.core.migrations import run_environment

run_environment()
