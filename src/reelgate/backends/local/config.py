"""The local backend's settings (``REELGATE_LOCAL_*``, a settings object of its own) and the
operator-declared models file they name, read by API processes (routing, validation, prices,
/api/v3/models) and by GPU workers (loading). Imports no torch.

The file is TOML (stdlib ``tomllib``), named by ``REELGATE_LOCAL_MODELS_FILE``::

    [[models]]
    name = "wan2.2-5b"            # served at POST /api/v3/local/wan2.2-5b/{scene}
    family = "wan"                # wan, ltx or ltx2
    weights = "/srv/models/Wan2.2-TI2V-5B-Diffusers"   # or a repo id in the HF cache
    dtype = "bfloat16"
    fps = 24
    sizes = { "720p" = [1280, 704] }   # width, height for 16:9 (9:16 swaps them)
    steps = 40
    guidance = 5.0
    price_per_second = 0.02       # operator's currency units
    serves = ["veo3.1-fast"]      # optional: Veo names this model answers
    max_duration = 5              # or durations = [2, 4, 5]; default: 4, 6, 8 (Veo's)
    max_frames = 121              # the most frames one pipeline call may generate

Durations are the model's own, not Veo's: a request is accepted when its duration is one of
``durations`` (or any whole number of seconds up to ``max_duration``), whatever its scene,
resolution or frames; the frames generated for it (``duration x fps``, rounded up to the
family's 1 + k x ``frame_step``) must fit ``max_frames``, checked when the file is read.
"""

from __future__ import annotations

import math
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from reelgate import catalog
from reelgate.settings import ReelgateSettings


