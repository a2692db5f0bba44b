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
    # Another v3 provider (GPTProto, WaveSpeed, another reelgate) as an upstream.
    from reelgate.backends.v3_upstream import V3UpstreamBackend, load_v3_upstream_settings

    upstream_settings = load_v3_upstream_settings()
    if upstream_settings.configured:
        backends["v3"] = V3UpstreamBackend.from_settings(settings, upstream_settings)
    # One model across several of the above, with failover (backends/mixed.py).
    from reelgate.backends.mixed import MixedBackend, load_mix_settings

    mix_settings = load_mix_settings()
    if mix_settings.members:
        backends["mix"] = MixedBackend(mix_settings, backends,
                                       status_path=settings.data_dir / "mix-members.json")
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
    elif backend == "v3":
        from reelgate.backends.v3_upstream import load_v3_upstream_settings

        if not load_v3_upstream_settings().configured:
            from reelgate.errors import ApiError

            raise ApiError(500, "The v3 upstream backend is not configured on this server: "
                                "set REELGATE_V3_UPSTREAM_CHANNELS.")
    elif backend == "mix":
        from reelgate.backends.mixed import check_mixed_request

        check_mixed_request(req, settings)
    elif backend == "local":
        from reelgate.backends.local.check import check_local_request

        check_local_request(req)
    return None
