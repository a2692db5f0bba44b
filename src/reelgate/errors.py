"""Errors a client sees, in the hosted services' body: {"error": {"message", "type"}}."""

from __future__ import annotations


class ApiError(Exception):
    """An answer with an error body. ``type`` is usually the status as text; the one known
    exception is a content-policy block (status 400, type "503")."""

    def __init__(self, status: int, message: str, *, type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or str(status)
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"message": self.message, "type": self.type}}


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
    """Content policy: the documented quirk is HTTP 400 with type "503"."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(status, message, type="503")
