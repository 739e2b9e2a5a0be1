"""
### National level: transfer to the Health Data Hub landing zone (`eds_national`)

Runs when any platform packages a delivery (Asset schedule on the platforms' `eds_mutualised__<platform>`).
One mapped task per platform:

1. **transfer**: open the sealed transport tokens, re-pseudonymise with the national key (a patient gets the
   same national pseudonym whatever platform the rows come from), upload every file encrypted at rest, verify
   each object (SHA-256 read back), then write the manifest last with a conditional write: a delivery is
   published exactly once, a second publisher gets "already delivered".
2. **receipt**: the landing zone's intake check (files, checksums, schema version, no identity column) writes a
   receipt object; the catalogue records the delivery and its receipt.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, get_current_context, task

from eds_network.config import load_network

NETWORK = load_network()


@dag(
    dag_id="eds_national",
    description="National level: re-pseudonymise and transfer each platform delivery to the HDH landing zone",
    schedule=[Asset(name=p.asset_name, uri=p.asset_uri) for p in NETWORK.platforms],
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Paris"),
    catchup=False,
    max_active_runs=1,
    tags=["eds", "national"],
    default_args={"owner": "eds-network", "retries": 2},
    doc_md=__doc__,
)
def eds_national():
    @task(map_index_template="{{ platform_id }}")
    def transfer(platform_id: str) -> dict:
        from eds_network import transfer as step
        from eds_network.airflow_adapter import national_resources
        from eds_network.errors import AlreadyDelivered

        get_current_context()["platform_id"] = platform_id
        network = load_network()
        p = network.platform(platform_id)
        try:
            return step.transfer_platform(p, network.national, national_resources(network, p)).ref()
        except AlreadyDelivered as exc:
            return {"platform": platform_id, "status": "already_delivered", "detail": str(exc)}

    @task(
        map_index_template="{{ platform_id }}",
        outlets=[Asset(name="eds_national__hdh", uri=NETWORK.national.landing_zone.uri)],
    )
    def receipt(delivery: dict) -> None:
        from eds_network import catalogue
        from eds_network import transfer as step
        from eds_network.airflow_adapter import catalogue_dsn, s3_endpoint

        get_current_context()["platform_id"] = delivery["platform"]
        network = load_network()
        if delivery["status"] != "delivered":
            return
        doc = step.receipt(
            network.national, s3_endpoint(network.national.landing_zone.connection_id), delivery["delivery_id"]
        )
        catalogue.record_delivery(
            catalogue_dsn(network),
            delivery_id=delivery["delivery_id"],
            platform_id=delivery["platform"],
            level="national",
            status="received" if doc["status"] == "accepted" else "rejected",
            manifest_key=delivery["manifest_key"],
            files=delivery["files"],
            rows=delivery["rows"],
            key_versions=delivery["key_versions"],
            receipt=doc,
        )
        catalogue.record_run(
            catalogue_dsn(network),
            level="national",
            scope_id=delivery["platform"],
            batch_id=delivery["delivery_id"],
            status="success" if doc["status"] == "accepted" else "failed",
            tables={
                t: {"extracted": n, "published": n, "quarantined": 0, "excluded_objection": 0}
                for t, n in delivery["rows"].items()
            },
            dag_run_id=get_current_context()["run_id"],
            details={"receipt": doc["status"], "manifest_key": delivery["manifest_key"]},
        )
        catalogue.record_key_event(
            catalogue_dsn(network),
            "key.used",
            f"national:{delivery['platform']}",
            {"delivery_id": delivery["delivery_id"], "key_versions": delivery["key_versions"]},
        )
        if doc["status"] != "accepted":
            raise step.TransferError(f"landing zone rejected delivery {delivery['delivery_id']}: {doc['problems']}")

    receipt.expand(delivery=transfer.expand(platform_id=[p.id for p in NETWORK.platforms]))


eds_national()
