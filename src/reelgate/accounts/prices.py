"""What a prediction costs: per-second prices by model and resolution (Google's published
tiers, a local model's own price, the operator's overrides and markup).

Amounts are integers of micro-units (money.py). Pure: no database, no I/O; the ledger
(ledger.py) holds and settles what this module quotes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reelgate import catalog
from reelgate.money import format_money

if TYPE_CHECKING:
    from reelgate.backends.base import Job
    from reelgate.settings import Settings

# Google's published price per second of video (audio included), by tier and resolution.
# The -pro names are served by the top Veo model, so they cost what it costs.
GOOGLE_PRICES: dict[str, dict[str, int]] = {
    "standard": {"720p": 400_000, "1080p": 400_000, "4k": 600_000},
    "pro": {"720p": 400_000, "1080p": 400_000, "4k": 600_000},
    "fast": {"720p": 100_000, "1080p": 120_000, "4k": 300_000},
}


@dataclass(frozen=True)
class PriceTable:
    """Per-second prices (micro-units) by model and resolution, with the operator's markup.

    ``overrides`` maps a model name to {resolution: price} and optionally
    {"<resolution>/silent": price} for videos without audio where that differs."""

    overrides: dict[str, dict[str, int]]
    markup_percent: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> PriceTable:
        return cls(dict(settings.prices), settings.price_markup_percent)

    def per_second(self, model: str, resolution: str, audio: bool = True) -> int:
        own = self.overrides.get(model, {})
        if not audio and f"{resolution}/silent" in own:
            base = own[f"{resolution}/silent"]
        elif resolution in own:
            base = own[resolution]
        elif (local := catalog.local_config(model)) is not None:
            base = local.price_micros  # the operator's own price for its GPUs
        else:
            base = GOOGLE_PRICES[catalog.MODELS[model].tier][resolution]
        # Round up to a whole micro-unit: the operator never sells below the configured price.
        return math.ceil(base * (100 + self.markup_percent) / 100)

    def price(self, model: str, resolution: str, duration: int, audio: bool = True) -> int:
        return self.per_second(model, resolution, audio) * duration

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for m in [*catalog.MODELS.values(), *catalog.LOCAL_MODELS.values()]:
            for res in (m.local.sizes if m.local is not None else catalog.RESOLUTIONS):
                rows.append(
                    {
                        "model": m.public_id,
                        "resolution": res,
                        "per_second": format_money(self.per_second(m.name, res)),
                        "per_second_without_audio": format_money(
                            self.per_second(m.name, res, audio=False)
                        ),
                        "per_second_micros": self.per_second(m.name, res),
                    }
                )
        return rows


def quote(job: Job, backend: str, settings: Settings) -> int:
    """What a job costs. Free backends (the sandbox, by default) cost nothing; a backend
    may price its own jobs (its ``price`` hook); the rest costs the catalog's price."""
    if backend in settings.free_backends:
        return 0
    from reelgate.backends.registry import NotConfigured, intake_backend

    try:
        own = intake_backend(backend, settings).price(job)
    except NotConfigured:
        own = None
    if own is not None:
        return own
    return PriceTable.from_settings(settings).price(
        job.model, job.resolution, job.duration, job.generate_audio
    )
