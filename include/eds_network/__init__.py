"""eds-network: the pipeline of France's multi-level hospital health-data warehouse network.

The package is cut by trust zone; the folder tree is the architecture (docs/architecture.md):

    core/           used by every zone: configuration, OMOP model, errors, storage, keys, the COPY reader
    local/          runs at the hospital: extract, check, pseudonymise (level 1), publish to the platform intake
    keys/           the key holders: versions and rotation (never sees an identity)
    platform/       runs at the mutualised platform: verify, consolidate, standardise, link, package
    national/       runs at the HDH: level-2 pseudonyms, transfer, receipt, national linkage
    quality/        the OHDSI DQD catalogue as checks, their engines, results and Data Docs
    catalogue/      the catalogue of bases, runs, deliveries and quality (schema under Alembic), HealthDCAT-AP
    ui/             the operator page in the Airflow UI
    orchestration/  the adapters between Airflow and the steps: connections, the REST API, backfills
    dev/            the embedded stack, the demo sources and reference bases: imported by no module above
    cli.py          the `eds` command

A zone never imports another zone; zones meet only through what one publishes (manifest + files) and the next
verifies. The rules are import-linter contracts, checked by `make lint`.
"""
