"""The mutualised DAG's tasks (`dags/eds_mutualised.py`): resolve the platform's connections, run the step,
record it in the catalogue."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from eds_network import catalogue, quality
from eds_network.catalogue import base_stats
from eds_network.core import zones
from eds_network.core.config import load_network
from eds_network.core.errors import ConfigError
from eds_network.orchestration import lineage
from eds_network.orchestration.connections import catalogue_dsn, platform_resources
from eds_network.platform import consolidate as consolidation_step
from eds_network.platform import package as package_step
from eds_network.platform.standardise import VOCABULARY_ENV, vocabulary_archive

log = logging.getLogger(__name__)


def platform_vocabulary(p) -> Path | None:
    """The vocabulary archive the platform standardises with: never skipped silently. A platform whose config says
    `vocabulary: required` (the default) fails at once without one; `vocabulary: none` is the explicit choice."""
    archive = vocabulary_archive()
    if p.vocabulary == "none":
        log.warning(
            "platform %s: vocabulary: none in the network config, concepts and units are not standardised", p.id
        )
        return None
    if archive is None:
        raise ConfigError(
            f"platform {p.id}: no OMOP vocabulary archive ({VOCABULARY_ENV} is not set); load one (an Athena export) "
            "or set `vocabulary: none` for this platform in the network config to consolidate without standardising"
        )
    if not archive.is_file():
        raise ConfigError(f"platform {p.id}: the vocabulary archive named by {VOCABULARY_ENV} does not exist")
    return archive


def consolidate(platform_id: str, night_end: dt.datetime) -> dict:
    """Apply every new manifested batch of every member to the warehouse, for the night ending at `night_end`."""
    p = load_network().platform(platform_id)
    res = platform_resources(p)
    out = consolidation_step.consolidate(
        p,
        p.intake.bucket,
        p.intake.prefix,
        res,
        vocabulary=platform_vocabulary(p),
        night_end=night_end,
        purge_tombstones=True,  # applied objections leave no file naming the objector in the intake
    ).ref()
    loaded: dict[str, int] = {}
    for per_table in out["rows"].values():  # {batch: {table: rows}}
        for t, n in per_table.items():
            if "." not in t:  # `person.tombstones`, `person.erased`: counts of erasure, not tables
                loaded[t] = loaded.get(t, 0) + int(n)
    rows = lineage.passed_through(loaded)
    lineage.report(
        inputs=[_batch(p, bid) for bid in [*out["applied"], *out["rejected"]]],
        outputs=[_warehouse_table(res, t, eds_rowAccounting=lineage.row_accounting(r)) for t, r in rows.items()],
        run_facets={
            "eds_rowAccounting": lineage.total_accounting(rows),
            "eds_pseudonymisation": lineage.pseudonymisation(1, out["key_versions"]),
        },
    )
    return out


def _batch(p, batch_id: str) -> lineage.Dataset:
    """A member's intake batch (`<base>__<start>__<end>`), as the member published it."""
    return lineage.s3_object(p.intake.bucket, f"{p.intake.prefix}{batch_id.split('__', 1)[0]}/{batch_id}")


def _warehouse_table(res, table: str, **facets) -> lineage.Dataset:
    return lineage.postgres_table(res.warehouse_dsn, "omop", table, **facets)


def _outbox_table(p, pkg: dict, table: str, **facets) -> lineage.Dataset:
    return lineage.s3_object(p.outbox.bucket, f"{p.outbox.prefix}{pkg['delivery_id']}/{table}", **facets)


