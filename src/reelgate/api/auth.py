"""The API-key dependency: authentication, account state and the per-key rate limit.

Both ``Authorization: Bearer <key>`` and the bare ``Authorization: <key>`` form are
accepted, as the hosted docs show both."""

from __future__ import annotations

from fastapi import Request

from reelgate.errors import ApiError, Unauthorized
from reelgate.store.repo import KeyRecord


def _secret_from_header(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        value = rest.strip()
    return value or None


async def require_key(request: Request) -> KeyRecord:
    secret = _secret_from_header(request.headers.get("authorization"))
    if secret is None:
        raise Unauthorized("Missing API key: send it as 'Authorization: Bearer <key>'")
    return await key_for_secret(request, secret)


async def key_for_secret(request: Request, secret: str) -> KeyRecord:
    """Everything after finding the key in the request (dialects carry it in different
    places: Google's ``x-goog-api-key`` or ``?key=``, OpenAI's bearer header)."""
    services = request.app.state.services
    # From the in-process cache (keycache.py): a revoked key stops working within a second.
    key: KeyRecord | None = await services.keys.authenticate(secret)
    if key is None:
        raise Unauthorized("Invalid API key")
    if key.account_disabled:
        raise ApiError(403, "This account is disabled; contact the operator")
    per_minute = key.rate_per_minute or services.settings.rate_per_minute
    state = await services.limiter.hit(key.id, per_minute)
    # Sent on every answer to this request, errors included (see app.py's middleware).
    request.state.rate_headers = state.headers()
    if not state.allowed:
        raise ApiError(
            429,
            f"Rate limit exceeded: this key may make {per_minute} requests per minute",
            headers=state.headers(),
        )
    return key
