"""What the platform accepts from its members' intake: signed batch manifests, checked against the network config.

A manifest found under `<intake prefix><base>/<batch>/_manifest.json` is read only when
  - it is signed (Ed25519) by the key the trust store holds for `local:<base>`, the base whose prefix it lies in
    (never the signer the manifest claims);
  - it names that base, the base's platform and site number as the network config has them, and its batch id
    and every file it lists lie under that same prefix;
  - it is not older than a version of the same batch already accepted (`published_at`, monotonic per base and
    batch, recorded in the warehouse's `eds_platform.manifest_state`): a replayed older manifest is refused.
A refusal is an IntegrityError naming base, batch and reason; the batch stays in intake and the others go on.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping

import psycopg

from eds_network.core import zones
from eds_network.core.config import LocalBase, Platform
from eds_network.core.errors import IntegrityError
from eds_network.core.signing import verify_document


def batch_of_key(key: str) -> str:
    """The batch id a manifest's key names (`.../<base>/<batch>/_manifest.json`)."""
    parts = key.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else "?"


def verify_batch_manifest(
    raw: bytes,
    key: str,
    *,
    platform: Platform,
    base: LocalBase,
    base_prefix: str,
    trust: Mapping[str, bytes] | None,
) -> dict:
    """The manifest, once its signature, base, site, platform and prefixes check out; else IntegrityError."""
    batch = batch_of_key(key)

    def refuse(reason: str) -> IntegrityError:
        return IntegrityError(f"batch {batch}: manifest refused: {reason}", base=base.id)

    try:
        doc = json.loads(raw)
    except ValueError:
        raise refuse("not JSON") from None
    if not isinstance(doc, dict):
        raise refuse("not a JSON object")
    if trust is not None:
        public = trust.get(zones.local(base.id))
        if public is None:
            raise refuse(f"no public key for {zones.local(base.id)} in the platform's trust store")
        try:
            verify_document(doc, public, what=f"manifest of base {base.id}")
        except IntegrityError as exc:
            raise refuse(str(exc).split(": ", 1)[-1]) from None
    for field, want in (("base", base.id), ("platform", platform.id), ("site_number", base.site_number)):
        if doc.get(field) != want:
            raise refuse(f"{field} does not match the network config for the prefix it was found in")
    prefix = f"{base_prefix}{doc.get('batch_id')}/"
    if doc.get("batch_id") != batch or not key.startswith(prefix):
        raise refuse("batch id does not match the manifest's location")
    listed = [
        k for t in (doc.get("tables") or {}).values() for k in (t.get("key"), t.get("tombstones_key")) if k is not None
    ]
    if any(not isinstance(k, str) or not k.startswith(prefix) for k in listed):
        raise refuse("lists a file outside its batch's prefix")
    try:
        dt.datetime.fromisoformat(doc["published_at"])
        doc["data_interval"]["start"], doc["data_interval"]["end"]  # noqa: B018 (presence)
    except (KeyError, TypeError, ValueError):
        raise refuse("published_at or data_interval missing or malformed") from None
    return doc


def check_not_replayed(conn: psycopg.Connection, manifest: dict, sha256: str) -> None:
    """IntegrityError when a version of this batch published at or after this one was accepted before."""
    row = conn.execute(
        "SELECT published_at, manifest_sha256 FROM eds_platform.manifest_state WHERE base_id = %s AND batch_id = %s",
        (manifest["base"], manifest["batch_id"]),
    ).fetchone()
    if row and row[1] != sha256 and row[0] >= dt.datetime.fromisoformat(manifest["published_at"]):
        raise IntegrityError(
            f"batch {manifest['batch_id']}: manifest refused: replayed or older than the version accepted on "
            f"{row[0].isoformat()}",
            base=manifest["base"],
        )


def record_accepted(conn: psycopg.Connection, manifest: dict, sha256: str) -> None:
    """Remember the newest accepted version of the batch (inside the transaction that applies it)."""
    conn.execute(
        "INSERT INTO eds_platform.manifest_state (base_id, batch_id, published_at, manifest_sha256) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (base_id, batch_id) DO UPDATE SET published_at = EXCLUDED.published_at, "
        "manifest_sha256 = EXCLUDED.manifest_sha256, accepted_at = now()",
        (manifest["base"], manifest["batch_id"], manifest["published_at"], sha256),
    )
