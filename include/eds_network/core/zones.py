"""Trust zones: who runs a task, with whose secrets.

A hospital, a platform, the key holder of a platform's level-1 key and the HDH are different organisations.
Every task runs in exactly one zone, on that zone's own workers (its Airflow queue), which alone resolve that
zone's secrets:

    local:<base>        the hospital: its source database, its own keys; publishes to its platform's intake
    keys:<platform>     the holder of the platform's level-1 pseudonymisation key (a trusted third party)
    platform:<platform> the mutualised platform: its intake, warehouse and outbox
    national            the HDH: the national keys, the landing zone, receipts, research projects
    operator            the network operator's own worker beside the central Airflow: the catalogue and the
                        Airflow REST API (onboarding backfills); no data store, no key
"""

from __future__ import annotations

NATIONAL = "national"
OPERATOR = "operator"


def local(base_id: str) -> str:
    return f"local:{base_id}"


def keys(platform_id: str) -> str:
    return f"keys:{platform_id}"


def platform(platform_id: str) -> str:
    return f"platform:{platform_id}"


def queue(zone: str) -> str:
    """The Airflow queue of a zone's workers (`local:hosp_a` -> `local-hosp_a`)."""
    return zone.replace(":", "-")


def kind(zone: str) -> str:
    """`local`, `keys`, `platform` or `national`."""
    return zone.split(":", 1)[0]
