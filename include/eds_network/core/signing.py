"""Signed documents: what one zone publishes (a manifest, a receipt, an exchange request) carries an Ed25519
signature of its publisher, and the receiving zone verifies it before reading anything the document lists.

The signature covers the canonical JSON of the document without its `signature` field (keys sorted, no spaces,
UTF-8), so any change to any field breaks it:

    "signature": {"alg": "ed25519", "key_id": "<who signed>", "value": "<base64 of the 64-byte signature>"}

`key_id` names the signer (a zone, e.g. `local:hosp_a`); the receiver looks the public key up by what it expects
the signer to be, never by the `key_id` the document claims.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from eds_network.core.errors import IntegrityError

ALG = "ed25519"
SIGNATURE_FIELD = "signature"


def canonical(doc: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the document without its signature, as canonical JSON."""
    body = {k: v for k, v in doc.items() if k != SIGNATURE_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def sign_document(doc: Mapping[str, Any], signing_key: bytes, key_id: str) -> dict[str, Any]:
    """A copy of `doc` with the signature of `signing_key` (a 32-byte Ed25519 seed) added."""
    from nacl.signing import SigningKey

    sig = SigningKey(signing_key).sign(canonical(doc)).signature
    return {**doc, SIGNATURE_FIELD: {"alg": ALG, "key_id": key_id, "value": base64.b64encode(sig).decode()}}


def verify_document(doc: Mapping[str, Any], public_key: bytes, *, what: str) -> Mapping[str, Any]:
    """`doc` itself when its signature verifies against `public_key`; else IntegrityError naming `what`."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    sig = doc.get(SIGNATURE_FIELD)
    if not isinstance(sig, Mapping) or sig.get("alg") != ALG or not sig.get("value"):
        raise IntegrityError(f"{what}: not signed (no {ALG} signature)")
    try:
        VerifyKey(public_key).verify(canonical(doc), base64.b64decode(sig["value"], validate=True))
    except (BadSignatureError, ValueError):
        raise IntegrityError(f"{what}: bad signature (not signed by the expected key, or altered)") from None
    return doc


def public_key_of(signing_key: bytes) -> bytes:
    from nacl.signing import SigningKey

    return bytes(SigningKey(signing_key).verify_key)
