"""Webhook settings and deliveries of the caller's account.

The secret is at ``GET /api/v3/webhook/secret``, where WaveSpeed documents it; the plural
``/api/v3/webhooks/secret`` (reelgate's first path) stays as an alias."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from reelgate.api.auth import require_key
from reelgate.api.v3.present import envelope
from reelgate.errors import NotFound
from reelgate.jobs.signing import STANDARD
from reelgate.store.repo import KeyRecord

router = APIRouter(prefix="/api/v3/webhooks", tags=["webhooks"])
secret_router = APIRouter(prefix="/api/v3", tags=["webhooks"])

HOW = {
    "wavespeed": "webhook-signature: v3,<hex HMAC-SHA256 of '{webhook-id}.{webhook-timestamp}."
    "{raw body}'>, keyed with the secret after its whsec_ prefix (not base64-decoded); "
    "reject timestamps older than 300 s",
    STANDARD: "Standard Webhooks: webhook-signature: v1,<base64 HMAC-SHA256 of "
    "'{webhook-id}.{webhook-timestamp}.{raw body}'>, keyed with the base64-decoded secret "
    "after whsec_; verify with a Standard Webhooks library",
}


async def _secret(request: Request, key: KeyRecord) -> dict[str, Any]:
    webhooks = request.app.state.services.webhooks
    scheme = await webhooks.scheme(key.account_id)
    return envelope({
        "secret": await webhooks.secret(key.account_id),
        "scheme": scheme,
        "verification": HOW[scheme],
    })


@secret_router.get("/webhook/secret", summary="The account's webhook signing secret")
async def secret(request: Request, key: KeyRecord = Depends(require_key)) -> dict[str, Any]:
    return await _secret(request, key)


@router.get("/secret", summary="The webhook signing secret (alias of /api/v3/webhook/secret)")
async def secret_alias(request: Request,
                       key: KeyRecord = Depends(require_key)) -> dict[str, Any]:
    return await _secret(request, key)


@router.get("/deliveries", summary="Webhook deliveries, newest first")
async def deliveries(
    request: Request,
    prediction_id: str | None = Query(None),
    status: str | None = Query(None, description="pending, delivered or failed"),
    key: KeyRecord = Depends(require_key),
) -> dict[str, Any]:
    services = request.app.state.services
    return envelope(await services.webhooks.list(key.account_id, prediction_id, status))


@router.post("/deliveries/{delivery_id}/retry", summary="Send a delivery again")
async def retry(
    delivery_id: str, request: Request, key: KeyRecord = Depends(require_key)
) -> dict[str, Any]:
    services = request.app.state.services
    row = await services.webhooks.retry(key.account_id, delivery_id)
    if row is None:
        raise NotFound(f"Delivery '{delivery_id}' not found")
    return envelope(row)
