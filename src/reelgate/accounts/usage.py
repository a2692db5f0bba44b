"""Usage reports for operators: the date range a report covers, and its CSV form (the admin
API, the console's operator pages and the `reelgate usage` command share them)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any

from reelgate.errors import InvalidInput


def parse_day(value: str | None, field: str) -> datetime | None:
    if not value:
        return None
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        # In UTC now, so a far-off offset cannot overflow later inside the database driver.
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidInput(field, "must be a date (YYYY-MM-DD) or an ISO 8601 time between "
                           "years 1 and 9999") from None


def date_range(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    start = parse_day(since, "from")
    end = parse_day(until, "to")
    # A plain date as the end means "through that day".
    if until and len(until) == 10 and end is not None:
        try:
            end += timedelta(days=1)
        except OverflowError:
            end = None  # through 9999-12-31: no upper bound at all
    return start, end


def to_csv(rows: list[dict[str, Any]]) -> str:
    columns = [
        "account_id",
        "account",
        "model",
        "predictions",
        "completed",
        "failed",
        "video_seconds",
        "charged",
    ]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
