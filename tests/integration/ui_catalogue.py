"""A catalogue with something to show on the operator page: the network and the seven reference bases, demo
milestones, one night of runs on every level and the national deliveries with their receipts — written
through the catalogue module, as the DAGs do (a whole network night is not needed to check the page)."""

from __future__ import annotations

import datetime as dt

from eds_network import catalogue
from eds_network.core.config import Network
from eds_network.dev.reference_bases import seed_reference_bases

UTC = dt.UTC
NIGHT = (dt.datetime(2026, 11, 21, 0, 0, tzinfo=UTC), dt.datetime(2026, 11, 22, 0, 0, tzinfo=UTC))
DEMO_MILESTONES = {"contract_signed": dt.date(2026, 1, 15), "documentation": dt.date(2026, 1, 15)}
# hosp_a has gone further, its transfer channel set up before preparation is done (out of order)
EXTRA_MILESTONES = {"hosp_a": {"transfer_channel": dt.date(2026, 3, 2)}}
TABLES = ("person", "visit_occurrence", "condition_occurrence")


def _tables(base_index: int, quarantined: int) -> dict[str, dict]:
    out = {}
    for i, t in enumerate(TABLES):
        extracted = 100 * (base_index + 1) * (i + 1)
        q = quarantined if t == "visit_occurrence" else 0
        excl = 2 if t == "person" else 0
        out[t] = {
            "extracted": extracted,
            "published": extracted - q - excl,
            "quarantined": q,
            "excluded_objection": excl,
        }
    return out


def seed_ui_catalogue(dsn: str, network: Network) -> dict:
    catalogue.create_schema(dsn)
    catalogue.register_network(dsn, network)
    seed_reference_bases(dsn)
    for b in network.local_bases:
        for m, day in {**DEMO_MILESTONES, **EXTRA_MILESTONES.get(b.id, {})}.items():
            catalogue.set_milestone(dsn, b.id, m, day, evidence="demo network", recorded_by="eds seed")
    published: dict[str, dict[str, int]] = {}
    for i, b in enumerate(network.local_bases):
        tables = _tables(i, quarantined=3 if b.id == "hosp_b" else 0)
        catalogue.record_run(
            dsn,
            level="local",
            scope_id=b.id,
            batch_id=f"{b.id}-20261121",
            status="success",
            tables=tables,
            dag_run_id="manual__2026-11-22T00:00:00+00:00",
            interval=NIGHT,
            details={"failed_tables": [], "manifest_key": f"{b.id}/20261121/manifest.json"},
        )
        for t, r in tables.items():
            published.setdefault(b.platform, {}).setdefault(t, 0)
            published[b.platform][t] += r["published"]
    deliveries = {}
    for p in network.platforms:
        rows = published[p.id]
        delivery_id = f"{p.id}-20261122-0001"
        deliveries[p.id] = delivery_id
        full = {t: {"extracted": n, "published": n, "quarantined": 0, "excluded_objection": 0} for t, n in rows.items()}
        catalogue.record_run(
            dsn,
            level="mutualised",
            scope_id=p.id,
            batch_id=delivery_id,
            status="success",
            tables=full,
            dag_run_id="asset_triggered__2026-11-22T00:10:00+00:00",
            details={"applied": 1, "rejected": [], "linkage": {"persons": 10}, "checks": {}},
        )
    # the national level received idf's delivery; onco's is not delivered yet
    p = network.platforms[0]
    rows = published[p.id]
    files = [
        {"key": f"eds-network/{deliveries[p.id]}/{t}.parquet", "rows": n, "bytes": 1000 + n, "sha256": "0" * 64}
        for t, n in rows.items()
    ]
    catalogue.record_delivery(
        dsn,
        delivery_id=deliveries[p.id],
        platform_id=p.id,
        level="national",
        status="received",
        manifest_key=f"eds-network/{deliveries[p.id]}/manifest.json",
        files=files,
        rows=rows,
        key_versions={"eds_key_national": "v1", "eds_key_national_box": "v1"},
        receipt={"status": "accepted", "problems": []},
    )
    catalogue.record_run(
        dsn,
        level="national",
        scope_id=p.id,
        batch_id=deliveries[p.id],
        status="success",
        tables={
            t: {"extracted": n, "published": n, "quarantined": 0, "excluded_objection": 0} for t, n in rows.items()
        },
        dag_run_id="asset_triggered__2026-11-22T00:20:00+00:00",
        details={"receipt": "accepted", "manifest_key": f"eds-network/{deliveries[p.id]}/manifest.json"},
    )
    return {"deliveries": deliveries, "published": published}
