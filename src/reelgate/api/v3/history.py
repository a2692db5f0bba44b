"""Listing an account's predictions: one filter model for both forms of the call.

WaveSpeed documents ``POST /api/v3/predictions`` with a JSON body (``page``, ``page_size``,
``model``, ``status``, ``created_after``, ``created_before``); reelgate also serves
``GET /api/v3/predictions`` with query parameters (and its older ``from`` / ``to`` names).
Both build a ``HistoryFilter`` here, so every rule (ranges, names, times) holds for both."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reelgate import catalog
from reelgate.api.v3.present import prediction_data
from reelgate.errors import InvalidInput
from reelgate.services import Services
from reelgate.store.tables import ENDED, UNFINISHED

STATUSES = (*UNFINISHED, *ENDED)
MAX_PAGE_SIZE = 100
# Bounded so the offset, (page - 1) * page_size, always fits the database's integer.
MAX_PAGE = 1_000_000


def parse_time(value: Any, field: str, *, end_of_day: bool = False) -> datetime | None:
    """ISO 8601 time (``2023-10-01T00:00:00Z``; no zone means UTC) or a date. A date as the
    end of a range means "through that day" when ``end_of_day`` is set."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                day = date.fromisoformat(text)
                parsed = datetime.combine(day, datetime.min.time(), UTC)
                if not end_of_day:
                    return parsed
                # Through 9999-12-31 is no upper bound at all (the next day does not exist).
                return None if day == date.max else parsed + timedelta(days=1)
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidInput(
                field, f"must be an ISO 8601 date-time such as 2023-10-01T00:00:00Z "
                f"(got {value[:64]!r})"
            ) from None
    else:
        raise InvalidInput(field, "must be an ISO 8601 date-time string")
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    try:
        # In UTC now, so a far-off offset cannot overflow later inside the database driver.
        return parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(field, "must be an ISO 8601 time between years 1 and 9999") from None


class HistoryBody(BaseModel):
    """The body of ``POST /api/v3/predictions`` (WaveSpeed's "List predictions")."""

    model_config = ConfigDict(extra="ignore")

    page: int = Field(1, ge=1, le=MAX_PAGE, strict=True, description="Page number, from 1.")
    page_size: int = Field(MAX_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, strict=True,
                           description="Predictions per page, 1 to 100.")
    model: str | None = Field(
        None, description='e.g. "google/veo3.1-fast/text-to-video", "google/veo3.1-fast" '
        'or "veo3.1-fast".'
    )
    status: str | None = Field(None, description=f"One of {', '.join(STATUSES)}.")
    created_after: str | None = Field(
        None, description="ISO 8601; predictions created at or after this time."
    )
    created_before: str | None = Field(
        None, description="ISO 8601; predictions created before this time."
    )

    @field_validator("model", "status", "created_after", "created_before", mode="before")
    @classmethod
    def _blank(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v


class HistoryFilter(BaseModel):
    """A validated listing request, whichever form it came in."""

    page: int
    page_size: int
    model: str | None = None
    scene: str | None = None
    status: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    @classmethod
    def build(cls, *, page: int, page_size: int, model: str | None, status: str | None,
              created_after: datetime | None, created_before: datetime | None,
              after_name: str = "created_after",
              before_name: str = "created_before") -> HistoryFilter:
        if not 1 <= page <= MAX_PAGE:
            raise InvalidInput("page", f"must be between 1 and {MAX_PAGE} (got {page})")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidInput("page_size", f"must be between 1 and {MAX_PAGE_SIZE} "
                               f"(got {page_size})")
        if status and status not in STATUSES:
            raise InvalidInput("status", f"must be one of {', '.join(STATUSES)} (got {status!r})")
        name, scene = split_model(model)
        if created_after and created_before and created_before <= created_after:
            raise InvalidInput(before_name, f"must be later than {after_name}")
        return cls(page=page, page_size=page_size, model=name, scene=scene, status=status,
                   created_after=created_after, created_before=created_before)


def split_model(model: str | None) -> tuple[str | None, str | None]:
    """``google/veo3.1-fast/text-to-video`` (as predictions name their model), or
    ``google/veo3.1-fast``, or ``veo3.1-fast`` -> (model, scene)."""
    if not model:
        return None, None
    parts = model.strip().strip("/").split("/")
    if parts and parts[0] == catalog.PROVIDER:
        parts = parts[1:]
    if not parts or len(parts) > 2:
        raise InvalidInput("model", f"must look like {catalog.PROVIDER}/veo3.1-fast or "
                           f"{catalog.PROVIDER}/veo3.1-fast/text-to-video (got {model!r})")
    return parts[0], (parts[1] if len(parts) == 2 else None)


def filter_from_body(body: Any) -> HistoryFilter:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    try:
        b = HistoryBody.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        msg = str(err["msg"])
        raise InvalidInput(loc, msg[len("Input "):] if msg.startswith("Input ") else msg) from None
    return HistoryFilter.build(
        page=b.page, page_size=b.page_size, model=b.model, status=b.status,
        created_after=parse_time(b.created_after, "created_after"),
        created_before=parse_time(b.created_before, "created_before"),
    )


async def history_page(services: Services, account_id: str, f: HistoryFilter,
                       base_url: str) -> dict[str, Any]:
    """One page, newest first, in the answer WaveSpeed documents: ``page``, ``total``,
    ``items`` (and ``page_size``, which reelgate adds)."""
    items, total = await services.store.list_predictions(
        account_id, status=f.status, model=f.model, scene=f.scene, since=f.created_after,
        until=f.created_before, page=f.page, page_size=f.page_size,
    )
    return {
        "page": f.page,
        "page_size": f.page_size,
        "total": total,
        "items": [prediction_data(p, base_url, services.storage) for p in items],
    }
