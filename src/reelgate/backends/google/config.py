"""Settings of the Google Veo backend: credentials (as a pool of channels), the model map,
polling and retry timing, and the operator's fallbacks.

A separate settings object (prefix ``REELGATE_GOOGLE_``) so that everything Google-specific
lives next to the backend; it reads the same settings file as the main settings
(``REELGATE_SETTINGS_FILE``). The README's Google section describes every variable.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from reelgate import catalog
from reelgate.settings import ReelgateSettings, split_list

__all__ = [
    "DEFAULT_MODELS",
    "FALLBACKS",
    "ChannelConfig",
    "GoogleSettings",
    "Mode",
    "ModelCaps",
    "load_google_settings",
    "model_caps",
]

Mode = Literal["gemini", "vertex"]

# The public names map to live models. The Veo 3.0 ids were shut down on 2026-06-30, so the
# veo3* names are served by their Veo 3.1 successors; there is no separate "pro" model at
# Google, so the -pro names use the standard (highest-quality) Veo 3.1 model. The Gemini API
# serves the -preview ids, Vertex AI the -001 ids.
DEFAULT_MODELS: dict[str, dict[str, str]] = {
    "gemini": {
        "veo3": "veo-3.1-generate-preview",
        "veo3-fast": "veo-3.1-fast-generate-preview",
        "veo3-pro": "veo-3.1-generate-preview",
        "veo3.1": "veo-3.1-generate-preview",
        "veo3.1-fast": "veo-3.1-fast-generate-preview",
        "veo3.1-pro": "veo-3.1-generate-preview",
    },
    "vertex": {
        "veo3": "veo-3.1-generate-001",
        "veo3-fast": "veo-3.1-fast-generate-001",
        "veo3-pro": "veo-3.1-generate-001",
        "veo3.1": "veo-3.1-generate-001",
        "veo3.1-fast": "veo-3.1-fast-generate-001",
        "veo3.1-pro": "veo-3.1-generate-001",
    },
}

# What the operator may allow instead of a 400 when Google cannot do what was asked:
#   drop_seed         Gemini API: accept a seed and do not send it (Google takes none there)
#   audio_always_on   Gemini API: accept generate_audio=false; the video still has sound
#   lower_resolution  ask for the model's highest resolution when it lacks the one asked
FALLBACKS = frozenset({"drop_seed", "audio_always_on", "lower_resolution"})


class ModelCaps(BaseModel):
    """What a Google model id accepts, as published (see model_caps)."""

    model_config = ConfigDict(frozen=True)

    resolutions: tuple[str, ...] = ("720p", "1080p", "4k")
    reference_images: bool = True
    last_frame: bool = True


def model_caps(model_id: str) -> ModelCaps:
    """Capabilities of a Google model id, by family. Veo 3.1 does 720p/1080p/4k with first,
    last and reference frames; Veo 3.1 Lite stops at 1080p and takes no reference images;
    Veo 3.0 (for operators who still map to it) stops at 1080p and has neither last frame
    nor reference images."""
    mid = model_id.lower()
    if "lite" in mid:
        return ModelCaps(resolutions=("720p", "1080p"), reference_images=False)
    if mid.startswith("veo-3.0") or mid.startswith("veo-2"):
        return ModelCaps(resolutions=("720p", "1080p"), reference_images=False, last_frame=False)
    return ModelCaps()


class ChannelConfig(BaseModel):
    """One upstream credential: an API key (Gemini API or Vertex express mode) or a Google
    Cloud project (Vertex AI). Empty fields take the top-level REELGATE_GOOGLE_* values."""

    model_config = ConfigDict(extra="forbid")

    name: str
    mode: Mode | None = None
    api_key: str | None = None
    project: str | None = None
    location: str | None = None
    credentials_file: str | None = None
    base_url: str | None = None
    # Share of new work among the healthy channels; 0 drains the channel (it still polls
    # the operations it started).
    weight: int = Field(1, ge=0)
    # Operations running at once on this channel (0: no cap).
    max_concurrency: int | None = Field(None, ge=0)
    # Create calls per minute on this channel (0: no cap).
    rate_per_minute: int | None = Field(None, ge=0)
    # Public name -> Google model id, over the top-level map (a project may lack a model).
    models: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("a channel needs a name")
        return v


class GoogleSettings(ReelgateSettings):
    model_config = SettingsConfigDict(
        env_prefix="REELGATE_GOOGLE_",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # --- credentials -------------------------------------------------------------------
    # "gemini": the Gemini API with API keys. "vertex": Vertex AI, with a project (+ a
    # service-account file, or Application Default Credentials) or an express-mode API key.
    mode: Mode = "gemini"
    api_key: str = ""
    # Several keys at once, comma-separated: one channel each (key-1, key-2, ...).
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    project: str = ""
    location: str = "us-central1"
    credentials_file: str = ""
    # The full pool as JSON (a list of ChannelConfig objects); replaces the forms above.
    channels: list[ChannelConfig] = Field(default_factory=list)

    # --- endpoints -----------------------------------------------------------------------
    # Send every API call here instead of Google's host (a proxy, or a fake in tests).
    base_url: str = ""
    # Cloud Storage JSON API host, for gs:// outputs on Vertex AI.
    storage_base_url: str = "https://storage.googleapis.com"
    # Vertex AI only: have Google write videos under this gs:// prefix instead of returning
    # them inline (large 4k files); reelgate then copies them from the bucket.
    output_gcs_uri: str = ""

    # --- models and translation ----------------------------------------------------------
    # Public name -> Google model id, over DEFAULT_MODELS for the channel's mode.
    models: dict[str, str] = Field(default_factory=dict)
    # Google model id -> another id to use for requests the first cannot serve (e.g. 4k on
    # a Lite model), instead of refusing them.
    fallback_models: dict[str, str] = Field(default_factory=dict)
    fallbacks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Sent as personGeneration when set ("allow_all", "allow_adult", "dont_allow").
    person_generation: str = ""

    # --- pool defaults (a channel may override them) ----------------------------------------
    max_concurrency: int = Field(0, ge=0)
    rate_per_minute: int = Field(0, ge=0)
    cooldown_429_s: float = 30.0  # when Google's 429 carries no RetryInfo
    cooldown_5xx_s: float = 10.0
    cooldown_auth_s: float = 300.0  # 401/403: a key that was revoked or lacks access

    # --- timing ------------------------------------------------------------------------------
    # Veo takes 11 s to 6 min: poll every 10 s at first, backing off to 30 s.
    poll_initial_s: float = 10.0
    poll_max_s: float = 30.0
    poll_multiplier: float = 1.5
    # Give up on an operation (and fail the prediction) after this long.
    max_wait_s: float = 1200.0
    # Create calls tried (across channels) before a prediction fails as "busy".
    submit_attempts: int = Field(6, ge=1)
    # Longest a prediction waits for a free channel (all cooling down or at their caps).
    acquire_timeout_s: float = 600.0
    download_attempts: int = Field(4, ge=1)
    request_timeout_s: float = 120.0
    # Create calls on the wire at once, per worker process. A create is recorded as intended
    # just before it is sent; bounding how many are in flight bounds how many predictions a
    # killed worker leaves unconfirmed (and, with the "fail" policy, fails), and keeps the
    # burst after a cool-down from queueing inside the HTTP client's connection pool.
    create_concurrency: int = Field(32, ge=1)
    # Predictions one worker process runs at once on this backend: each mostly waits on
    # Google, so many fit (REELGATE_BACKEND_CONCURRENCY='{"google": n}' overrides it too).
    concurrency: int = Field(1000, ge=1)

    @field_validator("api_keys", "fallbacks", mode="before")
    @classmethod
    def _split_list(cls, v: object) -> object:
        return split_list(v)

    @field_validator("fallbacks")
    @classmethod
    def _known_fallbacks(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - FALLBACKS)
        if unknown:
            raise ValueError(
                f"unknown fallback(s) {', '.join(unknown)}; known: {', '.join(sorted(FALLBACKS))}"
            )
        return v

    @field_validator("models")
    @classmethod
    def _known_public_names(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(catalog.MODELS))
        if unknown:
            raise ValueError(f"unknown model name(s) {', '.join(unknown)}")
        return v

    @model_validator(mode="after")
    def _unique_channel_names(self) -> GoogleSettings:
        names = [c.name for c in self.channels]
        if len(names) != len(set(names)):
            raise ValueError("channel names must be unique")
        return self

    # --- derived -------------------------------------------------------------------------

    def resolved_channels(self) -> list[ChannelConfig]:
        """The pool, every field filled in. Empty when nothing is configured."""
        if self.channels:
            raw = list(self.channels)
        elif self.api_keys:
            raw = [ChannelConfig(name=f"key-{i + 1}", api_key=k)
                   for i, k in enumerate(self.api_keys)]
        elif self.api_key:
            raw = [ChannelConfig(name="default", api_key=self.api_key)]
        elif self.mode == "vertex" and self.project:
            raw = [ChannelConfig(name="default", project=self.project)]
        else:
            return []
        return [self._fill(c) for c in raw]

    def _fill(self, c: ChannelConfig) -> ChannelConfig:
        mode = c.mode or self.mode
        if mode == "gemini" and not c.api_key:
            raise ValueError(f"channel {c.name!r}: the Gemini API needs an api_key")
        vertex_project = mode == "vertex" and not c.api_key
        return c.model_copy(update={
            "mode": mode,
            "project": (c.project or self.project or None) if vertex_project else None,
            "location": (c.location or self.location) if vertex_project else None,
            "credentials_file": (c.credentials_file or self.credentials_file or None)
            if vertex_project else None,
            "base_url": c.base_url or self.base_url or None,
            "max_concurrency": self.max_concurrency if c.max_concurrency is None
            else c.max_concurrency,
            "rate_per_minute": self.rate_per_minute if c.rate_per_minute is None
            else c.rate_per_minute,
        })

    @property
    def configured(self) -> bool:
        return bool(self.resolved_channels())

    def model_id(self, public_name: str, channel: ChannelConfig) -> str:
        mode = channel.mode or self.mode
        return (channel.models.get(public_name) or self.models.get(public_name)
                or DEFAULT_MODELS[mode][public_name])


@lru_cache(maxsize=1)
def load_google_settings() -> GoogleSettings:
    """The process's Google settings, read once (the environment does not change while a
    server runs). Tests that change it call ``load_google_settings.cache_clear()``."""
    return GoogleSettings()
