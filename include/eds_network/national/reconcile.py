"""Reconciliation of a platform with the HDH's national tables: row count and content hash per table and platform.

The platform's side is a `reconcile` delivery (a full package, level-2 pseudonymised by the transfer step as any
delivery); the HDH's side is the national table's partition of that platform. `digest` is independent of row order
and file layout: rows sorted by their key, each column rendered as text (null as a marker), hashed in order. A
table that differs is repaired by replacing the platform's partition with the delivered rows (`tables.py`); one
that agrees is not written at all. How often: `national.reconcile_every_days` of the network (7 by default).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NULL = "\\N"


def digest(tbl: pa.Table, key: str) -> tuple[int, str]:
    """(rows, SHA-256 of the content) of an Arrow table in the national schema, whatever its row order."""
    h = hashlib.sha256()
    if tbl.num_rows:
        tbl = tbl.take(pc.sort_indices(tbl, sort_keys=[(key, "ascending")]))
        for name in sorted(tbl.column_names):
            col = pc.fill_null(pc.cast(tbl.column(name), pa.string()), NULL).combine_chunks()
            offsets = np.frombuffer(col.buffers()[1], dtype=np.int32)[col.offset : col.offset + len(col) + 1]
            h.update(name.encode() + b"\0")
            h.update(np.diff(offsets).astype("<i4").tobytes())  # the values' lengths, then their bytes
            h.update(memoryview(col.buffers()[2])[int(offsets[0]) : int(offsets[-1])])
    return tbl.num_rows, h.hexdigest()
