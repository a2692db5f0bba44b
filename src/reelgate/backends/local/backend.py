"""The local backend: open video models through diffusers on this worker's GPU.

Pipelines are loaded once per worker process (on first use, or all at start with
``preload``) and kept warm. A generation runs in one dedicated thread (torch state such as
the current CUDA device is per thread), while the event loop keeps the lease alive and
writes progress: the step callback only stores (step, steps) and reads a threading.Event,
so it adds no database round trip, and no wake-up of the loop, to a denoising step."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reelgate.backends.base import BackendBase, BackendError, Cancelled, Capabilities, Job
from reelgate.backends.local.check import check_local_request
from reelgate.backends.local.config import (
    LocalModelConfig,
    LocalSettings,
    config_for,
    install,
    load_local_settings,
)
from reelgate.backends.local.families import PIPELINES, TAYLORSEER_MODULES, build_call
from reelgate.media.video import AUDIO_SAMPLE_RATE, encode_mp4

if TYPE_CHECKING:
    from reelgate.settings import Settings

log = logging.getLogger("reelgate.local")

OOM_MESSAGE = (
    "The GPU ran out of memory while generating this video. You were not charged; try a "
    "lower resolution or a shorter duration, or try again later."
)


# How often the progress (and with it the cancel flag) is written to and read back from
# the row while a prediction denoises: the first step at once, then at least this often.
# A GPU step takes 0.05 to 15 s, so a user sees every step or near it, a cancel stops
# within this plus one step, and the event loop stays off the GIL the pipeline's Python code needs.
PROGRESS_INTERVAL_S = 0.5
# ...and at each tenth of the steps, so a short run (fast steps) still shows them move.
PROGRESS_MARKS = 10


class _Stop(Exception):
    """Raised from the step callback to leave the denoising loop at once."""


@dataclass
class Generated:
    frames: np.ndarray  # (F, H, W, 3) uint8
    audio: np.ndarray | None  # (2, n) float32 in [-1, 1], or None
    sample_rate: int
    seconds_denoise: float
    seconds_decode: float
    seconds_per_step: float
    # Time spent in reelgate's step callback (hand-over and cancel check), all steps.
    seconds_in_callback: float = 0.0
    # CPU time of the generating thread over the pipeline call: unlike wall time, not
    # inflated by other processes' load (on a GPU: the Python side that launches kernels).
    seconds_cpu: float = 0.0


def _torch() -> Any:
    import torch

    return torch


def torch_dtype(name: str) -> Any:
    return getattr(_torch(), name)


class PipelineCache:
    """Loaded pipelines by (weights, pipeline class), kept for the process's lifetime.
    Pipelines of one model that share weights share their modules (``from_pipe``), so a
    model's text-to-video and image-to-video cost its memory once."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._pipes: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()

    def get(self, m: LocalModelConfig, scene: str) -> Any:
        cls_name = PIPELINES[m.family][scene]
        weights = m.weights_by_scene.get(scene, m.weights)
        key = (weights, _runtime(m), cls_name)
        with self._lock:
            pipe = self._pipes.get(key)
            if pipe is None:
                pipe = self._load(m, scene, cls_name, weights)
                self._pipes[key] = pipe
            return pipe

    def _load(self, m: LocalModelConfig, scene: str, cls_name: str, weights: str) -> Any:
        import diffusers

        cls = getattr(diffusers, cls_name)
        extra = dict(m.pipeline_kwargs.get(scene, {}))
        # Modules are shared only with a pipeline of the same weights AND the same runtime
        # options: the hooks, offload and compilation live on the modules themselves, so
        # two models declaring the same weights with other options get their own copies.
        sibling = next((p for (w, rt, _), p in self._pipes.items()
                        if w == weights and rt == _runtime(m)), None)
        started = time.perf_counter()
        if sibling is not None:
            # Same weights, another task: reuse the modules already on the device.
            pipe = cls.from_pipe(sibling, **extra)
        else:
            pipe = cls.from_pretrained(
                weights, dtype=torch_dtype(m.dtype),
                # Never download at request time: the operator fetched the weights.
                local_files_only=True, **extra,
            )
            self._place(pipe, m)
        log.info("loaded %s for %s (%s) in %.1fs", cls_name, m.path, weights,
                 time.perf_counter() - started)
        return pipe

    def _place(self, pipe: Any, m: LocalModelConfig) -> None:
        if m.cpu_offload == "model":
            pipe.enable_model_cpu_offload(device=self.device)
        elif m.cpu_offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        denoiser = getattr(pipe, "transformer", None)
        if denoiser is not None and m.cache != "none":
            denoiser.enable_cache(_cache_config(m))
        if denoiser is not None and m.compile:
            denoiser.compile()
        pipe.set_progress_bar_config(disable=True)


def _runtime(m: LocalModelConfig) -> str:
    """What, besides the weights, changes the loaded modules (dtype, offload, hooks)."""
    return repr((m.dtype, m.cpu_offload, m.compile, m.cache, m.cache_threshold,
                 m.mag_ratios, m.steps if m.cache == "mag" else None))


