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
    from reelgate.backends.google_config import load_google_settings
    from reelgate.backends.sandbox import SandboxBackend

    backends: dict[str, Backend] = {"sandbox": SandboxBackend.from_settings(settings)}
    google_settings = load_google_settings()
    if google_settings.configured:
        # Imported only when configured: the SDK is heavy and unused otherwise.
        from reelgate.backends.google import GoogleBackend

        backends["google"] = GoogleBackend.from_settings(settings, google_settings)
    if settings.local_models_file:
        # Imported only when models are declared: torch and diffusers are an optional extra.
        from reelgate.backends.local.backend import LocalBackend

        backends["local"] = LocalBackend.from_settings(settings)
    return backends


def backend_for(model: str, settings: Settings) -> str:
    """The backend a new prediction for ``model`` is routed to."""
    from reelgate import catalog

    if model in catalog.LOCAL_MODELS or model in catalog.LOCAL_ALIASES:
        return "local"
    return settings.model_backends.get(model, settings.default_backend)


def check_request(backend: str, req: CreateRequest, settings: Settings) -> None:
    """Refuse, with InvalidInput, what the chosen backend cannot do: called at intake, before
    anything is stored or spent. Pure and configuration-based (API processes run no backend).
    The sandbox accepts everything the catalog accepts; google translates the request for
    its configured channels and models (see backends/google.py)."""
    if backend == "google":
        from reelgate.backends.google import check_google_request

        check_google_request(req)
    elif backend == "local":
        from reelgate.backends.local.check import check_local_request

        check_local_request(req)
    return None
