"""The built-in sandbox backend (real MP4s rendered locally, no model), a backend folder
like google/:

- ``backend.py``: the Backend port and the renderer;
- ``config.py``: its settings (``REELGATE_SANDBOX_*``), a pydantic-settings model of its own;
- this file: the registration under the name ``sandbox``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reelgate.backends.registry import Resolve, register

if TYPE_CHECKING:
    from reelgate.backends.base import Backend
    from reelgate.settings import Settings


def _build(settings: Settings, resolve: Resolve) -> Backend:
    from reelgate.backends.sandbox.backend import SandboxBackend

    return SandboxBackend.from_settings(settings)


register("sandbox", _build)
