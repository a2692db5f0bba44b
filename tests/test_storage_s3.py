"""Video storage: what only the S3 adapter does, against moto's S3 server on 127.0.0.1. The
cases every adapter must pass (local disk and S3) are tests/contract/test_storage.py.

moto (5.x) stores and serves objects faithfully but does not check the signature or the
expiry of presigned URLs, so the fake below puts a small WSGI layer in front of moto's own
application that verifies them the way S3 does (SigV4 query auth, recomputed with
botocore's signer) and answers S3's 403 error documents. Everything else is moto.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import numpy as np
import pytest

from reelgate.media.s3 import S3Storage, StorageUnavailable, parse_s3_url
from reelgate.media.storage import LocalStorage, UrlSigner, build_storage
from reelgate.media.video import check_video, encode_mp4

from .conftest import free_port
from .fake_s3 import (
    ACCESS_KEY,
    ENV_ACCESS_KEY,
    ENV_SECRET_KEY,
    MIB,
    REGION,
    SECRET_KEY,
    make_s3,
)
from .videos import render_video

# --- videos ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real sandbox render, 720p, 1 s."""
    return render_video(tmp_path_factory.mktemp("video") / "video.mp4")


@pytest.fixture(scope="session")
def large_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real MP4 over 10 MiB, so a 5 MiB part size gives a three-part upload.

    Lossless noise is incompressible, so a few frames are enough.
    """
    path = tmp_path_factory.mktemp("s3-large") / "large.mp4"
    rng = np.random.default_rng(7)
    frames = 8
    noise: Iterable[np.ndarray] = (
        rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8) for _ in range(frames)
    )
    encode_mp4(path, noise, width=1280, height=720, fps=24, frame_count=frames, crf=0,
               preset="ultrafast")
    assert path.stat().st_size > 10 * MIB
    return path


BASE_URL = "http://reelgate.test"


# --- S3 specifics ----------------------------------------------------------------------------


async def test_presigned_url_downloads_a_playable_mp4(
    s3_endpoint: str, bucket: str, video: Path, tmp_path: Path
) -> None:
    storage = make_s3(s3_endpoint, f"s3://{bucket}/videos")
    await storage.put_file("ab/abc.mp4", video)
    url = storage.url("ab/abc.mp4", BASE_URL)
    assert url.startswith(f"{s3_endpoint}/{bucket}/videos/ab/abc.mp4?")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=86400" in url
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    downloaded = tmp_path / "downloaded.mp4"
    downloaded.write_bytes(response.content)
    info = check_video(downloaded)  # the real demuxer and decoder
    assert (info.width, info.height, info.video_codec) == (1280, 720, "h264")


async def test_objects_live_under_the_prefix(
    s3_endpoint: str, bucket: str, s3_admin: Any, video: Path
) -> None:
    storage = make_s3(s3_endpoint, f"s3://{bucket}/tenants/acme/")
    await storage.put_file("ab/abc.mp4", video)
    listed = s3_admin.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listed["Contents"]] == ["tenants/acme/ab/abc.mp4"]
    assert listed["Contents"][0]["Size"] == video.stat().st_size
    head = s3_admin.head_object(Bucket=bucket, Key="tenants/acme/ab/abc.mp4")
    assert head["ContentType"] == "video/mp4"

    at_root = make_s3(s3_endpoint, f"s3://{bucket}")
    await at_root.put_file("ab/root.mp4", video)
    assert s3_admin.head_object(Bucket=bucket, Key="ab/root.mp4")["ContentLength"] > 0


async def test_tampered_presigned_urls_are_refused(
    s3_endpoint: str, bucket: str, video: Path
) -> None:
    storage = make_s3(s3_endpoint, f"s3://{bucket}/videos")
    await storage.put_file("ab/abc.mp4", video)
    url = storage.url("ab/abc.mp4", BASE_URL)
    assert httpx.get(url).status_code == 200
    longer = url.replace("X-Amz-Expires=86400", "X-Amz-Expires=604800")
    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    forged = url.replace(signature, "0" * len(signature))
    for bad in (longer, forged):
        assert bad != url
        response = httpx.get(bad)
        assert response.status_code == 403
        assert b"<Code>SignatureDoesNotMatch</Code>" in response.content


async def test_presigned_url_expires(s3_endpoint: str, bucket: str, video: Path) -> None:
    # 2 s: time for the first GET on a busy machine (1 s was not, once).
    storage = make_s3(s3_endpoint, f"s3://{bucket}", presign_ttl_s=2)
    await storage.put_file("ab/short.mp4", video)
    url = storage.url("ab/short.mp4", BASE_URL)
    assert httpx.get(url).status_code == 200
    # X-Amz-Date has whole seconds, so the URL is dead at most 3 s after signing.
    await asyncio.sleep(3.1)
    response = httpx.get(url)
    assert response.status_code == 403
    assert b"Request has expired" in response.content


async def test_large_files_go_up_in_parts(
    s3_endpoint: str, bucket: str, s3_admin: Any, large_video: Path, tmp_path: Path
) -> None:
    # 5 MiB is S3's smallest part size; the default threshold (16 MiB) is lowered so the
    # multipart path runs on a file that takes well under a second to make.
    storage = make_s3(s3_endpoint, f"s3://{bucket}/videos",
                      multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    await storage.put_file("ab/large.mp4", large_video)
    head = s3_admin.head_object(Bucket=bucket, Key="videos/ab/large.mp4")
    # A multipart object's ETag ends in "-<number of parts>".
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ContentLength"] == large_video.stat().st_size
    # No unfinished multipart upload is left behind to be billed.
    assert not s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads")
    response = httpx.get(storage.url("ab/large.mp4", BASE_URL))
    assert response.content == large_video.read_bytes()
    downloaded = tmp_path / "large.mp4"
    downloaded.write_bytes(response.content)
    assert check_video(downloaded).frames == 8


async def test_upload_to_a_missing_bucket_raises(s3_endpoint: str, video: Path) -> None:
    # The runner marks the prediction failed (and refunds) when put_file raises; it must
    # never return as if the video were stored.
    storage = make_s3(s3_endpoint, f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}")
    with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
        await storage.put_file("ab/abc.mp4", video)


async def test_put_file_raises_when_the_bucket_holds_less_than_was_sent(
    s3_endpoint: str, bucket: str, video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy or an S3-compatible server that acknowledges a partial object must fail the
    # job, not complete it with a broken link.
    storage = make_s3(s3_endpoint, f"s3://{bucket}")
    real_head = storage._client.head_object

    def short_head(**kwargs: Any) -> dict[str, Any]:
        return {**real_head(**kwargs), "ContentLength": video.stat().st_size - 1}

    monkeypatch.setattr(storage._client, "head_object", short_head)
    with pytest.raises(StorageUnavailable, match="bytes after upload"):
        await storage.put_file("ab/short.mp4", video)


async def test_check(s3_endpoint: str, bucket: str) -> None:
    await make_s3(s3_endpoint, f"s3://{bucket}/videos").check()
    with pytest.raises(StorageUnavailable, match="no-such-bucket"):
        await make_s3(s3_endpoint, "s3://no-such-bucket-xyz").check()
    with pytest.raises(StorageUnavailable, match=bucket):
        # Nothing listens there: connection refused, retried, then reported.
        dead = S3Storage(f"s3://{bucket}", endpoint_url=f"http://127.0.0.1:{free_port()}",
                         region=REGION, access_key=ACCESS_KEY, secret_key=SECRET_KEY)
        await dead.check(timeout_s=3)


async def test_a_url_signed_with_a_wrong_secret_is_refused(s3_endpoint: str, bucket: str) -> None:
    # moto accepts any access key for API calls, but a presigned URL made with a secret
    # S3 does not know is refused.
    storage = make_s3(s3_endpoint, f"s3://{bucket}", secret_key="not-the-secret")
    url = storage.url("ab/abc.mp4", BASE_URL)
    assert httpx.get(url).status_code == 403


async def test_public_base_url_replaces_presigned_urls(
    s3_endpoint: str, bucket: str, video: Path
) -> None:
    storage = make_s3(s3_endpoint, f"s3://{bucket}/videos",
                      public_base_url="https://cdn.example.com/reelgate/")
    await storage.put_file("ab/a b.mp4", video)
    # The public base serves the bucket's root, so the prefix is in the path.
    assert storage.url("ab/a b.mp4", BASE_URL) == (
        "https://cdn.example.com/reelgate/videos/ab/a%20b.mp4"
    )


async def test_presign_endpoint_url_is_the_host_clients_see(
    s3_endpoint: str, bucket: str, video: Path
) -> None:
    storage = make_s3(s3_endpoint, f"s3://{bucket}/videos",
                      presign_endpoint_url="https://media.example.com")
    await storage.put_file("ab/abc.mp4", video)  # uploads still go to the inner endpoint
    url = storage.url("ab/abc.mp4", BASE_URL)
    assert url.startswith(f"https://media.example.com/{bucket}/videos/ab/abc.mp4?")
    assert "X-Amz-Signature=" in url


async def test_credentials_from_the_boto3_chain(
    s3_endpoint: str, bucket: str, video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ENV_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET_KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    storage = S3Storage(f"s3://{bucket}/videos", endpoint_url=s3_endpoint, region=REGION)
    await storage.put_file("ab/env.mp4", video)
    url = storage.url("ab/env.mp4", BASE_URL)
    assert f"X-Amz-Credential={ENV_ACCESS_KEY}" in url
    assert httpx.get(url).content == video.read_bytes()


# --- configuration ---------------------------------------------------------------------------


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/") == ("bucket", "")
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
    for bad in ("s3://", "s3:///prefix", "s3://b/a/../c", "s3://b/a//c", "s3://b/p?x=1",
                "gs://bucket"):
        with pytest.raises(ValueError):
            parse_s3_url(bad)


def test_s3_storage_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="TTL"):
        S3Storage("s3://b", presign_ttl_s=8 * 24 * 3600, access_key="a", secret_key="s")
    with pytest.raises(ValueError, match="both"):
        S3Storage("s3://b", access_key="only-the-key")


def test_build_storage_picks_the_adapter_by_url(tmp_path: Path) -> None:
    signer = UrlSigner(b"k" * 32, ttl_s=60)
    common: dict[str, Any] = {"local_root": tmp_path / "videos", "signer": signer}

    default = build_storage("", **common)
    assert isinstance(default, LocalStorage) and default.root == tmp_path / "videos"
    elsewhere = build_storage(str(tmp_path / "elsewhere"), **common)
    assert isinstance(elsewhere, LocalStorage) and elsewhere.root == tmp_path / "elsewhere"
    as_file_url = build_storage(f"file://{tmp_path}/f", **common)
    assert isinstance(as_file_url, LocalStorage) and as_file_url.root == tmp_path / "f"

    s3 = build_storage("s3://media/prod", **common, endpoint_url="http://127.0.0.1:9",
                       region=REGION, access_key="a", secret_key="s", presign_ttl_s=600,
                       public_base_url="https://cdn.example.com")
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix, s3.presign_ttl_s) == ("media", "prod", 600)
    assert s3.url("x/y.mp4", BASE_URL) == "https://cdn.example.com/prod/x/y.mp4"

    for bad in ("s4://media", "gs://media", "file://otherhost/x"):
        with pytest.raises(ValueError):
            build_storage(bad, **common)


def test_local_storage_url_form_is_unchanged(tmp_path: Path) -> None:
    # build_storage hands the public base URL to LocalStorage as before.
    storage = build_storage("", local_root=tmp_path, signer=UrlSigner(b"k" * 32, ttl_s=60),
                            public_base_url="https://cdn.example.com/")
    assert storage.url("ab/c d.mp4", BASE_URL) == f"https://cdn.example.com/{quote('ab/c d.mp4')}"
