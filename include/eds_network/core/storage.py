"""Object storage helpers (S3-compatible): clients, checksummed uploads, manifests.

Every file we publish carries our own full-file SHA-256 in its manifest: a multipart ETag or an S3
composite checksum is not a file hash. Manifests are written last; a consumer reads only what a
manifest lists.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from eds_network.core import faults
from eds_network.core.errors import TransferError

CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class S3Endpoint:
    """What a task needs to reach one S3-compatible endpoint (resolved from an Airflow connection)."""

    endpoint_url: str | None
    access_key: str | None
    secret_key: str | None = field(repr=False)
    region: str = "eu-west-3"
    # TLS verification: a CA bundle's path (a private CA, connection extra `verify`), False (never in production),
    # or None: botocore's default, which honours AWS_CA_BUNDLE
    verify: str | bool | None = None

    def client(self):
        return s3_client(self.endpoint_url, self.access_key, self.secret_key, self.region, verify=self.verify)

    @property
    def ca_bundle(self) -> str | None:
        """The CA bundle file this endpoint is verified with, when it is not the system's (clients other than
        boto3, such as pyarrow's S3 filesystem, need it given explicitly)."""
        if isinstance(self.verify, str):
            return self.verify
        return os.environ.get("AWS_CA_BUNDLE") or None

    def is_loopback_http(self) -> bool:
        if not self.endpoint_url:
            return False
        u = urlparse(self.endpoint_url)
        if u.scheme != "http":
            return False
        host = u.hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def require_tls(self, *, allow_loopback_http: bool, what: str) -> None:
        """Refuse a plain-http endpoint unless it is a loopback address explicitly allowed for local use."""
        if not self.endpoint_url or urlparse(self.endpoint_url).scheme == "https":
            return
        if allow_loopback_http and self.is_loopback_http():
            return
        host = urlparse(self.endpoint_url).hostname
        raise TransferError(
            f"{what}: endpoint http://{host} is not TLS; only https:// is accepted"
            + (
                ""
                if self.is_loopback_http()
                else " (plain http is allowed for a loopback address only, when "
                "national.allow_plain_http_loopback is true)"
            )
        )


def verify_of(value) -> str | bool | None:
    """A connection extra's `verify` (boto3's meaning): a CA bundle path, a boolean (or its text), or absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def s3_client(
    endpoint_url: str | None,
    access_key: str | None,
    secret_key: str | None,
    region: str = "eu-west-3",
    *,
    verify: str | bool | None = None,
):
    cfg = Config(
        region_name=region,
        retries={"max_attempts": 5, "mode": "standard"},
        # completing a large multipart upload can take longer than botocore's 60 s default on a busy endpoint
        read_timeout=300,
        # boto3 >= 1.36 sends new default checksums that some S3-compatible servers reject.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
    )
    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=cfg,
        verify=verify,
    )
    client.meta.events.register("before-call.s3", faults.s3_hook)  # no-op unless EDS_FAULT is set (tests)
    return client


def ensure_bucket(s3, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        try:
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class HashingWriter:
    """A file written once, front to back (a Parquet writer's sink), SHA-256 hashed as its bytes are written: the
    digest of a file we publish without reading it back. `sha256` and `size` once closed."""

    def __init__(self, path: Path):
        self._f = open(path, "wb")  # noqa: SIM115 (closed by close(), as the writer that owns this sink does)
        self._h = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self._h.update(data)
        self.size += len(data)
        return self._f.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def sha256(self) -> str:
        if not self._f.closed:
            raise ValueError("the digest of a file still being written")
        return self._h.hexdigest()

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sha256_object(s3, bucket: str, key: str) -> tuple[str, int]:
    """Stream an object back and hash it: the only proof that the stored bytes are ours."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    h = hashlib.sha256()
    size = 0
    for chunk in body.iter_chunks(CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def download(s3, bucket: str, key: str, dest: Path) -> tuple[str, int]:
    """Download to `dest`, hashing on the way. Returns (sha256, size)."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    h = hashlib.sha256()
    size = 0
    with open(dest, "wb") as f:
        for chunk in body.iter_chunks(CHUNK):
            h.update(chunk)
            f.write(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def object_exists(s3, bucket: str, key: str, **head_args) -> dict | None:
    """The object's HEAD (`head_args`: e.g. ChecksumMode="ENABLED" for its stored checksum), None if absent."""
    try:
        return s3.head_object(Bucket=bucket, Key=key, **head_args)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def read_json(s3, bucket: str, key: str) -> Any:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def put_json(s3, bucket: str, key: str, doc: Any, **extra) -> None:
    body = json.dumps(doc, indent=2, sort_keys=True, default=str).encode()
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", **extra)


def delete_prefix(s3, bucket: str, prefix: str) -> int:
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if objs:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objs, "Quiet": True})
            n += len(objs)
    return n


def list_keys(s3, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys
