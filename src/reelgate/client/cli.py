"""The user's side of the ``reelgate`` command: ``generate`` and ``predictions ...``.

These talk to a running server through the SDK (``reelgate.client.sdk``), unlike the operator
commands in cli.py, which open the database. The server URL and the key come from
``--url``/``--key``, then REELGATE_BASE_URL/REELGATE_API_KEY, then the config file
(``reelgate.client.config``).

Exit codes, so scripts can tell what happened without parsing messages:

====  ===========================================================================
0     success
1     anything else (server unreachable, server error, a local file problem)
2     usage: a bad option, a missing local file, a broken config file
3     authentication: the key is missing, wrong or revoked
4     the server refused the request (400, 403, 404, 429, content policy)
5     the prediction was accepted but failed (or was cancelled)
6     the wait timed out; the prediction goes on and can be read later
====  ===========================================================================

Messages go to stderr; stdout carries only the result (a file path, a table, JSON), so
``out=$(reelgate generate ...)`` works.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from reelgate.client.config import ClientConfig, ConfigError, config_path, resolve
from reelgate.client.sdk import (
    APIConnectionError,
    AuthenticationError,
    Client,
    ContentPolicyError,
    NotFoundError,
    PermissionDeniedError,
    Prediction,
    PredictionFailed,
    RateLimitError,
    ReelgateError,
    ServerError,
    WaitTimeout,
)

__all__ = [
    "EXIT_AUTH",
    "EXIT_FAILED",
    "EXIT_OTHER",
    "EXIT_REFUSED",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "generate",
    "predictions_app",
]

EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_REFUSED = 4
EXIT_FAILED = 5
EXIT_TIMEOUT = 6

predictions_app = typer.Typer(
    help="Your predictions on a reelgate server: list, read, cancel, download.",
    no_args_is_help=True,
)

# highlight=False: Rich would otherwise colour numbers and paths inside our messages;
# soft_wrap: a message is never hard-wrapped at 80 columns when stderr is a log file.
_err = Console(stderr=True, highlight=False, soft_wrap=True)

_URL_HELP = ("Server URL. Default: $REELGATE_BASE_URL, then base_url in the config file, "
             "then http://127.0.0.1:8000.")
_KEY_HELP = "API key. Default: $REELGATE_API_KEY, then api_key in the config file."


def _url_option() -> Any:
    return typer.Option(None, "--url", help=_URL_HELP, show_default=False)


def _key_option() -> Any:
    return typer.Option(None, "--key", help=_KEY_HELP, show_default=False)


def _fail(code: int, message: str) -> NoReturn:
    _err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def _config(url: str | None, key: str | None) -> ClientConfig:
    try:
        cfg = resolve(api_key=key, base_url=url)
    except ConfigError as exc:
        _fail(EXIT_USAGE, str(exc))
    if not cfg.api_key:
        _fail(EXIT_AUTH, "no API key. Pass --key, set REELGATE_API_KEY, or put "
              f"api_key = \"...\" in {config_path()}.")
    return cfg


def _key_hint(cfg: ClientConfig) -> str:
    if cfg.api_key_source == "argument":
        return "Check --key."
    if cfg.api_key_source == "environment":
        return "Check REELGATE_API_KEY."
    if cfg.api_key_source not in ("default", ""):
        return f"Check api_key in {cfg.api_key_source}."
    return "Check --key or REELGATE_API_KEY."


@contextmanager
def _handled(cfg: ClientConfig) -> Iterator[None]:
    """Turn the SDK's exceptions into a short message on stderr and the exit code."""
    try:
        yield
    except AuthenticationError as exc:
        what = "invalid API key" if "invalid" in exc.message.lower() else exc.message
        _fail(EXIT_AUTH, f"{what} ({exc.status}). {_key_hint(cfg)}")
    except ContentPolicyError as exc:
        _fail(EXIT_REFUSED, f"blocked by the content policy ({exc.status}): {exc.message}")
    except RateLimitError as exc:
        wait = f" Retry in {exc.retry_after:g} s." if exc.retry_after is not None else ""
        _fail(EXIT_REFUSED, f"rate limited ({exc.status}): {exc.message.rstrip('.')}.{wait}")
    except PermissionDeniedError as exc:
        _fail(EXIT_REFUSED, f"refused ({exc.status}): {exc.message}")
    except NotFoundError as exc:
        _fail(EXIT_REFUSED, f"not found ({exc.status}): {exc.message}")
    except PredictionFailed as exc:
        pred = exc.prediction
        if pred.status == "cancelled":
            _fail(EXIT_FAILED, f"prediction {pred.id} was cancelled")
        why = " (content policy)" if exc.content_policy else ""
        _fail(EXIT_FAILED, f"prediction {pred.id} failed{why}: {pred.error or 'no reason given'}")
    except WaitTimeout as exc:
        pred = exc.prediction
        _fail(EXIT_TIMEOUT, f"prediction {pred.id} is still {pred.status} after "
              f"{exc.timeout:g} s. It goes on: check it with `reelgate predictions get "
              f"{pred.id}`, then `reelgate predictions download {pred.id}`.")
    except APIConnectionError as exc:
        _fail(EXIT_OTHER, f"{exc.message.rstrip('.')}. Check --url or REELGATE_BASE_URL "
              f"(now {cfg.base_url}).")
    except ServerError as exc:
        _fail(EXIT_OTHER, f"server error ({exc.status}): {exc.message}")
    except ReelgateError as exc:
        # The 400s (InvalidRequestError) land here too: refused, with the server's reason.
        if exc.status is not None and 400 <= exc.status < 500:
            _fail(EXIT_REFUSED, f"request refused ({exc.status}): {exc.message}")
        _fail(EXIT_OTHER, str(exc))
    except OSError as exc:
        _fail(EXIT_OTHER, f"{exc.filename or 'file'}: {exc.strerror or exc}")


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://", "data:"))


