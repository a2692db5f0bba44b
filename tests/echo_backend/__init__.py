"""``echo``: a backend that lives in the tests, to show what adding one takes: this folder
(settings of its own, the port, one ``register`` call) plus one fixture in
tests/contract/test_backends.py. A server loads it with
``REELGATE_BACKEND_MODULES=tests.echo_backend`` and routes models to it by name.

It renders a plain MP4 of exactly the asked size and length (a colour drawn from the prompt,
and a tone when audio is asked), reports three steps of progress (and stops when the user
cancels), prices itself per second when told to, and ``[echo:hang]`` in a prompt makes it
wait forever (what its ``timeout`` is for)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from reelgate import catalog
from reelgate.backends.base import BackendBase, Cancelled, Capabilities, Job
from reelgate.backends.registry import Resolve, register
from reelgate.media.video import AUDIO_SAMPLE_RATE, encode_mp4

if TYPE_CHECKING:
    from reelgate.backends.base import Backend
    from reelgate.settings import Settings

STEPS = 3
HANG = "[echo:hang]"


class EchoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REELGATE_ECHO_", extra="ignore")

    fps: int = Field(4, ge=1)
    concurrency: int = Field(4, ge=1)
    timeout_s: float | None = None
    # Micro-units per second of video; None: the catalog's price.
    price_per_second: int | None = None


class EchoBackend(BackendBase):
    name = "echo"

    def __init__(self, es: EchoSettings) -> None:
        self.es = es
        self.concurrency = es.concurrency
        self.timeout = es.timeout_s
        self.started = 0  # start() calls that did something (the contract checks it)
        self._running = False

    def capabilities(self, model: str) -> Capabilities:
        return Capabilities(scenes=("text-to-video", "image-to-video"), resolutions=("720p",),
                            last_image=False, reference_images=False, exact_output=True,
                            progress=True)

    def price(self, job: Job) -> int | None:
        if self.es.price_per_second is None:
            return None
        return self.es.price_per_second * job.duration

    def describe(self, model: str) -> dict[str, object]:
        return {"echo": True}

    async def start(self) -> None:
        if not self._running:
            self._running = True
            self.started += 1

    async def close(self) -> None:
        self._running = False

    async def generate(self, job: Job, workdir: Path) -> Path:
        if HANG in job.prompt:
            await asyncio.Event().wait()
        for step in range(1, STEPS + 1):
            if await job.report_progress(step, STEPS):
                raise Cancelled("Cancelled by the user; you were not charged.")
        width, height = catalog.frame_size(job.resolution, job.aspect_ratio)
        fps = self.es.fps
        count = job.duration * fps
        colour = np.frombuffer(hashlib.sha256(job.prompt.encode()).digest()[:3], np.uint8)
        frame = np.broadcast_to(colour, (height, width, 3)).copy()
        audio = None
        if job.generate_audio:
            t = np.arange(job.duration * AUDIO_SAMPLE_RATE) / AUDIO_SAMPLE_RATE
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            audio = np.stack([tone, tone])
        workdir.mkdir(parents=True, exist_ok=True)
        out = workdir / f"{job.id or 'echo'}.mp4"
        await asyncio.to_thread(encode_mp4, out, (frame for _ in range(count)), width=width,
                                height=height, fps=fps, frame_count=count, audio=audio,
                                preset="ultrafast")
        return out


def _build(settings: Settings, resolve: Resolve) -> Backend:
    return EchoBackend(EchoSettings())


register("echo", _build)
