"""Intake rules of the local backend: refuse (400) what the declared model cannot make,
before anything is stored or spent. Pure: reads only the declarations in the catalog."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reelgate import catalog
from reelgate.errors import InvalidInput

if TYPE_CHECKING:
    from reelgate.backends.base import Job


def check_local_request(req: Job) -> None:
    m = catalog.local_config(req.model)
    if m is None:
        raise InvalidInput("model", f"'{req.model}' is not served by a local model")
    where = f"local model {m.path} ({m.family})"
    if req.scene not in m.offered_scenes:
        raise InvalidInput("scene", f"{req.scene} is not offered by {where}; it offers "
                           f"{', '.join(m.offered_scenes)}")
    if req.generate_audio and not m.audio and m.audio_fallback != "silent":
        raise InvalidInput("generate_audio", f"{where} makes silent video; send "
                           "generate_audio=false")
    if m.resolve_resolution(req.resolution) is None:
        raise InvalidInput("resolution", f"{req.resolution} is not offered by {where}; "
                           f"it offers {', '.join(m.sizes)}")
    if req.has_last_image and not m.takes_last_frame:
        raise InvalidInput("last_image", f"{where} takes no last frame")
