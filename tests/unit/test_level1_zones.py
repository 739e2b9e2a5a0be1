"""Separation of duties of the level-1 key: a hospital task never resolves it, only the key zone's tasks do."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from eds_network.core import zones
from eds_network.core.config import load_network
from eds_network.core.crypto import Key
from eds_network.local.extract import LocalResources
from eds_network.orchestration import connections, keys_tasks, local_tasks

NET = load_network()
START, END = dt.datetime(2026, 3, 1, tzinfo=dt.UTC), dt.datetime(2026, 3, 2, tzinfo=dt.UTC)


class _Conn:
    def __init__(self, conn_id: str):
        self.conn_id = conn_id
        self.password = "ab" * 32
        self.login = "user"
        self.host, self.port, self.schema = "127.0.0.1", 5432, "db"
        self.extra_dejson = {"version": "v1", "public_key": "AAAA", "endpoint_url": "http://127.0.0.1:1"}


def _local_dag_module():
    """The local DAG file, imported as the DAG processor would (it builds one DAG per base)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "dags" / "eds_local.py"
    spec = importlib.util.spec_from_file_location("eds_local_dag_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def resolved(monkeypatch):
    """Every Airflow connection id a task resolves; the level-1 key connections are not even defined."""
    asked: list[str] = []
    level1_keys = {p.key_connection_id for p in NET.platforms}

    def fake(conn_id: str, what: str):
        asked.append(conn_id)
        if conn_id in level1_keys:
            raise AssertionError(f"{what}: a level-1 key was resolved")
        return _Conn(conn_id)

    monkeypatch.setattr(connections, "_conn", fake)
    monkeypatch.setattr(connections, "mask_secret", lambda _: None)
    from eds_network.local import level1

    monkeypatch.setattr(level1, "current_version_of", lambda dsn: "v1")
    monkeypatch.setattr(level1, "blind_new_identities", lambda *a, **k: {"blinded": 0})
    monkeypatch.setattr(level1, "finalize_evaluations", lambda *a, **k: {"finalized": 0})
    return asked


@pytest.mark.parametrize("base", [b.id for b in NET.local_bases])
def test_a_hospital_task_never_resolves_the_level1_key(resolved, base):
    res = connections.local_resources(NET, NET.base(base))
    local_tasks.blind_identities(base, START, END)
    local_tasks.finalize_pseudonyms(base, START, END)
    assert resolved and not {p.key_connection_id for p in NET.platforms} & set(resolved)
    # and what it gets holds no level-1 key: its only key is the transport key
    keys_held = [f.name for f in dataclasses.fields(res) if isinstance(getattr(res, f.name), Key)]
    assert keys_held == ["transport_key"]
    assert "platform_key" not in {f.name for f in dataclasses.fields(LocalResources)}


def test_only_the_key_zone_tasks_resolve_the_level1_key_and_they_run_on_its_queue(monkeypatch):
    asked: list[str] = []
    monkeypatch.setattr(connections, "_conn", lambda conn_id, what: asked.append(conn_id) or _Conn(conn_id))
    monkeypatch.setattr(connections, "mask_secret", lambda _: None)
    monkeypatch.setattr(keys_tasks.evaluation, "announce", lambda *a, **k: {})
    keys_tasks.announce_key("hosp_a", START, END)
    assert NET.platform("idf").key_connection_id in asked

    tasks = {t.task_id: t for t in _local_dag_module().local_dag(NET.base("hosp_a")).tasks}
    assert tasks["announce_key"].queue == tasks["evaluate_blinded"].queue == zones.queue(zones.keys("idf"))
    assert tasks["blind_identities"].queue == tasks["finalize_pseudonyms"].queue == zones.queue(zones.local("hosp_a"))
