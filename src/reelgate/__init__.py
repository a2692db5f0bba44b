"""reelgate: a self-hostable video-generation API server for Google Veo models.

``reelgate.Client``, ``reelgate.AsyncClient`` and the SDK's result and error types come from
``reelgate.client``; they are exported lazily, because the server imports this package too
and has no use for the client (nor should importing reelgate cost an httpx import for it).
``reelgate.client.__all__`` is the one list of those names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    # What the lazy __getattr__ below hands out, as type checkers should see it (py.typed).
    from reelgate.client import *  # noqa: F403


def __getattr__(name: str) -> Any:
    # importlib, not "from reelgate import client": that form asks this very __getattr__
    # for "client" before the submodule is bound, and recurses.
    if not name.startswith("_") and name != "client":
        client = importlib.import_module("reelgate.client")
        if name in client.__all__:
            return getattr(client, name)
    raise AttributeError(f"module 'reelgate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *importlib.import_module("reelgate.client").__all__})
