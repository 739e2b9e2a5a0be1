"""Upkeep of the national Iceberg tables: erasure of objectors, expiry of superseded snapshots, orphan files.

- `erase_persons`: delete every row of the given level-2 pseudonyms from every national table that has a
  `person_id` column (one commit per table touched; pyiceberg rewrites the data files that held them).
- `purge`: when rows left a table (an objection: a person absent from their platform's new full delivery, or
  an explicit erasure), every snapshot but the current one is expired, then every object under the table's
  location that the current metadata does not reach (data files, manifests, manifest lists and metadata files of
  expired snapshots; files of a crashed apply that never committed) is deleted. An objector's rows are then in no
  object of the table. Time travel to an expired snapshot is no longer possible: the right to object comes first
  (projects pinned on it get a withdrawal notice from the research-projects side).
- `sweep`: every night, on every table, the orphan part only (objects not reachable from any retained snapshot):
  a crash between data files and commit leaves no orphan after the next night.
- `forget_digests`: the person-digest registry forgets the level-2 pseudonyms no national row holds any more.
- `purge_superseded_deliveries`: a platform's landing files of deliveries older than the one applied last are
  deleted once applied (manifest and receipt are kept: counts and hashes, no row).

These run in the national DAG after every apply of the night (max_active_runs=1): no writer is in flight, so
nothing reachable only from an uncommitted apply is at risk.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import psycopg
from pyiceberg.expressions import In
from pyiceberg.table import Table as IcebergTable

from eds_network.core.config import NationalTarget
from eds_network.core.exchange import MANIFEST
from eds_network.core.storage import list_keys, read_json
from eds_network.national import tables
from eds_network.national.migrations import MIGRATIONS
from eds_network.national.tables import NAMESPACE, NationalTables, table_names
from eds_network.national.transfer import landing_prefix

log = logging.getLogger(__name__)

KEEP_IN_DELIVERY = (MANIFEST, "_receipt.json")


def _split(uri: str) -> tuple[str, str]:
    bucket, key = uri.removeprefix("s3://").removeprefix("s3a://").split("/", 1)
    return bucket, key


def reachable(tbl: IcebergTable) -> set[str]:
    """Every object the table's current metadata reaches: itself, and per retained snapshot its manifest list,
    manifests, data and delete files."""
    io = tbl.io
    out = {tbl.metadata_location}
    for snap in tbl.metadata.snapshots:
        out.add(snap.manifest_list)
        for manifest in snap.manifests(io):
            out.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=False):
                out.add(entry.data_file.file_path)
    return out


def _delete_unreachable(tbl: IcebergTable, s3) -> int:
    keep = {_split(u) for u in reachable(tbl)}
    bucket, prefix = _split(tbl.location().rstrip("/") + "/")
    doomed = [k for k in list_keys(s3, bucket, prefix) if (bucket, k) not in keep]
    for i in range(0, len(doomed), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in doomed[i : i + 1000]], "Quiet": True})
    return len(doomed)


def expire_all_but_current(tbl: IcebergTable) -> int:
    old = [s.snapshot_id for s in tbl.metadata.snapshots if s.snapshot_id != tbl.metadata.current_snapshot_id]
    if old:
        tbl.maintenance.expire_snapshots().by_ids(old).commit()
    return len(old)


def purge(target: NationalTarget, res: NationalTables, names: Iterable[str]) -> dict[str, dict[str, int]]:
    """Expire every superseded snapshot of these tables and delete every object they no longer reach."""
    catalog = res.catalog(target)
    s3 = res.landing.client()
    out = {}
    for name in names:
        tbl = catalog.load_table((NAMESPACE, name))
        expired = expire_all_but_current(tbl)
        tbl = catalog.load_table((NAMESPACE, name))
        out[name] = {"snapshots_expired": expired, "files_deleted": _delete_unreachable(tbl, s3)}
    log.info("national tables purged: %s", out)
    return out


def sweep(target: NationalTarget, res: NationalTables) -> dict[str, int]:
    """Delete the orphans of every table (objects no retained snapshot reaches). Returns files deleted per table."""
    catalog = res.catalog(target)
    s3 = res.landing.client()
    return {n: _delete_unreachable(catalog.load_table((NAMESPACE, n)), s3) for n in table_names(catalog)}


def erase_persons(target: NationalTarget, res: NationalTables, person_ids: Iterable[int]) -> dict[str, int]:
    """Delete every row of these level-2 pseudonyms from every national table with a person_id column. Returns
    rows erased per table (counts only). Call `purge` on the tables touched to remove them physically."""
    ids = sorted(set(int(i) for i in person_ids))
    if not ids:
        return {}
    catalog = res.catalog(target)
    out = {}
    for name in table_names(catalog):
        tbl = catalog.load_table((NAMESPACE, name))
        if "person_id" not in tbl.schema().column_names:
            continue
        flt = In("person_id", ids)
        n = tbl.scan(row_filter=flt, selected_fields=("person_id",)).to_arrow().num_rows
        if n:
            props = {"eds.kind": "erasure", "eds.rows_erased": str(n)}
            with tbl.transaction() as tx:
                tx.delete(flt, snapshot_properties=props)
                # An empty append on top: the current snapshot's manifests then list no deleted entry (whose
                # column bounds could name the objector); `purge` expires the delete snapshot itself.
                tx.append(tables.arrow_schema(name).empty_table(), snapshot_properties=props)
            out[name] = n
    log.info("national tables: %d persons erased, rows per table %s", len(ids), out)
    return out


def forget_digests(target: NationalTarget, res: NationalTables) -> int:
    """Delete from the person-digest registry (`eds_national.person_digest`, in the HDH database) every level-2
    pseudonym no national `person` row holds any more (an objector erased from every platform's rows): the
    registry keeps no trace of them. Streams the person ids (bounded memory). Returns the registry rows deleted."""
    from eds_network.core import digests

    catalog = res.catalog(target)
    if (NAMESPACE, "person") not in [tuple(i) for i in catalog.list_tables(NAMESPACE)]:
        return 0
    reader = catalog.load_table((NAMESPACE, "person")).scan(selected_fields=("person_id",)).to_arrow_batch_reader()
    with psycopg.connect(res.dsn) as conn:
        reg = conn.execute("SELECT to_regclass(%s)", (f"eds_national.{digests.TABLE}",)).fetchone()[0]
        if reg is None:
            return 0
        conn.execute("CREATE TEMP TABLE kept_persons (person_id bigint) ON COMMIT DROP")
        with conn.cursor().copy("COPY kept_persons (person_id) FROM STDIN") as copy:
            for batch in reader:
                for pid in batch.column("person_id").to_pylist():
                    if pid is not None:
                        copy.write_row((pid,))
        n = conn.execute(
            f"DELETE FROM eds_national.{digests.TABLE} d WHERE NOT EXISTS "
            "(SELECT 1 FROM kept_persons k WHERE k.person_id = d.person_id)"
        ).rowcount
    if n:
        log.info("person-digest registry: %d erased persons forgotten", n)
    return n


def purge_superseded_deliveries(target: NationalTarget, res: NationalTables) -> int:
    """Delete the landing data files of every delivery older than the last one applied for its platform (they
    were applied, then superseded), and the deletes files of the last one. Manifest and receipt stay. Returns the
    number of objects deleted."""
    MIGRATIONS.ensure(res.dsn)
    with psycopg.connect(res.dsn) as conn:
        rows = conn.execute(
            "SELECT DISTINCT ON (platform) platform, delivery_id FROM eds_national.applied"
            " ORDER BY platform, delivered_at DESC"
        ).fetchall()
        applied = {r[0] for r in conn.execute("SELECT DISTINCT delivery_id FROM eds_national.applied")}
    current = {p: d for p, d in rows}
    s3 = res.landing.client()
    bucket = target.landing_zone.bucket
    root = f"{target.landing_zone.prefix}deliveries/"
    deleted = 0
    for key in list_keys(s3, bucket, root):
        if not key.endswith("/" + MANIFEST):
            continue
        delivery_id = key[len(root) :].split("/", 1)[0]
        if delivery_id in applied and delivery_id in current.values():
            # the current delivery's data stays, but not its deletes: keys of erased rows (an objector's
            # pseudonym) have no reason to outlive the commit that applied them
            prefix = landing_prefix(target, delivery_id)
            for k in list_keys(s3, bucket, prefix):
                if ".deletes." in k[len(prefix) :]:
                    s3.delete_object(Bucket=bucket, Key=k)
                    deleted += 1
            continue
        if delivery_id not in applied:
            continue
        manifest = read_json(s3, bucket, key)
        if manifest.get("platform") not in current:
            continue
        prefix = landing_prefix(target, delivery_id)
        doomed = [k for k in list_keys(s3, bucket, prefix) if k[len(prefix) :] not in KEEP_IN_DELIVERY]
        for k in doomed:
            s3.delete_object(Bucket=bucket, Key=k)
        deleted += len(doomed)
    return deleted
