"""The project extract's sort (`national.projects.extract.write_sorted`): the whole table's order in bounded memory,
the same bytes whatever the order rows arrive in."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from eds_network.national.projects.extract import one_row_per_person, sort_keys, write_sorted

SCHEMA = pa.schema([("measurement_id", pa.int64()), ("person_id", pa.int64()), ("value_as_number", pa.float64())])
KEYS = ["measurement_id", "person_id", "value_as_number"]


def _rows(n: int, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "measurement_id": rng.integers(0, 1 << 63, n, dtype=np.int64),
            "person_id": rng.integers(0, 1 << 63, n, dtype=np.int64),
            "value_as_number": rng.normal(size=n),
        },
        schema=SCHEMA,
    )


def _batches(t: pa.Table, size: int, seed: int) -> list[pa.Table]:
    order = np.random.default_rng(seed).permutation(t.num_rows)
    t = t.take(pa.array(order))
    return [t.slice(i, size) for i in range(0, t.num_rows, size)]


def test_the_sort_is_the_whole_tables_order_holding_one_bucket_at_a_time(tmp_path):
    t = _rows(20_000)
    seen: list[int] = []

    def spy(part: pa.Table) -> pa.Table:
        seen.append(part.num_rows)
        return part

    path = tmp_path / "measurement.parquet"
    n = write_sorted(_batches(t, 700, 1), SCHEMA, KEYS, path, bound=t.num_rows, per_bucket=spy, sort_rows=1_000)
    got = pq.read_table(path)
    assert n == got.num_rows == t.num_rows
    assert got.equals(t.sort_by([(c, "ascending") for c in KEYS]))
    assert len(seen) >= 15 and max(seen) < 2_000  # 20 buckets of ~1,000 rows: never the whole table at once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["measurement.parquet"]  # the spill files are gone


def test_the_same_rows_in_another_arrival_order_give_the_same_bytes(tmp_path):
    t = _rows(5_000, seed=3)
    digests = set()
    for i, size in enumerate((333, 1_000, 5_000)):
        path = tmp_path / f"m{i}.parquet"
        write_sorted(_batches(t, size, seed=i), SCHEMA, KEYS, path, bound=t.num_rows, sort_rows=512)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_person_keeps_one_row_per_person_across_batches_and_buckets(tmp_path):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 1 << 63, 3_000, dtype=np.int64)
    schema = pa.schema([("person_id", pa.int64()), ("year_of_birth", pa.int64())])
    # each person twice (two platforms know them), the two rows in different batches
    t = pa.table({"person_id": np.concatenate([ids, ids]), "year_of_birth": rng.integers(1930, 2020, 6_000)}, schema)
    keys = sort_keys("person", schema.names)
    assert keys[0] == "person_id"
    path = tmp_path / "person.parquet"
    n = write_sorted(
        _batches(t, 500, 2), schema, keys, path, bound=t.num_rows, per_bucket=one_row_per_person, sort_rows=400
    )
    got = pq.read_table(path)
    assert n == got.num_rows == len(set(ids.tolist()))
    assert got.column("person_id").to_pylist() == sorted(set(ids.tolist()))


def test_an_empty_table_gives_a_readable_empty_file(tmp_path):
    path = tmp_path / "death.parquet"
    assert write_sorted([], SCHEMA, KEYS, path, bound=0) == 0
    assert pq.read_table(path).schema.names == SCHEMA.names
