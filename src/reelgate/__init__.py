"""reelgate: a self-hostable video-generation API server for Google Veo models."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# The SDK is exported lazily: the server imports this package too and has no use for the
# client (nor should importing reelgate cost an httpx import for it).
_CLIENT_EXPORTS = frozenset({
    "APIConnectionError",
    "AsyncClient",
    "AuthenticationError",
    "Balance",
    "Client",
    "ContentPolicyError",
    "InvalidRequestError",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "Prediction",
    "PredictionFailed",
    "RateLimitError",
    "ReelgateError",
    "ServerError",
    "WaitTimeout",
})

__all__ = ["__version__", *sorted(_CLIENT_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _CLIENT_EXPORTS:
        from reelgate import client

        return getattr(client, name)
    raise AttributeError(f"module 'reelgate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_CLIENT_EXPORTS})
