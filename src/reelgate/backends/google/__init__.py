"""The Google Veo backend, the template for a backend folder:

- ``backend.py``: the Backend port (translation, submit, poll, download);
- ``config.py``: its settings (``REELGATE_GOOGLE_*``), a pydantic-settings model of its own;
- ``channels.py``: the pool of credentials (shared with the v3 relay and the mix);
- ``cli.py``: the operator's ``reelgate google ...`` commands;
- this file: the registration under the name ``google``.

Importing the package imports no Google SDK: that happens when a job first needs a client."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reelgate.backends.registry import NotConfigured, Resolve, register

if TYPE_CHECKING:
    from reelgate.backends.base import Backend
    from reelgate.settings import Settings


def _build(settings: Settings, resolve: Resolve) -> Backend:
    from reelgate.backends.google.backend import GoogleBackend, not_configured_error
    from reelgate.backends.google.config import load_google_settings

    gs = load_google_settings()
    if not gs.configured:
        raise NotConfigured(not_configured_error().message)
    return GoogleBackend.from_settings(settings, gs)


register("google", _build)
