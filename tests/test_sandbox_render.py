"""The sandbox backend's videos, opened with the real demuxer and decoder.

Renders are kept short (and small, via max_height) wherever the test is not about the
length or the size, so the whole file stays fast on a small machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw

from reelgate.backends.base import BackendError, Inputs, Job
from reelgate.backends.sandbox.backend import (
    NSFW_MESSAGE,
    SandboxBackend,
    output_size,
    parse_directives,
    render_sandbox_video,
)
from reelgate.backends.sandbox.config import SandboxSettings
from reelgate.media.video import InvalidVideo, check_video, probe_video, read_frame
from reelgate.settings import load_settings

FPS = 24
FRAME = 1 / FPS
AMBER = (255, 176, 0)  # the SANDBOX badge


# --- helpers -------------------------------------------------------------------------


def job(**kw: object) -> Job:
    defaults: dict[str, object] = {
        "id": "job-1",
        "model": "veo3.1-fast",
        "scene": "text-to-video",
        "prompt": "a lighthouse on a cliff at dusk",
        "duration": 1,
        "generate_audio": False,
        "seed": 7,
    }
    return Job(**{**defaults, **kw})  # type: ignore[arg-type]


def render(tmp_path: Path, j: Job, name: str = "out.mp4", **kw: int) -> Path:
    path = tmp_path / name
    render_sandbox_video(j, path, **kw)
    return path


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def blocks(colors: list[tuple[int, int, int]], size: tuple[int, int] = (640, 360)) -> Image.Image:
    """Four coloured quadrants and a disc in the middle: easy to tell apart, resize-safe."""
    w, h = size
    img = Image.new("RGB", size, colors[0])
    draw = ImageDraw.Draw(img)
    draw.rectangle((w // 2, 0, w, h // 2), fill=colors[1])
    draw.rectangle((0, h // 2, w // 2, h), fill=colors[2])
    draw.ellipse((w * 3 // 8, h * 3 // 8, w * 5 // 8, h * 5 // 8), fill=colors[3])
    return img


IMAGE_A = blocks([(200, 40, 40), (240, 200, 30), (30, 90, 200), (40, 180, 80)])
IMAGE_B = blocks([(30, 90, 200), (40, 180, 80), (240, 200, 30), (200, 40, 40)])


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32)


def center(img: Image.Image) -> np.ndarray:
    """The middle half of the picture, well clear of the banners at the edges."""
    w, h = img.size
    return pixels(img.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)))


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def near(img: Image.Image, color: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    """Mask of the pixels within ``tol`` (per channel) of ``color``."""
    return (np.abs(pixels(img) - np.array(color, dtype=np.float32)) <= tol).all(axis=-1)


def frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


# --- codec, size, duration, audio ------------------------------------------------------


@pytest.fixture(scope="module")
def main_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The common case in full: 720p 16:9, 8 seconds, with audio."""
    tmp = tmp_path_factory.mktemp("main")
    return render(tmp, job(duration=8, generate_audio=True))


def test_720p_landscape_is_h264_mp4_with_aac(main_video: Path) -> None:
    info = check_video(main_video)
    assert info.video_codec == "h264"
    assert "mp4" in info.container
    assert (info.width, info.height) == (1280, 720)
    assert info.fps == pytest.approx(FPS)
    assert info.frames == 8 * FPS
    assert abs(info.duration_s - 8) <= FRAME
    assert info.audio_codec == "aac"
    assert (info.audio_channels, info.audio_sample_rate) == (2, 48_000)
    assert abs(info.audio_duration_s - info.duration_s) <= FRAME


