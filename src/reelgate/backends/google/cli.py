"""``reelgate google ...``: operator commands for the Google Veo backend.

``doctor`` checks each channel's credentials and which mapped models it can reach, without
generating anything (no create call is ever made: it only reads model metadata).
``channels`` lists the configured channels with the live state the server last wrote.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from reelgate.backends.google.config import ChannelConfig, GoogleSettings

google_app = typer.Typer(help="The Google Veo backend: credentials, models, channels.",
                         no_args_is_help=True)


def _mask(secret: str | None) -> str:
    if not secret:
        return ""
    return f"…{secret[-4:]}" if len(secret) > 8 else "…"


def _credential(ch: ChannelConfig) -> str:
    if ch.api_key:
        return f"api key {_mask(ch.api_key)}" + (" (express)" if ch.mode == "vertex" else "")
    where = f"{ch.project or '(ADC project)'}/{ch.location}"
    return f"{where} " + (f"file {ch.credentials_file}" if ch.credentials_file else "(ADC)")


def _load() -> tuple[GoogleSettings, list[ChannelConfig]]:
    try:
        gs = GoogleSettings()
        channels = gs.resolved_channels()
    except Exception as exc:  # pydantic errors: show them as the operator's to fix
        typer.echo(f"error: the REELGATE_GOOGLE_* settings are invalid: {exc}", err=True)
        raise typer.Exit(2) from None
    if not channels:
        typer.echo("error: no Google channel is configured (set REELGATE_GOOGLE_API_KEY, "
                   "REELGATE_GOOGLE_CHANNELS, or REELGATE_GOOGLE_MODE=vertex with "
                   "REELGATE_GOOGLE_PROJECT); see the README's Google section", err=True)
        raise typer.Exit(2)
    return gs, channels


async def _check_channel(gs: GoogleSettings, ch: ChannelConfig) -> dict[str, Any]:
    from reelgate import catalog
    from reelgate.backends.google.backend import classify_error, load_credentials, make_client

    report: dict[str, Any] = {"channel": ch.name, "mode": ch.mode,
                              "credentials": _credential(ch), "credentials_ok": True,
                              "error": "", "models": []}
    creds = None
    if ch.mode == "vertex" and not ch.api_key:
        try:
            from google.auth.transport.requests import Request

            creds = await asyncio.to_thread(load_credentials, ch)
            await asyncio.to_thread(creds.refresh, Request())
        except Exception as exc:  # any auth failure is the report, not a crash
            report.update(credentials_ok=False, error=f"{type(exc).__name__}: {exc}")
            return report
    client = make_client(ch, gs, creds)
    wanted: dict[str, list[str]] = {}
    for public in catalog.MODELS:
        wanted.setdefault(gs.model_id(public, ch), []).append(public)
    for model_id in gs.fallback_models.values():
        wanted.setdefault(model_id, [])
    for model_id, publics in wanted.items():
        row = {"model": model_id, "serves": publics, "reachable": False, "error": ""}
        try:
            await client.aio.models.get(model=model_id)
            row["reachable"] = True
        except Exception as exc:  # sorted into words
            up = classify_error(exc)
            row["error"] = up.short()
            if up.kind == "auth":
                report.update(credentials_ok=False, error=up.short())
        report["models"].append(row)
    return report


async def _doctor(gs: GoogleSettings, channels: list[ChannelConfig]) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(_check_channel(gs, ch) for ch in channels)))


@google_app.command()
def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check each channel's credentials and list the mapped models it can reach. Generates
    nothing and costs nothing. Exits 1 when anything is unreachable."""
    gs, channels = _load()
    reports = asyncio.run(_doctor(gs, channels))
    healthy = all(r["credentials_ok"] and all(m["reachable"] for m in r["models"])
                  for r in reports)
    if as_json:
        typer.echo(json.dumps({"ok": healthy, "channels": reports}, indent=2))
    else:
        console = Console()
        table = Table(title="Google channels")
        for col in ("channel", "mode", "credentials", "model", "serves", "reachable"):
            table.add_column(col)
        for r in reports:
            cred = ("ok " if r["credentials_ok"] else "FAILED ") + r["credentials"]
            if not r["models"]:
                table.add_row(r["channel"], r["mode"], cred, "", "", r["error"])
            for m in r["models"]:
                table.add_row(r["channel"], r["mode"], cred, m["model"], ", ".join(m["serves"]),
                              "yes" if m["reachable"] else f"no: {m['error']}")
        console.print(table)
        console.print("all good" if healthy else "some checks failed")
    raise typer.Exit(0 if healthy else 1)


@google_app.command("channels")
def channels_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
) -> None:
    """List the configured channels with the state a running server last reported (health,
    operations in flight, cool-downs, last error)."""
    from reelgate.backends.google.channels import read_status_file
    from reelgate.settings import Settings

    gs, channels = _load()
    status = read_status_file(Settings().data_dir / "google-channels.json") or {}
    live = {c["name"]: c for c in status.get("channels", [])}
    rows = []
    for ch in channels:
        state = live.get(ch.name, {})
        rows.append({
            "name": ch.name,
            "mode": ch.mode,
            "credentials": _credential(ch),
            "weight": ch.weight,
            "max_concurrency": ch.max_concurrency or None,
            "rate_per_minute": ch.rate_per_minute or None,
            "health": state.get("health", "unknown"),
            "in_flight": state.get("in_flight", 0),
            "cooling_until": state.get("cooling_until"),
            "submitted": state.get("submitted", 0),
            "completed": state.get("completed", 0),
            "failures": state.get("failures", 0),
            "last_error": state.get("last_error", ""),
        })
    if as_json:
        typer.echo(json.dumps({"updated_at": status.get("updated_at"), "channels": rows},
                              indent=2))
        return
    table = Table(title=f"Google channels (state as of {status.get('updated_at') or 'never'})")
    cols = ("name", "mode", "credentials", "weight", "max_concurrency", "rate_per_minute",
            "health", "in_flight", "cooling_until", "submitted", "failures", "last_error")
    for col in cols:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in cols))
    Console().print(table)


if __name__ == "__main__":
    google_app()
