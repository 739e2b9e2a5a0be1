"""Downstream removals of one interval: source deletions (the deletion log, or keys gone from a snapshot) and new objections, as level-1 ids."""

from __future__ import annotations

import pyarrow as pa

from eds_network.core import omop
from eds_network.core.config import LocalBase
from eds_network.local.pseudonymise import (
    PersonMap,
    rekey_ids,
)
from eds_network.local.resources import LocalResources
from eds_network.local.source import fetch_identities


def tombstones(
    conn,
    base: LocalBase,
    table: str,
    persons: PersonMap,
    start,
    end,
    res: LocalResources,
    snapshot_deleted: list[int] | None = None,
) -> pa.Table:
    """Rows to remove downstream: source deletions in the interval (the deletion log, or keys gone from a
    snapshot), and (person table) every objection of the registry recorded before the interval's end."""
    kinds: list[str] = []
    ids: list[int] = []
    spec = omop.table(table)
    deleted: list[int] = []
    if snapshot_deleted is not None:
        deleted = snapshot_deleted
    elif conn.execute("SELECT to_regclass('omop._deleted')").fetchone()[0]:  # a source may keep no deletion log
        deleted = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT row_id FROM omop._deleted WHERE table_name = %s AND deleted_at >= %s "
                "AND deleted_at < %s",
                (table, start, end),
            )
        ]
    if deleted:
        local = pa.array(deleted, pa.int64())
        if spec.primary_key and spec.primary_key != "person_id":
            out = rekey_ids(local, persons, table=table, column=spec.primary_key).to_pylist()
        else:  # keyed by person (death): map to the level-1 person id
            fetch_identities(conn, persons, local.to_pylist(), res)
            known = [p for p in local.to_pylist() if p in persons]
            out = persons.map_ids(pa.array(known, pa.int64())).to_pylist()
        kinds += ["row"] * len(out)
        ids += out
    if table == "person":
        new = [
            r[0]
            for r in conn.execute(
                # the whole registry every night, not only the interval's entries: a back-dated objection, or one
                # whose person task failed on its night, still reaches every level on the next successful night
                "SELECT DISTINCT person_id FROM identity.opposition WHERE recorded_at < %s",
                (end,),
            )
        ]
        if new:
            fetch_identities(conn, persons, new, res)
            known = [p for p in new if p in persons]
            out = persons.map_ids(pa.array(known, pa.int64())).to_pylist()
            kinds += ["person"] * len(out)
            ids += out
    return pa.table({"kind": pa.array(kinds, pa.string()), "id": pa.array(ids, pa.int64())})
