"""The model list: what a client may call, and which backend serves each model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from reelgate import catalog
from reelgate.backends import backend_for

router = APIRouter(prefix="/api/v3")


@router.get("/models", summary="List the models this server offers")
async def list_models(request: Request) -> dict[str, Any]:
    settings = request.app.state.services.settings
    return {
        "code": 200,
        "message": "success",
        "data": [
            {
                "model": m.public_id,
                "name": m.name,
                "description": m.description,
                "scenes": list(m.scenes),
                "aspect_ratios": list(catalog.ASPECT_RATIOS),
                "resolutions": list(catalog.RESOLUTIONS),
                "durations": list(catalog.DURATIONS),
                "backend": backend_for(m.name, settings),
            }
            for m in catalog.MODELS.values()
        ],
    }
