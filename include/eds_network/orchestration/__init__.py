"""Adapters between Airflow and the steps: Airflow connections into step resources, Airflow's REST API, backfills."""
