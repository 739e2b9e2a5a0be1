"""The zone self-test's task body: what a zone's worker can and cannot resolve.

Run on a zone's own worker, `probe(zone)` asks Airflow for every connection of the network that the zone must
not hold (each must be refused) and for the zone's own ones (reported, and which of them carry a secret). It
fails the task if a forbidden connection resolves. Nothing secret is returned: connection ids and Airflow's
refusal, never a connection's contents.
"""

from __future__ import annotations

from eds_network.core import zones
from eds_network.core.config import Network
from eds_network.orchestration.zone_connections import CENTRAL_CONNECTION_IDS, all_zones, zone_connection_ids


def operator_connection_ids(network: Network) -> list[str]:
    """The operator's worker (onboarding: registers, backfills through the REST API): the catalogue and the
    Airflow REST API, no data store, no key."""
    return [network.catalogue_connection_id, *CENTRAL_CONNECTION_IDS]


def connection_ids(network: Network, zone: str) -> list[str]:
    """The connection ids `zone`'s workers hold."""
    if zone == zones.OPERATOR:
        return operator_connection_ids(network)
    return zone_connection_ids(network, zone)


def every_connection_id(network: Network) -> set[str]:
    ids = set(operator_connection_ids(network))
    for z in all_zones(network):
        ids |= set(zone_connection_ids(network, z))
    return ids


def _refusal(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def probe(network: Network, zone: str) -> dict:
    """Try every connection; raise if one the zone must not hold resolves."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowFailException

    own = set(connection_ids(network, zone))
    refused: dict[str, str] = {}
    leaked: list[str] = []
    for conn_id in sorted(every_connection_id(network) - own):
        try:
            Connection.get(conn_id)
        except Exception as exc:  # AirflowNotFoundException: "The conn_id `…` isn't defined"
            refused[conn_id] = _refusal(exc)
        else:
            leaked.append(conn_id)
    held: list[str] = []
    with_secret: list[str] = []
    for conn_id in sorted(own):
        try:
            conn = Connection.get(conn_id)
        except Exception:
            continue
        held.append(conn_id)
        if conn.password:
            with_secret.append(conn_id)
    if leaked:
        raise AirflowFailException(f"zone {zone} resolved connections it must not hold: {', '.join(leaked)}")
    return {"zone": zone, "refused": refused, "held": held, "with_secret": with_secret}
