"""The ``reelgate`` command: run the server, manage keys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from reelgate.backends.google.cli import google_app
from reelgate.backends.local.cli import local_app
from reelgate.client import cli as cli_user
from reelgate.errors import ApiError
from reelgate.settings import Settings

if TYPE_CHECKING:
    from reelgate.store.admin import AdminStore

app = typer.Typer(
    help="reelgate: a video-generation API server for Veo models.", no_args_is_help=True
)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
accounts_app = typer.Typer(help="Accounts, balances, ledger and usage.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(accounts_app, name="accounts")
app.command("generate")(cli_user.generate)
app.add_typer(cli_user.predictions_app, name="predictions")
app.add_typer(google_app, name="google")
app.add_typer(local_app, name="local")
err = Console(stderr=True)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
    workers: int = typer.Option(
        None, min=1, help="API processes sharing the port (default: REELGATE_SERVE_WORKERS, "
        "else 1). Embedded, the job workers run in one of them."),
    backlog: int = typer.Option(
        2048, help="Connections the kernel queues before they are accepted (thousands of "
        "long-poll clients connecting at once need more; capped by net.core.somaxconn)."),
) -> None:
    """Run the API server (migrations run on start). Embedded, it runs its own workers;
    with REELGATE_QUEUE_URL set, `reelgate worker` processes do the work."""
    import os

    from reelgate.api import drain
    from reelgate.logs import configure_logging

    configure_logging(log_level)
    settings = Settings()
    processes = workers or settings.serve_workers
    if processes > 1:
        # Migrate once here, before the processes start: several migrating one SQLite file
        # at once would race to create the same tables.
        import uvicorn

        from reelgate.store import migrate
        from reelgate.store.db import create_engine

        async def upgrade() -> None:
            settings.ensure_dirs()
            engine = create_engine(settings.resolved_database_url)
            try:
                await migrate.upgrade(engine)
            finally:
                await engine.dispose()

        asyncio.run(upgrade())
        # uvicorn's supervisor binds the port once and starts the processes (restarting
        # any that dies); each builds its app from the environment, and each drains held
        # requests on SIGTERM as one process does (drain.chain_signals).
        os.environ["REELGATE_SERVE_WORKERS"] = str(processes)
        os.environ["REELGATE_SERVE_LOG_LEVEL"] = log_level
        uvicorn.run("reelgate.api.app:create_app_from_env", factory=True, workers=processes,
                    host=host, port=port, log_level=log_level, log_config=None,
                    timeout_graceful_shutdown=int(settings.shutdown_drain_s) + 10,
                    backlog=backlog, loop=settings.event_loop)
        return
    from reelgate.api.app import create_app

    # SIGTERM drains: held sync-mode requests are answered before the process exits.
    drain.run(create_app(settings), settings, host=host, port=port, log_level=log_level,
              backlog=backlog)


@app.command()
def worker(
    backends: str = typer.Option(
        None, "--backends", "--backend",
        help="Comma-separated backends to run (default: every configured backend).",
    ),
    device: str = typer.Option(
        None, help="Torch device for the local backend (cuda:0, cuda:1, cpu); one process "
        "per GPU."
    ),
    preload: bool = typer.Option(
        True, help="Load every declared local model before taking work (kept warm)."
    ),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
    metrics_port: int = typer.Option(
        0, help="Serve Prometheus metrics (/metrics) and readiness (/readyz: the queue "
        "consumers) on this port (0: off)."),
    metrics_host: str = typer.Option("127.0.0.1", help="Address for the metrics port."),
) -> None:
    """Run a worker process for the scaled-out mode (REELGATE_QUEUE_URL=redis://...).

    It consumes the queues, renews leases, runs the reconciler and sends webhooks. SIGTERM
    or Ctrl-C hands running predictions back (their leases are released) and exits."""
    import os
    import signal

    from reelgate.logs import configure_logging
    from reelgate.services import Services

    configure_logging(log_level)
    overrides: dict[str, Any] = {}
    if backends:
        overrides["only_backends"] = [b.strip() for b in backends.split(",") if b.strip()]
    if device:
        # The flag form of REELGATE_LOCAL_DEVICE: the local backend's settings (an object of
        # its own, read when the backend is built) take it from this process's environment.
        from reelgate.backends.local.config import load_local_settings

        os.environ["REELGATE_LOCAL_DEVICE"] = device
        load_local_settings.cache_clear()
    settings = Settings(**overrides)
    if not settings.queue_url:
        err.print("[red]error:[/red] set REELGATE_QUEUE_URL=redis://... to run separate "
                  "workers (the embedded server runs its own)")
        raise typer.Exit(2)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        from reelgate.api.dialects import webhook_payload

        services = await Services.open(settings, run_workers=True,
                                       webhook_payload=webhook_payload)
        local = services.backends.get("local")
        if preload and local is not None:
            # Weights load once per process and stay warm; a prediction that arrives
            # meanwhile waits for the same (single) GPU thread.
            await local.preload()  # type: ignore[attr-defined]
        logging.getLogger("reelgate").info("worker started: backends %s",
                                           ", ".join(services.backends))
        refresher = None
        if metrics_port:
            from reelgate import metrics

            metrics.serve_worker_endpoints(metrics_port, metrics_host, services)

            async def refresh_metrics() -> None:
                while True:
                    with contextlib.suppress(Exception):
                        await metrics.refresh(services)
                    await asyncio.sleep(5)

            refresher = asyncio.create_task(refresh_metrics())
        try:
            await stop.wait()
        finally:
            if refresher is not None:
                refresher.cancel()
            await services.close()

    asyncio.run(main())


T = TypeVar("T")


def _admin(fn: Callable[[AdminStore], Awaitable[T]]) -> T:
    """Run one admin operation against the configured database; API errors become a
    message on stderr and exit code 1."""
    from reelgate.services import Services
    from reelgate.store.admin import AdminStore

    async def go() -> T:
        services = await Services.open(Settings(), run_workers=False)
        try:
            return await fn(AdminStore(services.store))
        finally:
            await services.close()

    try:
        return asyncio.run(go())
    except ApiError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None


def _table(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    Console().print(table)


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(..., "--name", help="A name for the key."),
    account: str = typer.Option(
        None,
        "--account",
        help="Account (id or name) that owns the key; created if missing. "
        "Default: an account named NAME.",
    ),
    models: str = typer.Option(
        None, "--models", help="Comma-separated models the key may use (default: all)."
    ),
) -> None:
    """Create an API key and print it, alone, on stdout (it is not shown again)."""
    allowed = [m.strip() for m in models.split(",") if m.strip()] if models else None

    async def go(admin: AdminStore) -> str:
        try:
            account_id = await admin.resolve_account(account or name)
        except ApiError:
            account_id = (await admin.create_account(account or name))["id"]
        secret, _ = await admin.create_key(account_id, name, allowed)
        return secret

    typer.echo(_admin(go))


@keys_app.command("list")
def keys_list(
    account: str = typer.Option(None, "--account", help="Only this account (id or name)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List keys (their prefix only: keys are stored hashed)."""

    async def go(admin: AdminStore) -> list[dict[str, Any]]:
        return await admin.list_keys(await admin.resolve_account(account) if account else None)

    _table(
        _admin(go), ["id", "prefix", "name", "account_id", "allowed_models", "revoked_at"], as_json
    )


@keys_app.command("revoke")
def keys_revoke(key: str = typer.Argument(..., help="Key id or prefix.")) -> None:
    """Revoke a key: it answers 401 from now on."""
    row = _admin(lambda admin: admin.revoke_key(key))
    err.print(f"revoked {row['prefix']} ({row['name']})")


@accounts_app.command("create")
def accounts_create(
    name: str = typer.Argument(...),
    rate_per_minute: int = typer.Option(None, help="Requests per minute per key."),
    max_concurrent: int = typer.Option(None, help="Unfinished predictions per key."),
) -> None:
    """Create an account; prints its id."""
    row = _admin(
        lambda a: a.create_account(
            name, rate_per_minute=rate_per_minute, max_concurrent=max_concurrent
        )
    )
    typer.echo(row["id"])


@accounts_app.command("list")
def accounts_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List accounts with their balances and limits."""
    _table(
        _admin(lambda a: a.list_accounts()),
        ["id", "name", "balance", "rate_per_minute", "max_concurrent", "disabled"],
        as_json,
    )


@accounts_app.command("credit")
def accounts_credit(
    account: str = typer.Argument(..., help="Account id or name."),
    amount: str = typer.Argument(..., help="Decimal amount, e.g. 25.00; negative to debit."),
    note: str = typer.Option("", help="Why (kept in the ledger)."),
) -> None:
    """Add to (or, with a negative amount, take from) an account's balance."""
    from reelgate.money import parse_money

    async def go(admin: AdminStore) -> dict[str, Any]:
        from reelgate.accounts.ledger import top_up

        return await top_up(admin, await admin.resolve_account(account),
                            parse_money(amount, None), note)

    typer.echo(_admin(go)["balance"])


@accounts_app.command("set-limits")
def accounts_set_limits(
    account: str = typer.Argument(..., help="Account id or name."),
    rate_per_minute: int = typer.Option(None, help="Requests per minute per key."),
    max_concurrent: int = typer.Option(None, help="Unfinished predictions per key."),
    disabled: bool = typer.Option(None, "--disabled/--enabled", help="Disable the account."),
) -> None:
    """Change an account's limits or state."""

    async def go(admin: AdminStore) -> dict[str, Any]:
        return await admin.set_limits(
            await admin.resolve_account(account),
            rate_per_minute=rate_per_minute,
            max_concurrent=max_concurrent,
            disabled=disabled,
        )

    _table(
        [_admin(go)],
        ["id", "name", "balance", "rate_per_minute", "max_concurrent", "disabled"],
        False,
    )


@accounts_app.command("webhook-scheme")
def accounts_webhook_scheme(
    account: str = typer.Argument(..., help="Account id or name."),
    scheme: str = typer.Argument(
        ..., help="wavespeed (v3,<hex>: WaveSpeed's form, the v3 default), standard (Standard "
        "Webhooks v1,<base64>) or default."
    ),
) -> None:
    """Choose how the account's webhooks are signed."""
    from reelgate.api.admin import parse_webhook_scheme

    async def go(admin: AdminStore) -> dict[str, Any]:
        return await admin.set_webhook_scheme(
            await admin.resolve_account(account), parse_webhook_scheme(scheme)
        )

    row = _admin(go)
    typer.echo(row["webhook_scheme"] or "default")


@accounts_app.command("ledger")
def accounts_ledger(
    account: str = typer.Argument(..., help="Account id or name."),
    since: str = typer.Option(None, "--from", help="YYYY-MM-DD"),
    until: str = typer.Option(None, "--to", help="YYYY-MM-DD (inclusive)"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The account's ledger: credits, holds, captures, releases."""
    from reelgate.accounts.usage import date_range

    async def go(admin: AdminStore) -> list[dict[str, Any]]:
        start, end = date_range(since, until)
        return await admin.ledger(await admin.resolve_account(account), start, end)

    _table(
        _admin(go),
        ["id", "created_at", "kind", "amount", "balance_after", "prediction_id", "note"],
        as_json,
    )


@accounts_app.command("usage")
def accounts_usage(
    since: str = typer.Option(None, "--from", help="YYYY-MM-DD"),
    until: str = typer.Option(None, "--to", help="YYYY-MM-DD (inclusive)"),
    account: str = typer.Option(None, "--account", help="Only this account."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV."),
) -> None:
    """Usage per account and model for a date range."""
    from reelgate.accounts.usage import date_range, to_csv

    async def go(admin: AdminStore) -> list[dict[str, Any]]:
        start, end = date_range(since, until)
        account_id = await admin.resolve_account(account) if account else None
        return await admin.usage(start, end, account_id)

    rows = _admin(go)
    if csv_out:
        typer.echo(to_csv(rows), nl=False)
    else:
        _table(
            rows,
            ["account", "model", "predictions", "completed", "failed", "video_seconds", "charged"],
            False,
        )


if __name__ == "__main__":
    app()
