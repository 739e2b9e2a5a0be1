"""
### Local level: one DAG per hospital EDS (`eds_local__<base>`)

Every night, for the run's data interval `[data_interval_start, data_interval_end)`:

0. **Level-1 pseudonyms by an oblivious PRF** (RFC 9497, ristretto255-SHA512), the hospital never holding the
   platform's level-1 key: **announce_key** (key zone: the key version of this batch), **blind_identities**
   (hospital: the identities not evaluated yet are blinded and posted to the key holder's exchange area),
   **evaluate_blinded** (key zone, on its own workers: evaluates the blinded elements within the member's nightly
   ceiling, audited in the catalogue), **finalize_pseudonyms** (hospital: unblinds into its own
   `local person_id -> pseudonym` map, so that each patient is evaluated once).
1. **extract_table** (one mapped task per OMOP table, named after the table): stream the table's changes
   from the hospital source, exclude patients in the opposition registry, run the DQD-derived quality checks
   (row-level fatal violations are quarantined at the hospital), pseudonymise with the platform's level-1 key,
   and stage a Parquet file in the platform intake. A table can be retried alone. Every check's DQD-style
   result goes to the catalogue (`eds quality export --base <base>`), with GX Data Docs of a bounded sample.
2. **publish_batch**: verify every staged file (SHA-256 read back), then write the batch manifest last.
   The platform reads manifested batches only. Rerunning an interval replaces its batch.
3. **record_run**: row accounting per table in the catalogue
   (extracted = published + quarantined + excluded_objection).

No identifier leaves this DAG: XCom carries references, counts and checksums only.
"""

from __future__ import annotations

from airflow.sdk import Asset, CronDataIntervalTimetable, dag, get_current_context

from eds_network.core import zones
from eds_network.core.config import LocalBase, load_network
from eds_network.orchestration.zoned import zone_task


def local_dag(base: LocalBase):
    asset = Asset(name=base.asset_name, uri=base.asset_uri)
    zone = zones.local(base.id)  # every task runs at the hospital, on its own workers

    @dag(
        dag_id=base.dag_id,
        description=f"Local level of {base.label}: extract, check, pseudonymise, publish to {base.platform}",
        schedule=CronDataIntervalTimetable(base.schedule, timezone=base.timezone),
        start_date=base.start_date_dt,
        catchup=False,
        max_active_runs=1,
        tags=["eds", "local", f"platform:{base.platform}", f"base:{base.id}"],
        default_args={"owner": "eds-network", "retries": 2},
        doc_md=__doc__,
    )
    def local_level():
        key_holder = zones.keys(base.platform)  # the level-1 key's holder, on its own workers

        @zone_task(key_holder)
        def announce_key(data_interval_start=None, data_interval_end=None) -> dict:
            from eds_network.orchestration import keys_tasks

            return keys_tasks.announce_key(base.id, data_interval_start, data_interval_end)

        @zone_task(zone)
        def blind_identities(announced: dict, data_interval_start=None, data_interval_end=None) -> dict:
            from eds_network.orchestration import local_tasks

            return local_tasks.blind_identities(base.id, data_interval_start, data_interval_end)

        @zone_task(key_holder)
        def evaluate_blinded(blinded: dict, data_interval_start=None, data_interval_end=None) -> dict:
            from eds_network.orchestration import keys_tasks

            return keys_tasks.evaluate_blinded(base.id, data_interval_start, data_interval_end)

        @zone_task(zone)
        def finalize_pseudonyms(evaluated: dict, data_interval_start=None, data_interval_end=None) -> dict:
            from eds_network.orchestration import local_tasks

            return local_tasks.finalize_pseudonyms(base.id, data_interval_start, data_interval_end)

        @zone_task(zone, map_index_template="{{ table }}")
        def extract_table(table: str, data_interval_start=None, data_interval_end=None) -> dict:
            from eds_network.orchestration import local_tasks

            ctx = get_current_context()
            ctx["table"] = table  # names the mapped task instance in the UI
            return local_tasks.extract_table(
                base.id, table, data_interval_start, data_interval_end, run_id=ctx["run_id"]
            )

        @zone_task(zone, trigger_rule="all_done", outlets=[asset])
        def publish_batch(refs, data_interval_start=None, data_interval_end=None) -> dict:
            from eds_network.orchestration import local_tasks

            published = local_tasks.publish_batch(base.id, refs, data_interval_start, data_interval_end)
            get_current_context()["outlet_events"][asset].extra = {
                "batch_id": published["batch_id"],
                "tables": len(published["rows"]),
                "failed_tables": published["failed_tables"],
            }
            return published

        @zone_task(zone)
        def record_run(published: dict, data_interval_start=None, data_interval_end=None) -> None:
            from eds_network.orchestration import local_tasks

            local_tasks.record_run(
                base.id, published, data_interval_start, data_interval_end, run_id=get_current_context()["run_id"]
            )

        pseudonyms = finalize_pseudonyms(evaluate_blinded(blind_identities(announce_key())))
        extracted = extract_table.expand(table=base.tables)
        pseudonyms >> extracted
        record_run(publish_batch(extracted))

    return local_level()


for _base in load_network().local_bases:
    local_dag(_base)
