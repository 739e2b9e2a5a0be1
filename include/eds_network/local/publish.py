"""Local level: publish one base's batch to its platform intake — verify every staged file, then the manifest.

Staged files are content-addressed (`<table>.<sha256[:16]>.parquet`), so a rerun of the same interval writes
the same keys for the same content and new keys for new content; the manifest, written last, is the commit.
Files of the batch that the new manifest no longer lists are removed after it is written. A consumer reads
only what a manifest lists.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from eds_network.core import faults, zones
from eds_network.core.config import LocalBase
from eds_network.core.errors import AccountingError, IntegrityError
from eds_network.core.exchange import MANIFEST, SCHEMA_VERSION
from eds_network.core.signing import SIGNATURE_FIELD, sign_document
from eds_network.core.storage import list_keys, object_exists, put_json, read_json, sha256_object
from eds_network.local import keystate
from eds_network.local.extract import batch_id
from eds_network.local.resources import LocalResources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    base: str
    batch_id: str
    manifest_key: str
    tables: dict[str, dict]
    failed_tables: list[str]
    key_versions: dict[str, str] = field(default_factory=dict)

    def ref(self) -> dict:
        return {
            "base": self.base,
            "batch_id": self.batch_id,
            "manifest_key": self.manifest_key,
            "failed_tables": self.failed_tables,
            "key_versions": self.key_versions,
            "rows": {
                t: {k: v[k] for k in ("extracted", "published", "quarantined", "excluded_objection", "tombstones")}
                for t, v in self.tables.items()
            },
        }


def publish_batch(
    base: LocalBase,
    start: dt.datetime,
    end: dt.datetime,
    refs: list[dict | None],
    res: LocalResources,
) -> Published:
    """Verify the staged files of every table that succeeded, then write the batch manifest last."""
    bid = batch_id(base.id, start, end)
    s3 = res.intake.client()
    tables = {ref["table"]: _verified_entry(s3, res, base, ref) for ref in refs if ref}
    _require_one_key_version(base, tables, res)
    failed = sorted(set(base.tables) - set(tables))
    prefix = f"{res.intake_prefix}{base.id}/{bid}/"
    manifest_key = prefix + MANIFEST
    key_versions = {
        "level1": res.level1_version,
        "transport": res.transport_key.version,
        "national_box": res.national_key_version,
    }
    manifest = {
        "kind": "eds-network/local-batch",
        "base": base.id,
        "platform": base.platform,
        "site_number": base.site_number,
        "batch_id": bid,
        "data_interval": {"start": start.isoformat(), "end": end.isoformat()},
        "schema_version": SCHEMA_VERSION,
        "key_versions": key_versions,
        "pseudonymisation": base.pseudonymisation.model_dump(mode="json"),
        "tables": dict(sorted(tables.items())),
        "failed_tables": failed,
        "published_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    faults.inject("publish.after_upload_before_manifest")  # tests: files staged, no manifest yet
    previous = _published(s3, res.intake_bucket, manifest_key)
    if previous is not None and _same_batch(previous, manifest, signed_by=res.signing_key and zones.local(base.id)):
        # A rerun that produced the very same files: the batch stays as published (the platform finds it
        # already applied), so an unchanged night changes nothing downstream.
        log.info("%s: batch %s unchanged since its publication at %s", base.id, bid, previous["published_at"])
        manifest = previous
    else:
        if res.signing_key is not None:  # signed by the hospital zone's own key, last field set
            manifest = sign_document(manifest, res.signing_key, zones.local(base.id))
        put_json(s3, res.intake_bucket, manifest_key, manifest)
    # What each published table now depends on (key version, policy): the next run re-extracts on a change.
    keystate.record_published(res.source_dsn, bid, res.level1_version, tables)
    stale = _remove_stale(s3, res.intake_bucket, prefix, manifest_key, tables)
    log.info(
        "%s: batch %s published, %d tables (%d failed), %d stale files removed",
        *(base.id, bid, len(tables), len(failed), stale),
    )
    faults.inject("publish.after_manifest")  # tests: batch published, catalogue not updated yet
    return Published(base.id, bid, manifest_key, tables, failed, key_versions)


_ENTRY_FIELDS = (
    "key",
    "sha256",
    "bytes",
    "extracted",
    "published",
    "quarantined",
    "excluded_objection",
    "tombstones",
    "tombstones_key",
    "tombstones_sha256",
)


def _verified_entry(s3, res: LocalResources, base: LocalBase, ref: dict) -> dict:
    """One table's manifest entry, once its accounting balances and its staged files match their SHA-256."""
    if ref["extracted"] != ref["published"] + ref["quarantined"] + ref["excluded_objection"]:
        raise AccountingError("row accounting does not balance", base=base.id, table=ref["table"])
    for key_field, sha_field in (("key", "sha256"), ("tombstones_key", "tombstones_sha256")):
        key = ref.get(key_field)
        if not key:
            continue
        if object_exists(s3, res.intake_bucket, key) is None:
            raise IntegrityError(f"staged file {key} is missing", base=base.id, table=ref["table"])
        sha, _size = sha256_object(s3, res.intake_bucket, key)
        if sha != ref[sha_field]:
            raise IntegrityError(f"staged file {key} does not match its SHA-256", base=base.id, table=ref["table"])
    entry = {k: ref[k] for k in _ENTRY_FIELDS}
    entry["full"] = bool(ref.get("full"))  # re-keying run: replaces the site's rows
    entry["fingerprint"] = ref.get("fingerprint")
    return entry


def _require_one_key_version(base: LocalBase, tables: dict[str, dict], res: LocalResources) -> None:
    """Every table of one batch is pseudonymised under the key version the manifest states (a key rotated in the
    middle of a run would mix two versions in one batch: the interval is rerun instead)."""
    mixed = sorted(
        t
        for t, v in tables.items()
        if v.get("fingerprint") and not v["fingerprint"].startswith(f"level1={res.level1_version};")
    )
    if mixed:
        raise IntegrityError(
            f"tables {mixed} were pseudonymised under another level-1 key version than "
            f"{res.level1_version!r} (key rotated during the run): rerun the interval",
            base=base.id,
        )


def _remove_stale(s3, bucket: str, prefix: str, manifest_key: str, tables: dict[str, dict]) -> int:
    """Files under the batch's prefix that the manifest does not list (an earlier attempt's): deleted."""
    keep = (
        {manifest_key}
        | {v["key"] for v in tables.values()}
        | {v["tombstones_key"] for v in tables.values() if v["tombstones_key"]}
    )
    stale = [k for k in list_keys(s3, bucket, prefix) if k not in keep]
    for k in stale:
        s3.delete_object(Bucket=bucket, Key=k)
    return len(stale)


def _published(s3, bucket: str, key: str) -> dict | None:
    """The batch's manifest as published before (a rerun of the interval), or None."""
    return read_json(s3, bucket, key) if object_exists(s3, bucket, key) is not None else None


def _same_batch(previous: dict, manifest: dict, *, signed_by: str | None) -> bool:
    """Whether the published manifest states exactly this batch (same files, counts, keys and policy), signed by
    the same zone key if signing is on: only the publication time differs."""
    sig = previous.get(SIGNATURE_FIELD)
    if (sig.get("key_id") if isinstance(sig, dict) else None) != (signed_by or None):
        return False

    def content(doc: dict) -> dict:
        return {k: v for k, v in doc.items() if k not in ("published_at", SIGNATURE_FIELD)}

    return content(previous) == content(manifest)
