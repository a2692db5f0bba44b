"""Verifying a webhook from reelgate (or from WaveSpeed) on the receiving side; part of the
SDK, imports nothing of the server.

``verify_webhook(body, headers, secret)`` accepts both signatures reelgate sends:

- ``v3,<hex>`` (WaveSpeed's form, the v3 default): HMAC-SHA256 over
  ``{webhook-id}.{webhook-timestamp}.{raw body}``, keyed with the secret after ``whsec_``
  as it is (not base64-decoded), checked as WaveSpeed's guide says;
- ``v1,<base64>`` (Standard Webhooks, an account setting): checked by the
  ``standardwebhooks`` library.

Either way the timestamp must be within ``max_age_s`` (300 s) of the receiver's clock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks import WebhookVerificationError as _StandardError

MAX_AGE_S = 300


class WebhookVerificationError(ValueError):
    """The delivery did not verify: it is not from the server, was altered, or is stale."""


def verify_webhook(body: bytes | str, headers: Mapping[str, str], secret: str, *,
                   max_age_s: int = MAX_AGE_S, now: float | None = None) -> dict[str, Any]:
    """Check a delivery's signature and age; return its JSON body (the prediction).

    ``body`` must be the raw request body, before any JSON parsing: a re-serialised body
    does not verify."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signature = (h.get("webhook-id"), h.get("webhook-timestamp"),
                                h.get("webhook-signature"))
    if not (msg_id and stamp and signature):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or "
                                       "webhook-signature header")
    try:
        sent = int(stamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp is not a number: {stamp!r}") from None
    clock = time.time() if now is None else now
    if abs(clock - sent) > max_age_s:
        raise WebhookVerificationError(
            f"webhook-timestamp is {int(clock - sent)} s away from now (limit {max_age_s} s)"
        )
    if signature.startswith("v1,"):
        try:
            # The library checks the age against its own clock too (5 minutes).
            Webhook(secret).verify(raw, {"webhook-id": msg_id, "webhook-timestamp": stamp,
                                         "webhook-signature": signature})
        except _StandardError as exc:
            raise WebhookVerificationError(f"Standard Webhooks signature: {exc}") from None
    else:
        version, _, given = signature.partition(",")
        if version != "v3" or not given:
            raise WebhookVerificationError(f"unknown signature format {signature[:12]!r}")
        key = secret.removeprefix("whsec_").encode()
        expected = hmac.new(key, f"{msg_id}.{stamp}.".encode() + raw, hashlib.sha256)
        if not hmac.compare_digest(expected.hexdigest(), given):
            raise WebhookVerificationError("signature does not match")
    return json.loads(raw)  # type: ignore[no-any-return]
