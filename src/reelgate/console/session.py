"""The console's session: a signed, HttpOnly, SameSite=Strict cookie, and CSRF tokens.

The cookie holds who signed in (the SHA-256 of the user's API key, or a digest of the admin
token) and the session's CSRF token; never the key itself, and nothing is ever put in a URL
or in the page's storage. It is signed with itsdangerous using a key derived from the
server's URL-signing key (kept in the data dir, shared by every process), so a forged or
altered cookie is simply no session.

Cross-site requests are refused twice over: the browser does not send a SameSite=Strict
cookie with them, and every state-changing request must carry the session's CSRF token
(double submit: a hidden form field or the X-CSRF-Token header htmx adds) and, when the
browser sends one, an Origin header naming this server."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

COOKIE = "reelgate_console"
MAX_AGE_S = 12 * 3600
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


class CsrfRefused(Exception):
    """A state-changing request without this session's token, or from another origin."""


@dataclass
class Session:
    csrf: str
    role: str | None = None  # "user" or "admin"
    key_hash: str | None = None
    admin_digest: str | None = None
    changed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"csrf": self.csrf, "role": self.role, "kh": self.key_hash,
                "ad": self.admin_digest}


def _serializer(signing_key: bytes) -> URLSafeTimedSerializer:
    # A key of its own for the cookie, derived so that the URL-signing key is never used
    # for two purposes.
    secret = hmac.new(signing_key, b"reelgate console session", hashlib.sha256).hexdigest()
    return URLSafeTimedSerializer(secret, salt="console-session")


def admin_digest(token: str, signing_key: bytes) -> str:
    """What the cookie keeps for an operator: changes when the admin token changes, which
    ends every operator session."""
    return hmac.new(signing_key, b"admin:" + token.encode(), hashlib.sha256).hexdigest()


def load(request: Request, signing_key: bytes) -> Session:
    raw = request.cookies.get(COOKIE)
    if raw:
        try:
            data = _serializer(signing_key).loads(raw, max_age=MAX_AGE_S)
            if isinstance(data, dict) and isinstance(data.get("csrf"), str):
                return Session(csrf=data["csrf"], role=data.get("role"),
                               key_hash=data.get("kh"), admin_digest=data.get("ad"))
        except BadSignature:
            pass
    return Session(csrf=secrets.token_urlsafe(32), changed=True)


def save(response: Response, session: Session, signing_key: bytes, *, secure: bool) -> None:
    response.set_cookie(
        COOKIE,
        _serializer(signing_key).dumps(session.to_dict()),
        max_age=MAX_AGE_S,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=secure,
    )


def fresh(role: str | None = None, **values: Any) -> Session:
    """A new session with a new CSRF token: signing in or out never keeps the old token
    (no session fixation)."""
    return Session(csrf=secrets.token_urlsafe(32), role=role, changed=True, **values)


def check_origin(request: Request, public_origin: str = "") -> None:
    origin = request.headers.get("origin")
    if origin is not None:
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        # Behind a TLS proxy the browser's origin is the public one, not what we see.
        if origin not in (own, public_origin):
            raise CsrfRefused(f"origin {origin} is not this server")


def check_csrf(request: Request, session: Session, form_token: str | None,
               public_origin: str = "") -> None:
    check_origin(request, public_origin)
    given = form_token or request.headers.get(CSRF_HEADER) or ""
    if not hmac.compare_digest(given.encode(), session.csrf.encode()):
        raise CsrfRefused("missing or wrong CSRF token")
