"""`reelgate local ...`: the operator's view of the models declared for the local backend."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

local_app = typer.Typer(help="Models served from this machine's GPUs (the local backend).",
                        no_args_is_help=True)
out = Console()
err = Console(stderr=True)


@local_app.command("check")
def check(
    device: str = typer.Option(None, help="Torch device to load on (default: the setting)."),
    load: bool = typer.Option(True, help="Load every pipeline (not only read the file)."),
) -> None:
    """Read the local models file, then load each declared model and scene as a worker
    would (weights from disk or the Hugging Face cache only, never downloaded), and say
    what is missing. Exit code 1 if any model cannot be served."""
    from reelgate.backends.local.config import (
        LocalConfigError,
        load_local_models,
        load_local_settings,
    )

    ls = load_local_settings()
    if not ls.models_file:
        err.print("[red]error:[/red] REELGATE_LOCAL_MODELS_FILE is not set")
        raise typer.Exit(2)
    try:
        models = load_local_models(ls.models_file)
    except LocalConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if not load:
        for m in models.values():
            out.print(f"{m.path}: {m.family}, {', '.join(m.offered_scenes)} (not loaded)")
        return
    try:
        from reelgate.backends.local.backend import PipelineCache
        from reelgate.backends.local.config import install
    except ImportError as exc:
        err.print(f"[red]error:[/red] the local backend needs its extra: pip install "
                  f"'reelgate[local]' ({exc})")
        raise typer.Exit(1) from None
    install(ls.models_file)
    cache = PipelineCache(device or ls.device)
    table = Table("model", "scene", "pipeline", "status")
    failed = False
    for m in models.values():
        for scene in m.offered_scenes:
            try:
                pipe = cache.get(m, scene)
                status = f"[green]ok[/green] ({_size(pipe)})"
            except Exception as exc:  # noqa: BLE001 - every failure is reported, not raised
                failed = True
                status = f"[red]missing[/red]: {_first_line(exc)}"
                pipe = None
            from reelgate.backends.local.families import PIPELINES

            table.add_row(m.path, scene, PIPELINES[m.family][scene], status)
    out.print(table)
    if failed:
        raise typer.Exit(1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _size(pipe: object) -> str:
    total = 0
    for module in getattr(pipe, "components", {}).values():
        params = getattr(module, "parameters", None)
        if callable(params):
            total += sum(p.numel() for p in params())
    return f"{total / 1e6:.1f}M parameters"
