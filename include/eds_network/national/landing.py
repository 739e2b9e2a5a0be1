"""The landing zone's objects, checked: present, encrypted at rest, and the very bytes sent (by the store's
checksum of its copy, or read back). Used by the sender before its manifest and by the HDH's receipt."""

from __future__ import annotations

from eds_network.core.errors import IntegrityError, TransferError
from eds_network.core.storage import object_exists, sha256_object
from eds_network.core.uploads import stored_checksum_matches


def encrypted(head: dict | None) -> bool:
    return bool(head) and head.get("ServerSideEncryption") in ("AES256", "aws:kms")


def verify_object(s3, bucket: str, f: dict, *, platform: str | None = None) -> None:
    """The stored object is present, encrypted at rest and, read back, has the manifest's SHA-256 and size."""
    check_stored(object_exists(s3, bucket, f["key"]), f, platform=platform)
    check_digest(f, *sha256_object(s3, bucket, f["key"]), platform=platform)


def verify_upload(s3, bucket: str, f: dict, checksum: str | None, *, platform: str | None = None) -> None:
    """What was just sent is what the store keeps: present, encrypted, the size and SHA-256 metadata sent, and the
    store's checksum of its copy equal to `checksum`, computed while sending (one HEAD). Without a checksum on
    either side the object is read back (`verify_object`)."""
    head = object_exists(s3, bucket, f["key"], ChecksumMode="ENABLED")
    check_stored(head, f, platform=platform)
    matches = stored_checksum_matches(head, checksum) if checksum else None
    if matches is None:
        return verify_object(s3, bucket, f, platform=platform)
    sent_as = head.get("Metadata", {}).get("sha256")
    if not matches or head["ContentLength"] != f["bytes"] or sent_as != f["sha256"]:
        raise IntegrityError(
            f"{_where(platform)}{f['key']}: stored object does not match what was sent (the store's checksum, size "
            f"{head['ContentLength']} vs {f['bytes']} bytes)",
            table=f.get("table"),
        )


def _where(platform: str | None) -> str:
    return f"platform {platform}: " if platform else ""


def check_stored(head: dict | None, f: dict, *, platform: str | None = None) -> None:
    """The object of `f` is in the landing zone (its HEAD is `head`) and encrypted at rest."""
    if head is None:
        raise IntegrityError(f"{_where(platform)}{f['key']} is missing from the landing zone", table=f.get("table"))
    if not encrypted(head):
        raise TransferError(
            f"{_where(platform)}{f['key']}: the landing zone did not apply encryption at rest", table=f.get("table")
        )


def check_digest(f: dict, sha: str, size: int, *, platform: str | None = None) -> None:
    """The bytes read (their SHA-256 and size) are the manifest's."""
    if sha != f["sha256"] or size != f["bytes"]:
        raise IntegrityError(
            f"{_where(platform)}{f['key']}: stored object does not match what was sent "
            f"(sha256 {sha[:12]}… vs {f['sha256'][:12]}…, {size} vs {f['bytes']} bytes)",
            table=f.get("table"),
        )
