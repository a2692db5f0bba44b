"""The model list: what a client may call, which backend serves each model and, for the
Google backend, which Google model id each public name maps to (the operator's map)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from reelgate import catalog
from reelgate.backends import backend_for

router = APIRouter(prefix="/api/v3")


def _google_upstream(name: str) -> dict[str, Any]:
    """The Google model id(s) serving ``name``: one entry per distinct (mode, model id)
    among the channels, with the resolutions that model offers."""
    from reelgate.backends.google_config import load_google_settings, model_caps

    gs = load_google_settings()
    targets: dict[tuple[str, str], list[str]] = {}
    for ch in gs.resolved_channels():
        targets.setdefault((str(ch.mode), gs.model_id(name, ch)), []).append(ch.name)
    upstream = [
        {"mode": mode, "model": model_id, "channels": channels,
         "resolutions": list(model_caps(model_id).resolutions)}
        for (mode, model_id), channels in targets.items()
    ]
    return {
        "google_model": upstream[0]["model"] if upstream else None,
        "upstream": {"provider": "google", "models": upstream},
    }


def _local_row(m: catalog.Model) -> dict[str, Any]:
    lm = m.local
    return {
        "model": m.public_id,
        "name": m.name,
        "description": m.description,
        "scenes": list(m.scenes),
        "aspect_ratios": list(catalog.ASPECT_RATIOS),
        "resolutions": [r for r in catalog.RESOLUTIONS if r in lm.sizes],
        "durations": list(lm.allowed_durations),
        "backend": "local",
        "family": lm.family,
        "capabilities": {
            "audio": lm.audio,
            "last_image": lm.takes_last_frame,
            "fps": lm.fps,
            "default_duration": lm.duration_default,
            "frame_step": lm.step_of_frames,
            "max_frames": lm.max_frames,
            "frame_sizes": {r: list(wh) for r, wh in lm.sizes.items()},
            "default_steps": lm.steps,
            "guidance": lm.guidance,
            "audio_fallback": lm.audio_fallback,
            "resolution_fallback": lm.resolution_fallback,
        },
        "serves": list(lm.serves),
        "price_per_second": lm.price_per_second,
    }


@router.get("/models", summary="List the models this server offers")
async def list_models(request: Request) -> dict[str, Any]:
    settings = request.app.state.services.settings
    data = []
    for m in catalog.MODELS.values():
        backend = backend_for(m.name, settings)
        row: dict[str, Any] = {
            "model": m.public_id,
            "name": m.name,
            "description": m.description,
            "scenes": list(m.scenes),
            "aspect_ratios": list(catalog.ASPECT_RATIOS),
            "resolutions": list(catalog.RESOLUTIONS),
            "durations": list(catalog.DURATIONS),
            "backend": backend,
        }
        if backend == "google":
            row.update(_google_upstream(m.name))
            offered = {r for u in row["upstream"]["models"] for r in u["resolutions"]}
            if offered:
                # Keep the catalog's order; only what some channel's model can make.
                row["resolutions"] = [r for r in catalog.RESOLUTIONS if r in offered]
        if backend == "local":
            local = catalog.local_config(m.name)
            row["served_by"] = local.path
            row["resolutions"] = [r for r in catalog.RESOLUTIONS if r in local.sizes]
            row["durations"] = list(local.allowed_durations)
        data.append(row)
    for m in catalog.LOCAL_MODELS.values():
        data.append(_local_row(m))
    return {"code": 200, "message": "success", "data": data}
