"""The local backend: open video models through diffusers on this worker's GPUs.

``config.py`` (its settings, ``REELGATE_LOCAL_*``, and the operator's models file they name,
read by API processes too), ``check.py`` (intake rules), ``families.py`` (how each model
family is called), ``backend.py`` (the Backend port), ``cli.py`` (``reelgate local ...``),
``tiny.py`` (tiny random models for tests). Registering imports neither torch nor
diffusers: the backend module loads them when a worker starts it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reelgate.backends.local.config import load_local_settings
from reelgate.backends.registry import NotConfigured, Resolve, register

if TYPE_CHECKING:
    from reelgate.backends.base import Backend
    from reelgate.settings import Settings


def _build(settings: Settings, resolve: Resolve) -> Backend:
    if not load_local_settings().models_file:
        raise NotConfigured("The local backend has no models on this server: set "
                            "REELGATE_LOCAL_MODELS_FILE.")
    from reelgate.backends.local.backend import LocalBackend

    return LocalBackend.from_settings(settings)


register("local", _build)
