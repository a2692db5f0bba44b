"""The ``reelgate`` command: run the server, manage keys."""

from __future__ import annotations

import asyncio
import logging
import sys

import typer

from reelgate.settings import Settings

app = typer.Typer(help="reelgate: a video-generation API server for Veo models.",
                  no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Run the API server with in-process workers (migrations run on start)."""
    import uvicorn

    from reelgate.api.app import create_app

    _logging(log_level)
    settings = Settings()
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=10)


async def _create_key(name: str, account: str | None) -> str:
    from reelgate.services import Services

    services = await Services.open(Settings(), run_workers=False)
    try:
        store = services.store
        account_name = account or name
        account_id = await store.find_account_by_name(account_name)
        if account_id is None:
            account_id = await store.create_account(account_name)
        secret, _ = await store.create_key(account_id, name)
        return secret
    finally:
        await services.close()


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(..., "--name", help="A name for the key."),
    account: str = typer.Option(
        None, "--account", help="Account that owns the key (created if missing; default: NAME)."
    ),
) -> None:
    """Create an API key and print it, alone, on stdout (it is not shown again)."""
    secret = asyncio.run(_create_key(name, account))
    typer.echo(secret)


if __name__ == "__main__":
    app()
