"""The operator's API under /admin/v1, guarded by its own token (REELGATE_ADMIN_TOKEN)."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from reelgate.accounts.ledger import top_up
from reelgate.accounts.usage import date_range, to_csv
from reelgate.api.auth import bearer_secret
from reelgate.errors import ApiError, InvalidInput, Unauthorized
from reelgate.money import MAX_MICROS, parse_money
from reelgate.store.admin import AdminStore

router = APIRouter(prefix="/admin/v1", tags=["admin"])


async def require_admin(request: Request) -> AdminStore:
    services = request.app.state.services
    token = services.settings.admin_token
    if not token:
        raise ApiError(404, "The admin API is disabled (set REELGATE_ADMIN_TOKEN)")
    given = bearer_secret(request.headers.get("authorization")) or ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("Invalid admin token")
    return AdminStore(services.store)


# Strict: `true` is not a rate and "1" is not a limit; bounded so every value fits the
# database's integer columns.
_STRICT = ConfigDict(strict=True)
_RATE = Field(None, ge=0, le=10**9, description="Requests per minute (0: the server default)")
_CONCURRENT = Field(None, ge=0, le=10**6, description="Predictions at once (0: the default)")


class AccountIn(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=200)
    rate_per_minute: int | None = _RATE
    max_concurrent: int | None = _CONCURRENT


class AccountPatch(BaseModel):
    model_config = _STRICT
    rate_per_minute: int | None = _RATE
    max_concurrent: int | None = _CONCURRENT
    disabled: bool | None = None
    webhook_scheme: str | None = Field(
        None,
        description='How webhooks are signed: "wavespeed" (v3,<hex>), "standard" (Standard '
        'Webhooks v1,<base64>) or "default" (the dialect\'s: wavespeed for v3).',
    )


def parse_webhook_scheme(value: str) -> str | None:
    """A scheme name for the accounts table; "default" is stored as NULL."""
    from reelgate.jobs.signing import SCHEMES

    if value == "default":
        return None
    if value not in SCHEMES:
        raise InvalidInput("webhook_scheme", f"must be one of {', '.join(SCHEMES)} or default "
                           f"(got {value!r})")
    return value


class KeyIn(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=200)
    models: list[Annotated[str, Field(max_length=100)]] | None = Field(None, max_length=100)


class CreditIn(BaseModel):
    model_config = _STRICT
    amount: str | int | float | None = Field(None, description='A decimal string: "10.00"')
    amount_micros: int | None = Field(None, ge=-MAX_MICROS, le=MAX_MICROS)
    note: str = Field("", max_length=1000)


@router.post("/accounts")
async def create_account(body: AccountIn, admin: AdminStore = Depends(require_admin)) -> Any:
    return await admin.create_account(
        body.name, rate_per_minute=body.rate_per_minute, max_concurrent=body.max_concurrent
    )


@router.get("/accounts")
async def list_accounts(admin: AdminStore = Depends(require_admin)) -> Any:
    return await admin.list_accounts()


@router.get("/accounts/{account}")
async def get_account(account: str, admin: AdminStore = Depends(require_admin)) -> Any:
    return await admin.get_account(await admin.resolve_account(account))


@router.patch("/accounts/{account}")
async def patch_account(
    account: str, body: AccountPatch, admin: AdminStore = Depends(require_admin)
) -> Any:
    account_id = await admin.resolve_account(account)
    if body.webhook_scheme is not None:
        await admin.set_webhook_scheme(account_id, parse_webhook_scheme(body.webhook_scheme))
    return await admin.set_limits(
        account_id,
        rate_per_minute=body.rate_per_minute,
        max_concurrent=body.max_concurrent,
        disabled=body.disabled,
    )


@router.post("/accounts/{account}/keys")
async def create_key(account: str, body: KeyIn, admin: AdminStore = Depends(require_admin)) -> Any:
    secret, record = await admin.create_key(
        await admin.resolve_account(account), body.name, body.models
    )
    return {**record, "key": secret}


@router.get("/accounts/{account}/keys")
async def list_keys(account: str, admin: AdminStore = Depends(require_admin)) -> Any:
    return await admin.list_keys(await admin.resolve_account(account))


@router.post("/keys/{key}/revoke")
async def revoke_key(key: str, admin: AdminStore = Depends(require_admin)) -> Any:
    return await admin.revoke_key(key)


@router.post("/accounts/{account}/credits")
async def credit(account: str, body: CreditIn, admin: AdminStore = Depends(require_admin)) -> Any:
    amount = parse_money(body.amount, body.amount_micros)
    return await top_up(admin, await admin.resolve_account(account), amount, body.note)


@router.get("/accounts/{account}/ledger")
async def account_ledger(
    account: str, request: Request, admin: AdminStore = Depends(require_admin)
) -> Any:
    q = request.query_params
    start, end = date_range(q.get("from"), q.get("to"))
    return await admin.ledger(await admin.resolve_account(account), start, end)


@router.get("/usage")
async def usage(request: Request, admin: AdminStore = Depends(require_admin)) -> Any:
    """Usage per account and model; ``?from=YYYY-MM-DD&to=YYYY-MM-DD&account=..&format=csv``."""
    q = request.query_params
    start, end = date_range(q.get("from"), q.get("to"))
    account_id = await admin.resolve_account(q["account"]) if q.get("account") else None
    rows = await admin.usage(start, end, account_id)
    if q.get("format") == "csv":
        return Response(
            to_csv(rows),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="usage.csv"'},
        )
    return rows


@router.get("/policy-blocks")
async def blocks(admin: AdminStore = Depends(require_admin)) -> Any:
    return await admin.policy_blocks()


