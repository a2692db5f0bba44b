"""Backends turn a job into a video. Which backend serves a model is the operator's choice."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reelgate.backends.base import Backend, BackendError, Inputs, Job

if TYPE_CHECKING:
    from reelgate.requests import CreateRequest
    from reelgate.settings import Settings

__all__ = [
    "Backend",
    "BackendError",
    "Inputs",
    "Job",
    "backend_for",
    "build_backends",
    "check_request",
]


def build_backends(settings: Settings) -> dict[str, Backend]:
    from reelgate.backends.sandbox import SandboxBackend

    return {"sandbox": SandboxBackend.from_settings(settings)}


def backend_for(model: str, settings: Settings) -> str:
    """The backend a new prediction for ``model`` is routed to."""
    return settings.model_backends.get(model, settings.default_backend)


def check_request(backend: str, req: CreateRequest, settings: Settings) -> None:
    """Refuse, with InvalidInput, what the chosen backend cannot do: called at intake, before
    anything is stored or spent. Pure and configuration-based (API processes run no backend).
    The sandbox accepts everything the catalog accepts."""
    return None