def _local_file(option: str, value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        _fail(EXIT_USAGE, f"{option}: no such file {value!r} (give a local image file or an "
              "http(s):// URL)")
    return path


def _uploaded(client: Client, option: str, value: str | None) -> str | None:
    """A URL for an image option: URLs pass through, local files are uploaded first."""
    if value is None or _is_url(value):
        return value
    path = _local_file(option, value)
    _err.print(f"uploading {escape(str(path))} ...")
    return client.upload(path)


@contextmanager
def _progress_display(label: str) -> Iterator[Callable[[Prediction], None]]:
    """A progress callback for Client.wait: a Rich spinner with the elapsed time and the
    status on a terminal; one plain line per status change otherwise (logs, CI), since an
    animated display means nothing there."""
    start = time.monotonic()
    if _err.is_terminal:
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=_err, transient=False) as progress:
            task = progress.add_task(f"{label} [cyan]created[/cyan]", total=None)

            def show(pred: Prediction) -> None:
                steps = pred.progress
                if steps is None:
                    progress.update(task, description=f"{label} [cyan]{pred.status}[/cyan]")
                    return
                # A local model reports its denoising: the bar fills step by step.
                progress.update(task, total=steps[1], completed=steps[0],
                                description=f"{label} [cyan]{pred.status}[/cyan] "
                                f"step {steps[0]}/{steps[1]}")

            yield show
        return
    last: list[str] = []

    def log(pred: Prediction) -> None:
        steps = pred.progress
        state = pred.status if steps is None else f"{pred.status} step {steps[0]}/{steps[1]}"
        if not last or last[-1] != state:
            last.append(state)
            _err.print(f"{label} {state} ({time.monotonic() - start:.1f} s)")

    yield log


def _scene_for(scene: str | None, image: str | None, refs: list[str]) -> str:
    if scene:
        return scene
    if refs:
        return "reference-to-video"
    return "image-to-video" if image else "text-to-video"


