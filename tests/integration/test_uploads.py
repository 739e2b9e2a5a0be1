"""Uploads verified by the store's own SHA-256 checksums (core/uploads.py, national/landing.py), on the embedded S3
endpoint: the sender proves its copy with one HEAD, no read-back; an object whose bytes differ from what was sent
is refused, whether the store reports a checksum for it or not; a failed part stops the upload.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections import Counter

import pytest

from eds_network.core import uploads
from eds_network.core.errors import IntegrityError
from eds_network.core.storage import ensure_bucket, object_exists, sha256_file
from eds_network.national import landing

pytestmark = pytest.mark.integration

BUCKET = "test-uploads"
PART = 5 << 20  # S3's smallest part


@pytest.fixture
def s3(stack):
    c = stack.s3_client()
    ensure_bucket(c, BUCKET)
    calls: Counter = Counter()
    c.meta.events.register("before-call.s3.*", lambda model, **_: calls.update([model.name]))
    c.calls = calls
    return c


@pytest.fixture
def big(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(3 * PART + 12345))  # 4 parts, the last one short
    return path


def _send(s3, path, key, **kw):
    return uploads.upload_checksummed(
        s3, path, BUCKET, key, threshold=PART, part_size=PART, concurrency=kw.pop("concurrency", 4),
        extra={"Metadata": {"sha256": sha256_file(path)}, "ServerSideEncryption": "AES256"},
    )  # fmt: skip


def _entry(path, key) -> dict:
    return {"key": key, "sha256": sha256_file(path), "bytes": path.stat().st_size, "table": "measurement"}


def test_a_multipart_upload_is_proven_by_the_stores_composite_checksum_without_reading_it_back(s3, big):
    key = f"{uuid.uuid4().hex}/big.bin"
    checksum = _send(s3, big, key)
    data = big.read_bytes()
    parts = [hashlib.sha256(data[i : i + PART]).digest() for i in range(0, len(data), PART)]
    assert len(parts) == 4 and s3.calls["UploadPart"] == 4
    assert checksum == base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    head = object_exists(s3, BUCKET, key, ChecksumMode="ENABLED")
    assert uploads.stored_checksum_matches(head, checksum) is True  # the store computed it from its copy
    s3.calls.clear()
    landing.verify_upload(s3, BUCKET, _entry(big, key), checksum)
    assert s3.calls == Counter({"HeadObject": 1})  # no GetObject: nothing read back


def test_a_small_file_goes_in_one_put_with_the_files_own_sha256(s3, tmp_path):
    path = tmp_path / "small.bin"
    path.write_bytes(os.urandom(1000))
    key = f"{uuid.uuid4().hex}/small.bin"
    checksum = _send(s3, path, key)
    assert s3.calls["PutObject"] == 1 and s3.calls["CreateMultipartUpload"] == 0
    assert base64.b64decode(checksum).hex() == sha256_file(path)
    landing.verify_upload(s3, BUCKET, _entry(path, key), checksum)


def test_an_object_replaced_by_other_bytes_of_the_same_size_and_metadata_is_refused(s3, big, tmp_path):
    key = f"{uuid.uuid4().hex}/big.bin"
    checksum = _send(s3, big, key)
    other = tmp_path / "other.bin"
    data = bytearray(big.read_bytes())
    data[PART + 7] ^= 0xFF  # one byte of the second part
    other.write_bytes(bytes(data))
    # a multipart upload of the other bytes, with checksums, under the same key and the first file's metadata
    uploads.upload_checksummed(
        s3, other, BUCKET, key, threshold=PART, part_size=PART, concurrency=1,
        extra={"Metadata": {"sha256": sha256_file(big)}, "ServerSideEncryption": "AES256"},
    )  # fmt: skip
    s3.calls.clear()
    with pytest.raises(IntegrityError, match="does not match what was sent") as err:
        landing.verify_upload(s3, BUCKET, _entry(big, key), checksum)
    assert key in str(err.value) and "table=measurement" in str(err.value)
    assert s3.calls["GetObject"] == 0  # refused on the store's checksum alone


def test_an_object_the_store_has_no_checksum_for_is_read_back_and_refused_if_it_differs(s3, big):
    key = f"{uuid.uuid4().hex}/big.bin"
    checksum = _send(s3, big, key)
    s3.put_object(  # no checksum asked: the store reports none for this copy
        Bucket=BUCKET, Key=key, Body=os.urandom(big.stat().st_size),
        Metadata={"sha256": sha256_file(big)}, ServerSideEncryption="AES256",
    )  # fmt: skip
    s3.calls.clear()
    with pytest.raises(IntegrityError, match="sha256"):
        landing.verify_upload(s3, BUCKET, _entry(big, key), checksum)
    assert s3.calls["GetObject"] == 1  # the fallback: read back and hashed


def test_a_failed_part_stops_the_parts_not_yet_started(s3, big):
    sent = Counter()

    def fail_second(**_):
        sent["n"] += 1
        if sent["n"] == 2:
            raise ConnectionError("the endpoint went away")

    s3.meta.events.register("before-call.s3.UploadPart", fail_second)
    with pytest.raises(ConnectionError):
        _send(s3, big, f"{uuid.uuid4().hex}/big.bin", concurrency=1)
    assert sent["n"] == 2 and s3.calls["CompleteMultipartUpload"] == 0
