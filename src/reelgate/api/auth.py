"""The API-key dependency: both ``Authorization: Bearer <key>`` and the bare
``Authorization: <key>`` form are accepted, as the hosted docs show both."""

from __future__ import annotations

from fastapi import Request

from reelgate.errors import Unauthorized
from reelgate.store.repo import KeyRecord


def _secret_from_header(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if rest and scheme.lower() == "bearer":
        value = rest.strip()
    return value or None


async def require_key(request: Request) -> KeyRecord:
    secret = _secret_from_header(request.headers.get("authorization"))
    if secret is None:
        raise Unauthorized("Missing API key: send it as 'Authorization: Bearer <key>'")
    key = await request.app.state.services.store.authenticate(secret)
    if key is None:
        raise Unauthorized("Invalid API key")
    return key