def generate(
    prompt: str = typer.Argument(..., help="What the video shows; audio cues are allowed."),
    model: str = typer.Option("veo3.1-fast", "--model", "-m",
                              help="veo3, veo3-fast, veo3-pro, veo3.1, veo3.1-fast, veo3.1-pro, or "
                              "local/<name> for a model served from the operator's GPUs."),
    image: str = typer.Option(None, "--image", "-i", show_default=False,
                              help="First frame: a local image file (uploaded) or a URL."),
    last_image: str = typer.Option(None, "--last-image", show_default=False,
                                   help="Last frame (with --image): a local file or a URL."),
    ref: list[str] = typer.Option(None, "--ref", show_default=False,
                                  help="Reference image, a local file or a URL; repeat up to "
                                  "3 times (reference-to-video)."),
    scene: str = typer.Option(None, "--scene", show_default=False,
                              help="text-to-video, image-to-video or reference-to-video. "
                              "Default: from the inputs given."),
    aspect: str = typer.Option(None, "--aspect", show_default=False,
                               help="16:9 (default) or 9:16."),
    resolution: str = typer.Option(None, "--resolution", show_default=False,
                                   help="720p (default), 1080p or 4k (8 s only)."),
    duration: int = typer.Option(None, "--duration", "-d", show_default=False,
                                 help="4, 6 or 8 seconds (default 8)."),
    negative_prompt: str = typer.Option(None, "--negative-prompt", show_default=False,
                                        help="What to keep out of the video."),
    seed: int = typer.Option(None, "--seed", show_default=False, help="Seed, for repeatability."),
    audio: bool = typer.Option(None, "--audio/--no-audio", show_default=False,
                               help="Generate an audio track (default: yes)."),
    enhance: bool = typer.Option(None, "--enhance/--no-enhance", show_default=False,
                                 help="Let the backend rewrite the prompt (default: yes)."),
    upsample: bool = typer.Option(None, "--upsample", show_default=False,
                                  help="Deliver the next resolution up."),
    webhook: str = typer.Option(None, "--webhook", show_default=False,
                                help="URL the server calls when the prediction ends."),
    output: Path = typer.Option(None, "--output", "-o", show_default=False,
                                help="Where to save the video. Default: <id>.mp4; a directory "
                                "gets <id>.mp4 inside it."),
    timeout: float = typer.Option(900.0, "--timeout", help="Seconds to wait for the video."),
    poll_interval: float = typer.Option(1.0, "--poll-interval", help="Seconds between polls."),
    url: str = _url_option(),
    key: str = _key_option(),
) -> None:
    """Generate a video and save it; prints the file's path.

    Uploads local image files, creates the prediction, shows its progress while waiting,
    downloads the video and prints its path on stdout."""
    cfg = _config(url, key)
    refs = list(ref or [])
    # Check local files before anything is sent, so a typo costs no request.
    for option, value in [("--image", image), ("--last-image", last_image),
                          *(("--ref", r) for r in refs)]:
        if value is not None and not _is_url(value):
            _local_file(option, value)
    with _handled(cfg), Client(cfg.api_key, cfg.base_url, cfg.timeout) as client:
        fields: dict[str, Any] = {
            "image": _uploaded(client, "--image", image),
            "last_image": _uploaded(client, "--last-image", last_image),
            "images": [_uploaded(client, "--ref", r) for r in refs] or None,
            "aspect_ratio": aspect,
            "resolution": resolution,
            "duration": duration,
            "negative_prompt": negative_prompt,
            "seed": seed,
            "generate_audio": audio,
            "enhance_prompt": enhance,
            "enable_upsample": upsample,
        }
        pred = client.create(model, _scene_for(scene, image, refs), prompt, webhook=webhook,
                             **fields)
        try:
            with _progress_display(escape(f"{pred.id} ({model})")) as show:
                pred = client.wait(pred, timeout=timeout, poll_interval=poll_interval,
                                   on_progress=show)
        except KeyboardInterrupt:
            _err.print(f"interrupted; prediction {pred.id} goes on. Later: "
                       f"`reelgate predictions download {pred.id}`")
            raise typer.Exit(130) from None
        path = client.download(pred, output)
    secs = f" in {pred.execution_time_ms / 1000:.1f} s" if pred.execution_time_ms else ""
    _err.print(f"completed{secs}; saved {path.stat().st_size:,} bytes")
    typer.echo(str(path.resolve()))


# --- predictions ----------------------------------------------------------------------

# Kept narrow so a row fits an 80-column terminal; `predictions get` shows the rest.
_COLUMNS = ("id", "status", "model", "created (UTC)", "error")


def _row(pred: Prediction) -> tuple[str, ...]:
    return (
        pred.id,
        pred.status,
        pred.model_name,
        pred.created_at.strftime("%Y-%m-%d %H:%M") if pred.created_at else "",
        pred.error,
    )


def _print_rows(rows: list[tuple[str, ...]]) -> None:
    out = Console(highlight=False)
    if not out.is_terminal:
        # Piped: one tab-separated line per prediction (cut -f1 gives the ids), never a
        # table squeezed to 80 columns.
        for r in rows:
            typer.echo("\t".join(c.replace("\t", " ").replace("\n", " ") for c in r))
        return
    if not rows:
        return
    # One line per prediction. The id (what the other commands take) and the short columns
    # are never cut; the error gets what width is left, and is dropped on a narrow
    # terminal rather than squeezing the rest (`predictions get` shows it).
    widths = [max(len(name), *(len(r[i]) for r in rows)) for i, name in enumerate(_COLUMNS)]
    short = len(_COLUMNS) - 1
    room = out.width - sum(widths[:short]) - 2 * short
    columns = _COLUMNS if room >= 12 and any(r[short] for r in rows) else _COLUMNS[:short]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name, width in zip(columns, widths, strict=False):
        if name == "error":
            table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=room - 1)
        else:
            table.add_column(name, no_wrap=True, min_width=width)
    for r in rows:
        table.add_row(*(escape(c) for c in r[: len(columns)]))
    out.print(table)


