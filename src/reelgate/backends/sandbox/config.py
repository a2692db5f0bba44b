"""Settings of the sandbox backend (prefix ``REELGATE_SANDBOX_``).

A settings object of its own, as every backend folder has (google/config.py is the
template), reading the same settings file as the main settings (``REELGATE_SETTINGS_FILE``).
The README's sandbox section describes every variable."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from reelgate.settings import ReelgateSettings

__all__ = ["SandboxSettings", "load_sandbox_settings"]


class SandboxSettings(ReelgateSettings):
    model_config = SettingsConfigDict(
        env_prefix="REELGATE_SANDBOX_",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # Wait this long before rendering (clients test their polling with it).
    latency_s: float = 0.0
    # Share of predictions that fail (clients test their error handling with it).
    failure_rate: float = Field(0.0, ge=0.0, le=1.0)
    # Render no taller than this many pixels (the short side); 0 means no cap. 4k frames
    # cost ~9x the CPU of 720p, so small machines may cap 4k output; the README says so.
    max_height: int = 0
    fps: int = Field(24, ge=1)
    # Worker processes for sandbox renders (0: render in a thread of the server). None: as
    # many as the sandbox's concurrency (worker_concurrency), at most the CPU count.
    render_processes: int | None = None


@lru_cache(maxsize=1)
def load_sandbox_settings() -> SandboxSettings:
    """The process's sandbox settings, read once (the environment does not change while a
    server runs). Tests that change it call ``load_sandbox_settings.cache_clear()``."""
    return SandboxSettings()
