"""The catalog: every model, scene, capability, default and allowed value in one place.

Validation (requests.py), the routes, the backends and the docs all read this table, so a
new model or a changed rule is one edit here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROVIDER = "google"

SCENES: tuple[str, ...] = ("text-to-video", "image-to-video", "reference-to-video")

ASPECT_RATIOS: tuple[str, ...] = ("16:9", "9:16")
RESOLUTIONS: tuple[str, ...] = ("720p", "1080p", "4k")
DURATIONS: tuple[int, ...] = (4, 6, 8)

# Google's rules: 1080p and 4k, a last frame, and reference images all force 8 seconds.
FULL_LENGTH_ONLY_RESOLUTIONS: frozenset[str] = frozenset({"1080p", "4k"})
FULL_LENGTH_S = 8

MAX_REFERENCE_IMAGES = 3

DEFAULTS: dict[str, object] = {
    "aspect_ratio": "16:9",
    "resolution": "720p",
    "duration": 8,
    "enhance_prompt": True,
    "enable_upsample": False,
    "enable_sync_mode": False,
    "enable_base64_output": False,
    "generate_audio": True,
}

# Frame size of each (resolution, aspect ratio).
FRAME_SIZES: dict[tuple[str, str], tuple[int, int]] = {
    ("720p", "16:9"): (1280, 720),
    ("720p", "9:16"): (720, 1280),
    ("1080p", "16:9"): (1920, 1080),
    ("1080p", "9:16"): (1080, 1920),
    ("4k", "16:9"): (3840, 2160),
    ("4k", "9:16"): (2160, 3840),
}

# enable_upsample asks for the next resolution up (4k stays 4k).
UPSAMPLE_TO: dict[str, str] = {"720p": "1080p", "1080p": "4k", "4k": "4k"}


@dataclass(frozen=True)
class Model:
    name: str
    family: str  # "veo3" or "veo3.1"
    tier: str  # "standard", "fast" or "pro"
    scenes: tuple[str, ...]
    description: str
    # The operator's declaration, for a model served by the local backend.
    local: Any = field(default=None, compare=False, repr=False)

    @property
    def public_id(self) -> str:
        return public_model(self.name)

    def supports(self, scene: str) -> bool:
        return scene in self.scenes


_ALL = SCENES
_NO_REFERENCE = ("text-to-video", "image-to-video")

MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model("veo3", "veo3", "standard", _ALL, "Veo 3: video with native audio"),
        Model("veo3-fast", "veo3", "fast", _ALL, "Veo 3 Fast: lower latency and price"),
        Model("veo3-pro", "veo3", "pro", _NO_REFERENCE, "Veo 3 Pro: highest quality"),
        Model("veo3.1", "veo3.1", "standard", _ALL, "Veo 3.1: video with native audio"),
        Model("veo3.1-fast", "veo3.1", "fast", _ALL, "Veo 3.1 Fast: lower latency and price"),
        Model("veo3.1-pro", "veo3.1", "pro", _NO_REFERENCE, "Veo 3.1 Pro: highest quality"),
    )
}


# Operator-declared local models ("local/<name>" -> Model), and the Veo names that one of
# them serves; filled from the local models file (backends/local/config.py) at start-up.
LOCAL_MODELS: dict[str, Model] = {}
LOCAL_ALIASES: dict[str, str] = {}


def find(name: str) -> Model | None:
    return MODELS.get(name) or LOCAL_MODELS.get(name)


def local_config(name: str) -> Any:
    """The local model declaration serving ``name`` (its own path or a Veo alias), or None."""
    entry = LOCAL_MODELS.get(LOCAL_ALIASES.get(name, name))
    return entry.local if entry is not None else None


def public_model(name: str) -> str:
    """The provider-qualified model path clients see ("google/veo3", "local/wan2.2-5b")."""
    return name if "/" in name else f"{PROVIDER}/{name}"


def frame_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    return FRAME_SIZES[(resolution, aspect_ratio)]


# Google's own model ids (Gemini API "-preview", Vertex AI "-001") → the catalog's names, for
# the dialects whose clients name models Google's way (Google-native, OpenAI Videos). The
# catalog's names themselves, with or without "google/", are accepted too.
GOOGLE_MODEL_IDS: dict[str, str] = {
    "veo-3.1-generate-preview": "veo3.1",
    "veo-3.1-fast-generate-preview": "veo3.1-fast",
    "veo-3.1-generate-001": "veo3.1",
    "veo-3.1-fast-generate-001": "veo3.1-fast",
    "veo-3.0-generate-preview": "veo3",
    "veo-3.0-fast-generate-preview": "veo3-fast",
    "veo-3.0-generate-001": "veo3",
    "veo-3.0-fast-generate-001": "veo3-fast",
}


def model_from_any_id(name: str) -> Model | None:
    """The catalog model a client means by ``name`` (Google id, catalog name, or
    "google/<name>"), or None."""
    name = name.strip()
    name = name.removeprefix("models/").removeprefix(f"{PROVIDER}/")
    return MODELS.get(GOOGLE_MODEL_IDS.get(name, name))
