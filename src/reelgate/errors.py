"""reelgate's own errors. Each API dialect writes them in its own body (api/dialects.py): the
status and the message are the same whichever door a request came through."""

from __future__ import annotations

# Why an error happened, where the status alone does not say it and a dialect's body does
# (v3's "type", OpenAI's "code"): a content-policy block.
CONTENT_POLICY = "content_policy"


class ApiError(Exception):
    """An answer with an error body: an HTTP status, a message and, where a dialect needs
    more than the status to name it, a ``reason`` (one of the constants above)."""

    def __init__(self, status: int, message: str, *, reason: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.headers = headers or {}


class InvalidInput(ApiError):
    """A 400 that names the field and the rule it broke."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(400, f"{field}: {rule}")
        self.field = field
        self.rule = rule


class Unauthorized(ApiError):
    def __init__(self, message: str = "Invalid or missing API key") -> None:
        super().__init__(401, message)


class NotFound(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(404, message)


class PolicyBlocked(ApiError):
    """Content policy: a 400 (by default) whose reason each dialect names its own way (v3's
    documented quirk is type "503", api/v3/errors.py)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(status, message, reason=CONTENT_POLICY)