def _cache_config(m: LocalModelConfig) -> Any:
    import diffusers

    if m.cache == "first_block":
        return diffusers.FirstBlockCacheConfig(threshold=m.cache_threshold)
    if m.cache == "mag":
        return diffusers.MagCacheConfig(threshold=m.cache_threshold,
                                        num_inference_steps=m.steps,
                                        mag_ratios=m.mag_ratios)
    return diffusers.TaylorSeerCacheConfig(cache_identifiers=TAYLORSEER_MODULES[m.family])


def _to_uint8_frames(video: Any) -> np.ndarray:
    arr = video[0] if isinstance(video, list | tuple) or getattr(video, "ndim", 0) == 5 else video
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return arr


def _audio_array(audio: Any) -> np.ndarray:
    torch = _torch()
    a = audio[0] if isinstance(audio, list | tuple) else audio
    if isinstance(a, torch.Tensor):
        a = a.detach().float().cpu().numpy()
    a = np.asarray(a, dtype=np.float32)
    while a.ndim > 2:
        a = a[0]
    if a.ndim == 1:
        a = np.stack([a, a])
    if a.shape[0] == 1:
        a = np.concatenate([a, a])
    return a[:2]


def _resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return audio
    # Linear interpolation is enough for a vocoder's band-limited output; the AAC encoder
    # wants one rate for every file.
    n = int(round(audio.shape[1] * target / rate))
    src = np.linspace(0.0, 1.0, audio.shape[1])
    dst = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(dst, src, ch) for ch in audio]).astype(np.float32)


