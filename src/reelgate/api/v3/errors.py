"""The v3 dialect's error body, as the hosted services (GPTProto, WaveSpeed) answer:
``{"error": {"message", "type"}}``."""

from __future__ import annotations

from typing import Any

from reelgate.errors import CONTENT_POLICY

# The documented quirk: a content-policy block is an HTTP 400 (or the operator's status,
# REELGATE_POLICY_BLOCK_STATUS) whose type is "503"; clients (the SDKs included) tell a
# block from other 400s by it.
POLICY_TYPE = "503"


def error_body(status: int, message: str, reason: str | None) -> dict[str, Any]:
    """``type`` is the status as text, except for a content-policy block."""
    kind = POLICY_TYPE if reason == CONTENT_POLICY else str(status)
    return {"error": {"message": message, "type": kind}}
