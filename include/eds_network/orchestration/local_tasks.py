"""The local DAG's tasks (`dags/eds_local.py`): resolve the zone's connections, run the step, record it.

Each function takes ids, the data interval and the run id, and returns what goes to XCom (references, counts,
checksums: never data, never an identifier).
"""

from __future__ import annotations

import datetime as dt

from eds_network import catalogue, quality
from eds_network.core.config import load_network
from eds_network.local import extract, level1, publish
from eds_network.orchestration import lineage
from eds_network.orchestration.connections import catalogue_dsn, exchange_endpoint, local_resources, pg_dsn


def _round_trip_args(base_id: str, start: dt.datetime, end: dt.datetime) -> tuple[tuple, dict]:
    network = load_network()
    base = network.base(base_id)
    p = network.platform(base.platform)
    loc = p.key_holder.exchange
    source = pg_dsn(base.source_connection_id, f"source of base {base.id}")
    kwargs = {"base": base.id, "site": base.finess or base.id, "batch": extract.batch_id(base.id, start, end)}
    return (source, exchange_endpoint(p), loc.bucket, loc.prefix), kwargs


def blind_identities(base_id: str, start: dt.datetime, end: dt.datetime) -> dict:
    """Blind the identities not evaluated yet and post them to the key holder (counts only to XCom)."""
    args, kwargs = _round_trip_args(base_id, start, end)
    return level1.blind_new_identities(*args, **kwargs)


def finalize_pseudonyms(base_id: str, start: dt.datetime, end: dt.datetime) -> dict:
    """Unblind the key holder's evaluations into the hospital's pseudonym map (counts only to XCom)."""
    args, kwargs = _round_trip_args(base_id, start, end)
    return level1.finalize_evaluations(*args, **kwargs)


def extract_table(base_id: str, table: str, start: dt.datetime, end: dt.datetime, *, run_id: str) -> dict:
    """Extract, check, pseudonymise and stage one table; its DQD-style results go to the catalogue (also when a
    fatal check stops the table)."""
    network = load_network()
    base = network.base(base_id)
    record_checks = quality.catalogue_recorder(catalogue_dsn(network), dag_run_id=run_id)
    res = local_resources(network, base)
    source = lineage.postgres_table(res.source_dsn, "omop", table)
    lineage.report(inputs=[source])  # also on failure: the table it read
    out = extract.extract_table(
        base, table, start, end, res, overrides=base.quality_overrides, on_checks=record_checks
    ).ref()
    rows = lineage.row_accounting(out)
    policy = base.pseudonymisation
    lineage.report(
        outputs=[lineage.s3_object(res.intake_bucket, _staged_prefix(res, base_id, out), eds_rowAccounting=rows)],
        run_facets={
            "eds_rowAccounting": rows,
            "eds_quality": lineage.quality_verdict(out["quality"]),
            "eds_pseudonymisation": lineage.pseudonymisation(
                1,
                {"level1": res.level1_version, "transport": res.transport_key.version},
                dateShiftDays=policy.date_shift_days,
                keepBirthMonth=policy.keep_birth_month,
            ),
        },
    )
    return out


def _staged_prefix(res, base_id: str, ref: dict) -> str:
    """The table's staged file in the intake batch, as a dataset: `<intake prefix><base>/<batch>/<table>`."""
    return f"{res.intake_prefix}{base_id}/{ref['batch_id']}/{ref['table']}"


def publish_batch(base_id: str, refs: list[dict | None], start: dt.datetime, end: dt.datetime) -> dict:
    """Verify the staged files of the tables that succeeded, then write the batch manifest last."""
    network = load_network()
    base = network.base(base_id)
    res = local_resources(network, base)
    out = publish.publish_batch(base, start, end, [r for r in refs if r], res).ref()
    staged = [
        lineage.s3_object(res.intake_bucket, _staged_prefix(res, base_id, {"batch_id": out["batch_id"], "table": t}))
        for t in out["rows"]
    ]
    total = lineage.total_accounting(out["rows"])
    batch = lineage.s3_object(
        res.intake_bucket, f"{res.intake_prefix}{base_id}/{out['batch_id']}", eds_rowAccounting=total
    )
    lineage.report(
        inputs=staged,
        outputs=[batch],
        run_facets={
            "eds_rowAccounting": total,
            "eds_pseudonymisation": lineage.pseudonymisation(1, out.get("key_versions", {})),
        },
    )
    return out


def record_run(base_id: str, published: dict, start: dt.datetime, end: dt.datetime, *, run_id: str) -> None:
    """Row accounting per table, and the key versions the batch was pseudonymised with (never a key)."""
    dsn = catalogue_dsn(load_network())
    catalogue.record_run(
        dsn,
        level="local",
        scope_id=base_id,
        batch_id=published["batch_id"],
        status="partial" if published["failed_tables"] else "success",
        tables=published["rows"],
        dag_run_id=run_id,
        interval=(start, end),
        details={
            "failed_tables": published["failed_tables"],
            "manifest_key": published["manifest_key"],
            "key_versions": published.get("key_versions", {}),
        },
    )
    catalogue.record_key_event(
        dsn,
        "key.used",
        f"local:{base_id}",
        {"batch_id": published["batch_id"], "key_versions": published.get("key_versions", {})},
    )
