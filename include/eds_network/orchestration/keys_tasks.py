"""The key zone's tasks (queue of zone `keys:<platform>`), wired into each member's local DAG.

They resolve the key holder's own connections (its level-1 key, its exchange area, the catalogue) and never an
identity: what they read from a member is a count and blinded elements.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk.exceptions import AirflowFailException

from eds_network.catalogue.runs import evaluations_on, record_evaluations
from eds_network.core.config import load_network
from eds_network.keys import evaluate as evaluation
from eds_network.local.extract import batch_id
from eds_network.orchestration.connections import catalogue_dsn, exchange_endpoint, level1_key


def announce_key(base_id: str, start: dt.datetime, end: dt.datetime) -> dict:
    """Post the key version this batch is evaluated under (a version, never key material)."""
    network = load_network()
    p = network.platform_of(base_id)
    loc = p.key_holder.exchange
    version = level1_key(p).version
    return evaluation.announce(
        exchange_endpoint(p), loc.bucket, loc.prefix, base=base_id, batch=batch_id(base_id, start, end), version=version
    )


def evaluate_blinded(base_id: str, start: dt.datetime, end: dt.datetime) -> dict:
    """Evaluate the member's blinded elements of this batch, within its nightly ceiling; audited either way."""
    network = load_network()
    p = network.platform_of(base_id)
    loc = p.key_holder.exchange
    dsn = catalogue_dsn(network)
    bid = batch_id(base_id, start, end)
    key = level1_key(p)
    today = dt.datetime.now(dt.UTC).date()
    already = evaluations_on(dsn, p.id, base_id, today)
    ceiling = p.key_holder.ceiling(base_id)
    try:
        done = evaluation.evaluate_request(
            exchange_endpoint(p),
            loc.bucket,
            loc.prefix,
            base=base_id,
            batch=bid,
            key=evaluation.server_key(key, p.id),
            version=key.version,
            already_tonight=already,
            ceiling=ceiling,
        )
    except evaluation.EvaluationRefused as exc:
        request, _ = evaluation.read_request(exchange_endpoint(p), loc.bucket, loc.prefix, base=base_id, batch=bid)
        record_evaluations(
            dsn,
            p.id,
            base_id,
            {"batch_id": bid, "requested": request.get("count"), "already": already, "ceiling": ceiling},
            refused=True,
        )
        raise AirflowFailException(str(exc)) from None  # deterministic: a retry would be refused the same way
    record_evaluations(
        dsn, p.id, base_id, {"batch_id": bid, "evaluated": done["evaluated"], "key_version": key.version}
    )
    return done
