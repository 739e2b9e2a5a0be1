"""
### Zone self-test (`eds_zone_selftest`, triggered by hand)

One task per trust zone, each on its own zone's queue, so run by that zone's own worker: it asks Airflow for
every connection of the network that its zone must not hold, and each must be refused (the task fails naming
any that resolves); it reports the zone's own connections and which of them carry a secret. The security
officer of a hospital, a platform or the HDH runs it after deploying or changing a worker. The returned XCom
holds connection ids and refusals only, never a connection's contents.
"""

from __future__ import annotations

from airflow.sdk import dag

from eds_network.core import zones
from eds_network.core.config import load_network
from eds_network.orchestration.zoned import zone_task

NETWORK = load_network()
ZONES = [
    *(zones.local(b.id) for b in NETWORK.local_bases),
    *(zones.keys(p.id) for p in NETWORK.platforms),
    *(zones.platform(p.id) for p in NETWORK.platforms),
    zones.NATIONAL,
    zones.OPERATOR,
]


def probe_task(zone: str):
    @zone_task(zone, task_id=f"probe__{zones.queue(zone)}")
    def probe() -> dict:
        from eds_network.orchestration import selftest_tasks

        return selftest_tasks.probe(NETWORK, zone)

    return probe


@dag(
    dag_id="eds_zone_selftest",
    description="Each zone's worker resolves its own connections only",
    schedule=None,
    catchup=False,
    tags=["eds", "selftest"],
    default_args={"owner": "eds-network", "retries": 2},  # a leak fails at once: AirflowFailException
    doc_md=__doc__,
)
def eds_zone_selftest():
    for zone in ZONES:
        probe_task(zone)()


eds_zone_selftest()
