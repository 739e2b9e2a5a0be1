"""Row ids re-keyed per level: no local id readable in any output id, references kept, rotation changes all."""

from __future__ import annotations

import secrets

import pyarrow as pa
import pytest

from eds_network.core import rowids
from eds_network.core.errors import IntegrityError

LOCAL = pa.array(list(range(1, 5001)) + [10**6 + 7, 123_456_789], pa.int64())


def _key(label: str = "level1|750000001") -> bytes:
    return rowids.level_key(secrets.token_bytes(32), label)


def test_no_output_id_gives_back_a_local_id_verbatim_or_modulo_any_power_of_ten():
    out = rowids.rekey(LOCAL, _key(), "level1-row").to_pylist()
    local = set(LOCAL.to_pylist())
    assert all(0 < i < 2**63 for i in out) and len(set(out)) == len(out)
    for p in range(1, 19):
        hits = sum(1 for i in out if i % 10**p in local)
        # 5002 random 63-bit values: a residue mod 10^p in a 5002-value set happens by chance only for small p
        assert hits <= (len(out) * len(local) / 10**p) * 5 + 3, p
    assert not {i - s * 10**12 for i in out for s in range(1, 10)} & local  # not site * 10**12 + id any more


def test_references_stay_consistent_and_nulls_stay_null():
    key = _key()
    a = rowids.rekey(pa.array([5, None, 9], pa.int64()), key, "level1-row").to_pylist()
    b = rowids.rekey(pa.array([9, 5], pa.int64()), key, "level1-row").to_pylist()
    assert a[1] is None and a[0] == b[1] and a[2] == b[0]


def test_another_site_another_level_or_a_rotated_key_give_other_ids():
    secret = secrets.token_bytes(32)
    ids = pa.array(range(1, 1001), pa.int64())

    def of(secret: bytes, label: str, domain: str = "level1-row") -> set[int]:
        return set(rowids.rekey(ids, rowids.level_key(secret, label), domain).to_pylist())

    base = of(secret, "level1|750000001")
    assert not base & of(secret, "level1|750000002")  # two sites: unrelated ids (the site is not derivable)
    assert not base & of(secrets.token_bytes(32), "level1|750000001")  # rotation: every id changes
    assert not base & of(secret, "national", "national-row")  # the next level: unrelated again


def test_a_collision_in_a_batch_is_refused():
    with pytest.raises(IntegrityError, match="collision"):
        rowids.check_no_collision(pa.array([1, 2], pa.int64()), pa.array([7, 7], pa.int64()), table="t", column="c")
    rowids.check_no_collision(pa.array([1, 1], pa.int64()), pa.array([7, 7], pa.int64()), table="t", column="c")
