"""The Google backend with the real google-genai SDK against the fake Google server, in both
the Gemini API and Vertex AI modes: what is sent for every scene, pending and done
operations, downloads (redirects, inline bytes, gs://), safety blocks, error bodies (400,
403, 429 with RetryInfo, 500, 503), failover between channels, and resuming a stored
operation without creating another."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reelgate.backends.base import BackendError, Inputs, Job
from reelgate.backends.google.backend import GoogleBackend, UpstreamRef
from reelgate.backends.google.config import ChannelConfig, GoogleSettings
from reelgate.media.video import check_video
from tests.conftest import make_image
from tests.fake_google import FakeGoogle, make_video, write_service_account

RED, BLUE = make_image((200, 30, 30)), make_image((30, 30, 200))
MODES = ["gemini", "vertex", "vertex-express"]


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGoogle]:
    srv = FakeGoogle(make_video(tmp_path_factory.mktemp("video") / "v.mp4"),
                     api_keys={"key-good", "key-a", "key-b"})
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def service_account(fake: FakeGoogle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_service_account(tmp_path_factory.mktemp("sa") / "sa.json", f"{fake.url}/token")


@pytest.fixture(autouse=True)
def _clean(fake: FakeGoogle) -> None:
    fake.reset()


def channel(mode: str, sa: Path, name: str = "main", key: str = "key-good") -> ChannelConfig:
    if mode == "gemini":
        return ChannelConfig(name=name, mode="gemini", api_key=key)
    if mode == "vertex-express":
        return ChannelConfig(name=name, mode="vertex", api_key=key)
    return ChannelConfig(name=name, mode="vertex", project="fake-project",
                         location="us-central1", credentials_file=str(sa))


def backend(fake: FakeGoogle, channels: list[ChannelConfig], **kw: object) -> GoogleBackend:
    settings = {"base_url": fake.url, "storage_base_url": fake.url, "poll_initial_s": 0.05,
                "poll_max_s": 0.2, "cooldown_429_s": 0.2, "cooldown_5xx_s": 0.2, **kw}
    return GoogleBackend(GoogleSettings(_env_file=None, channels=channels, **settings))  # type: ignore[arg-type]


class Refs:
    def __init__(self) -> None:
        self.saved: list[str] = []

    async def __call__(self, ref: str) -> None:
        self.saved.append(ref)


def job(prompt: str = "a paper boat", refs: Refs | None = None, **kw: object) -> Job:
    return Job(id=f"job{time.monotonic_ns()}", model=str(kw.pop("model", "veo3.1")),
               scene=str(kw.pop("scene", "text-to-video")), prompt=prompt,
               checkpoint=refs or Refs(), **kw)  # type: ignore[arg-type]


def image_of(part: dict) -> bytes:  # type: ignore[type-arg]
    return base64.b64decode(part["bytesBase64Encoded"])


SCENES = {
    "text-to-video": {},
    "image-to-video": {"inputs": Inputs(image=RED)},
    "first-and-last-frame": {"inputs": Inputs(image=RED, last_image=BLUE)},
    "reference-to-video": {"scene": "reference-to-video", "inputs": Inputs(images=(RED, BLUE))},
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scene", list(SCENES))
async def test_every_scene_makes_a_video(fake: FakeGoogle, service_account: Path, tmp_path: Path,
                                         mode: str, scene: str) -> None:
    kw = dict(SCENES[scene])
    if scene == "image-to-video" or scene == "first-and-last-frame":
        kw["scene"] = "image-to-video"
    extra = {} if mode == "gemini" else {"seed": 9, "generate_audio": False}
    refs = Refs()
    b = backend(fake, [channel(mode, service_account)],
                output_gcs_uri="gs://reelgate-out/videos" if mode == "vertex" else "")
    out = await b.generate(job("waves [fake:pending=3]", refs, aspect_ratio="9:16",
                               resolution="1080p", negative_prompt="text", enhance_prompt=False,
                               **extra, **kw), tmp_path)
    info = check_video(out)
    assert (info.width, info.height, info.video_codec) == (1280, 720, "h264")

    creates = fake.calls("create")
    assert len(creates) == 1
    body = creates[0].body
    inst, params = body["instances"][0], body["parameters"]
    assert inst["prompt"] == "waves [fake:pending=3]"
    assert params["aspectRatio"] == "9:16" and params["resolution"] == "1080p"
    assert params["durationSeconds"] == 8 and params["negativePrompt"] == "text"
    assert params["enhancePrompt"] is False and params["sampleCount"] == 1
    if mode == "gemini":
        assert "seed" not in params and "generateAudio" not in params
    else:
        assert params["seed"] == 9 and params["generateAudio"] is False
    if scene == "text-to-video":
        assert "image" not in inst and "referenceImages" not in inst
    if scene in ("image-to-video", "first-and-last-frame"):
        assert image_of(inst["image"]) == RED and inst["image"]["mimeType"] == "image/png"
    if scene == "first-and-last-frame":
        assert image_of(inst["lastFrame"]) == BLUE
    if scene == "reference-to-video":
        assert [r["referenceType"] for r in inst["referenceImages"]] == ["ASSET", "ASSET"]
        assert [image_of(r["image"]) for r in inst["referenceImages"]] == [RED, BLUE]

    # The operation was polled until done (3 polls) on the channel that made it, and the
    # handle was saved before the first poll.
    assert len(fake.calls("poll")) == 3
    assert len({c.key for c in fake.calls()} - {None}) == 1
    ref = UpstreamRef.loads(refs.saved[0])
    assert len(refs.saved) == 1 and ref.channel == "main"
    assert ref.operation == fake.created()[-1].name
    if mode == "gemini":
        # Gemini's file service: a download answered with a redirect to the bytes.
        assert [c.status for c in fake.calls("download")] == [302]
        assert len(fake.calls("blob")) == 1
    elif mode == "vertex":
        assert params["storageUri"] == "gs://reelgate-out/videos"
        assert len(fake.calls("gcs")) == 1 and len(fake.calls("token")) >= 1
    else:
        assert "storageUri" not in params  # express mode gets the bytes inline


@pytest.mark.parametrize("mode", MODES)
async def test_safety_block_is_a_content_policy_failure(fake: FakeGoogle, service_account: Path,
                                                        tmp_path: Path, mode: str) -> None:
    b = backend(fake, [channel(mode, service_account)])
    with pytest.raises(BackendError) as e:
        await b.generate(job("something [fake:rai]"), tmp_path)
    assert e.value.nsfw and "safety" in e.value.message and "fake RAI filter" in e.value.message
    with pytest.raises(BackendError) as e:
        await b.generate(job("something [fake:op-safety]"), tmp_path)
    assert e.value.nsfw and "Responsible AI" in e.value.message
    assert len(fake.calls("create")) == 2 and not fake.calls("download") + fake.calls("gcs")


@pytest.mark.parametrize("mode", MODES)
async def test_operation_error_fails_with_googles_message(fake: FakeGoogle, service_account: Path,
                                                          tmp_path: Path, mode: str) -> None:
    b = backend(fake, [channel(mode, service_account)])
    with pytest.raises(BackendError) as e:
        await b.generate(job("x [fake:op-error]"), tmp_path)
    assert not e.value.nsfw
    assert e.value.message == ("Google could not make the video: Veo could not generate a video "
                               "for these inputs (fake operation error).")


@pytest.mark.parametrize("mode", MODES)
async def test_invalid_argument_fails_at_once(fake: FakeGoogle, service_account: Path,
                                              tmp_path: Path, mode: str) -> None:
    b = backend(fake, [channel(mode, service_account)])
    with pytest.raises(BackendError) as e:
        await b.generate(job("x [fake:invalid]"), tmp_path)
    assert e.value.message == ("Google rejected the request as invalid: The prompt is not valid "
                               "(fake directive).")
    assert len(fake.calls("create")) == 1  # never retried


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("status", [429, 500, 503])
async def test_quota_and_server_errors_are_retried(fake: FakeGoogle, service_account: Path,
                                                   tmp_path: Path, mode: str,
                                                   status: int) -> None:
    # One failing create, one failing poll: both retried, one operation in the end.
    fake.fail("create", status, retry_delay="0.3s" if status == 429 else None)
    fake.fail("poll", status, retry_delay="0.3s" if status == 429 else None)
    b = backend(fake, [channel(mode, service_account)])
    t0 = time.monotonic()
    out = await b.generate(job("x"), tmp_path)
    assert out.stat().st_size > 0
    assert [c.status for c in fake.calls("create")] == [status, 200]
    assert [c.status for c in fake.calls("poll")][:2] == [status, 200]
    assert len(fake.created()) >= 1
    if status == 429:
        # Google's RetryInfo (0.3 s) was waited out twice.
        assert time.monotonic() - t0 >= 0.6
    row = b.pool.snapshot()[0]
    assert row["failures"] == 2 and row["completed"] == 1


async def test_retry_info_is_respected_before_trying_again(fake: FakeGoogle, service_account: Path,
                                                           tmp_path: Path) -> None:
    fake.fail("create", 429, retry_delay="1.5s")
    b = backend(fake, [channel("gemini", service_account)])
    await b.generate(job("x"), tmp_path)
    first, second = fake.calls("create")
    assert second.at - first.at >= 1.5


@pytest.mark.parametrize("mode", MODES)
async def test_permission_denied_fails_with_a_clear_message(fake: FakeGoogle, service_account: Path,
                                                            tmp_path: Path, mode: str) -> None:
    fake.fail("create", 403, message="Veo is not enabled for this project.")
    b = backend(fake, [channel(mode, service_account)])
    with pytest.raises(BackendError) as e:
        await b.generate(job("x"), tmp_path)
    assert "refused this server's credentials" in e.value.message
    assert "Veo is not enabled for this project." in e.value.message
    assert len(fake.calls("create")) == 1
    assert b.pool.snapshot()[0]["health"] == "cooling"


async def test_failover_to_another_channel_on_429(fake: FakeGoogle, service_account: Path,
                                                  tmp_path: Path) -> None:
    fake.fail("create", 429, count=None, key="key-a", retry_delay="30s")
    b = backend(fake, [channel("gemini", service_account, "a", "key-a"),
                       channel("gemini", service_account, "b", "key-b")])
    refs = Refs()
    for _ in range(2):
        await b.generate(job("x", refs), tmp_path)
    creates = fake.calls("create")
    assert creates[-1].at - creates[0].at < 20  # nobody waited out a's 30 s
    assert [c.key for c in fake.calls("create") if c.status == 200] == ["key-b", "key-b"]
    assert len(fake.calls("create", key="key-a")) == 1  # cooled down after its first 429
    assert [UpstreamRef.loads(r).channel for r in refs.saved] == ["b", "b"]
    a, bb = b.pool.snapshot()
    assert a["health"] == "cooling" and "429" in a["cooldown_reason"]
    assert bb["health"] == "ok" and bb["completed"] == 2


async def test_bad_key_moves_to_the_next_channel(fake: FakeGoogle, service_account: Path,
                                                 tmp_path: Path) -> None:
    b = backend(fake, [channel("gemini", service_account, "stale", "key-revoked"),
                       channel("gemini", service_account, "good", "key-good")])
    await b.generate(job("x"), tmp_path)
    assert [(c.key, c.status) for c in fake.calls("create")] == [("key-revoked", 400),
                                                                  ("key-good", 200)]


async def test_every_channel_busy_fails_as_retryable(fake: FakeGoogle, service_account: Path,
                                                     tmp_path: Path) -> None:
    fake.fail("create", 503, count=None)
    b = backend(fake, [channel("gemini", service_account)], submit_attempts=3)
    with pytest.raises(BackendError) as e:
        await b.generate(job("x"), tmp_path)
    assert e.value.retryable and "after 3 attempts" in e.value.message
    assert "You were not charged" in e.value.message
    assert len(fake.calls("create")) == 3 and not fake.created()


@pytest.mark.parametrize("mode", MODES)
async def test_resume_polls_the_stored_operation_and_creates_nothing(
        fake: FakeGoogle, service_account: Path, tmp_path: Path, mode: str) -> None:
    first = backend(fake, [channel(mode, service_account)])
    refs = Refs()
    fake.hold = True
    task = asyncio.create_task(first.generate(job("x", refs), tmp_path / "1"))
    while not refs.saved:
        await asyncio.sleep(0.02)
    task.cancel()  # the worker dies while the operation is pending
    with pytest.raises(asyncio.CancelledError):
        await task
    fake.hold = False
    # A new process (a new backend, no state) resumes from the stored handle alone.
    second = backend(fake, [channel(mode, service_account)])
    out = await second.generate(job("x", upstream_ref=refs.saved[0]), tmp_path / "2")
    assert check_video(out).frames > 0
    assert len(fake.calls("create")) == 1
    assert first.pool.snapshot()[0]["in_flight"] == 0  # the slot was given back


async def test_resume_of_an_unknown_operation_fails_without_creating(
        fake: FakeGoogle, service_account: Path, tmp_path: Path) -> None:
    b = backend(fake, [channel("gemini", service_account)])
    ref = UpstreamRef("main", "models/veo-3.1-generate-preview/operations/gone").dumps()
    with pytest.raises(BackendError, match="no longer knows"):
        await b.generate(job("x", upstream_ref=ref), tmp_path)
    ref = UpstreamRef("removed", "models/veo-3.1-generate-preview/operations/gone").dumps()
    with pytest.raises(BackendError, match="no longer configured"):
        await b.generate(job("x", upstream_ref=ref), tmp_path)
    assert not fake.calls("create")


async def test_download_errors_are_retried(fake: FakeGoogle, service_account: Path,
                                           tmp_path: Path) -> None:
    fake.fail("download", 503)
    b = backend(fake, [channel("gemini", service_account)])
    out = await b.generate(job("x"), tmp_path)
    assert check_video(out).frames > 0
    assert [c.status for c in fake.calls("download")] == [503, 302]


async def test_unreadable_credentials_fail_without_calling_google(fake: FakeGoogle,
                                                                  tmp_path: Path) -> None:
    b = backend(fake, [channel("vertex", tmp_path / "missing.json")])
    with pytest.raises(BackendError) as e:
        await b.generate(job("x"), tmp_path)
    assert "this server's Google credentials" in e.value.message
    assert str(tmp_path) not in e.value.message  # paths are the operator's, not the user's
    assert not fake.calls()
    assert "FileNotFoundError" in b.pool.snapshot()[0]["last_error"]
