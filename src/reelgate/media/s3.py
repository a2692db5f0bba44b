"""Videos in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, Cloudflare R2, ...).

The scaled-out adapter: every API process and worker shares one bucket, and clients download
straight from it through presigned GET URLs (or through a public base URL, e.g. a CDN in
front of the bucket), so video bytes never pass through the API.

boto3 is blocking; each call runs in a worker thread. One client per instance is enough:
boto3 clients are thread-safe (sessions are not, so each instance makes its own session).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import boto3.session
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from reelgate.media.storage import (
    StorageKeyMissing,
    TooLarge,
    _safe_key,
)

__all__ = ["S3Storage", "StorageUnavailable", "parse_s3_url"]

CONTENT_TYPE = "video/mp4"


def content_type_of(key: str) -> str:
    """Videos, and the JPEG poster frames stored beside them."""
    return "image/jpeg" if key.endswith(".jpg") else CONTENT_TYPE

# SigV4 presigned URLs cannot outlive a week; S3 refuses longer ones when they are used,
# so refuse them when the server starts instead.
MAX_PRESIGN_TTL_S = 7 * 24 * 3600

_MIB = 1024 * 1024

# HEAD answers carry no body, so botocore reports the bare status as the code.
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class StorageUnavailable(RuntimeError):
    """The bucket cannot be reached, does not exist, or refused us."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/optional/prefix`` -> (bucket, prefix without slashes at the ends)."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError(f"not an s3:// URL: {url!r}")
    if not parts.netloc:
        raise ValueError(f"the s3:// URL names no bucket: {url!r}")
    if parts.query or parts.fragment:
        # Refused rather than ignored: an option written here would silently do nothing.
        raise ValueError(f"the s3:// URL takes no query or fragment: {url!r}")
    prefix = parts.path.strip("/")
    if prefix:
        _safe_key(prefix)  # the same rules as keys: no "..", no empty segments
    return parts.netloc, prefix