class LocalBackend(BackendBase):
    name = "local"
    # One GPU holds one generation at a time (REELGATE_BACKEND_CONCURRENCY='{"local": n}'
    # lets more queue behind the GPU thread).
    concurrency = 1

    def __init__(self, ls: LocalSettings) -> None:
        self.ls = ls
        self.models = install(ls.models_file)
        self.device = ls.device
        self.cache = PipelineCache(self.device)
        # One thread runs every generation of this process, so torch's per-thread state
        # (current CUDA device, grad mode) is set once and stays put.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gpu")
        self._started = False

    # --- the port ------------------------------------------------------------------------

    def capabilities(self, model: str) -> Capabilities:
        m = config_for(model)
        if m is None:
            return Capabilities(scenes=(), resolutions=())
        return Capabilities(
            scenes=tuple(m.offered_scenes),
            # Deliverable sizes; check() also takes others when resolution_fallback says so.
            resolutions=tuple(r for r in ("720p", "1080p", "4k") if r in m.sizes),
            # The model's own durations (its declaration), not Veo's 4/6/8.
            durations=tuple(m.allowed_durations),
            # Accepted: a silent model with audio_fallback="silent" takes generate_audio.
            audio=bool(m.audio) or m.audio_fallback == "silent",
            last_image=m.takes_last_frame,
            reference_images="reference-to-video" in m.offered_scenes,
            exact_output=True,
            progress=True,
        )

    def check(self, job: Job) -> None:
        check_local_request(job)

    def price(self, job: Job) -> int | None:
        # None: the price table prices local models already (per second at the operator's
        # price for its GPUs: the models file's price_per_second, or a REELGATE_PRICES
        # override, with the markup), and a backend never imports the accounts above it.
        return None

    def describe(self, model: str) -> dict[str, Any]:
        m = config_for(model)
        return {} if m is None else {"served_by": m.path}

    async def start(self) -> None:
        # Torch is imported here, in the worker, never in an API process.
        if not self._started:
            self._started = True
            if self.ls.torch_threads:
                _torch().set_num_threads(self.ls.torch_threads)

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, True)

    @classmethod
    def from_settings(cls, settings: Settings, ls: LocalSettings | None = None) -> LocalBackend:
        return cls(ls or load_local_settings())

    async def preload(self) -> None:
        """Load every declared model and scene now (worker start), not on first request."""
        loop = asyncio.get_running_loop()
        for m in self.models.values():
            for scene in m.offered_scenes:
                await loop.run_in_executor(self._executor, self.cache.get, m, scene)

    async def generate(self, job: Job, workdir: Path) -> Path:
        m = config_for(job.model)
        if m is None:
            raise BackendError(f"Model '{job.model}' is not declared on this worker.")
        resolution = m.resolve_resolution(job.resolution)
        if resolution is None:
            raise BackendError(f"{job.resolution} is not offered by {m.path}.")
        width, height = m.frame_size(resolution, job.aspect_ratio)
        wanted, generated = m.frames_for(job.duration)
        call = build_call(m, job, width, height, generated)
        seed = job.seed if job.seed is not None else random.randrange(2**32)

        loop = asyncio.get_running_loop()
        latest: list[tuple[int, int] | None] = [None]
        wake = asyncio.Event()
        ended = [False]
        stop = threading.Event()
        lost: list[BackendError] = []
        writes = [0]

        def on_step(step: int, total: int) -> None:
            # Called in the GPU thread between two steps: a plain assignment. Waking the
            # event loop every step made it take the GIL (and a database write) between
            # the pipeline's own Python work, step after step. It is woken at the first
            # step and at each tenth of the steps (at most PROGRESS_MARKS + 1 times a
            # prediction, however many steps), and reads the rest on its timer.
            prev = latest[0]
            latest[0] = (step, total)
            if prev is None or (step * PROGRESS_MARKS // total
                                != prev[0] * PROGRESS_MARKS // total):
                loop.call_soon_threadsafe(wake.set)

        async def relay() -> None:
            written: tuple[int, int] | None = None
            while True:
                try:
                    await asyncio.wait_for(wake.wait(), PROGRESS_INTERVAL_S)
                except TimeoutError:
                    pass
                wake.clear()
                last = ended[0]
                now = latest[0]
                if now is not None and now != written:
                    written = now
                    writes[0] += 1
                    try:
                        if await job.report_progress(*now):
                            stop.set()
                    except BackendError as exc:  # lease lost: stop working for nobody
                        lost.append(exc)
                        stop.set()
                        return
                if last:
                    return

        relay_task = asyncio.create_task(relay())
        try:
            result = await loop.run_in_executor(
                self._executor, self._run, m, job.scene, call, seed, on_step, stop)
        except asyncio.CancelledError:
            # The runner's timeout (or a shutdown): the GPU thread stops at its next step
            # instead of finishing a video nobody will collect.
            stop.set()
            raise
        finally:
            # Let the relay write the last step it was given, then end.
            ended[0] = True
            wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(relay_task), 10)
            except (TimeoutError, asyncio.CancelledError):
                relay_task.cancel()
        if lost:
            raise lost[0]
        if result is None:
            raise Cancelled("Cancelled by the user while it was running; you were not "
                            "charged.")
        audio = None
        if job.generate_audio and result.audio is not None:
            audio = _resample(result.audio, result.sample_rate, AUDIO_SAMPLE_RATE)
        frames = result.frames[:wanted]
        out = workdir / "video.mp4"
        encode_started = time.perf_counter()
        await asyncio.to_thread(
            encode_mp4, out, iter(frames), width=width, height=height, fps=m.fps,
            frame_count=len(frames), audio=audio,
        )
        log.info("prediction %s: %d steps, %.5f s/step, denoise %.4fs, decode %.4fs, "
                 "mp4 %.4fs, callback %.6fs, progress writes %d, cpu %.4fs", job.id, m.steps,
                 result.seconds_per_step, result.seconds_denoise, result.seconds_decode,
                 time.perf_counter() - encode_started, result.seconds_in_callback, writes[0],
                 result.seconds_cpu)
        return out

    def _run(self, m: LocalModelConfig, scene: str, call: Any, seed: int,
             on_step: Any, stop: threading.Event) -> Generated | None:
        """The generation itself, in the GPU thread. None means: stopped by a cancel."""
        torch = _torch()
        total = m.steps
        marks: dict[str, float] = {}

        in_callback = [0.0]

        def callback(pipeline: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            now = time.perf_counter()
            marks.setdefault("first_step", now)
            marks["denoised"] = now
            on_step(i + 1, total)
            if stop.is_set():
                raise _Stop
            in_callback[0] += time.perf_counter() - now
            return kwargs

        # A CPU generator: the same seed gives the same noise on any device.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        out_of_memory = False
        try:
            pipe = self.cache.get(m, scene)  # loaded once, then warm
            started = time.perf_counter()
            cpu_started = time.thread_time()
            with torch.inference_mode():
                output = pipe(**call.kwargs, generator=generator, output_type="np",
                              callback_on_step_end=callback, return_dict=True)
        except _Stop:
            return None
        except torch.OutOfMemoryError:
            # Freed after this block: the exception's traceback still holds the tensors.
            out_of_memory = True
        except OSError as exc:
            raise BackendError(f"Model {m.path} could not be loaded on this worker: "
                               f"{exc}") from None
        if out_of_memory:
            log.error("out of memory on %s running %s", self.device, m.path)
            self._free_memory()
            raise BackendError(OOM_MESSAGE)
        finished = time.perf_counter()
        cpu = time.thread_time() - cpu_started
        denoised = marks.get("denoised", finished)
        # Seconds per step between the first and the last step (text encoding and the
        # first step's warm-up excluded), the figure the benchmark compares.
        per_step = (denoised - marks.get("first_step", denoised)) / max(1, total - 1)
        frames = _to_uint8_frames(output.frames)
        audio = getattr(output, "audio", None)
        rate = AUDIO_SAMPLE_RATE
        if audio is not None:
            vocoder = getattr(pipe, "vocoder", None)
            rate = int(getattr(getattr(vocoder, "config", None), "output_sampling_rate", 0)
                       or getattr(pipe, "audio_sampling_rate", 0) or rate)
            audio = _audio_array(audio)
        return Generated(frames, audio, rate, denoised - started, finished - denoised, per_step,
                         in_callback[0], cpu)

    def _free_memory(self) -> None:
        import gc

        gc.collect()
        torch = _torch()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
