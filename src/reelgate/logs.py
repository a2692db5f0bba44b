"""Structured logs: one JSON object per line, carrying the prediction id of whatever is
being worked on (a context variable set by intake and the runner), so every line about a
prediction can be found with one filter."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

prediction_id_var: ContextVar[str | None] = ContextVar("prediction_id", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        prediction_id = prediction_id_var.get()
        if prediction_id:
            entry["prediction_id"] = prediction_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _PredictionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.prediction = prediction_id_var.get() or "-"
        return True


def configure_logging(level: str = "info", fmt: str | None = None) -> None:
    """JSON lines by default (REELGATE_LOG_FORMAT=text for a human-readable console)."""
    import os

    fmt = fmt or os.environ.get("REELGATE_LOG_FORMAT", "json")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "text":
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [%(prediction)s] %(message)s"))
        handler.addFilter(_PredictionFilter())
    else:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # Route uvicorn's own loggers through the same handler and format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True