def package(platform_id: str, consolidation: dict) -> dict:
    """What changed since the HDH's acknowledgement (or a full / weekly reconciliation delivery): Parquet files +
    a manifest in the platform outbox."""
    p = load_network().platform(platform_id)
    res = platform_resources(p)
    out = package_step.package(p, res, key_versions=consolidation["key_versions"], full=None, reconcile=None).ref()
    rows = lineage.passed_through(out["rows"])
    lineage.report(
        inputs=[_warehouse_table(res, t) for t in rows],
        outputs=[_outbox_table(p, out, t, eds_rowAccounting=lineage.row_accounting(r)) for t, r in rows.items()],
        run_facets={
            "eds_rowAccounting": lineage.total_accounting(rows),
            "eds_pseudonymisation": lineage.pseudonymisation(1, consolidation["key_versions"]),
        },
    )
    out["pruned"] = package_step.prune_delivered(p, res)  # what the HDH applied and acknowledged
    return out


def record_run(platform_id: str, consolidation: dict, pkg: dict, *, run_id: str) -> None:
    """The run, its linkage, standardisation and duplicate statistics, each member's arrival, retired key versions,
    and each member base's small-cell protected statistics."""
    platform = load_network().platform(platform_id)
    dsn = catalogue_dsn(load_network())
    late = any(a["status"] != "arrived" for a in consolidation["arrivals"].values())
    erasure = consolidation_step.erasure_counts(consolidation["rows"], pkg.get("pruned"))
    catalogue.record_run(
        dsn,
        level="mutualised",
        scope_id=platform_id,
        batch_id=pkg["delivery_id"],
        status="partial" if consolidation["rejected"] or late else "success",
        tables=catalogue.rows_passed_through(pkg["rows"]),
        dag_run_id=run_id,
        details={
            "applied": consolidation["applied"],
            "replaced": consolidation["replaced"],
            "rejected": consolidation["rejected"],
            "linkage": consolidation["linkage"],
            "checks": consolidation["checks"],
            "key_versions": consolidation["key_versions"],
            "arrivals": {b: a["status"] for b, a in consolidation["arrivals"].items()},
            "erasure": erasure,
        },
    )
    # Objections of the night at this level, counts only (the national level audits its own: national.tables.upkeep)
    catalogue.record_key_event(
        dsn, "erasure.platform", f"platform:{platform_id}", {"delivery_id": pkg["delivery_id"], **erasure}
    )
    for bid, reason in consolidation["rejected"].items():  # refused manifests and batches: audited, named
        catalogue.record_key_event(
            dsn,
            "batch.rejected",
            f"batch:{bid}",
            {"platform": platform_id, "reason": reason},
            actor=zones.platform(platform_id),
        )
    for version in consolidation.get("retired_key_versions", []):  # key rotation finished at this platform
        catalogue.record_key_event(
            dsn, "key.retired", f"key:{platform.key_connection_id}", {"platform": platform_id, "version": version}
        )
    catalogue.record_platform_stats(dsn, platform_id, consolidation["standardisation"], consolidation["duplicates"])
    catalogue.record_arrivals(dsn, platform_id, consolidation["arrivals"], dag_run_id=run_id)
    ends = [a["night_end"] for a in consolidation["arrivals"].values() if a.get("night_end")]
    base_stats.record(
        dsn,
        platform_resources(platform).warehouse_dsn,
        platform_id,
        [m.id for m in platform.members],
        reference_date=dt.datetime.fromisoformat(max(ends)).date() if ends else dt.date.today(),
        dag_run_id=run_id,
    )


def check_warehouse(platform_id: str, pkg: dict, *, run_id: str) -> dict:
    """DQD-style cross-site checks and volume checks on the warehouse (warnings: never hold the delivery)."""
    network = load_network()
    p = network.platform(platform_id)
    res = platform_resources(p)
    out = quality.check_platform(p, res.warehouse_dsn, catalogue_dsn(network), pkg["delivery_id"], dag_run_id=run_id)
    failed = len(out["failed"])
    lineage.report(
        inputs=[_warehouse_table(res, t) for t in pkg["rows"]],
        run_facets={  # warnings only: the warehouse checks never hold the delivery back
            "eds_quality": {
                "verdict": "warnings" if failed else "passed",
                "checks": out["checks"],
                "violated": failed,
                "fatalViolated": 0,
            }
        },
    )
    return out
