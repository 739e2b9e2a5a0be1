"""The key holder of a platform's level-1 key: evaluates blinded elements (RFC 9497 OPRF), nothing else.

What the holder sees: per member and night, a count and that many ristretto255 elements, each a uniformly random
group element whatever the identity behind it (the blind is the hospital's). It never sees an identity, a
person id or a pseudonym, and its output is useless without the blinds.

Its key is its own connection's secret; the OPRF scalar is derived from it by RFC 9497 DeriveKeyPair with the
platform and the version as `info`, so a rotation (new secret, new version) gives a new scalar.

Evaluations are counted per member and per night by the caller (the catalogue), and a request that would take
a member above its ceiling is refused whole (`EvaluationRefused`): a brute force of the low-entropy input
(NIR | birth date | sex) needs millions of evaluations and shows as a spike.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging

from eds_network.core import oprf
from eds_network.core.crypto import Key
from eds_network.core.errors import EdsError, IntegrityError
from eds_network.core.exchange import (
    OPRF_ANNOUNCE,
    OPRF_REQUEST,
    OPRF_RESPONSE,
    oprf_part_key,
    oprf_prefix,
)
from eds_network.core.storage import S3Endpoint, put_json

log = logging.getLogger(__name__)


class EvaluationRefused(EdsError):
    """A member asked for more evaluations than its ceiling allows tonight: nothing of the request is evaluated."""


def server_key(key: Key, platform_id: str) -> oprf.ServerKey:
    """The OPRF scalar of a platform's level-1 key version (DeriveKeyPair over the connection's secret)."""
    seed = hashlib.sha256(key.secret).digest() if len(key.secret) != 32 else key.secret
    return oprf.derive_key_pair(seed, f"eds-network level-1 {platform_id} {key.version}".encode())


def announce(exchange: S3Endpoint, bucket: str, prefix: str, *, base: str, batch: str, version: str) -> dict:
    """Tell the member which key version this batch is evaluated under (no key material)."""
    doc = {"kind": "eds-network/oprf-key", "suite": oprf.SUITE, "base": base, "batch_id": batch, "key_version": version}
    put_json(exchange.client(), bucket, oprf_prefix(prefix, base, batch) + OPRF_ANNOUNCE, doc)
    return doc


def read_request(exchange: S3Endpoint, bucket: str, prefix: str, *, base: str, batch: str) -> tuple[dict, bytes]:
    s3 = exchange.client()
    body = s3.get_object(Bucket=bucket, Key=oprf_prefix(prefix, base, batch) + OPRF_REQUEST)["Body"].read()
    return json.loads(body), body


def evaluate_request(
    exchange: S3Endpoint,
    bucket: str,
    prefix: str,
    *,
    base: str,
    batch: str,
    key: oprf.ServerKey,
    version: str,
    already_tonight: int,
    ceiling: int,
) -> dict:
    """Evaluate one member's request of one batch and post the response (parts first, document last)."""
    s3 = exchange.client()
    where = oprf_prefix(prefix, base, batch)
    request, body = read_request(exchange, bucket, prefix, base=base, batch=batch)
    if request.get("base") != base or request.get("batch_id") != batch or request.get("suite") != oprf.SUITE:
        raise IntegrityError("the request does not name this member, batch and suite", base=base)
    if request.get("key_version") != version:
        raise EdsError(
            f"the request was blinded for key version {request.get('key_version')!r}, the holder's is {version!r}"
            " (key rotated during the run): rerun the interval",
            base=base,
        )
    count = int(request["count"])
    if already_tonight + count > ceiling:
        raise EvaluationRefused(
            f"{count} evaluations requested, {already_tonight} already tonight: above the ceiling of {ceiling} per"
            " night for this member (a brute force would look like this); raise key_holder.member_ceilings for"
            " this base in the network file if the volume is expected (onboarding, key rotation)",
            base=base,
        )
    parts = []
    for n, part in enumerate(request["parts"]):
        blob = s3.get_object(Bucket=bucket, Key=part["key"])["Body"].read()
        if hashlib.sha256(blob).hexdigest() != part["sha256"] or len(blob) != part["count"] * oprf.ELEMENT_BYTES:
            raise IntegrityError(f"request part {part['key']} does not match its SHA-256", base=base)
        out = b"".join(
            oprf.blind_evaluate(key, blob[i : i + oprf.ELEMENT_BYTES]) for i in range(0, len(blob), oprf.ELEMENT_BYTES)
        )
        out_key = oprf_part_key(where, "response", n)
        s3.put_object(Bucket=bucket, Key=out_key, Body=out)
        parts.append({"key": out_key, "count": part["count"], "sha256": hashlib.sha256(out).hexdigest()})
    response = {
        "kind": "eds-network/oprf-response",
        "suite": oprf.SUITE,
        "base": base,
        "batch_id": batch,
        "key_version": version,
        "count": count,
        "request_sha256": hashlib.sha256(body).hexdigest(),
        "parts": parts,
        "evaluated_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    put_json(s3, bucket, where + OPRF_RESPONSE, response)
    log.info("%s: %d blinded elements evaluated under level-1 key %s", base, count, version)
    return {"base": base, "batch_id": batch, "key_version": version, "evaluated": count}
