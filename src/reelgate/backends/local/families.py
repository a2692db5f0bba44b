"""What each model family's diffusers pipelines are called with, scene by scene.

One function per family turns a job into the pipeline class to use and its keyword
arguments; everything else (loading, progress, cancel, out-of-memory, encoding) is shared
in backend.py. Imports torch and diffusers: only GPU workers load this module."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageOps

from reelgate.backends.base import BackendError, Job
from reelgate.backends.local.config import LocalModelConfig

# Pipeline class for each (family, scene); reference-to-video on Wan is VACE.
PIPELINES: dict[str, dict[str, str]] = {
    "wan": {
        "text-to-video": "WanPipeline",
        "image-to-video": "WanImageToVideoPipeline",
        "reference-to-video": "WanVACEPipeline",
    },
    "ltx": {
        "text-to-video": "LTXPipeline",
        "image-to-video": "LTXImageToVideoPipeline",
    },
    "ltx2": {
        "text-to-video": "LTX2Pipeline",
        "image-to-video": "LTX2ImageToVideoPipeline",
    },
}

# Modules whose outputs TaylorSeer caches and predicts, by family. diffusers' defaults
# ("^blocks.*attn", "^transformer_blocks.*attn", matched whole) name Flux's attention
# modules; these families call theirs attn1/attn2 (LTX-2 also audio_attn1/2 and the
# audio<->video ones), so with the defaults TaylorSeer would hook nothing and change nothing.
TAYLORSEER_MODULES: dict[str, list[str]] = {
    "wan": [r"^blocks\.\d+\.attn\d$"],
    "ltx": [r"^transformer_blocks\.\d+\.attn\d$"],
    "ltx2": [r"^transformer_blocks\.\d+\.\w*attn\d?$"],
}

# The default negative prompt is empty: the operator's users send their own.


@dataclass
class Call:
    """One pipeline call: the class to run and its arguments (besides the shared ones)."""

    pipeline: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _image(data: bytes | None, width: int, height: int, what: str) -> Image.Image:
    if data is None:
        raise BackendError(f"{what} is missing")
    try:
        img = Image.open(io.BytesIO(data))
        img = ImageOps.exif_transpose(img).convert("RGB")
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the same user error
        raise BackendError(f"{what} could not be decoded: {exc}") from None
    # Cover the frame and crop the overflow, centred: the first frame IS the image.
    return ImageOps.fit(img, (width, height), Image.Resampling.LANCZOS)


def build_call(m: LocalModelConfig, job: Job, width: int, height: int,
               num_frames: int) -> Call:
    pipeline = PIPELINES[m.family][job.scene]
    kw: dict[str, Any] = {
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "width": width,
        "height": height,
        "num_frames": num_frames,
        "num_inference_steps": m.steps,
        "guidance_scale": m.guidance,
    }
    if m.max_sequence_length:
        kw["max_sequence_length"] = m.max_sequence_length
    if m.family in ("ltx", "ltx2"):
        kw["frame_rate"] = m.fps
    if job.scene == "image-to-video":
        kw["image"] = _image(job.inputs.image, width, height, "image")
        if job.inputs.last_image is not None:
            kw["last_image"] = _image(job.inputs.last_image, width, height, "last_image")
    elif job.scene == "reference-to-video":
        kw["reference_images"] = [
            _image(data, width, height, f"images[{i}]")
            for i, data in enumerate(job.inputs.images)
        ]
    return Call(pipeline, kw)
