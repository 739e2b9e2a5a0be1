"""
### National level: transfer to the Health Data Hub landing zone (`eds_national`)

Runs when any platform packages a delivery (Asset schedule on the platforms' `eds_mutualised__<platform>`).
One mapped task per platform (`transfer`, `receipt`), then one `linkage` task:

1. **transfer** (one per platform): reads the platform's latest packaged delivery from its outbox, then
   - **milestone gate**: the delivery leaves only if *every* member base has `contract_signed` and
     `preparation` in the catalogue. Otherwise the whole platform delivery is **skipped** (task succeeds,
     status `skipped`) and the catalogue records a national run `skipped` with, per blocking base, the
     milestones it lacks (also one `delivery.skipped` audit entry per base). Why the platform and not the base:
     a platform delivery is one consolidated warehouse where a patient seen at several sites is one person
     row and the package carries no per-row site, so a base's rows cannot be cut out exactly; sending part
     of it could leak rows of a base without a contract. To unblock: record the missing milestone
     (`catalogue.set_milestone`) and clear the task.
   - **level 2**: opens the sealed transport tokens and re-pseudonymises with the national key (a patient
     gets the same national pseudonym whatever platform the rows come from); transport tokens, level-1 ids
     and any identity column are dropped.
   - **upload** over TLS only (plain `http://` is refused unless the endpoint is loopback *and*
     `national.allow_plain_http_loopback` is set: the embedded stack), multipart via boto3's transfer
     manager, encryption at rest requested on every object; the landing bucket gets a lifecycle rule
     aborting incomplete multipart uploads after a day.
   - **verify** every object (encryption header, size and SHA-256 read back); an object that fails is
     deleted and the task fails naming the platform and file, with **no manifest written**. A retry
     resumes: files already there with the right SHA-256 are not sent again.
   - **manifest last**, with a conditional write (`If-None-Match: *`): a delivery (named by its content)
     is published exactly once; a concurrent or repeated run gets `already_delivered` (task succeeds).
     Incomplete multipart uploads left under the delivery by interrupted attempts are then aborted.
2. **receipt** (one per platform): stands for the landing zone's intake: files present, checksums, schema
   version, no identity column; writes `_receipt.json` beside the manifest. The catalogue records the
   delivery (files, bytes, SHA-256, key versions, rows, receipt) and, once accepted, the members'
   `transfer_channel` milestone.
3. **linkage**: per platform pair, how many persons share a national pseudonym in the platforms' current
   deliveries: a summary object `<prefix>linkage/<id>.json` in the landing zone and rows in the catalogue
   table `national_linkage`.

Statuses an operator sees in the `transfer` XCom: `delivered`, `already_delivered`, `skipped` (milestones),
`nothing_to_deliver` (no packaged delivery in the outbox yet).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, get_current_context, task

from eds_network.core.config import load_network

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
        from eds_network import catalogue
        from eds_network.core.errors import AlreadyDelivered
        from eds_network.national import transfer as step
        from eds_network.orchestration.connections import catalogue_dsn, national_resources

        get_current_context()["platform_id"] = platform_id
        network = load_network()
        p = network.platform(platform_id)
        dsn = catalogue_dsn(network)
        reached = {b.id: set(catalogue.milestones(dsn, b.id)) for b in p.members}
        try:
            out = step.transfer_platform(p, network.national, national_resources(network, p), milestones=reached)
        except AlreadyDelivered as exc:
            return {"platform": platform_id, "status": "already_delivered", "detail": str(exc)}
        if out.status == "skipped":
            catalogue.record_skipped_delivery(
                dsn, platform_id=platform_id, source_delivery=out.source_delivery, skipped=out.skipped
            )
        return out.ref()

    @task(
        map_index_template="{{ platform_id }}",
        outlets=[Asset(name="eds_national__hdh", uri=NETWORK.national.landing_zone.uri)],
    )
    def receipt(delivery: dict) -> None:
        from eds_network import catalogue
        from eds_network.national import transfer as step
        from eds_network.orchestration.connections import catalogue_dsn, s3_endpoint

        get_current_context()["platform_id"] = delivery["platform"]
        network = load_network()
        if delivery["status"] == "already_delivered" and delivery.get("delivery_id"):
            catalogue.record_already_delivered(
                catalogue_dsn(network), platform_id=delivery["platform"], delivery_id=delivery["delivery_id"]
            )
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
        catalogue.mark_transfer_channel(
            catalogue_dsn(network), [b.id for b in network.platform(delivery["platform"]).members]
        )

    @task
    def linkage(deliveries: list[dict]) -> dict:
        from eds_network import catalogue
        from eds_network.national import transfer as step
        from eds_network.orchestration.connections import catalogue_dsn, s3_endpoint

        network = load_network()
        summary = step.national_linkage(
            network.national, s3_endpoint(network.national.landing_zone.connection_id), deliveries
        )
        catalogue.record_national_linkage(catalogue_dsn(network), summary)
        return {"summary_key": summary["summary_key"], "pairs": summary["pairs"]}

    deliveries = transfer.expand(platform_id=[p.id for p in NETWORK.platforms])
    receipt.expand(delivery=deliveries)
    linkage(deliveries)


eds_national()
