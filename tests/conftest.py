"""Shared fixtures: one real embedded stack (PostgreSQL + S3 endpoint + migrated Airflow DB) per test session
(under pytest-xdist, per worker: see below).

`EDS_NO_STACK=1` (the fast lane, `make test-fast`) starts nothing: a test that asks for the stack is skipped.

The test stack has its own state folder (.eds-test/) and ports, so it never touches the demo's `.eds/`.
The ports lie below the kernel's ephemeral range (Linux: 32768-60999), where a client socket could hold them.

A whole network night through Airflow costs minutes: the session runs one (`network_night`), shared by every
test that reads a night's outcome. The tests that use it run together, where the first of them is collected;
those marked `mutates_night` (a second night, a drifted column, a killed run) run after all the others.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Under pytest-xdist (`make test`: -n 2) every worker has a stack of its own: its own state folder and ports,
# WORKER_PORT_STEP apart (each stack also uses a few ports above its API port: log servers, test_processes' own).
WORKER_PORT_STEP = 20
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ... (unset without xdist)
_N = int(_WORKER[2:]) if _WORKER.startswith("gw") and _WORKER[2:].isdigit() else 0


def _own(var: str, default: int) -> None:
    os.environ[var] = str(int(os.environ.get(var, default)) + _N * WORKER_PORT_STEP)


os.environ.setdefault("EDS_HOME", str(REPO / ".eds-test"))
if _N:
    os.environ["EDS_HOME"] += f"-{_WORKER}"
_own("EDS_PG_PORT", 26432)
_own("EDS_S3_PORT", 26900)
_own("EDS_API_PORT", 26080)


@pytest.fixture(scope="session")
def stack():
    from eds_network.core.config import load_network
    from eds_network.dev.stack import Stack

    if os.environ.get("EDS_NO_STACK"):
        pytest.skip("EDS_NO_STACK: this lane starts no data system")
    s = Stack.default()
    s.start(load_network())
    yield s
    if not os.environ.get("EDS_KEEP_STACK"):  # set it to share one running stack between pytest sessions
        s.stop()


# -- pytest-xdist (`make test`: -n 2): what runs together on one worker -------------------------------------------
# The tests of the shared night form one group (one worker runs the night once, its readers then its mutators);
# every other module is a group of its own (a module-scoped fixture is built once). xdist's own `--dist loadgroup`
# groups nothing with pytest 9.2 (pytest-dev/pytest-xdist#1386): the first worker writes each test's group to a
# file when its collection is done, and the controller's scheduler (`--dist loadscope`, scopes = those groups)
# reads it.
_GROUPS_FILE = "eds_groups_file"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    node.workerinput[_GROUPS_FILE] = str(_groups_path(node.config))


def _groups_path(config) -> Path:
    return Path(str(config.rootpath)) / ".pytest_cache" / f"eds-xdist-groups-{os.getpid()}.json"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    path = _groups_path(config)

    class ByGroup(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                import json

                self.groups = json.loads(path.read_text()) if path.is_file() else {}
                path.unlink(missing_ok=True)
            return self.groups.get(nodeid) or super()._split_scope(nodeid)

    return ByGroup(config, log)


def _uses_night(item) -> bool:
    """Whether a test reads or changes the session's network night (and so runs in its group, on one worker)."""
    return "network_night" in getattr(item, "fixturenames", ())


