"""Webhook settings and deliveries of the caller's account."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from reelgate.api.auth import require_key
from reelgate.errors import NotFound
from reelgate.jobs.webhooks import account_secret
from reelgate.present import envelope
from reelgate.store.repo import KeyRecord

router = APIRouter(prefix="/api/v3/webhooks", tags=["webhooks"])


@router.get("/secret", summary="The account's Standard Webhooks signing secret")
async def secret(request: Request, key: KeyRecord = Depends(require_key)) -> dict[str, Any]:
    services = request.app.state.services
    return envelope(
        {
            "secret": await account_secret(services.store.engine, key.account_id),
            "scheme": "Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature)",
        }
    )


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
