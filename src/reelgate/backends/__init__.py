"""Backends turn a job into a video. Which backend serves a model is the operator's choice."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reelgate.backends.base import Backend, BackendError, Inputs, Job

if TYPE_CHECKING:
    from reelgate.settings import Settings

__all__ = ["Backend", "BackendError", "Inputs", "Job", "build_backends", "backend_for"]


def build_backends(settings: Settings) -> dict[str, Backend]:
    from reelgate.backends.sandbox import SandboxBackend

    return {"sandbox": SandboxBackend.from_settings(settings)}


def backend_for(model: str, settings: Settings) -> str:
    """The backend a new prediction for ``model`` is routed to."""
    return settings.model_backends.get(model, settings.default_backend)
