"""
### Local level: one DAG per hospital EDS (`eds_local__<base>`)

Every night, for the run's data interval `[data_interval_start, data_interval_end)`:

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

from airflow.sdk import Asset, CronDataIntervalTimetable, dag, get_current_context, task

from eds_network.core.config import LocalBase, load_network


def local_dag(base: LocalBase):
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
        @task(map_index_template="{{ table }}")
        def extract_table(table: str, data_interval_start=None, data_interval_end=None) -> dict:
            from eds_network import quality
            from eds_network.local import extract
            from eds_network.orchestration.connections import catalogue_dsn, local_resources

            ctx = get_current_context()
            ctx["table"] = table  # names the mapped task instance in the UI
            network = load_network()
            b = network.base(base.id)
            res = local_resources(network, b)
            # DQD-style results per check -> catalogue (also when a fatal check stops the table).
            record_checks = quality.catalogue_recorder(catalogue_dsn(network), dag_run_id=ctx["run_id"])
            return extract.extract_table(
                b,
                table,
                data_interval_start,
                data_interval_end,
                res,
                overrides=b.quality_overrides,
                on_checks=record_checks,
            ).ref()

        @task(trigger_rule="all_done", outlets=[Asset(name=base.asset_name, uri=base.asset_uri)])
        def publish_batch(refs, data_interval_start=None, data_interval_end=None) -> dict:
            from eds_network.local import publish
            from eds_network.orchestration.connections import local_resources

            network = load_network()
            b = network.base(base.id)
            published = publish.publish_batch(
                b, data_interval_start, data_interval_end, [r for r in refs if r], local_resources(network, b)
            )
            get_current_context()["outlet_events"][Asset(name=base.asset_name, uri=base.asset_uri)].extra = {
                "batch_id": published.batch_id,
                "tables": len(published.tables),
                "failed_tables": published.failed_tables,
            }
            return published.ref()

        @task
        def record_run(published: dict, data_interval_start=None, data_interval_end=None) -> None:
            from eds_network import catalogue
            from eds_network.orchestration.connections import catalogue_dsn

            ctx = get_current_context()
            catalogue.record_run(
                catalogue_dsn(load_network()),
                level="local",
                scope_id=base.id,
                batch_id=published["batch_id"],
                status="partial" if published["failed_tables"] else "success",
                tables=published["rows"],
                dag_run_id=ctx["run_id"],
                interval=(data_interval_start, data_interval_end),
                details={
                    "failed_tables": published["failed_tables"],
                    "manifest_key": published["manifest_key"],
                    "key_versions": published.get("key_versions", {}),
                },
            )
            catalogue.record_key_event(  # which key versions this batch was pseudonymised with (no key)
                catalogue_dsn(load_network()),
                "key.used",
                f"local:{base.id}",
                {"batch_id": published["batch_id"], "key_versions": published.get("key_versions", {})},
            )

        record_run(publish_batch(extract_table.expand(table=base.tables)))

    return local_level()


for _base in load_network().local_bases:
    local_dag(_base)
