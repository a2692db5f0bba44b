"""The Backend contract: one set of cases, run against every implementation of the port
(backends/base.py). A new backend joins by adding one ``*_subject`` fixture below and its
name to SUBJECTS.

- sandbox: renders in a thread;
- google: the real google-genai SDK against the fake Google server (tests/fake_google.py);
- v3: the relay against a fake v3 provider on an httpx MockTransport (the full relay, with
  a second reelgate server, is tests/test_v3_upstream.py; here only the port matters);
- local: tiny random LTX weights on the CPU (skipped without the `local` extra);
- echo: the test backend in tests/echo_backend, registered like any other.

What each case may ask of a backend comes from what it declares (``capabilities``): a
backend is held to what it promises, and to nothing it does not."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from reelgate import catalog
from reelgate.accounts import prices as billing
from reelgate.backends import registry
from reelgate.backends.base import Backend, BackendError, Cancelled, Capabilities, Job
from reelgate.errors import InvalidInput
from reelgate.media.video import check_video
from reelgate.settings import Settings
from tests.echo_backend import HANG, EchoBackend, EchoSettings
from tests.fake_google import FakeGoogle, make_video

SUBJECTS = ["sandbox", "google", "v3", "local", "echo"]


@dataclass
class Subject:
    backend: Backend
    model: str  # a model the backend serves
    # Turns a job into one whose generate never ends (None: the backend has no such job).
    hang: Callable[[Job], Job] | None = None
    # The frame size the backend delivers for (resolution, aspect ratio).
    size_of: Callable[[str, str], tuple[int, int]] = catalog.frame_size
    # A model with many steps, for cancelling between them (default: ``model``).
    cancel_model: str | None = None


def settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


# --- one fixture per backend ---------------------------------------------------------------


@pytest.fixture
def sandbox_subject() -> Subject:
    from reelgate.backends.sandbox.backend import SandboxBackend

    backend = SandboxBackend(fps=4, processes=0)

    def hang(job: Job) -> Job:
        backend.latency_s = 3600.0
        return job

    return Subject(backend, "veo3.1-fast", hang)


@pytest.fixture(scope="module")
def fake_google(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGoogle]:
    srv = FakeGoogle(make_video(tmp_path_factory.mktemp("video") / "v.mp4"),
                     api_keys={"key-good"})
    yield srv
    srv.close()


@pytest.fixture
def google_subject(fake_google: FakeGoogle) -> Subject:
    from reelgate.backends.google.backend import GoogleBackend
    from reelgate.backends.google.config import ChannelConfig, GoogleSettings

    fake_google.reset()
    gs = GoogleSettings(_env_file=None, base_url=fake_google.url,  # type: ignore[call-arg]
                        storage_base_url=fake_google.url, poll_initial_s=0.05, poll_max_s=0.1,
                        channels=[ChannelConfig(name="main", mode="gemini", api_key="key-good")])
    return Subject(GoogleBackend(gs), "veo3.1-fast",
                   lambda job: replace(job, prompt=job.prompt + " [fake:pending=100000]"))


class FakeV3:
    """A v3 provider in a MockTransport: a prediction completes on its first poll with a
    real MP4, unless its prompt says [hang]."""

    def __init__(self, video: bytes) -> None:
        self.video = video
        self.prompts: dict[str, str] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path.startswith("/api/v3/google/"):
            pid = f"up-{len(self.prompts)}"
            self.prompts[pid] = json.loads(request.content)["prompt"]
            return httpx.Response(200, json={"code": 200, "data": {"id": pid}})
        if path.startswith("/api/v3/predictions/"):
            pid = path.split("/")[4]
            done = "[hang]" not in self.prompts[pid]
            return httpx.Response(200, json={"code": 200, "data": {
                "id": pid, "status": "completed" if done else "processing",
                "outputs": ["https://v3.test/video.mp4"] if done else []}})
        if path == "/video.mp4":
            return httpx.Response(200, content=self.video)
        return httpx.Response(404, json={"error": {"message": "no route"}})


@pytest.fixture
def v3_subject(tmp_path: Path) -> Subject:
    from reelgate.backends.v3_upstream import (
        UpstreamChannel,
        V3UpstreamBackend,
        V3UpstreamSettings,
    )

    us = V3UpstreamSettings(_env_file=None, poll_initial_s=0.05, poll_max_s=0.1,  # type: ignore[call-arg]
                            channels=[UpstreamChannel(name="up", base_url="https://v3.test",
                                                      api_key="k")])
    fake = FakeV3(make_video(tmp_path / "v.mp4"))
    return Subject(V3UpstreamBackend(us, transport=httpx.MockTransport(fake)), "veo3.1-fast",
                   lambda job: replace(job, prompt=job.prompt + " [hang]"))


LOCAL_SIZE = (64, 32)  # width, height at 720p 16:9


@pytest.fixture(scope="module")
def local_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("diffusers") is None:
        pytest.skip("the local extra (torch, diffusers) is not installed")
    import torch

    from reelgate.backends.local.config import install
    from reelgate.backends.local.tiny import build_ltx

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("local")
    weights = build_ltx(root)["text-to-video"]
    models = root / "models.toml"
    model = textwrap.dedent("""
        [[models]]
        name = "{name}"
        family = "ltx"
        weights = "{weights}"
        dtype = "float32"
        fps = 2
        sizes = {{ "720p" = [{w}, {h}] }}
        steps = {steps}
        price_per_second = 0.01
    """)
    models.write_text(
        model.format(name="ltx-tiny", weights=weights, w=LOCAL_SIZE[0], h=LOCAL_SIZE[1], steps=2)
        + model.format(name="ltx-slow", weights=weights, w=LOCAL_SIZE[0], h=LOCAL_SIZE[1],
                       steps=500))
    yield models
    install(None)  # the catalog again without them, for the tests after this module


@pytest.fixture
def local_subject(local_models: Path) -> Subject:
    from reelgate.backends.local.backend import LocalBackend
    from reelgate.backends.local.config import LocalSettings

    backend = LocalBackend(LocalSettings(_env_file=None, models_file=local_models,  # type: ignore[call-arg]
                                         device="cpu", torch_threads=1))

    def size_of(resolution: str, aspect_ratio: str) -> tuple[int, int]:
        w, h = LOCAL_SIZE
        return (w, h) if aspect_ratio == "16:9" else (h, w)

    return Subject(backend, "local/ltx-tiny",
                   lambda job: replace(job, model="local/ltx-slow"), size_of,
                   cancel_model="local/ltx-slow")


@pytest.fixture
def echo_subject() -> Subject:
    backend = EchoBackend(EchoSettings(_env_file=None, price_per_second=12_345))  # type: ignore[call-arg]
    return Subject(backend, "veo3.1-fast",
                   lambda job: replace(job, prompt=f"{job.prompt} {HANG}"))


@pytest.fixture(params=SUBJECTS)
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    s: Subject = request.getfixturevalue(f"{request.param}_subject")
    await s.backend.start()
    yield s
    await s.backend.close()


# --- jobs built from what a backend declares -------------------------------------------------


def job_within(caps: Capabilities, model: str, **kw: Any) -> Job:
    """A job these capabilities include: text-to-video where offered, their first
    resolution, 8 s (every resolution allows it), sound only if it can make it."""
    scene = "text-to-video" if "text-to-video" in caps.scenes else caps.scenes[0]
    resolution = caps.resolutions[0]
    fields: dict[str, Any] = {
        "id": "contract", "model": model, "scene": scene, "prompt": "a red boat on the sea",
        "resolution": resolution, "duration": 8, "generate_audio": caps.audio,
        "has_image": scene == "image-to-video",
        "reference_count": 1 if scene == "reference-to-video" else 0,
    }
    return Job(**{**fields, **kw})


def jobs_outside(caps: Capabilities, base: Job) -> list[tuple[str, Job]]:
    """One job per thing the capabilities exclude from what the catalog offers."""
    out: list[tuple[str, Job]] = []
    for scene in catalog.SCENES:
        if scene not in caps.scenes:
            out.append((f"scene {scene}", replace(
                base, scene=scene, has_image=scene == "image-to-video",
                reference_count=1 if scene == "reference-to-video" else 0)))
    for resolution in catalog.RESOLUTIONS:
        if resolution not in caps.resolutions:
            out.append((f"resolution {resolution}",
                        replace(base, resolution=resolution, requested_resolution=resolution)))
    if not caps.audio:
        out.append(("audio", replace(base, generate_audio=True)))
    if not caps.silent:
        out.append(("silent", replace(base, generate_audio=False)))
    if not caps.seed:
        out.append(("seed", replace(base, seed=7)))
    if not caps.last_image and "image-to-video" in caps.scenes:
        out.append(("last image", replace(base, scene="image-to-video", has_image=True,
                                          has_last_image=True)))
    if not caps.reference_images and "reference-to-video" in caps.scenes:
        out.append(("reference images", replace(base, scene="reference-to-video",
                                                reference_count=1)))
    return out


# --- the cases -------------------------------------------------------------------------------


async def test_declares_the_port(subject: Subject) -> None:
    b = subject.backend
    assert isinstance(b, Backend)
    assert b.name in registry.registered(settings(backend_modules=["tests.echo_backend"]))
    assert isinstance(b.concurrency, int) and b.concurrency >= 1
    assert b.timeout is None or b.timeout > 0
    caps = b.capabilities(subject.model)
    assert caps.scenes and caps.resolutions
    assert set(caps.scenes) <= set(catalog.SCENES)
    assert set(caps.resolutions) <= set(catalog.RESOLUTIONS)
    assert isinstance(b.describe(subject.model), dict)


async def test_start_and_close_are_idempotent(subject: Subject) -> None:
    b = subject.backend
    await b.start()  # started once by the fixture already
    await b.close()
    await b.close()


async def test_check_accepts_what_capabilities_include(subject: Subject) -> None:
    caps = subject.backend.capabilities(subject.model)
    subject.backend.check(job_within(caps, subject.model))
    for resolution in caps.resolutions:
        subject.backend.check(job_within(caps, subject.model, resolution=resolution,
                                         requested_resolution=resolution))
    for scene in caps.scenes:
        subject.backend.check(job_within(caps, subject.model, scene=scene,
                                         has_image=scene == "image-to-video",
                                         reference_count=int(scene == "reference-to-video")))


async def test_check_refuses_what_capabilities_exclude(subject: Subject) -> None:
    caps = subject.backend.capabilities(subject.model)
    outside = jobs_outside(caps, job_within(caps, subject.model))
    if not outside:
        pytest.skip(f"{subject.backend.name} takes everything the catalog offers")
    for what, job in outside:
        with pytest.raises(InvalidInput):
            subject.backend.check(job)
            pytest.fail(f"{subject.backend.name} accepted {what}, which it does not declare")


async def test_generate_makes_a_decodable_mp4(subject: Subject, tmp_path: Path) -> None:
    caps = subject.backend.capabilities(subject.model)
    job = job_within(caps, subject.model, duration=4 if 4 in caps.durations else 8)
    (tmp_path / "work").mkdir()  # the runner hands every job a fresh, existing directory
    video = await subject.backend.generate(job, tmp_path / "work")
    assert video.is_file() and video.parent == tmp_path / "work"
    info = await asyncio.to_thread(check_video, video)
    assert info.video_codec == "h264" and info.frames > 0
    if caps.exact_output:
        assert (info.width, info.height) == subject.size_of(job.resolution, job.aspect_ratio)
        assert abs(info.duration_s - job.duration) < 0.3
        assert info.has_audio == job.generate_audio


async def test_progress_is_reported_and_cancel_stops(subject: Subject, tmp_path: Path) -> None:
    caps = subject.backend.capabilities(subject.model)
    if not caps.progress:
        pytest.skip(f"{subject.backend.name} declares no progress")
    steps: list[tuple[int, int]] = []

    async def record(step: int, total: int) -> bool:
        steps.append((step, total))
        return False

    job = job_within(caps, subject.model, duration=4, report_progress=record)
    await subject.backend.generate(job, tmp_path)
    assert steps and steps[-1][0] == steps[-1][1]
    assert [s for s, _ in steps] == sorted(s for s, _ in steps)

    async def cancel(step: int, total: int) -> bool:
        return True

    model = subject.cancel_model or subject.model
    job = job_within(caps, model, duration=4, report_progress=cancel)
    with pytest.raises(Cancelled):
        await asyncio.wait_for(subject.backend.generate(job, tmp_path), 120)


async def test_timeout_turns_a_hung_generate_into_a_failed_prediction(
        subject: Subject, tmp_path: Path) -> None:
    if subject.hang is None:
        pytest.skip(f"{subject.backend.name} has no job that hangs")
    b = subject.backend
    caps = b.capabilities(subject.model)
    job = subject.hang(job_within(caps, subject.model, duration=4))
    declared = b.timeout
    b.timeout = 0.5  # type: ignore[misc]
    try:
        pred = await run_once(b, job, tmp_path)
    finally:
        b.timeout = declared  # type: ignore[misc]
    assert pred is not None and pred.status == "failed"
    assert "time limit" in (pred.error or "") and "not charged" in (pred.error or "")


async def run_once(backend: Backend, job: Job, tmp_path: Path) -> Any:
    """Store ``job`` as a prediction and run it through the real Runner; the row after."""
    from reelgate.jobs.notify import LocalNotifier
    from reelgate.jobs.runner import Runner
    from reelgate.media.storage import UrlSigner, build_storage
    from reelgate.store import migrate
    from reelgate.store.db import create_engine
    from reelgate.store.repo import Store, new_id

    tmp_path.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    try:
        await migrate.upgrade(engine)
        store = Store(engine)
        account = await store.create_account(f"contract-{new_id()[:6]}")
        _, key = await store.create_key(account, "k")
        pid = new_id()
        await store.insert_prediction(id=pid, account_id=account, key_id=key.id,
                                      model=job.model, scene=job.scene, backend=backend.name,
                                      params=job.to_params(), inputs={})
        storage = build_storage("", local_root=tmp_path / "videos",
                                signer=UrlSigner(b"k" * 32, 60))
        runner = Runner(settings=settings(data_dir=tmp_path / "data"), store=store,
                        storage=storage, backends={backend.name: backend},
                        notifier=LocalNotifier())
        await asyncio.wait_for(runner.run(pid, "contract-worker"), 60)
        return await store.get(pid)
    finally:
        await engine.dispose()


async def test_price_hook_decides_the_price(subject: Subject,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    b = subject.backend
    caps = b.capabilities(subject.model)
    job = job_within(caps, subject.model)
    own = b.price(job)
    assert own is None or (isinstance(own, int) and own > 0)
    cfg = settings(free_backends=[])
    monkeypatch.setattr(registry, "intake_backend", lambda name, _settings: b)
    expected = own if own is not None else billing.PriceTable.from_settings(cfg).price(
        job.model, job.resolution, job.duration, job.generate_audio)
    assert billing.quote(job, b.name, cfg) == expected
    # A backend the operator declares free costs nothing, whatever its hook says.
    assert billing.quote(job, b.name, settings(free_backends=[b.name])) == 0


def test_job_round_trips_through_the_rows_params() -> None:
    job = Job(id="p1", model="veo3.1", scene="image-to-video", prompt="a cat", resolution="4k",
              requested_resolution="1080p", enable_upsample=True, duration=8, seed=3,
              generate_audio=False, negative_prompt="rain", has_image=True,
              has_last_image=True)
    params = job.to_params()
    assert params["resolution"] == "1080p" and params["output_resolution"] == "4k"
    again = Job.from_params("p1", "veo3.1", "image-to-video", json.loads(json.dumps(params)))
    assert again == job
    run_fields = {f.name for f in dataclasses.fields(Job) if not f.metadata.get("param")}
    assert not run_fields & set(params)


# --- what BackendError.retryable drives in the runner (any backend) -------------------------


class Flaky(EchoBackend):
    """Fails retryably on its first call (after writing a handle, if told to)."""

    def __init__(self, retries: int, *, handle_first: bool = False) -> None:
        super().__init__(EchoSettings(_env_file=None))  # type: ignore[call-arg]
        self.retries = retries
        self.handle_first = handle_first
        self.calls = 0

    async def generate(self, job: Job, workdir: Path) -> Path:
        self.calls += 1
        if self.calls == 1:
            if self.handle_first:
                await job.checkpoint("upstream-op-1")
            raise BackendError("upstream busy", retryable=True)
        return await super().generate(job, workdir)


async def test_a_retryable_error_is_tried_again_only_before_a_handle(tmp_path: Path) -> None:
    job = Job(id="", model="veo3.1-fast", scene="text-to-video", prompt="retry", duration=4)
    flaky = Flaky(retries=1)
    pred = await run_once(flaky, job, tmp_path / "a")
    assert pred.status == "completed" and flaky.calls == 2
    # No retries declared: the first retryable error fails the prediction, uncharged.
    once = Flaky(retries=0)
    pred = await run_once(once, job, tmp_path / "b")
    assert pred.status == "failed" and pred.error == "upstream busy" and once.calls == 1
    # Work started upstream (a handle was written): never submitted a second time.
    started = Flaky(retries=3, handle_first=True)
    pred = await run_once(started, job, tmp_path / "c")
    assert pred.status == "failed" and started.calls == 1