def _write_groups(config, items) -> None:
    """On the first worker: each test's group, for the controller's scheduler (above)."""
    target = getattr(config, "workerinput", {}).get(_GROUPS_FILE)
    if not target or config.workerinput.get("workerid") != "gw0":
        return
    import json

    groups = {i.nodeid: "night" if _uses_night(i) else i.nodeid.split("::", 1)[0] for i in items}
    tmp = Path(target).with_suffix(".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(groups))
    tmp.replace(target)


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture scope
def pytest_collection_modifyitems(config, items):
    """The tests of the shared night as one block at the place of the first of them, its mutators last."""
    _write_groups(config, items)
    uses = [i for i in items if _uses_night(i)]
    if not uses:
        return
    first = items.index(uses[0])
    others = [i for i in items if not _uses_night(i)]
    readers = [i for i in uses if i.get_closest_marker("mutates_night") is None]
    # the readers that look for identifiers last: the one scan of the outputs (`night_scan`) sees all the others wrote
    readers = [i for i in readers if "night_scan" not in i.fixturenames] + [
        i for i in readers if "night_scan" in i.fixturenames
    ]
    mutators = [i for i in uses if i.get_closest_marker("mutates_night") is not None]
    items[:] = others[:first] + readers + mutators + others[first:]
    # the first of them sets the night up: minutes on a busy machine, beyond the default 900 s
    (readers or mutators)[0].add_marker(pytest.mark.timeout(3600))


@pytest.fixture(scope="session")
def network_night(stack):
    """The session's one whole network night through Airflow (every local DAG, the platforms, national), on the
    demo network seeded with identifiers planted in the sources of some hospitals (tests/reliability/planting.py):
    the night tests assert that nothing identifying arrives anywhere, the leak scan looks for the planted values.

    Returns the DAG results (dag_id, ok, seconds), the number of planted rows and the night's OpenLineage event
    files. `EDS_REUSE_NIGHT=1` reuses the planted night already on a kept stack (EDS_KEEP_STACK) to iterate.
    """
    from eds_network import cli
    from eds_network.core.config import load_network

    sys.path.insert(0, str(REPO / "tests" / "reliability"))
    from planting import plant_identifiers, planted_rows

    network = load_network()
    start, end = cli.demo_interval()
    dag_ids = [*(b.dag_id for b in network.local_bases), *(p.dag_id for p in network.platforms), "eds_national"]
    if os.environ.get("EDS_REUSE_NIGHT"):
        lineage = sorted(stack.lineage_dir.glob("events-*.json"))
        return {
            "results": [(d, True, 0.0) for d in dag_ids],
            "planted": planted_rows(stack, network),
            "lineage": lineage,
        }
    cli.seed_network(network, (start, end))
    planted = plant_identifiers(stack, network, start)
    before = set(stack.lineage_dir.glob("events-*.json"))
    results = cli.run_night(network, end)
    # the OpenLineage events of this night: the stack's file transport writes one file per event
    lineage = sorted(set(stack.lineage_dir.glob("events-*.json")) - before)
    return {"results": results, "planted": planted, "lineage": lineage}


@pytest.fixture(scope="session")
def night_scan(network_night, stack):
    """The outputs of the session's night read once for identifiers, shared by the tests that look for them.

    One pass of the leak scanner over every place it reads (`leakscan.stack_places`, the summary text included);
    the text of the objects, warehouse tables, catalogue tables and data docs read on the way is kept as well,
    for test_network_night's own token scan of those places. Returns the scanner's `report` and `ids`, and
    `texts` (place -> its whole text). Its tests run after every other reader of the night (above).
    """
    from eds_network import cli
    from eds_network.core.config import load_network
    from eds_network.dev import leakscan

    network = load_network()
    ids = leakscan.Identifiers.from_sources(leakscan.source_dsns(stack, network))
    texts: dict[str, list[str]] = {}
    datadocs = str(stack.root / "datadocs") + os.sep

    def kept(where, chunks):
        parts = texts.setdefault(where, [])
        for chunk in chunks:
            parts.append(chunk)
            yield chunk

    def tee(places):
        for area, where, chunks in places:
            if area in ("s3", "warehouse", "catalogue") or (area == "files" and where.startswith(datadocs)):
                chunks = kept(where, chunks)
            yield area, where, chunks

    report = leakscan.scan(tee(leakscan.stack_places(stack, network, summary=cli.summary(network))), ids)
    return {"report": report, "ids": ids, "texts": {w: "".join(parts) for w, parts in texts.items()}}


@pytest.fixture
def new_db(stack):
    """Factory of new empty databases on the embedded PostgreSQL (sources, warehouses); all dropped afterwards."""
    names: list[str] = []

    def make() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        names.append(name)
        return stack.create_database(name)

    yield make
    import psycopg
    from psycopg import sql

    with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def fresh_db(new_db):
    """A new empty database on the embedded PostgreSQL; dropped afterwards."""
    return new_db()


@pytest.fixture(scope="module")
def synthea_zip():
    """The Synthea27Nj sample beside the checkout (../shared); tests that need it are skipped without it."""
    from eds_network.core.errors import SourceError
    from eds_network.dev import seed

    try:
        return seed.synthea_zip_path()
    except SourceError as exc:
        pytest.skip(str(exc))
