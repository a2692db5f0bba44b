"""How a webhook delivery is signed: the scheme belongs to the dialect, an account may
choose another.

Both schemes send the same three headers (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``) over the same signed content, ``{id}.{timestamp}.{raw body}``, with
HMAC-SHA256 and the account's one secret (``whsec_`` + base64 of 32 random bytes). They
differ in the key and the encoding:

- ``wavespeed`` (the v3 dialect's default, as WaveSpeed documents it in "Verifying
  Webhooks"): the key is the secret string after ``whsec_``, used as it is (NOT
  base64-decoded); the header is ``v3,<hex digest>``. Receivers reject anything older than
  300 s.
- ``standard`` (Standard Webhooks, for receivers that verify with a Standard Webhooks
  library): the key is the base64-decoded part after ``whsec_``; the header is
  ``v1,<base64 digest>``. Signed by the ``standardwebhooks`` package itself.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from standardwebhooks import Webhook

WAVESPEED = "wavespeed"
STANDARD = "standard"
SCHEMES = (WAVESPEED, STANDARD)

# The scheme each dialect's clients verify with when the account chose none: WaveSpeed's
# for the v3 dialect (its clients follow WaveSpeed's guide); any other dialect gets the
# generic Standard Webhooks scheme unless it adds its own line here.
DIALECT_DEFAULT = {"v3": WAVESPEED}

SECRET_PREFIX = "whsec_"


def scheme_for(account_scheme: str | None, dialect: str = "v3") -> str:
    """The account's choice if it made one, else its dialect's default."""
    if account_scheme in SCHEMES:
        return account_scheme  # type: ignore[return-value]
    return DIALECT_DEFAULT.get(dialect, STANDARD)


def wavespeed_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v3,<hex>`` as WaveSpeed's verification guide computes it. Written here because no
    library implements this variant: the Standard Webhooks libraries base64-decode the key
    and emit ``v1,<base64>``, which WaveSpeed-style receivers reject."""
    key = secret.removeprefix(SECRET_PREFIX).encode()
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return f"v3,{digest.hexdigest()}"


def signature_headers(scheme: str, secret: str, msg_id: str, when: datetime,
                      body: bytes) -> dict[str, str]:
    """The three signature headers of one delivery attempt."""
    timestamp = int(when.timestamp())
    if scheme == STANDARD:
        # The library signs the text it will be verified against; our body is UTF-8 JSON.
        signature = Webhook(secret).sign(msg_id, when, body.decode())
    elif scheme == WAVESPEED:
        signature = wavespeed_signature(secret, msg_id, timestamp, body)
    else:
        raise ValueError(f"unknown webhook signing scheme {scheme!r}")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }
