"""
### Mutualised level: one DAG per platform (`eds_mutualised__<platform>`)

**When it runs** — `AssetOrTimeSchedule`, one schedule with two triggers:

- *all members arrived*: `AssetAll` of the members' `eds_local__<base>` Assets — the run starts as soon as
  every member has published its night;
- *the deadline*: a `CronTriggerTimetable` on the platform's `deadline` (config/network.yaml, default
  `0 7 * * *` Europe/Paris) — the run starts whatever arrived.

Both runs do the same thing. Consolidation takes the night as the members' latest scheduled night end at
the run's logical date (deadline and manual runs) or `run_after` (asset-triggered runs, which have none); a member without a batch reaching it is recorded **late** in the catalogue
(`catalogue.member_arrival`, audited), the others are consolidated all the same. When the late member's
batch lands, its Asset event starts a new run that loads it and records it `arrived_late`.

1. **consolidate**: apply every new manifested batch of every member to the platform warehouse — files verified
   against the manifest SHA-256, loaded with COPY into staging tables, merged in one transaction per batch,
   tombstones applied, a ledger so a batch is never applied twice (a rerun's new version replaces the old one).
   Each staged table is standardised first: source concepts to standard ones through CONCEPT_RELATIONSHIP
   'Maps to', units to UCUM (vocabulary loaded once into the warehouse). A tampered batch is rejected and left
   in intake; the others load. Patients seen at several sites share one level-1 pseudonym and become one
   person; the same event reported by two sites for one person is flagged as a duplicate, not deleted.
2. **package**: one Parquet file per table + a manifest in the platform outbox (the platform's Asset).
3. **record_run**: linkage statistics, cross-site checks, the unmapped-concept rate and duplicate events per
   base and table (`catalogue.platform_table_stats`), each member's arrival, and the delivery in the catalogue.
4. **check_warehouse**: DQD-style cross-site checks on the warehouse (foreign keys across sites, duplicate
   events from two sites) and each member's volume versus its previous nights, stored in the catalogue
   (`eds quality export --platform <platform>`). Failures are warnings: they never hold the delivery back.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, AssetAll, AssetOrTimeSchedule, CronTriggerTimetable, dag, get_current_context

from eds_network.core import zones
from eds_network.core.config import Platform, load_network
from eds_network.orchestration.zoned import zone_task


def mutualised_dag(platform: Platform):
    asset = Asset(name=platform.asset_name, uri=platform.asset_uri)
    zone = zones.platform(platform.id)  # every task runs on the platform's own workers

    @dag(
        dag_id=platform.dag_id,
        description=f"Mutualised level of {platform.label}: consolidate, link, check, package",
        schedule=AssetOrTimeSchedule(
            timetable=CronTriggerTimetable(platform.deadline, timezone=platform.deadline_timezone),
            assets=AssetAll(*(Asset(name=b.asset_name, uri=b.asset_uri) for b in platform.members)),
        ),
        start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Paris"),
        catchup=False,
        max_active_runs=1,
        tags=["eds", "mutualised", f"platform:{platform.id}"],
        default_args={"owner": "eds-network", "retries": 2},
        doc_md=__doc__,
    )
    def mutualised_level():
        @zone_task(zone)
        def consolidate() -> dict:
            from eds_network.orchestration import platform_tasks

            # The night: a scheduled (deadline) or manual run has a logical date; an asset-triggered one has none
            # and runs when it is queued.
            run = get_current_context()["dag_run"]
            return platform_tasks.consolidate(platform.id, run.logical_date or run.run_after)

        @zone_task(zone, outlets=[asset])
        def package(consolidation: dict) -> dict:
            from eds_network.orchestration import platform_tasks

            pkg = platform_tasks.package(platform.id, consolidation)
            get_current_context()["outlet_events"][asset].extra = {
                "delivery_id": pkg["delivery_id"],
                "rows": pkg["rows"],
            }
            return pkg

        @zone_task(zone)
        def record_run(consolidation: dict, pkg: dict) -> None:
            from eds_network.orchestration import platform_tasks

            platform_tasks.record_run(platform.id, consolidation, pkg, run_id=get_current_context()["run_id"])

        @zone_task(zone)
        def check_warehouse(pkg: dict) -> dict:
            from eds_network.orchestration import platform_tasks

            return platform_tasks.check_warehouse(platform.id, pkg, run_id=get_current_context()["run_id"])

        c = consolidate()
        pkg = package(c)
        record_run(c, pkg)
        check_warehouse(pkg)

    return mutualised_level()


for _platform in load_network().platforms:
    mutualised_dag(_platform)