class S3Storage:
    """The ``Storage`` protocol over one bucket, below an optional key prefix."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str = "",
        region: str = "",
        access_key: str = "",
        secret_key: str = "",
        presign_ttl_s: int = 24 * 3600,
        public_base_url: str = "",
        presign_endpoint_url: str = "",
        multipart_threshold: int = 16 * _MIB,
        multipart_chunksize: int = 16 * _MIB,
        max_concurrency: int = 4,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        if not 1 <= presign_ttl_s <= MAX_PRESIGN_TTL_S:
            raise ValueError(
                f"presign TTL must be 1..{MAX_PRESIGN_TTL_S} s (SigV4 limit), got {presign_ttl_s}"
            )
        if bool(access_key) != bool(secret_key):
            raise ValueError("give both the S3 access key and secret key, or neither")
        self.presign_ttl_s = presign_ttl_s
        self.public_base_url = public_base_url.rstrip("/")

        # Empty values fall through to boto3's own chain (AWS_* variables, ~/.aws files,
        # instance or pod roles), so production can use short-lived credentials.
        session = boto3.session.Session(
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            region_name=region or None,
        )
        self._client = session.client(
            "s3", endpoint_url=endpoint_url or None, config=_client_config(endpoint_url)
        )
        # The address workers reach the bucket at (http://minio:9000 inside a cluster) may
        # not be the one clients can reach. The host is part of the signature, so the URL
        # cannot be rewritten afterwards: presign with a client for the public address.
        # Presigning is local computation, so this client never opens a connection.
        if presign_endpoint_url and presign_endpoint_url != endpoint_url:
            self._presigner = session.client(
                "s3",
                endpoint_url=presign_endpoint_url,
                config=_client_config(presign_endpoint_url),
            )
        else:
            self._presigner = self._client
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max_concurrency,
        )

    def object_key(self, key: str) -> str:
        """The key in the bucket for a storage key (the prefix prepended)."""
        key = _safe_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def put_file(self, key: str, src: Path) -> None:
        obj = self.object_key(key)
        size = os.stat(src).st_size
        # upload_file switches to a multipart upload above the threshold (parallel parts,
        # each retried on its own) and aborts the upload if a part fails for good, so no
        # half-written object is ever visible under the key.
        try:
            await asyncio.to_thread(
                self._client.upload_file,
                str(src),
                self.bucket,
                obj,
                ExtraArgs={"ContentType": content_type_of(key)},
                Config=self._transfer,
            )
        except (S3UploadFailedError, ClientError, BotoCoreError) as exc:
            raise StorageUnavailable(f"upload to s3://{self.bucket}/{obj} failed: {exc}") from exc
        # The runner marks the prediction completed as soon as this returns, so confirm
        # that the bucket really serves the whole object: an S3-compatible server that
        # acknowledges before the object is readable, or a proxy that truncates, fails
        # the job here instead of handing the client a broken link.
        try:
            head = await asyncio.to_thread(self._client.head_object, Bucket=self.bucket, Key=obj)
        except (ClientError, BotoCoreError) as exc:
            raise StorageUnavailable(
                f"s3://{self.bucket}/{obj} is not readable after upload: {exc}"
            ) from exc
        if head.get("ContentLength") != size:
            raise StorageUnavailable(
                f"s3://{self.bucket}/{obj} holds {head.get('ContentLength')} bytes after "
                f"upload, expected {size}"
            )

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        obj = self.object_key(key)
        try:
            await asyncio.to_thread(self._client.put_object, Bucket=self.bucket, Key=obj,
                                    Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise StorageUnavailable(f"upload to s3://{self.bucket}/{obj} failed: {exc}") from exc

    async def get_bytes(self, key: str) -> bytes:
        obj = self.object_key(key)

        def read() -> bytes:
            resp = self._client.get_object(Bucket=self.bucket, Key=obj)
            with resp["Body"] as body:
                return bytes(body.read())

        try:
            return await asyncio.to_thread(read)
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES | {"NoSuchKey"}:
                raise StorageKeyMissing(key) from None
            raise StorageUnavailable(f"s3://{self.bucket}/{obj} is not readable: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"s3://{self.bucket}/{obj} is not readable: {exc}") from exc

    async def exists(self, key: str) -> bool:
        obj = self.object_key(key)
        try:
            await asyncio.to_thread(self._client.head_object, Bucket=self.bucket, Key=obj)
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:
                return False
            raise
        return True

    async def delete(self, key: str) -> None:
        # S3 answers a delete of a missing key with success, as LocalStorage does.
        await asyncio.to_thread(
            self._client.delete_object, Bucket=self.bucket, Key=self.object_key(key)
        )

    async def read_bytes(self, key: str, max_bytes: int) -> bytes:
        """The whole object, for answers that carry it inline (enable_base64_output). The
        size is read first (HEAD), so an oversized object is never downloaded; a missing one
        raises FileNotFoundError, as LocalStorage does."""
        obj = self.object_key(key)
        try:
            head = await asyncio.to_thread(self._client.head_object, Bucket=self.bucket, Key=obj)
            size = int(head.get("ContentLength", 0))
            if size > max_bytes:
                raise TooLarge(key, size, max_bytes)
            answer = await asyncio.to_thread(self._client.get_object, Bucket=self.bucket, Key=obj)
            return await asyncio.to_thread(answer["Body"].read)
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:
                raise FileNotFoundError(f"s3://{self.bucket}/{obj}") from None
            raise StorageUnavailable(f"reading s3://{self.bucket}/{obj} failed: {exc}") from exc

    def url(self, key: str, base_url: str) -> str:
        """A URL the client downloads the video from; ``base_url`` (our own address) is
        not needed, the bucket serves the bytes."""
        obj = self.object_key(key)
        if self.public_base_url:
            # The public base serves the bucket's root, so the prefix is part of the path.
            return f"{self.public_base_url}/{quote(obj)}"
        # Note: a URL signed with temporary credentials (an IAM role) stops working when
        # those credentials expire, even if the TTL has not run out.
        return str(
            self._presigner.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": obj},
                ExpiresIn=self.presign_ttl_s,
            )
        )

    async def check(self, timeout_s: float = 5.0) -> None:
        """Raise StorageUnavailable unless the bucket exists and our credentials reach it
        (HeadBucket needs s3:ListBucket on the bucket)."""
        try:
            # The thread may outlive the timeout (retries against a dead endpoint); the
            # readiness probe must still answer in time.
            await asyncio.wait_for(
                asyncio.to_thread(self._client.head_bucket, Bucket=self.bucket), timeout_s
            )
        except TimeoutError as exc:
            raise StorageUnavailable(
                f"bucket {self.bucket!r} did not answer within {timeout_s} s"
            ) from exc
        except (ClientError, BotoCoreError) as exc:
            raise StorageUnavailable(f"bucket {self.bucket!r} is not usable: {exc}") from exc


def _client_config(endpoint_url: str) -> Config:
    # Request checksums follow botocore's defaults. An S3-compatible server that rejects
    # them is served by AWS_REQUEST_CHECKSUM_CALCULATION=when_required, which botocore
    # reads itself, so it is not repeated as a setting of ours.
    return Config(
        # Presigned URLs must be SigV4: newer AWS regions and most S3-compatible servers
        # refuse the legacy signature.
        signature_version="s3v4",
        # Path-style (endpoint/bucket/key) for a custom endpoint: MinIO, Ceph and friends
        # serve it without wildcard DNS, which virtual-host style needs.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )


def _error_code(exc: ClientError) -> str:
    error: dict[str, Any] = exc.response.get("Error", {})
    return str(error.get("Code", ""))
