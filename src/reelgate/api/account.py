"""What a caller may read about its own account: its balance, and the prices."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from reelgate.accounts.prices import PriceTable
from reelgate.api.auth import require_key
from reelgate.api.v3.present import envelope
from reelgate.money import MICROS
from reelgate.store.repo import KeyRecord

router = APIRouter(prefix="/api/v3")


async def _balance(request: Request, key: KeyRecord) -> dict[str, Any]:
    services = request.app.state.services
    micros = await services.store.balance(key.account_id)
    return envelope({
        # A JSON number, as WaveSpeed documents data.balance (clients compare it with
        # numbers); balance_micros is the exact amount.
        "balance": micros / MICROS,
        "balance_micros": micros,
        "currency": services.settings.currency,
    })


@router.get("/balance", summary="The caller's available balance")
async def balance(request: Request, key: KeyRecord = Depends(require_key)) -> dict[str, Any]:
    return await _balance(request, key)


@router.get("/account/balance", summary="The caller's available balance (WaveSpeed's newer "
            "path)")
async def account_balance(request: Request,
                          key: KeyRecord = Depends(require_key)) -> dict[str, Any]:
    return await _balance(request, key)


@router.get("/prices", summary="Price per second of video, by model and resolution")
async def prices(request: Request, key: KeyRecord = Depends(require_key)) -> dict[str, Any]:
    settings = request.app.state.services.settings
    return envelope({
        "currency_unit": "micro (1/1,000,000) of the operator's currency",
        "free_backends": settings.free_backends,
        "prices": PriceTable.from_settings(settings).table(),
    })