@predictions_app.command("list")
def predictions_list(
    status: str = typer.Option(None, "--status", show_default=False,
                               help="created, processing, completed, failed or cancelled."),
    model: str = typer.Option(None, "--model", "-m", show_default=False,
                              help="Only this model, e.g. veo3.1-fast."),
    since: str = typer.Option(None, "--from", show_default=False,
                              help="Created on or after (YYYY-MM-DD or ISO 8601)."),
    until: str = typer.Option(None, "--to", show_default=False,
                              help="Created on or before (YYYY-MM-DD or ISO 8601)."),
    page: int = typer.Option(1, "--page", min=1, help="Page number."),
    page_size: int = typer.Option(20, "--page-size", min=1, help="Predictions per page."),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON."),
    url: str = _url_option(),
    key: str = _key_option(),
) -> None:
    """List your predictions, newest first."""
    cfg = _config(url, key)
    with _handled(cfg), Client(cfg.api_key, cfg.base_url, cfg.timeout) as client:
        result = client.list(status=status, model=model, since=since, until=until,
                             page=page, page_size=page_size)
    if as_json:
        typer.echo(json.dumps({"items": [dict(p.raw) for p in result.items],
                               "page": result.page, "page_size": result.page_size,
                               "total": result.total}, indent=2))
        return
    _print_rows([_row(p) for p in result.items])
    if result.total == 0:
        _err.print("no predictions match")
        return
    pages = max(1, -(-result.total // result.page_size)) if result.page_size else 1
    more = f"; next: --page {result.page + 1}" if result.has_more else ""
    _err.print(f"page {result.page} of {pages}, {result.total} prediction(s){more}")


def _print_prediction(pred: Prediction, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(dict(pred.raw), indent=2))
        return
    fields = [
        ("id", pred.id), ("model", pred.model), ("status", pred.status),
        ("created_at", pred.created_at.isoformat() if pred.created_at else ""),
        ("execution_time", f"{pred.execution_time_ms / 1000:.1f} s"
         if pred.execution_time_ms else ""),
        ("error", pred.error),
        ("dialect", pred.dialect), ("cost", pred.cost),
        *(("output", u) for u in pred.outputs),
    ]
    for name, value in fields:
        if value:
            typer.echo(f"{name + ':':<16}{value}")


@predictions_app.command("get")
def predictions_get(
    prediction_id: str = typer.Argument(..., metavar="ID", help="The prediction's id."),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON."),
    url: str = _url_option(),
    key: str = _key_option(),
) -> None:
    """Show one prediction: status, error, output links."""
    cfg = _config(url, key)
    with _handled(cfg), Client(cfg.api_key, cfg.base_url, cfg.timeout) as client:
        pred = client.get(prediction_id)
    _print_prediction(pred, as_json)


@predictions_app.command("cancel")
def predictions_cancel(
    prediction_id: str = typer.Argument(..., metavar="ID", help="The prediction's id."),
    url: str = _url_option(),
    key: str = _key_option(),
) -> None:
    """Cancel a prediction that has not started yet (one that has is refused: exit 4)."""
    cfg = _config(url, key)
    with _handled(cfg), Client(cfg.api_key, cfg.base_url, cfg.timeout) as client:
        pred = client.cancel(prediction_id)
    typer.echo(f"{pred.id}\t{pred.status}")


@predictions_app.command("download")
def predictions_download(
    prediction_id: str = typer.Argument(..., metavar="ID", help="The prediction's id."),
    output: Path = typer.Option(None, "--output", "-o", show_default=False,
                                help="Where to save the video. Default: <id>.mp4."),
    url: str = _url_option(),
    key: str = _key_option(),
) -> None:
    """Download the video of a completed prediction; prints the path."""
    cfg = _config(url, key)
    with _handled(cfg), Client(cfg.api_key, cfg.base_url, cfg.timeout) as client:
        pred = client.get(prediction_id)
        if not pred.ok:
            if pred.status in ("failed", "cancelled"):
                raise PredictionFailed(pred)
            # Not ended yet: the same code as a generate whose wait timed out.
            _fail(EXIT_TIMEOUT, f"prediction {pred.id} is {pred.status}; no video yet")
        path = client.download(pred, output)
    typer.echo(str(path.resolve()))
