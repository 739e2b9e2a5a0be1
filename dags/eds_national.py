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
     in the catalogue and clear the task.
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
3. **tables** (one per platform, after the receipts): applies each accepted delivery to the HDH's national
   Iceberg tables (`national/tables.py`): one commit per OMOP table touched (a full delivery replaces the
   platform's partition, an incremental one its changed and deleted rows, a reconciliation only the tables that
   differ), snapshot summaries naming delivery, platform, manifest SHA-256 and key versions; a retried or replayed
   delivery is a no-op; then the signed acknowledgement (`_ack.json` in the platform's outbox: the change
   watermark its next incremental delivery starts from, or a request for a full one). `eds national tables`
   lists them.
   **upkeep** (once, after every apply): when a delivery removed persons (objections), every superseded
   snapshot is expired and every file it alone reached deleted (`national/maintenance.py`); landing data files
   of superseded deliveries and orphans of crashed applies are deleted; counts go to the catalogue's audit.
4. **linkage**: per platform pair, how many persons share a national pseudonym in the platforms' current
   deliveries: a summary object `<prefix>linkage/<id>.json` in the landing zone and rows in the catalogue
   table `national_linkage`.

Statuses an operator sees in the `transfer` XCom: `delivered`, `already_delivered`, `skipped` (milestones),
`nothing_to_deliver` (no packaged delivery in the outbox yet).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, get_current_context

from eds_network.core import zones
from eds_network.core.config import load_network
from eds_network.orchestration.zoned import zone_task

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
    @zone_task(zones.NATIONAL, map_index_template="{{ platform_id }}")
    def transfer(platform_id: str) -> dict:
        from eds_network.orchestration import national_tasks

        get_current_context()["platform_id"] = platform_id
        return national_tasks.transfer(platform_id)

    @zone_task(
        zones.NATIONAL,
        map_index_template="{{ platform_id }}",
        outlets=[Asset(name="eds_national__hdh", uri=NETWORK.national.landing_zone.uri)],
    )
    def receipt(delivery: dict) -> None:
        from eds_network.orchestration import national_tasks

        ctx = get_current_context()
        ctx["platform_id"] = delivery["platform"]
        national_tasks.receipt(delivery, run_id=ctx["run_id"])

    @zone_task(zones.NATIONAL, map_index_template="{{ platform_id }}")
    def tables(delivery: dict) -> dict:
        from eds_network.orchestration import national_tasks

        get_current_context()["platform_id"] = delivery["platform"]
        return national_tasks.apply_tables(delivery)

    @zone_task(zones.NATIONAL)
    def upkeep(applied: list[dict]) -> dict:
        from eds_network.orchestration import national_tasks

        return national_tasks.upkeep(applied)

    @zone_task(zones.NATIONAL)
    def linkage(deliveries: list[dict]) -> dict:
        from eds_network.orchestration import national_tasks

        return national_tasks.linkage(deliveries)

    deliveries = transfer.expand(platform_id=[p.id for p in NETWORK.platforms])
    applied = tables.expand(delivery=deliveries)
    receipt.expand(delivery=deliveries) >> applied
    upkeep(applied)
    linkage(deliveries)


eds_national()
