"""Webhook delivery: at least once, signed the way the account's clients verify (WaveSpeed's
``v3,<hex>`` by default, Standard Webhooks on request; see signing.py), retried with
exponential backoff, never to a private address.

A delivery row is written in the same transaction that ends the prediction (store/repo.py),
so nothing is lost between the end and the POST. A sender claims due rows with a short
lease; a crash mid-POST means the row is picked up again (the receiver may see a message
twice and dedupes on ``webhook-id``, which is what the scheme's id is for)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx

from reelgate.errors import InvalidInput
from reelgate.jobs.signing import scheme_for, signature_headers
from reelgate.media.fetch import FetchPolicy, pinned_request, resolve_destination
from reelgate.media.storage import Storage
from reelgate.store.repo import Prediction, Store
from reelgate.store.tables import utcnow
from reelgate.store.webhooks import Delivery, WebhookStore

log = logging.getLogger("reelgate.webhooks")

# The body of a delivery, in the shape of the dialect the prediction came through
# (api/dialects.webhook_payload, given by the wiring: the sender knows no wire shape).
Payload = Callable[[Prediction, str, Storage], dict[str, Any]]

CLAIM_S = 120
MAX_DELAY_S = 3600


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def retry_delay(attempts: int, base_s: float) -> float:
    return float(min(MAX_DELAY_S, base_s * 2 ** max(0, attempts - 1)))


def delivery_view(d: Delivery) -> dict[str, Any]:
    def iso(v: datetime | None) -> str | None:
        return v.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if v else None

    return {
        "id": d.id,
        "prediction_id": d.prediction_id,
        "url": d.url,
        "status": d.status,
        "attempts": d.attempts,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "next_attempt_at": iso(d.next_attempt_at) if d.status == "pending" else None,
        "created_at": iso(d.created_at),
        "delivered_at": iso(d.delivered_at),
    }


class WebhookSender:
    def __init__(
        self,
        store: Store,
        storage: Storage,
        policy: FetchPolicy,
        *,
        payload: Payload | None,
        public_base_url: str,
        max_attempts: int,
        retry_base_s: float,
        timeout_s: float,
    ) -> None:
        self.store = store
        self.rows = WebhookStore(store)
        self.storage = storage
        self.policy = policy
        self.payload = payload
        self.public_base_url = public_base_url
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.timeout_s = timeout_s
        self.wakeup = asyncio.Event()

    async def run_forever(self, interval_s: float) -> None:
        while True:
            try:
                while await self.deliver_due() > 0:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook pass failed")
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), interval_s)
            except TimeoutError:
                pass

    async def secret(self, account_id: str) -> str:
        """The account's signing secret, made on first use."""
        return await self.rows.secret(account_id, new_secret())

    async def scheme(self, account_id: str, dialect: str = "v3") -> str:
        """The scheme the account's webhooks are signed with (its choice, or the default of
        the dialect the prediction came through)."""
        return scheme_for(await self.rows.scheme(account_id), dialect)

    async def deliver_due(self, limit: int = 50) -> int:
        ids = await self.rows.due(limit)
        claimed = [i for i in ids if await self.rows.claim(i, CLAIM_S)]
        await asyncio.gather(*(self._deliver(i) for i in claimed))
        return len(claimed)

    async def _deliver(self, delivery_id: str) -> None:
        row = await self.rows.get(delivery_id)
        if row is None:
            return
        pred = await self.store.get(row.prediction_id)
        if pred is None:
            await self._record(
                delivery_id, row.attempts, ok=False, final=True, error="prediction no longer exists"
            )
            return
        base = self.public_base_url or pred.base_url or ""
        assert self.payload is not None  # Services.open refuses workers without one
        body = json.dumps(self.payload(pred, base, self.storage), separators=(",", ":"))
        secret = await self.secret(pred.account_id)
        scheme = await self.scheme(pred.account_id, pred.dialect)
        status_code: int | None = None
        error = ""
        try:
            status_code = await self._post(row.url, delivery_id, body, secret, scheme)
            ok = 200 <= status_code < 300
            if not ok:
                error = f"the receiver answered HTTP {status_code}"
        except InvalidInput as exc:
            ok, error = False, exc.rule
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"[:500]
        attempts = row.attempts + 1
        final = ok or attempts >= self.max_attempts
        log.info(
            "webhook %s for %s attempt %d: %s",
            delivery_id,
            pred.id,
            attempts,
            "delivered" if ok else error,
        )
        await self._record(
            delivery_id, attempts, ok=ok, final=final, error=error, status_code=status_code
        )

    async def _post(self, url: str, msg_id: str, body: str, secret: str, scheme: str) -> int:
        # The same guard as image fetching, at every attempt: DNS may have changed.
        target, addresses = await resolve_destination(url, self.policy, field="webhook")
        raw = body.encode()
        # Signed at each attempt with the time of that attempt: receivers refuse a
        # timestamp older than 5 minutes, and retries come later than that.
        request_url, headers, extensions = pinned_request(target, addresses[0])
        headers.update(
            {
                "Content-Type": "application/json",
                "User-Agent": "reelgate-webhooks/1",
                **signature_headers(scheme, secret, msg_id, utcnow(), raw),
            }
        )
        async with httpx.AsyncClient(
            trust_env=False, follow_redirects=False, timeout=self.timeout_s
        ) as client:
            response = await client.post(
                request_url, content=raw, headers=headers, extensions=extensions
            )
        return response.status_code

    async def _record(
        self,
        delivery_id: str,
        attempts: int,
        *,
        ok: bool,
        final: bool,
        error: str,
        status_code: int | None = None,
    ) -> None:
        next_at = None
        if not final:
            next_at = utcnow() + timedelta(seconds=retry_delay(attempts, self.retry_base_s))
        await self.rows.record(delivery_id, attempts, status_code=status_code, error=error,
                               delivered=ok, failed=final and not ok, next_attempt_at=next_at)

    # --- for the API -----------------------------------------------------------------------

    async def list(
        self,
        account_id: str,
        prediction_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        return [delivery_view(d) for d in
                await self.rows.list(account_id, prediction_id, status, limit)]

    async def retry(self, account_id: str, delivery_id: str) -> dict[str, Any] | None:
        """Send a delivery again now, with a fresh series of attempts."""
        row = await self.rows.retry(account_id, delivery_id)
        self.wakeup.set()
        return delivery_view(row) if row else None
