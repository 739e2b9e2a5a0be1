"""What zones exchange: the names and versions every publisher writes and every receiver checks.

A zone publishes files plus a manifest written last; the next zone reads only what a manifest lists.
"""

from __future__ import annotations

SCHEMA_VERSION = "OMOP CDM 5.4"
MANIFEST = "_manifest.json"
# The sealed transport token of a person row (hospital -> national, opaque to the platform).
TOKEN_COLUMN = "_transport_token"

# The level-1 OPRF round trip, in the key holder's exchange area (`<prefix><base>/<batch_id>/`): the holder
# announces its key version, the hospital posts blinded elements, the holder answers with evaluated elements.
# Parts are raw concatenations of 32-byte ristretto255 elements; each document lists its parts' SHA-256.
OPRF_ANNOUNCE = "_key.json"
OPRF_REQUEST = "request.json"
OPRF_RESPONSE = "response.json"
OPRF_PART_ELEMENTS = 50_000


def oprf_prefix(prefix: str, base: str, batch_id: str) -> str:
    return f"{prefix}{base}/{batch_id}/"


def oprf_part_key(where: str, kind: str, part: int) -> str:
    return f"{where}{kind}.{part:05d}.bin"


# The HDH's acknowledgement of a platform delivery applied to the national tables, written by the national zone
# into the platform's outbox (`<outbox prefix>_ack.json`), signed with the national key: the change-sequence
# watermark the next incremental delivery starts from, and whether the HDH asks for a full delivery instead.
ACK = "_ack.json"
