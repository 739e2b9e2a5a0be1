"""Level 2 (national): open each person's sealed transport token and derive the national pseudonym.

person_id = first 63 bits of HMAC-SHA-256(national key, token): the same patient gets the same national
pseudonym whatever platform the rows come from. Tokens never leave this step.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc

from eds_network.core.crypto import Key, hmac256, id63
from eds_network.core.errors import EdsError
from eds_network.core.exchange import TOKEN_COLUMN


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
