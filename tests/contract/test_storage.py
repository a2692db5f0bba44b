"""The storage contract: the same cases against every adapter (local disk and S3, through
the fake S3 server in tests/fake_s3.py), for outputs (videos written from a file, served
by URL, read back inline) and inputs (images and uploads written and read as bytes).

What only one adapter does stays beside it: tests/test_storage_s3.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from reelgate.media.storage import LocalStorage, Storage, StorageKeyMissing, TooLarge, UrlSigner
from tests.fake_s3 import make_s3
from tests.videos import render_video

BASE_URL = "http://reelgate.test"


@pytest.fixture(scope="session")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real sandbox render, 720p, 1 s."""
    return render_video(tmp_path_factory.mktemp("video") / "video.mp4")


@dataclass
class Harness:
    storage: Storage
    # GET a URL that storage.url() produced: (HTTP status, body).
    fetch: Callable[[str], tuple[int, bytes]]


def local_fetch(storage: LocalStorage) -> Callable[[str], tuple[int, bytes]]:
    # LocalStorage's URLs are served by the app's /media route; these tests stay at the
    # adapter, so they check what that route checks: the signature, then the file on disk.
    def fetch(url: str) -> tuple[int, bytes]:
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == BASE_URL
        assert parts.path.startswith("/media/")
        key = unquote(parts.path.removeprefix("/media/"))
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if not storage.signer.verify(key, int(q["expires"]), q["signature"]):
            return 403, b""
        path = storage.path(key)
        return (200, path.read_bytes()) if path.is_file() else (404, b"")

    return fetch


def http_fetch(url: str) -> tuple[int, bytes]:
    response = httpx.get(url, timeout=10)
    return response.status_code, response.content


@pytest.fixture(params=["local", "s3"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "local":
        storage = LocalStorage(tmp_path / "videos", UrlSigner(b"k" * 32, ttl_s=3600))
        return Harness(storage, local_fetch(storage))
    endpoint = request.getfixturevalue("s3_endpoint")
    name = request.getfixturevalue("bucket")
    return Harness(make_s3(endpoint, f"s3://{name}/videos"), http_fetch)


class TestStorageContract:
    async def test_put_file_then_url_serves_the_same_bytes(
        self, harness: Harness, video: Path
    ) -> None:
        key = "ab/abcdef.mp4"
        assert not await harness.storage.exists(key)
        await harness.storage.put_file(key, video)
        # put_file has returned: the runner may now say "completed", so the video must be
        # there in full.
        assert await harness.storage.exists(key)
        status, body = harness.fetch(harness.storage.url(key, BASE_URL))
        assert status == 200
        assert body == video.read_bytes()

    async def test_a_url_signed_for_one_key_does_not_open_another(
        self, harness: Harness, video: Path, tmp_path: Path
    ) -> None:
        other = tmp_path / "other.mp4"
        other.write_bytes(b"someone else's video")
        await harness.storage.put_file("ab/mine.mp4", video)
        await harness.storage.put_file("ab/theirs.mp4", other)
        url = harness.storage.url("ab/mine.mp4", BASE_URL)
        assert harness.fetch(url)[0] == 200
        tampered = url.replace("mine.mp4", "theirs.mp4")
        assert tampered != url
        assert harness.fetch(tampered)[0] == 403

    async def test_put_file_replaces_an_existing_object(
        self, harness: Harness, video: Path, tmp_path: Path
    ) -> None:
        first = tmp_path / "first.mp4"
        first.write_bytes(b"x" * 1000)
        await harness.storage.put_file("cd/same.mp4", first)
        await harness.storage.put_file("cd/same.mp4", video)
        status, body = harness.fetch(harness.storage.url("cd/same.mp4", BASE_URL))
        assert (status, body) == (200, video.read_bytes())

    async def test_delete_removes_and_is_idempotent(self, harness: Harness, video: Path) -> None:
        await harness.storage.put_file("ef/gone.mp4", video)
        url = harness.storage.url("ef/gone.mp4", BASE_URL)
        await harness.storage.delete("ef/gone.mp4")
        assert not await harness.storage.exists("ef/gone.mp4")
        assert harness.fetch(url)[0] == 404
        await harness.storage.delete("ef/gone.mp4")  # no error the second time
        await harness.storage.delete("ef/never-was.mp4")

    async def test_read_bytes_is_the_object_within_a_limit(
        self, harness: Harness, video: Path
    ) -> None:
        # What enable_base64_output answers carry: the whole object, never one over the
        # caller's limit (refused before reading), and a missing one says so.
        await harness.storage.put_file("gh/inline.mp4", video)
        size = video.stat().st_size
        assert await harness.storage.read_bytes("gh/inline.mp4", size) == video.read_bytes()
        with pytest.raises(TooLarge) as info:
            await harness.storage.read_bytes("gh/inline.mp4", size - 1)
        assert (info.value.size, info.value.limit) == (size, size - 1)
        with pytest.raises(FileNotFoundError):
            await harness.storage.read_bytes("gh/missing.mp4", size)

    @pytest.mark.parametrize("key", ["", "/abs.mp4", "../up.mp4", "a/../b.mp4", "a//b.mp4"])
    async def test_unsafe_keys_are_refused(
        self, harness: Harness, video: Path, key: str
    ) -> None:
        with pytest.raises(ValueError):
            await harness.storage.put_file(key, video)
        with pytest.raises(ValueError):
            await harness.storage.exists(key)
        with pytest.raises(ValueError):
            await harness.storage.delete(key)



    # --- inputs: images and uploads, written and read as bytes -------------------------

    async def test_bytes_round_trip(self, harness: Harness) -> None:
        storage = harness.storage
        await storage.put_bytes("inputs/ab/x/image", b"\x89PNG...", "image/png")
        assert await storage.get_bytes("inputs/ab/x/image") == b"\x89PNG..."
        await storage.delete("inputs/ab/x/image")
        with pytest.raises(StorageKeyMissing):
            await storage.get_bytes("inputs/ab/x/image")

    async def test_put_bytes_replaces_and_is_served_like_a_video(self, harness: Harness) -> None:
        # An upload's bytes are what intake, the worker and the console's signed link read.
        storage = harness.storage
        await storage.put_bytes("uploads/abc", b"first", "image/png")
        await storage.put_bytes("uploads/abc", b"second, longer", "image/png")
        assert await storage.exists("uploads/abc")
        assert await storage.get_bytes("uploads/abc") == b"second, longer"
        assert await storage.read_bytes("uploads/abc", 100) == b"second, longer"
        assert harness.fetch(storage.url("uploads/abc", BASE_URL)) == (200, b"second, longer")
        with pytest.raises(StorageKeyMissing):
            await storage.get_bytes("uploads/never-was")

    @pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../b", "a//b"])
    async def test_unsafe_keys_are_refused_for_bytes(self, harness: Harness, key: str) -> None:
        with pytest.raises(ValueError):
            await harness.storage.put_bytes(key, b"x", "image/png")
        with pytest.raises(ValueError):
            await harness.storage.get_bytes(key)

    async def test_check_passes_on_a_working_storage(self, harness: Harness) -> None:
        await harness.storage.check()  # /readyz's probe: raises when it cannot write or read
