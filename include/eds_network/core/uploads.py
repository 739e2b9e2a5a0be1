"""Uploads the object store checks for us: SHA-256 checksums computed while sending, verified without a read-back.

A file at or above the multipart threshold is sent in parts, each with its own SHA-256 (`ChecksumSHA256`, computed
by the thread that reads and sends the part, while the other parts travel). S3 and MinIO check each part against
its checksum on arrival and refuse a part whose bytes differ; the object then carries a composite checksum, the
SHA-256 of the parts' SHA-256 digests, which the store computes from what it keeps. `stored_checksum_matches`
compares that checksum, read by one HEAD, with the one computed here: the stored object is the file, proven
without reading it back. A smaller file is sent in one PUT with the file's own SHA-256.

The composite is not the file's SHA-256 (manifests keep that one, computed from the file): it proves the copy,
not the content. A store that reports no checksum gets `None` from `stored_checksum_matches`; the caller then
reads the object back.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class _Stopped(Exception):
    """A part not sent because an earlier one failed."""


def upload_checksummed(
    s3, path: Path, bucket: str, key: str, *, threshold: int, part_size: int, concurrency: int, extra: dict
) -> str:
    """Upload `path` to `bucket/key` with SHA-256 checksums (`extra`: the PUT's metadata and encryption
    arguments). Returns the checksum the store must report: the file's SHA-256 for a single PUT, the composite
    of the parts' for a multipart upload (both base64, the store's spelling). A failed part stops the parts not
    yet started and raises; aborting the incomplete upload is the caller's (it knows who to name)."""
    size = path.stat().st_size
    if size < threshold:
        body = path.read_bytes()
        checksum = _b64(hashlib.sha256(body).digest())
        s3.put_object(Bucket=bucket, Key=key, Body=body, ChecksumSHA256=checksum, **extra)
        return checksum
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", **extra)["UploadId"]
    stop = threading.Event()

    def send(index: int) -> tuple[dict, bytes]:
        if stop.is_set():
            raise _Stopped
        try:
            with open(path, "rb") as f:
                f.seek(index * part_size)
                data = f.read(part_size)
            digest = hashlib.sha256(data).digest()
            r = s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=index + 1, Body=data, ChecksumSHA256=_b64(digest)
            )
        except BaseException:
            stop.set()
            raise
        return {"PartNumber": index + 1, "ETag": r["ETag"], "ChecksumSHA256": _b64(digest)}, digest

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="eds-upload") as pool:
        futures = [pool.submit(send, i) for i in range(-(-size // part_size))]
    failed = [e for f in futures if (e := f.exception()) is not None and not isinstance(e, _Stopped)]
    if failed:
        raise failed[0]
    parts = [f.result() for f in futures]
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": [p for p, _ in parts]}
    )
    return _b64(hashlib.sha256(b"".join(d for _, d in parts)).digest())


def stored_checksum_matches(head: dict, expected: str) -> bool | None:
    """Whether the store's SHA-256 checksum of the object (a HEAD with ChecksumMode="ENABLED": `storage.object_exists`) is `expected`; None when the
    store reports none (a store without checksums, or an object sent without one)."""
    got = head.get("ChecksumSHA256")
    if not got:
        return None
    return got.split("-", 1)[0] == expected  # a composite is spelled "<base64>-<number of parts>"