class LocalSettings(ReelgateSettings):
    """Like every backend folder's settings (google/config.py is the template): its own
    prefix, the same settings file as the main settings (``REELGATE_SETTINGS_FILE``)."""

    model_config = SettingsConfigDict(
        env_prefix="REELGATE_LOCAL_",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # TOML file declaring the models served from this operator's GPUs; empty: none (the
    # backend is not configured).
    models_file: Path | None = None
    # Torch device of this worker process (`reelgate worker --device cuda:0` sets it).
    device: str = "cuda"
    # Torch CPU threads for a CPU device (tests, benchmarks); 0 keeps torch's default.
    torch_threads: int = Field(0, ge=0)


@lru_cache(maxsize=1)
def load_local_settings() -> LocalSettings:
    """The process's local-backend settings, read once (the environment does not change
    while a server runs). Tests that change it call ``load_local_settings.cache_clear()``."""
    return LocalSettings()


FAMILIES = ("wan", "ltx", "ltx2")

# What each family's diffusers pipelines can do (see backends/local/families.py).
FAMILY_SCENES: dict[str, tuple[str, ...]] = {
    "wan": ("text-to-video", "image-to-video", "reference-to-video"),
    "ltx": ("text-to-video", "image-to-video"),
    "ltx2": ("text-to-video", "image-to-video"),
}
FAMILY_AUDIO = {"wan": False, "ltx": False, "ltx2": True}
# Frame counts each family's VAE accepts: 1 + k * step (temporal compression).
FAMILY_FRAME_STEP = {"wan": 4, "ltx": 8, "ltx2": 8}
# Frame sizes must be multiples of this (VAE spatial compression x transformer patch).
FAMILY_SIZE_STEP = {"wan": 16, "ltx": 32, "ltx2": 32}
# Whether the family takes a last frame (image-to-video with last_image).
FAMILY_LAST_FRAME = {"wan": True, "ltx": False, "ltx2": False}


class LocalModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,40}$")
    family: Literal["wan", "ltx", "ltx2"]
    weights: str
    # Other weights for some scenes (e.g. a VACE checkpoint for reference-to-video).
    weights_by_scene: dict[str, str] = Field(default_factory=dict)
    # Extra pipeline config for from_pretrained / from_pipe, by scene (for example
    # {"image-to-video": {"expand_timesteps": true}} for Wan 2.2 TI2V).
    pipeline_kwargs: dict[str, dict[str, object]] = Field(default_factory=dict)
    scenes: list[str] | None = None
    # Whether image-to-video takes a last frame; default: the family's (Wan yes). Wan 2.2
    # TI2V-5B conditions on the first frame only (expand_timesteps), so declare false.
    last_frame: bool | None = None
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    fps: int = Field(16, ge=1, le=60)
    sizes: dict[str, tuple[int, int]] = Field(default_factory=lambda: {"720p": (1280, 704)})
    steps: int = Field(30, ge=1, le=500)
    guidance: float = 5.0
    price_per_second: float = Field(0.0, ge=0)
    serves: list[str] = Field(default_factory=list)
    # Fallbacks instead of a 400: "silent" delivers a silent video when audio is asked
    # of a silent family; "nearest" renders the closest declared resolution.
    audio_fallback: Literal["refuse", "silent"] = "refuse"
    resolution_fallback: Literal["refuse", "nearest"] = "refuse"
    # Runtime options (GPU workers).
    cpu_offload: Literal["none", "model", "sequential"] = "none"
    compile: bool = False
    cache: Literal["none", "first_block", "mag", "taylorseer"] = "none"
    cache_threshold: float = 0.05
    # MagCache skips blocks by the checkpoint's magnitude ratios (one per step, from a
    # calibration run: diffusers' MagCacheConfig(calibrate=True) prints them); diffusers
    # refuses MagCache without them.
    mag_ratios: list[float] | None = None
    max_sequence_length: int | None = None
    # Durations (whole seconds) the model is offered for: a list, or every second up to a
    # maximum; neither: 4, 6 and 8 (what Veo clients send).
    durations: list[int] | None = None
    max_duration: int | None = Field(None, ge=1, le=600)
    default_duration: int | None = None
    # Frame counts the pipeline takes are 1 + k * frame_step (the VAE's temporal
    # compression: Wan 4, LTX-Video and LTX-2 8); a checkpoint with another VAE says so.
    frame_step: int | None = Field(None, ge=1, le=64)
    # The most frames one call may generate (what the model was trained for / the card
    # holds: Wan 2.1 81, Wan 2.2 TI2V 121, LTX-Video 257).
    max_frames: int | None = Field(None, ge=1)

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        for res in v:
            if res not in catalog.RESOLUTIONS:
                raise ValueError(f"resolution {res!r} is not one of {catalog.RESOLUTIONS}")
        if not v:
            raise ValueError("declare at least one resolution")
        return v

    @field_validator("durations")
    @classmethod
    def _durations(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v or any(d < 1 or d > 600 for d in v):
                raise ValueError("durations are whole seconds from 1 to 600, at least one")
            v = sorted(set(v))
        return v

    @property
    def allowed_durations(self) -> tuple[int, ...]:
        """Every duration (seconds) a request may ask of this model, in order."""
        if self.max_duration is not None:
            return tuple(range(1, self.max_duration + 1))
        return tuple(self.durations or catalog.DURATIONS)

    @property
    def duration_default(self) -> int:
        """The duration of a request that sends none: the declared default, else Veo's
        (8 s) when offered, else the longest offered."""
        if self.default_duration is not None:
            return self.default_duration
        allowed = self.allowed_durations
        veo = int(catalog.DEFAULTS["duration"])  # type: ignore[call-overload]
        return veo if veo in allowed else allowed[-1]

    @property
    def step_of_frames(self) -> int:
        return self.frame_step or FAMILY_FRAME_STEP[self.family]

    def duration_rule(self) -> str:
        """The rule in words, for error messages."""
        if self.max_duration is not None:
            rule = f"1 to {self.max_duration} seconds"
        else:
            rule = f"{', '.join(map(str, self.allowed_durations))} seconds"
        return f"{rule} at {self.fps} fps"

    def check_duration(self, duration: int) -> None:
        """Raise ValueError (a 400 at intake) when ``duration`` is not offered."""
        if duration not in self.allowed_durations:
            raise ValueError(f"{self.path} makes {self.duration_rule()} (got {duration})")

    @property
    def path(self) -> str:
        return f"local/{self.name}"

    @property
    def offered_scenes(self) -> tuple[str, ...]:
        family = FAMILY_SCENES[self.family]
        return tuple(s for s in catalog.SCENES if s in (self.scenes or family))

    @property
    def audio(self) -> bool:
        return FAMILY_AUDIO[self.family]

    @property
    def takes_last_frame(self) -> bool:
        return FAMILY_LAST_FRAME[self.family] if self.last_frame is None else self.last_frame

    @property
    def price_micros(self) -> int:
        return round(self.price_per_second * 1_000_000)

    def check_shape(self) -> None:
        step = FAMILY_SIZE_STEP[self.family]
        for res, (w, h) in self.sizes.items():
            if w % step or h % step:
                raise ValueError(f"model {self.name}: size {res} {w}x{h} must be multiples of "
                                 f"{step} for the {self.family} family")
        if self.cache == "mag" and not self.mag_ratios:
            raise ValueError(f"model {self.name}: cache = \"mag\" needs mag_ratios, the "
                             "checkpoint's magnitude ratios (run diffusers' "
                             "MagCacheConfig(calibrate=True) once and copy what it prints)")
        if self.durations is not None and self.max_duration is not None:
            raise ValueError(f"model {self.name}: declare durations or max_duration, not both")
        if (self.default_duration is not None
                and self.default_duration not in self.allowed_durations):
            raise ValueError(f"model {self.name}: default_duration {self.default_duration} is "
                             f"not among its durations ({self.duration_rule()})")
        if self.max_frames is not None:
            longest = max(self.allowed_durations)
            generated = self.frames_for(longest)[1]
            if generated > self.max_frames:
                raise ValueError(
                    f"model {self.name}: {longest} s at {self.fps} fps needs {generated} "
                    f"frames (1 + k x {self.step_of_frames}), more than max_frames "
                    f"{self.max_frames}; lower max_duration/durations or fps")
        bad = set(self.scenes or ()) - set(FAMILY_SCENES[self.family])
        if bad:
            raise ValueError(f"model {self.name}: the {self.family} family cannot do "
                             f"{', '.join(sorted(bad))}")

    def frame_size(self, resolution: str, aspect_ratio: str) -> tuple[int, int]:
        """(width, height) to render; resolution must be declared (or resolved first)."""
        w, h = self.sizes[resolution]
        return (w, h) if aspect_ratio == "16:9" else (h, w)

    def resolve_resolution(self, resolution: str) -> str | None:
        """The declared resolution that serves ``resolution``, or None (refuse)."""
        if resolution in self.sizes:
            return resolution
        if self.resolution_fallback == "nearest":
            order = list(catalog.RESOLUTIONS)
            want = order.index(resolution)
            return min(self.sizes, key=lambda r: (abs(order.index(r) - want), -order.index(r)))
        return None

    def frames_for(self, duration: int) -> tuple[int, int]:
        """(frames delivered, frames generated) for ``duration`` seconds: the pipeline makes
        the next count its VAE accepts (1 + k*step) and the extra tail frames are cut, so
        the file lasts exactly ``duration`` seconds."""
        wanted = duration * self.fps
        step = self.step_of_frames
        generated = 1 + step * max(1, math.ceil((wanted - 1) / step))
        return wanted, generated


class LocalModelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[LocalModelConfig] = Field(default_factory=list)


class LocalConfigError(Exception):
    pass


def load_local_models(path: Path | str) -> dict[str, LocalModelConfig]:
    """Parse and check the file; the key is the public path ("local/<name>")."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
        parsed = LocalModelsFile.model_validate(raw)
    except FileNotFoundError:
        raise LocalConfigError(f"local models file {p} does not exist") from None
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise LocalConfigError(f"local models file {p}: {exc}") from None
    models: dict[str, LocalModelConfig] = {}
    served: dict[str, str] = {}
    for m in parsed.models:
        try:
            m.check_shape()
        except ValueError as exc:
            raise LocalConfigError(str(exc)) from None
        if m.path in models:
            raise LocalConfigError(f"model {m.name} is declared twice")
        for alias in m.serves:
            if alias not in catalog.MODELS:
                raise LocalConfigError(f"model {m.name}: serves unknown model {alias!r}")
            if alias in served:
                raise LocalConfigError(f"{alias} is served by both {served[alias]} and {m.name}")
            served[alias] = m.name
        models[m.path] = m
    return models


def install(path: Path | str | None) -> dict[str, LocalModelConfig]:
    """Load the file (if any) into the catalog, so routes, validation, prices and the model
    list see the local models."""
    models = load_local_models(path) if path else {}
    catalog.LOCAL_MODELS.clear()
    catalog.LOCAL_ALIASES.clear()
    for key, m in models.items():
        catalog.LOCAL_MODELS[key] = catalog.Model(
            key, m.family, "local", m.offered_scenes, f"{m.family} on local GPUs ({m.weights})",
            local=m,
        )
        for alias in m.serves:
            catalog.LOCAL_ALIASES[alias] = key
    return models


def config_for(model: str) -> LocalModelConfig | None:
    """The local model serving public ``model`` (its own path, or a Veo alias)."""
    return catalog.local_config(model)  # type: ignore[no-any-return]
