"""The console's operator pages (signed in with the admin token): accounts, keys, usage,
models and backends, upstream channels, policy blocks, queue and workers.

Every action goes through the same AdminStore calls as the /admin/v1 API."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from reelgate import catalog
from reelgate.accounts.ledger import top_up
from reelgate.accounts.usage import date_range, to_csv
from reelgate.backends import backend_for
from reelgate.errors import ApiError
from reelgate.money import parse_money
from reelgate.store.admin import AdminStore
from reelgate.store.console import ConsoleStore

from . import charts
from .routes import form_with_csrf, money, page, services_of, set_new_key, usage_chart, viewer

router = APIRouter(prefix="/console/admin", include_in_schema=False)


def _back(url: str, flash: str) -> RedirectResponse:
    sep = "&" if "?" in url else "?"
    return RedirectResponse(f"{url}{sep}{urlencode({'flash': flash})}", status_code=303)


@router.get("", response_class=HTMLResponse)
async def accounts(request: Request) -> Response:
    v = await viewer(request, role="admin")
    admin = AdminStore(services_of(request).store)
    return page(request, "admin_accounts.html", v, nav="accounts",
                accounts=await admin.list_accounts())


@router.post("/accounts")
async def create_account(request: Request) -> Response:
    v = await viewer(request, role="admin")
    form = await form_with_csrf(request, v)
    name = str(form.get("name") or "").strip()
    if not name:
        return _back("/console/admin", "An account needs a name.")
    account = await AdminStore(services_of(request).store).create_account(name[:200])
    return _back(f"/console/admin/accounts/{account['id']}", f"Account {name} created.")


@router.post("/accounts/{account_id}/credit")
async def credit(request: Request, account_id: str) -> Response:
    v = await viewer(request, role="admin")
    form = await form_with_csrf(request, v)
    admin = AdminStore(services_of(request).store)
    back = str(form.get("back") or f"/console/admin/accounts/{account_id}")
    if not back.startswith("/console/"):
        back = "/console/admin"
    try:
        account_id = await admin.resolve_account(account_id)
        amount = parse_money(str(form.get("amount") or "").strip() or None, None)
        account = await top_up(admin, account_id, amount, str(form.get("note") or "")[:500])
    except ApiError as exc:
        return _back(back, f"Not credited: {exc.message}")
    return _back(back, f"{account['name']}: balance is now {money(account['balance_micros'])}.")


@router.post("/accounts/{account_id}/disable")
async def disable(request: Request, account_id: str) -> Response:
    v = await viewer(request, role="admin")
    form = await form_with_csrf(request, v)
    admin = AdminStore(services_of(request).store)
    disabled = form.get("disabled") == "1"
    account = await admin.set_limits(await admin.resolve_account(account_id), disabled=disabled)
    return _back(f"/console/admin/accounts/{account_id}",
                 f"{account['name']} is {'disabled' if disabled else 'enabled'}.")


@router.get("/accounts/{account_id}", response_class=HTMLResponse)
async def account_page(request: Request, account_id: str) -> Response:
    from reelgate.console.routes import _pop_new_key

    v = await viewer(request, role="admin")
    services = services_of(request)
    admin = AdminStore(services.store)
    try:
        account = await admin.get_account(account_id)
    except ApiError:
        return page(request, "not_found.html", v, status_code=404, what=f"Account {account_id}")
    keys = await admin.list_keys(account_id)
    ledger = list(reversed(await admin.ledger(account_id, limit=100000)))[:100]
    chart_count, chart_money, totals = await usage_chart(services, account_id)
    new_key = _pop_new_key(request)
    response = page(request, "admin_account.html", v, nav="accounts", account=account,
                    keys=keys, ledger=ledger, chart_count=chart_count, chart_money=chart_money,
                    totals=totals, new_key=new_key, models=list(catalog.MODELS))
    if new_key:
        response.delete_cookie("reelgate_console_newkey", path="/console")
    return response


@router.post("/accounts/{account_id}/keys")
async def create_key(request: Request, account_id: str) -> Response:
    v = await viewer(request, role="admin")
    form = await form_with_csrf(request, v)
    models = [m for m in form.getlist("models") if isinstance(m, str) and m]
    name = str(form.get("name") or "").strip()[:200] or "console"
    try:
        secret, _ = await AdminStore(services_of(request).store).create_key(
            account_id, name, models or None)
    except ApiError as exc:
        return _back(f"/console/admin/accounts/{account_id}", f"No key made: {exc.message}")
    response = RedirectResponse(f"/console/admin/accounts/{account_id}#keys", status_code=303)
    set_new_key(request, response, secret)
    return response


@router.post("/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str) -> Response:
    v = await viewer(request, role="admin")
    await form_with_csrf(request, v)
    try:
        key = await AdminStore(services_of(request).store).revoke_key(key_id)
    except ApiError as exc:
        return _back("/console/admin", exc.message)
    return _back(f"/console/admin/accounts/{key['account_id']}", f"Key {key['prefix']} revoked.")


@router.get("/usage", response_class=HTMLResponse)
async def usage(request: Request) -> Response:
    v = await viewer(request, role="admin")
    services = services_of(request)
    admin = AdminStore(services.store)
    q = request.query_params
    today = datetime.now(UTC).date()
    since = q.get("from") or (today - timedelta(days=29)).isoformat()
    until = q.get("to") or today.isoformat()
    error = None
    try:
        start, end = date_range(since, until)
    except ApiError as exc:
        error = exc.message
        since, until = (today - timedelta(days=29)).isoformat(), today.isoformat()
        start, end = date_range(since, until)
    rows = await admin.usage(start, end)
    if q.get("format") == "csv":
        return Response(to_csv(rows), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="usage.csv"'})
    first, last = date.fromisoformat(since[:10]), date.fromisoformat(until[:10])
    if (last - first).days > 366:
        first = last - timedelta(days=366)
    by_day = await ConsoleStore(services.store).usage_by_day(
        datetime.combine(first, datetime.min.time(), UTC))
    days = charts.days_between(first, last)
    names = {a["id"]: a["name"] for a in await admin.list_accounts()}
    # usage_by_day groups by model; the operator's chart is by model too (accounts are the
    # table below), so the two views answer "what sells" and "who buys".
    models = sorted({m for cells in by_day.values() for m in cells})
    series = {m: [by_day.get(d, {}).get(m, {}).get("predictions", 0) for d in days]
              for m in models}
    chart = charts.stacked_bars(days, series, title="Predictions per day, all accounts, by model")
    return page(request, "admin_usage.html", v, nav="usage", rows=rows, chart=chart,
                since=since, until=until, error=error, names=names,
                csv_link="/console/admin/usage?" + urlencode(
                    {"from": since, "to": until, "format": "csv"}))


@router.get("/system", response_class=HTMLResponse)
async def system(request: Request) -> Response:
    from reelgate.backends.google.channels import read_status_file
    from reelgate.backends.google.config import load_google_settings

    v = await viewer(request, role="admin")
    services = services_of(request)
    settings = services.settings
    models = [{"model": m, "backend": backend_for(m.name, settings)}
              for m in catalog.MODELS.values()]
    gs = load_google_settings()
    status = read_status_file(settings.data_dir / "google-channels.json") or {}
    live = {c.get("name"): c for c in status.get("channels", [])}
    channels = [{"config": ch, "live": live.get(ch.name)} for ch in gs.resolved_channels()]
    console = ConsoleStore(services.store)
    queue = await services.dispatcher.depth()
    queue_kind = services.dispatcher.kind if queue else "none in this process"
    return page(request, "admin_system.html", v, nav="system", models=models,
                channels=channels, channels_updated=status.get("updated_at"),
                queue=queue, queue_kind=queue_kind,
                unfinished=await console.unfinished_counts(),
                workers=await console.live_workers(),
                in_flight=services.dispatcher.in_flight)


@router.get("/blocks", response_class=HTMLResponse)
async def blocks(request: Request) -> Response:
    v = await viewer(request, role="admin")
    admin = AdminStore(services_of(request).store)
    names = {a["id"]: a["name"] for a in await admin.list_accounts()}
    return page(request, "admin_blocks.html", v, nav="blocks",
                blocks=await admin.policy_blocks(100), names=names)
