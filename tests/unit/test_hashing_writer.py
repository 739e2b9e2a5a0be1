"""A delivered file's SHA-256 is computed while it is written (`storage.HashingWriter`), never by reading it back:
the digest must be the digest of the bytes on disk, for Parquet written batch by batch and in one call."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eds_network.core.storage import HashingWriter


def _table(n: int) -> pa.Table:
    return pa.table({"id": pa.array(range(n), pa.int64()), "code": pa.array([f"c{i % 97}" for i in range(n)])})


def test_the_digest_and_size_are_those_of_the_bytes_on_disk(tmp_path):
    t = _table(250_000)
    out = tmp_path / "batches.parquet"
    with HashingWriter(out) as sink:
        with pq.ParquetWriter(sink, t.schema, compression="zstd") as w:
            for rb in t.to_batches(max_chunksize=60_000):
                w.write_batch(rb)
    data = out.read_bytes()
    assert sink.sha256 == hashlib.sha256(data).hexdigest()
    assert sink.size == len(data) > 0
    assert pq.read_table(out).equals(t)

    one = tmp_path / "one.parquet"
    with HashingWriter(one) as sink2:
        pq.write_table(t.slice(0, 10), sink2)
    assert sink2.sha256 == hashlib.sha256(one.read_bytes()).hexdigest() != sink.sha256


def test_no_digest_of_a_file_still_being_written(tmp_path):
    sink = HashingWriter(tmp_path / "open.bin")
    sink.write(b"abc")
    with pytest.raises(ValueError, match="still being written"):
        _ = sink.sha256
    sink.close()
    assert sink.sha256 == hashlib.sha256(b"abc").hexdigest()
