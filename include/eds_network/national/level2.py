"""Level 2 (national): open each person's sealed transport token and derive the national pseudonym; rewrite a
platform delivery's files under level-2 ids (`level2_files`).

person_id = first 63 bits of HMAC-SHA-256(national key, token): the same patient gets the same national
pseudonym whatever platform the rows come from. Every other id goes through the national keyed permutation.
Tokens never leave this step.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eds_network.core import omop, rowids
from eds_network.core.crypto import Key, hmac256, id63
from eds_network.core.errors import EdsError, IntegrityError
from eds_network.core.exchange import TOKEN_COLUMN
from eds_network.core.storage import HashingWriter


def national_person_ids(
    sealed: pa.Array, level1_ids: pa.Array, national_key: Key, private_key: bytes
) -> Mapping[int, int]:
    """Open each person's sealed token and derive the level-2 id. Returns level-1 id -> level-2 id."""
    return {
        pid: nid for pid, (nid, _) in national_person_digests(sealed, level1_ids, national_key, private_key).items()
    }


def national_person_digests(
    sealed: pa.Array, level1_ids: pa.Array, national_key: Key, private_key: bytes, *, truncate=id63
) -> Mapping[int, tuple[int, bytes]]:
    """Level-1 id -> (level-2 id, full level-2 digest). `truncate` (digest -> 63-bit id) is a parameter so that a
    test can force collisions; the digests go to the national registry (`eds_network.core.digests`)."""
    from nacl.exceptions import CryptoError
    from nacl.public import PrivateKey, SealedBox

    box = SealedBox(PrivateKey(private_key))
    out: dict[int, tuple[int, bytes]] = {}
    seen: dict[int, bytes] = {}
    for s, pid in zip(sealed.to_pylist(), level1_ids.to_pylist(), strict=True):
        if s is None:
            raise EdsError("a person row has no transport token", table="person", column=TOKEN_COLUMN)
        try:
            token = box.decrypt(base64.b64decode(s))
        except (CryptoError, ValueError):
            raise EdsError(
                "a transport token cannot be opened with the national key (wrong key version?)",
                table="person",
                column=TOKEN_COLUMN,
            ) from None
        digest = hmac256(national_key, token)
        nid = truncate(digest)
        if seen.get(nid, digest) != digest:
            raise EdsError("level-2 person id collision (63-bit)", table="person")
        seen[nid] = digest
        out[pid] = (nid, digest)
    return out


def remap(col: pa.Array, mapping: Mapping[int, int]) -> tuple[pa.Array, int]:
    """Map ids through `mapping`; returns the new column and the number of rows with no mapping (null)."""
    keys = pa.array(list(mapping.keys()), type=pa.int64())
    vals = pa.array(list(mapping.values()), type=pa.int64())
    out = pc.take(vals, pc.index_in(col, value_set=keys))
    missing = int(pc.sum(pc.is_null(out)).as_py() or 0) - int(pc.sum(pc.is_null(col)).as_py() or 0)
    return out, missing


def level2_files(
    local: Mapping[str, Path],
    mapping: Mapping[int, int],
    tmp: Path,
    national_key: Key,
    *,
    drop: Iterable[str],
) -> list[dict]:
    """Level 2 of the delivery's files: person ids through `mapping` (platform id -> national id, from the opened
    transport tokens), every other id re-keyed with the national key (nothing delivered equals, or joins to, a
    warehouse id).

    `local`: table -> the platform's file; each table's level-2 file is written into `tmp`, without the `drop`
    columns. Returns one entry per table: table, path, sha256, bytes, rows."""
    row_key = rowids.level_key(national_key.secret, "national")
    files = []
    for t, path in local.items():
        out = tmp / f"{t}.parquet"
        with HashingWriter(out) as sink:  # the file's SHA-256 as it is written: never read back to hash it
            n = _level2_table(t, path, sink, mapping, row_key, frozenset(drop))
        files.append({"table": t, "path": out, "sha256": sink.sha256, "bytes": sink.size, "rows": n})
    return files


def _level2_table(table: str, path: Path, out: HashingWriter, mapping, row_key: bytes, drop: frozenset[str]) -> int:
    """One table to its level-2 file (`out`), streamed by batches (forbidden columns dropped); returns its rows."""
    seen_ids: list = []
    pf = pq.ParquetFile(path)
    cols = [c for c in pf.schema_arrow.names if c not in drop]
    n = dropped = 0
    writer = None
    for rb in pf.iter_batches(batch_size=200_000, columns=cols):
        tbl = _rekey_row_ids(pa.Table.from_batches([rb]), table, row_key, seen_ids)
        if "person_id" in tbl.column_names:
            new, missing = remap(tbl.column("person_id").combine_chunks(), mapping)
            tbl = tbl.set_column(tbl.column_names.index("person_id"), "person_id", new)
            if missing:
                tbl = tbl.filter(pc.is_valid(tbl.column("person_id")))
                dropped += missing
        if writer is None:
            writer = pq.ParquetWriter(out, tbl.schema, compression="zstd")
        writer.write_table(tbl)
        n += tbl.num_rows
    if writer is None:
        writer = pq.ParquetWriter(out, pa.schema([pf.schema_arrow.field(c) for c in cols]), compression="zstd")
    writer.close()
    if dropped:
        raise IntegrityError(
            f"{dropped} rows refer to a person absent from the delivery", table=table, column="person_id"
        )
    _check_unique(seen_ids, table)
    return n


def _rekey_row_ids(tbl: pa.Table, table: str, key: bytes, seen: list) -> pa.Table:
    """Level-2 row ids: every id column but person_id through the national keyed permutation."""
    if table.lower() not in omop.schema():
        return tbl
    spec = omop.table(table)
    for name in tbl.column_names:
        if name == "person_id" or not spec.has(name) or not spec.column(name).is_id:
            continue
        col = tbl.column(name).combine_chunks()
        new = rowids.rekey(col, key, "national-row")
        if name == spec.primary_key:
            rowids.check_no_collision(col, new, table=table, column=name)
            seen.append(new.to_numpy(zero_copy_only=False))
        tbl = tbl.set_column(tbl.column_names.index(name), name, new)
    return tbl


def _check_unique(seen: list, table: str) -> None:
    """Across the whole table: two rows never share a re-keyed id (a collision is refused, never merged)."""
    import numpy as np

    if not seen:
        return
    ids = np.concatenate(seen)
    if len(np.unique(ids)) != len(ids):
        raise IntegrityError("63-bit row id collision in the delivery: refused, never merged", table=table)