def test_audio_is_a_real_signal(main_video: Path) -> None:
    with av.open(str(main_video)) as c:
        samples = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    middle = samples[:, samples.shape[1] // 4 : samples.shape[1] * 3 // 4]
    rms = float(np.sqrt((middle**2).mean()))
    assert 0.02 < rms < 0.7, rms  # audible, not clipping
    # Faded in: the first few milliseconds are much quieter than the middle.
    assert float(np.abs(samples[:, :200]).max()) < 0.2 * float(np.abs(middle).max())


def test_720p_portrait_without_audio(tmp_path: Path) -> None:
    info = probe_video(render(tmp_path, job(aspect_ratio="9:16", duration=4)))
    assert (info.width, info.height) == (720, 1280)
    assert abs(info.duration_s - 4) <= FRAME
    assert info.audio_codec is None and info.audio_channels == 0


def test_1080p_frame_size(tmp_path: Path) -> None:
    info = check_video(render(tmp_path, job(resolution="1080p")))
    assert (info.width, info.height) == (1920, 1080)
    assert info.video_codec == "h264"


@pytest.mark.parametrize("duration", [4, 6, 8])
def test_duration_within_one_frame(tmp_path: Path, duration: int) -> None:
    # The length is what is tested, so a small frame keeps it quick.
    path = render(tmp_path, job(duration=duration, generate_audio=True), max_height=180)
    info = probe_video(path)
    assert info.frames == duration * FPS
    assert abs(info.duration_s - duration) <= FRAME
    assert abs(info.audio_duration_s - duration) <= FRAME


def test_other_fps(tmp_path: Path) -> None:
    info = probe_video(render(tmp_path, job(duration=2), fps=30, max_height=180))
    assert info.fps == pytest.approx(30)
    assert info.frames == 60
    assert abs(info.duration_s - 2) <= 1 / 30


def test_max_height_caps_the_short_side(tmp_path: Path) -> None:
    info = probe_video(render(tmp_path, job(resolution="4k"), max_height=360))
    assert (info.width, info.height) == (640, 360)
    assert output_size("4k", "9:16", 1080) == (1080, 1920)
    assert output_size("720p", "16:9", 1080) == (1280, 720)  # already under the cap
    assert output_size("1080p", "16:9", 0) == (1920, 1080)  # 0: no cap
    w, h = output_size("1080p", "9:16", 500)
    assert (w % 2, h % 2) == (0, 0) and min(w, h) == 500


# --- the picture uses the request ------------------------------------------------------


def i2v(**kw: object) -> Job:
    defaults: dict[str, object] = {
        "scene": "image-to-video",
        "prompt": "slow push in",
        "duration": 2,
        "inputs": Inputs(image=png(IMAGE_A)),
    }
    return job(**{**defaults, **kw})


def test_image_to_video_starts_on_the_image_then_moves(tmp_path: Path) -> None:
    path = render(tmp_path, i2v())
    first = read_frame(path, 0)
    expected = IMAGE_A.resize(first.size, Image.Resampling.LANCZOS)
    assert mad(center(first), center(expected)) < 4
    # A different image does not match, so the check above means something.
    other = IMAGE_B.resize(first.size, Image.Resampling.LANCZOS)
    assert mad(center(first), center(other)) > 40
    # The camera moves: the end differs from the start but still shows the same image.
    last = read_frame(path, 2 * FPS - 1)
    assert mad(center(last), center(first)) > 3
    assert mad(center(last), center(expected)) < mad(center(last), center(other))


def test_image_is_covered_and_center_cropped(tmp_path: Path) -> None:
    # A square input on a 16:9 frame: scaled to the width, top and bottom cut off.
    square = blocks([(200, 40, 40), (240, 200, 30), (30, 90, 200), (40, 180, 80)], (400, 400))
    first = read_frame(render(tmp_path, i2v(inputs=Inputs(image=png(square)))), 0)
    expected = square.resize((1280, 1280), Image.Resampling.LANCZOS).crop((0, 280, 1280, 1000))
    assert mad(center(first), center(expected)) < 4


def test_first_and_last_frame_morph(tmp_path: Path) -> None:
    inputs = Inputs(image=png(IMAGE_A), last_image=png(IMAGE_B))
    path = render(tmp_path, i2v(inputs=inputs, duration=2))
    info = probe_video(path)
    first, last = read_frame(path, 0), read_frame(path, info.frames - 1)
    a = center(IMAGE_A.resize(first.size, Image.Resampling.LANCZOS))
    b = center(IMAGE_B.resize(first.size, Image.Resampling.LANCZOS))
    assert mad(center(first), a) < 4
    assert mad(center(last), b) < 4
    assert mad(center(last), a) > 40
    # Halfway it is neither image alone.
    middle = center(read_frame(path, info.frames // 2))
    assert mad(middle, a) > 10 and mad(middle, b) > 10


def test_reference_to_video_shows_the_references(tmp_path: Path) -> None:
    red = Image.new("RGB", (300, 300), (255, 0, 0))
    blue = Image.new("RGB", (300, 200), (0, 0, 255))
    ref_job = job(scene="reference-to-video", inputs=Inputs(images=(png(red), png(blue))))
    ref_frame = read_frame(render(tmp_path, ref_job, "ref.mp4"), 12)
    t2v_frame = read_frame(
        render(tmp_path, replace(ref_job, scene="text-to-video", inputs=Inputs()), "t2v.mp4"), 12
    )
    assert mad(pixels(ref_frame), pixels(t2v_frame)) > 10
    for color in ((255, 0, 0), (0, 0, 255)):
        share = near(ref_frame, color).mean()
        assert share > 0.03, (color, share)
        assert near(t2v_frame, color).mean() < share / 10


def test_the_prompt_changes_the_picture(tmp_path: Path) -> None:
    a = read_frame(render(tmp_path, job(prompt="a red fox in the snow"), "a.mp4"), 6)
    b = read_frame(render(tmp_path, job(prompt="a blue whale in the deep"), "b.mp4"), 6)
    assert mad(center(a), center(b)) > 5  # the background is drawn from the prompt
    c = read_frame(render(tmp_path, job(prompt="a red fox in the snow", seed=8), "c.mp4"), 6)
    assert mad(center(a), center(c)) > 5  # and from the seed


def test_text_and_sandbox_mark_are_drawn_at_the_edges(tmp_path: Path) -> None:
    # On a flat grey image anything that is not grey is the overlay.
    grey = Image.new("RGB", (1280, 720), (128, 128, 128))
    base = i2v(inputs=Inputs(image=png(grey)))
    a = read_frame(render(tmp_path, replace(base, prompt="first prompt"), "a.mp4"), 0)
    longer = "another prompt, long enough to wrap: " + "a slow dolly shot across a harbour " * 4
    b = read_frame(render(tmp_path, replace(base, prompt=longer), "b.mp4"), 0)
    w, h = a.size
    top = a.crop((0, 0, w, h // 12))
    assert near(top, AMBER).mean() > 0.02  # the SANDBOX badge
    assert near(top, (255, 255, 255), tol=60).mean() > 0.01  # the notice in white
    assert mad(center(a), np.full_like(center(a), 128)) < 2  # the middle is untouched
    # The prompt is written in the bottom banner: a different prompt, different pixels.
    bottom_a, bottom_b = (pixels(x.crop((0, h * 5 // 6, w, h))) for x in (a, b))
    assert mad(bottom_a, bottom_b) > 5
    assert mad(center(a), center(b)) < 1


def test_directives_are_not_drawn(tmp_path: Path) -> None:
    plain = render(tmp_path, job(prompt="waves on a beach"), "plain.mp4")
    directive = render(tmp_path, job(prompt="waves on a [sandbox:nsfw]beach"), "dir.mp4")
    assert (
        hashlib.sha256(plain.read_bytes()).digest()
        == hashlib.sha256(directive.read_bytes()).digest()
    )


def test_same_request_same_video(tmp_path: Path) -> None:
    a = render(tmp_path, job(id="one", generate_audio=True), "a.mp4", max_height=360)
    b = render(tmp_path, job(id="two", generate_audio=True), "b.mp4", max_height=360)
    assert a.read_bytes() == b.read_bytes()
    for fa, fb in zip(frames(a), frames(b), strict=True):
        assert np.array_equal(fa, fb)


# --- the backend -----------------------------------------------------------------------


def test_parse_directives() -> None:
    text, names = parse_directives("a cat [sandbox:fail] on a  [SANDBOX:NSFW] mat")
    assert text == "a cat on a mat"
    assert names == {"fail", "nsfw"}
    assert parse_directives("no directives") == ("no directives", frozenset())
    # An unknown directive stays in the text, so a typo is seen on the video.
    assert parse_directives("x [sandbox:fial]") == ("x [sandbox:fial]", frozenset())


async def test_generate_writes_job_mp4(tmp_path: Path) -> None:
    backend = SandboxBackend(max_height=180, latency_s=0.05)
    started = time.monotonic()
    path = await backend.generate(job(id="abc"), tmp_path / "work")
    assert time.monotonic() - started >= 0.05
    assert path == tmp_path / "work" / "abc.mp4"
    assert check_video(path).frames == FPS
    assert [p.name for p in path.parent.iterdir()] == ["abc.mp4"]  # no temporary left


async def test_fail_directive(tmp_path: Path) -> None:
    with pytest.raises(BackendError) as e:
        await SandboxBackend().generate(job(prompt="boom [sandbox:fail]"), tmp_path)
    assert "simulated failure" in e.value.message and not e.value.nsfw
    assert not list(tmp_path.iterdir())


async def test_nsfw_directive(tmp_path: Path) -> None:
    with pytest.raises(BackendError) as e:
        await SandboxBackend().generate(job(prompt="[sandbox:nsfw] something"), tmp_path)
    assert e.value.nsfw
    assert e.value.message == NSFW_MESSAGE


async def test_failure_rate(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="simulated failure"):
        await SandboxBackend(failure_rate=1.0).generate(job(), tmp_path)
    # A rate in between fails some jobs, always the same ones (drawn from the job id).
    half = SandboxBackend(failure_rate=0.5, max_height=180)
    results = []
    for i in range(12):
        try:
            await half.generate(job(id=f"j{i}", duration=1), tmp_path)
            results.append(True)
        except BackendError:
            results.append(False)
    assert 0 < sum(results) < 12
    again = []
    for i in range(12):
        try:
            await half.generate(job(id=f"j{i}", duration=1), tmp_path)
            again.append(True)
        except BackendError:
            again.append(False)
    assert again == results


async def test_generate_runs_off_the_event_loop(tmp_path: Path) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await SandboxBackend(max_height=360).generate(job(duration=2), tmp_path)
    finally:
        task.cancel()
    assert ticks >= 5  # the loop kept running while the video rendered


def test_bad_input_image_is_a_backend_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="cannot decode"):
        render(tmp_path, i2v(inputs=Inputs(image=b"not an image")))


def test_from_settings() -> None:
    ss = SandboxSettings(  # type: ignore[call-arg]
        _env_file=None, latency_s=1.5, failure_rate=0.25, max_height=720, fps=30,
        render_processes=0,
    )
    backend = SandboxBackend.from_settings(load_settings(worker_concurrency=3), ss)
    assert backend.name == "sandbox"
    assert (backend.latency_s, backend.failure_rate, backend.max_height, backend.fps,
            backend.processes, backend.concurrency) == (1.5, 0.25, 720, 30, 0, 3)


# --- check_video -----------------------------------------------------------------------


def test_check_video_rejects_what_we_cannot_deliver(tmp_path: Path, main_video: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00" * 1000)
    with pytest.raises(InvalidVideo):
        check_video(garbage)
    with pytest.raises(InvalidVideo, match="over the limit"):
        check_video(main_video, max_bytes=1000)

    def write(path: Path, fmt: str, codec: str) -> Path:
        with av.open(str(path), "w", format=fmt) as out:
            stream = out.add_stream(codec, rate=FPS)
            stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
            for i in range(3):
                frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), "rgb24")
                frame.pts = i
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
        return path

    with pytest.raises(InvalidVideo, match="not H.264"):
        check_video(write(tmp_path / "mpeg4.mp4", "mp4", "mpeg4"))
    with pytest.raises(InvalidVideo, match="not an MP4"):
        check_video(write(tmp_path / "h264.mkv", "matroska", "libx264"))
    assert check_video(write(tmp_path / "ok.mp4", "mp4", "libx264")).frames == 3


def test_render_processes_end_when_the_server_dies_before_they_start(tmp_path: Path) -> None:
    """A server killed while its render pool is still spawning leaves no render process
    behind: each one ends by itself once it finds its server gone, even when it only
    starts after the server has died."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import asyncio, os
        from pathlib import Path
        from reelgate.backends.base import Job
        from reelgate.backends.sandbox.backend import SandboxBackend

        async def main():
            backend = SandboxBackend(processes=2, max_height=90)
            job = Job(id="orphan", model="veo3.1-fast", scene="text-to-video",
                      prompt="left behind", duration=4)
            task = asyncio.ensure_future(backend.generate(job, Path({str(tmp_path)!r})))
            await asyncio.sleep(0)  # the pool spawns its processes on the first submit
            await asyncio.sleep(0.05)
            print(*backend._pool._processes, flush=True)
            os._exit(0)  # as if killed: no shutdown, the processes are still importing

        asyncio.run(main())
    """)
    # Output to a file: a render process left behind would hold a pipe open.
    log = tmp_path / "server.log"
    with log.open("w") as f:
        subprocess.run([sys.executable, "-c", script], stdout=f, stderr=f, timeout=60)
    pids = [int(p) for p in log.read_text().split("\n", 1)[0].split() if p.isdigit()]
    assert pids, log.read_text()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # A zombie waiting for its reaper counts as gone.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"

    deadline = time.monotonic() + 30
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in pids if alive(p)]
    for p in left:
        os.kill(p, 9)
    assert not left, f"render processes {left} outlived their server"
