"""The Python SDK: ``reelgate.Client`` (blocking) and ``reelgate.AsyncClient`` (asyncio).

Both speak the v3 predictions API over httpx and work against reelgate and, for the
endpoints they share, the hosted GPTProto / WaveSpeed services::

    from reelgate import Client

    with Client() as client:  # key and URL from arguments, environment or config file
        pred = client.run("veo3.1-fast", prompt="a paper boat on a rainy street", duration=4)
        client.download(pred, "boat.mp4")

Answers become typed, frozen objects (``Prediction``, ``Page``, ``Balance``); error answers
become exceptions that carry the API's code, type and message (``ReelgateError`` and its
subclasses). This module imports nothing of the server.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import inspect
import math
import mimetypes
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, TypeAlias
from urllib.parse import quote, urljoin, urlsplit

import httpx

from reelgate import __version__
from reelgate.client.config import resolve
from reelgate.client.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "APIConnectionError",
    "AsyncClient",
    "AuthenticationError",
    "Balance",
    "Client",
    "ContentPolicyError",
    "InvalidRequestError",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "Prediction",
    "PredictionFailed",
    "RateLimitError",
    "ReelgateError",
    "ServerError",
    "WaitTimeout",
    "WebhookVerificationError",
    "verify_webhook",
]

COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
DONE_STATUSES = frozenset({COMPLETED, FAILED, CANCELLED})

# The server holds a sync-mode request up to REELGATE_SYNC_TIMEOUT_S (300 s by default);
# the read timeout of such a request must outlast that ceiling, not the usual timeout.
DEFAULT_SYNC_TIMEOUT_S = 330.0

# A poll that meets a transient error (429, 5xx, a dropped connection) is retried this
# many times in a row before wait() gives up and raises it.
MAX_TRANSIENT_POLL_ERRORS = 5
# A create that got no answer (connection dropped, timed out) or a 5xx is sent again, up to
# this many times, with the same Idempotency-Key: the server answers the retry with the
# prediction the first try made, if it made one, so a retry never pays twice.
CREATE_RETRIES = 2
# wait() holds each read open on the server up to this long (GET .../result?wait=N): one
# request per this many seconds instead of one per poll_interval.
LONG_POLL_S = 20.0

UploadSource: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]"


# --- errors ---------------------------------------------------------------------------


class ReelgateError(Exception):
    """An error answer from the API, or a client-side failure.

    ``status`` is the HTTP status (None when no answer came back); ``type`` is the error
    body's type as sent (usually the status as text; "503" for a content-policy block that
    arrives as HTTP 400); ``code`` is the API's code: the type as a number when it is one,
    else the status.
    """

    def __init__(self, code: int | None, message: str, type: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.type = type
        self.status = status

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        extra = f", type {self.type}" if self.type and self.type != str(self.status) else ""
        return f"{self.message} (HTTP {self.status}{extra})"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
                f"type={self.type!r}, status={self.status!r})")


class InvalidRequestError(ReelgateError):
    """400: a field is missing, has the wrong type, or breaks a rule; the message names it."""


class ContentPolicyError(InvalidRequestError):
    """400 with type "503": the prompt or an input was blocked by the content policy."""


class AuthenticationError(ReelgateError):
    """401: the API key is missing, unknown or revoked."""


class PermissionDeniedError(ReelgateError):
    """403: the key may not use this model or resource, the account is disabled, the
    balance cannot cover the request, or a download link expired."""


class NotFoundError(ReelgateError):
    """404: unknown model, scene or prediction (or one of another account)."""


class RateLimitError(ReelgateError):
    """429: the key's rate or concurrency limit. ``retry_after`` is in seconds, when the
    server said."""

    def __init__(self, code: int | None, message: str, type: str | None = None,
                 status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(code, message, type, status)
        self.retry_after = retry_after


class ServerError(ReelgateError):
    """5xx: the server failed; retrying later may work."""


class APIConnectionError(ReelgateError):
    """No answer: the server could not be reached, or the request timed out."""


class PredictionFailed(ReelgateError):
    """A prediction ended without a video (status failed or cancelled). The prediction,
    with its ``error``, is in ``prediction``."""

    def __init__(self, prediction: Prediction) -> None:
        if prediction.status == CANCELLED:
            message = f"prediction {prediction.id} was cancelled"
        else:
            message = f"prediction {prediction.id} failed: {prediction.error or 'no reason given'}"
        super().__init__(200, message, prediction.status, None)
        self.prediction = prediction

    @property
    def content_policy(self) -> bool:
        """True when the output was blocked for safety."""
        return any(self.prediction.has_nsfw_contents)


class WaitTimeout(ReelgateError):
    """wait() ran out of time; the prediction goes on and can be read later by id."""

    def __init__(self, prediction: Prediction, timeout: float) -> None:
        super().__init__(
            None,
            f"prediction {prediction.id} is still {prediction.status} after {timeout:g} s",
        )
        self.prediction = prediction
        self.timeout = timeout


_STATUS_ERRORS: dict[int, type[ReelgateError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # the HTTP-date form: rare enough to not be worth parsing
        return None


def error_for(status: int, message: str, type: str | None = None,
              headers: Mapping[str, str] | None = None) -> ReelgateError:
    """The exception for an error answer (HTTP status, the body's message and type)."""
    type = str(type) if type is not None else str(status)
    code = int(type) if type.isdigit() else status
    if status == 400 and type == "503":
        return ContentPolicyError(code, message, type, status)
    if status == 429:
        return RateLimitError(code, message, type, status, _retry_after(headers or {}))
    cls = _STATUS_ERRORS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ReelgateError
    return cls(code, message, type, status)


def _error_from_response(resp: httpx.Response) -> ReelgateError:
    message, type_ = "", None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            message, type_ = str(err.get("message") or ""), err.get("type")
        elif isinstance(err, str):
            message = err
        elif body.get("message"):
            message = str(body["message"])
        elif isinstance(body.get("detail"), str):
            message = body["detail"]
    if not message:
        # Not our error body (a proxy, an object store): keep the start of what came.
        text = resp.text.strip()
        message = text[:300] if text else resp.reason_phrase or "error"
    return error_for(resp.status_code, message, type_, resp.headers)


def _unwrap(resp: httpx.Response) -> Any:
    """The ``data`` of a success envelope; an exception for anything else."""
    if resp.status_code >= 400:
        raise _error_from_response(resp)
    try:
        body = resp.json()
    except ValueError:
        raise ServerError(None, f"the server answered {resp.status_code} with a body that "
                          "is not JSON", status=resp.status_code) from None
    if not isinstance(body, dict) or "data" not in body:
        raise ServerError(None, "the server's answer has no 'data'", status=resp.status_code)
    # The hosted services sometimes answer HTTP 200 with an error code in the envelope.
    code = body.get("code", 200)
    if str(code) != "200":
        status = int(code) if str(code).isdigit() else 500
        raise error_for(status, str(body.get("message") or "error"), str(code), resp.headers)
    return body["data"]


# --- results --------------------------------------------------------------------------


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _create_path(model: str, scene: str) -> str:
    """``veo3.1-fast`` and ``google/veo3.1-fast`` are Google's models; ``local/<name>`` a
    model the operator serves from its own GPUs."""
    provider, _, name = model.rpartition("/")
    return (f"/api/v3/{quote(provider or 'google', safe='')}/{quote(name, safe='')}/"
            f"{quote(scene, safe='')}")


@dataclass(frozen=True)
class Prediction:
    """One prediction, as the API described it when it was read."""

    id: str
    model: str  # "google/veo3.1-fast/text-to-video"
    status: str  # created, processing, completed, failed, cancelled
    outputs: tuple[str, ...] = ()
    error: str = ""
    execution_time_ms: int | None = None
    has_nsfw_contents: tuple[bool, ...] = ()
    created_at: datetime | None = None
    urls_get: str | None = None
    # The API it was asked through (v3, google, openai) and its held or charged price.
    dialect: str = "v3"
    cost: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Prediction:
        urls = data.get("urls")
        # The seed's prose has a list form (urls[0].get); the hosted answers an object.
        if isinstance(urls, list) and urls and isinstance(urls[0], dict):
            urls = urls[0]
        ms = data.get("executionTime")
        return cls(
            id=str(data.get("id", "")),
            model=str(data.get("model", "")),
            status=str(data.get("status", "")),
            outputs=tuple(str(u) for u in data.get("outputs") or ()),
            error=str(data.get("error") or ""),
            execution_time_ms=int(ms) if isinstance(ms, int | float) else None,
            has_nsfw_contents=tuple(bool(x) for x in data.get("has_nsfw_contents") or ()),
            created_at=_parse_time(data.get("created_at")),
            urls_get=urls.get("get") if isinstance(urls, dict) else None,
            dialect=str(data.get("dialect") or "v3"),
            cost=str(data.get("cost") or ""),
            raw=dict(data),
        )

    @property
    def progress(self) -> tuple[int, int] | None:
        """(step, steps) of a local model's denoising, when the server reports it."""
        p = self.raw.get("progress")
        if isinstance(p, Mapping) and isinstance(p.get("step"), int) and \
                isinstance(p.get("steps"), int):
            return int(p["step"]), int(p["steps"])
        return None

    @property
    def done(self) -> bool:
        """It has ended: completed, failed or cancelled."""
        return self.status in DONE_STATUSES

    @property
    def ok(self) -> bool:
        """It completed and has its video."""
        return self.status == COMPLETED

    @property
    def model_name(self) -> str:
        """The short model name, e.g. "veo3.1-fast"."""
        parts = self.model.split("/")
        return parts[1] if len(parts) == 3 else self.model

    @property
    def scene(self) -> str | None:
        parts = self.model.split("/")
        return parts[2] if len(parts) == 3 else None

    @property
    def video_url(self) -> str | None:
        return self.outputs[0] if self.outputs else None


@dataclass(frozen=True)
class Page:
    """One page of ``list()``; iterate it for its predictions."""

    items: tuple[Prediction, ...]
    page: int
    page_size: int
    total: int

    @property
    def has_more(self) -> bool:
        return self.page * self.page_size < self.total

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Page:
        items = tuple(Prediction.from_api(d) for d in data.get("items") or ())
        return cls(
            items=items,
            page=int(data.get("page", 1)),
            page_size=int(data.get("page_size", len(items))),
            total=int(data.get("total", len(items))),
        )


@dataclass(frozen=True)
class Balance:
    balance: Decimal  # in the operator's currency
    balance_micros: int

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Balance:
        try:
            amount = Decimal(str(data.get("balance", "0")))
        except InvalidOperation:
            amount = Decimal(0)
        micros = data.get("balance_micros")
        return cls(amount, int(micros) if micros is not None else int(amount * 1_000_000))


# --- shared request building ----------------------------------------------------------

_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png", ".png"),
    (b"\xff\xd8\xff", "image/jpeg", ".jpg"),
    (b"GIF87a", "image/gif", ".gif"),
    (b"GIF89a", "image/gif", ".gif"),
)


def _sniff(data: bytes) -> tuple[str, str] | None:
    for magic, ctype, ext in _IMAGE_MAGIC:
        if data.startswith(magic):
            return ctype, ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", ".webp"
    return None


def _read_upload(source: UploadSource, filename: str | None,
                 content_type: str | None) -> tuple[bytes, str, str]:
    """Bytes, file name and content type of what upload() was given."""
    if isinstance(source, bytes | bytearray | memoryview):
        data, name = bytes(source), filename
    elif isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        data, name = path.read_bytes(), filename or path.name
    elif hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, bytes):
            raise TypeError("upload() needs a file opened in binary mode ('rb')")
        name = filename or os.path.basename(str(getattr(source, "name", "") or "")) or None
    else:
        raise TypeError(f"upload() takes a path, bytes or a binary file, not {type(source)}")
    sniffed = _sniff(data)
    if not name:
        name = "upload" + (sniffed[1] if sniffed else ".bin")
    ctype = (content_type or mimetypes.guess_type(name)[0]
             or (sniffed[0] if sniffed else "application/octet-stream"))
    return data, name, ctype


def _is_local(value: Any) -> bool:
    """A create() image field given as a local file (uploaded first), not a URL string."""
    return isinstance(value, os.PathLike | bytes | bytearray | memoryview) or (
        hasattr(value, "read") and not isinstance(value, str)
    )


def _create_body(prompt: str | None, sync: bool, fields: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in fields.items() if v is not None}
    if prompt is not None:
        body["prompt"] = prompt
    if sync:
        body["enable_sync_mode"] = True
    return body


def _when(value: date | datetime | str | None) -> str | None:
    """A list() bound as the API takes it: a date as YYYY-MM-DD, a datetime as ISO 8601 in
    UTC, a string as given."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(timespec="seconds") + "Z"
    return value.isoformat()


def _model_filter(model: str | None) -> str | None:
    # The list endpoint filters on the short name; accept the long form a Prediction has.
    if model and model.count("/") == 2:
        return model.split("/")[1]
    return model


def _list_params(status: str | None, model: str | None, since: Any, until: Any,
                 page: int, page_size: int) -> dict[str, Any]:
    params = {"status": status, "model": _model_filter(model), "from": _when(since),
              "to": _when(until), "page": page, "page_size": page_size}
    return {k: v for k, v in params.items() if v is not None}


def _pid(prediction: str | Prediction) -> str:
    pid = prediction.id if isinstance(prediction, Prediction) else str(prediction)
    if not pid:
        raise ValueError("a prediction id is required")
    return quote(pid, safe="")


def _download_target(path: str | os.PathLike[str] | None, pid: str | None) -> Path:
    name = f"{pid or 'video'}.mp4"
    if path is None:
        return Path(name)
    target = Path(path).expanduser()
    return target / name if target.is_dir() else target


def _output_of(pred: Prediction, index: int) -> str:
    if not pred.outputs:
        raise ReelgateError(
            None, f"prediction {pred.id} has no video to download (status {pred.status})"
        )
    try:
        return pred.outputs[index]
    except IndexError:
        raise ReelgateError(
            None, f"prediction {pred.id} has {len(pred.outputs)} output(s), no index {index}"
        ) from None


def _is_inline(output: str) -> bool:
    """An output given as base64 (enable_base64_output) rather than as a URL."""
    return "://" not in output


def _write_inline(output: str, target: Path) -> Path:
    part = target.with_name(target.name + ".part")
    try:
        part.write_bytes(base64.b64decode(output, validate=True))
    except (ValueError, OSError):
        part.unlink(missing_ok=True)
        raise
    os.replace(part, target)
    return target


class _Base:
    """What both clients share: settings, and which requests carry the key."""

    def __init__(self, api_key: str | None, base_url: str | None, timeout: float | None,
                 sync_timeout: float) -> None:
        cfg = resolve(api_key=api_key, base_url=base_url, timeout=timeout)
        self.api_key = cfg.api_key
        self.base_url = cfg.base_url
        self.timeout = cfg.timeout
        self.sync_timeout = sync_timeout
        origin = urlsplit(self.base_url)
        self._origin = (origin.scheme, origin.netloc)
        self._default_headers = {"User-Agent": f"reelgate-python/{__version__}",
                                 "Accept": "application/json"}
        self.create_retries = CREATE_RETRIES

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _url(self, path_or_url: str) -> str:
        return urljoin(self.base_url + "/", path_or_url.lstrip("/")) if "://" not in \
            path_or_url else path_or_url

    def _auth(self, url: str) -> dict[str, str]:
        # The key goes only to the API's own origin: output and upload URLs may point at a
        # CDN or an object store, which must never see it.
        parts = urlsplit(url)
        if self.api_key and (parts.scheme, parts.netloc) == self._origin:
            return {"Authorization": f"Bearer {self.api_key}"}
        return {}

    def _sync_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=max(self.timeout, self.sync_timeout))

    def _read_args(self, prediction: str | Prediction, wait: float) -> dict[str, Any]:
        args: dict[str, Any] = {"path": f"/api/v3/predictions/{_pid(prediction)}/result"}
        if wait > 0:
            args["params"] = {"wait": f"{wait:g}"}
            args["timeout"] = httpx.Timeout(self.timeout, read=self.timeout + wait)
        return args

    @staticmethod
    def _connection_error(exc: httpx.HTTPError, url: str) -> APIConnectionError:
        if isinstance(exc, httpx.TimeoutException):
            return APIConnectionError(None, f"request to {url} timed out ({exc!r})")
        return APIConnectionError(None, f"cannot reach {url}: {exc}")


# --- the blocking client --------------------------------------------------------------


class Client(_Base):
    """A blocking client. ``api_key``, ``base_url`` and ``timeout`` default to
    REELGATE_API_KEY, REELGATE_BASE_URL (http://127.0.0.1:8000) and REELGATE_TIMEOUT, then
    to the config file (see ``reelgate.client.config``). Use it as a context manager, or
    call ``close()``."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None,
                 timeout: float | None = None, *, sync_timeout: float = DEFAULT_SYNC_TIMEOUT_S,
                 http_client: httpx.Client | None = None) -> None:
        super().__init__(api_key, base_url, timeout, sync_timeout)
        self._own_http = http_client is None
        self._http = http_client or httpx.Client(timeout=self.timeout, follow_redirects=True)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def _send(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
              timeout: httpx.Timeout | float | None = None, **kw: Any) -> httpx.Response:
        url = self._url(path)
        try:
            return self._http.request(
                method, url,
                headers={**self._default_headers, **self._auth(url), **(headers or {})},
                timeout=timeout if timeout is not None else self.timeout, **kw,
            )
        except httpx.HTTPError as exc:
            raise self._connection_error(exc, url) from None

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        return _unwrap(self._send(method, path, **kw))

    # predictions

    def create(self, model: str, scene: str = "text-to-video", prompt: str | None = None, *,
               sync: bool = False, webhook: str | None = None,
               idempotency_key: str | None = None, **fields: Any) -> Prediction:
        """Create a prediction. ``fields`` are the request body's (image, images,
        last_image, aspect_ratio, resolution, duration, enhance_prompt, enable_upsample,
        negative_prompt, seed, generate_audio, ...); None values are left out. Image fields
        take URLs or ``data:`` URIs as strings, and local files as ``Path``, bytes or binary
        files (uploaded first). ``sync=True`` answers when the prediction has ended.

        Every create carries an ``Idempotency-Key`` (a fresh one unless given); a create
        that got no answer or a 5xx is retried with the same key (``create_retries``
        times), so it makes, and charges, at most one prediction."""
        for name in ("image", "last_image"):
            if _is_local(fields.get(name)):
                fields[name] = self.upload(fields[name])
        if fields.get("images") is not None:
            fields["images"] = [self.upload(x) if _is_local(x) else x for x in fields["images"]]
        body = _create_body(prompt, sync, fields)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        for attempt in range(self.create_retries + 1):
            try:
                data = self._call(
                    "POST", _create_path(model, scene),
                    json=body, params={"webhook": webhook} if webhook else None,
                    timeout=self._sync_timeout() if sync else None, headers=headers,
                )
                break
            except (APIConnectionError, ServerError):
                if attempt == self.create_retries:
                    raise
                time.sleep(_create_backoff(attempt))
        return Prediction.from_api(data)

    def get(self, prediction: str | Prediction, wait: float = 0) -> Prediction:
        """Read a prediction. With ``wait`` > 0 the server holds the request until the
        prediction ends or ``wait`` seconds pass (at most its sync-mode ceiling)."""
        return self._get(prediction, wait)[0]

    def _get(self, prediction: str | Prediction, wait: float) -> tuple[Prediction, float | None]:
        """The prediction and the server's hint of when to ask again (Retry-After)."""
        r = self._send("GET", **self._read_args(prediction, wait))
        return Prediction.from_api(_unwrap(r)), _retry_after(r.headers)

    def wait(self, prediction: str | Prediction, timeout: float | None = None,
             poll_interval: float = 1.0,
             on_progress: Callable[[Prediction], Any] | None = None, *,
             raise_on_failure: bool = True, long_poll: float = LONG_POLL_S) -> Prediction:
        """Wait until the prediction has ended and return it.

        Each read is a long-poll (``?wait=``, up to ``long_poll`` seconds): the server
        answers the moment the prediction ends, so one request covers many seconds (with
        ``on_progress``, each read is held at most ``poll_interval``, so the callback sees
        the prediction start and its steps). When a read comes back early and unfinished (a
        server that does not hold requests), the next one waits for the server's Retry-After
        hint, or ``poll_interval``, whichever is longer. ``on_progress`` is called with the
        prediction after every read (the first one included). Raises ``PredictionFailed``
        when it ended failed or cancelled (unless ``raise_on_failure=False``),
        ``WaitTimeout`` after ``timeout`` seconds. Transient errors (429, 5xx, a dropped
        connection) are retried, honouring Retry-After.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        current = prediction if isinstance(prediction, Prediction) else self.get(prediction)
        errors = 0
        delay = 0.0
        while True:
            if on_progress is not None:
                on_progress(current)
            if current.done:
                return _finish(current, raise_on_failure)
            remaining = math.inf if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(current, timeout or 0)
            if delay:
                time.sleep(min(delay, remaining))
            window = _window(long_poll, deadline, current, on_progress, poll_interval)
            try:
                started = time.monotonic()
                current, hint = self._get(current.id, window)
                delay = _next_delay(started, window, poll_interval, hint)
                errors = 0
            except (RateLimitError, ServerError, APIConnectionError) as exc:
                errors += 1
                if errors > MAX_TRANSIENT_POLL_ERRORS:
                    raise
                time.sleep(_transient_delay(exc, deadline))

    def run(self, model: str, scene: str = "text-to-video", prompt: str | None = None, *,
            timeout: float | None = None, poll_interval: float = 1.0,
            on_progress: Callable[[Prediction], Any] | None = None,
            webhook: str | None = None, **fields: Any) -> Prediction:
        """create() then wait(): the completed prediction, or an exception."""
        pred = self.create(model, scene, prompt, webhook=webhook, **fields)
        return self.wait(pred, timeout=timeout, poll_interval=poll_interval,
                         on_progress=on_progress)

    def cancel(self, prediction: str | Prediction) -> Prediction:
        """Cancel a prediction that has not started (InvalidRequestError once it has)."""
        return Prediction.from_api(
            self._call("POST", f"/api/v3/predictions/{_pid(prediction)}/cancel"))

    def delete_outputs(self, prediction: str | Prediction) -> Prediction:
        """Delete the stored videos of a prediction; its record stays."""
        return Prediction.from_api(
            self._call("DELETE", f"/api/v3/predictions/{_pid(prediction)}/outputs"))

    def list(self, status: str | None = None, model: str | None = None,
             since: date | datetime | str | None = None,
             until: date | datetime | str | None = None,
             page: int = 1, page_size: int = 20) -> Page:
        """One page of the caller's predictions, newest first, optionally filtered."""
        return Page.from_api(self._call(
            "GET", "/api/v3/predictions",
            params=_list_params(status, model, since, until, page, page_size)))

    def iter_predictions(self, status: str | None = None, model: str | None = None,
                         since: date | datetime | str | None = None,
                         until: date | datetime | str | None = None,
                         page_size: int = 50) -> Iterator[Prediction]:
        """Every matching prediction, reading page after page."""
        page = 1
        while True:
            result = self.list(status, model, since, until, page, page_size)
            yield from result.items
            if not result.has_more or not result.items:
                return
            page += 1

    # media

    def upload(self, source: UploadSource, filename: str | None = None,
               content_type: str | None = None, *, multipart: bool = False) -> str:
        """Upload a local file (a path, bytes or a binary file) and return the URL to pass
        as image, images[] or last_image. Uses the two-step flow (ask for an upload URL,
        PUT the bytes there); ``multipart=True`` posts the file in one request instead."""
        data, name, ctype = _read_upload(source, filename, content_type)
        if multipart:
            result = self._call("POST", "/api/v3/media/upload/binary",
                                files={"file": (name, data, ctype)})
            return str(result["download_url"])
        ticket = self._call("POST", "/api/v3/media/uploads",
                            json={"filename": name, "size": len(data), "content_type": ctype})
        upload = ticket["upload"]
        resp = self._send(upload.get("method", "PUT"), upload["url"], content=data,
                          headers={"Content-Type": ctype, **(upload.get("headers") or {})})
        if resp.status_code >= 300:
            raise _error_from_response(resp)
        return str(ticket["download_url"])

    def download(self, prediction_or_url: str | Prediction,
                 path: str | os.PathLike[str] | None = None, *, index: int = 0) -> Path:
        """Stream a prediction's video (or any output URL) to ``path`` and return it. A
        prediction may be given by id. ``path`` defaults to ``<id>.mp4``; a directory gets
        that name inside it. The file appears only once it is complete."""
        url, pid = self._resolve_output(prediction_or_url, index)
        target = _download_target(path, pid)
        if _is_inline(url):
            return _write_inline(url, target)
        part = target.with_name(target.name + ".part")
        try:
            with self._http.stream("GET", url, headers={**self._default_headers,
                                                        "Accept": "*/*", **self._auth(url)},
                                   timeout=httpx.Timeout(self.timeout)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _error_from_response(resp)
                with open(part, "wb") as fh:
                    for chunk in resp.iter_bytes(1 << 16):
                        fh.write(chunk)
        except httpx.HTTPError as exc:
            part.unlink(missing_ok=True)
            raise self._connection_error(exc, url) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, target)
        return target

    def _resolve_output(self, ref: str | Prediction, index: int) -> tuple[str, str | None]:
        if isinstance(ref, Prediction):
            return _output_of(ref, index), ref.id
        if "://" in ref:
            return ref, None
        return _output_of(self.get(ref), index), ref

    # account

    def balance(self) -> Balance:
        return Balance.from_api(self._call("GET", "/api/v3/balance"))

    def models(self) -> builtins.list[dict[str, Any]]:
        """The models this server offers, with their scenes and allowed values."""
        return list(self._call("GET", "/api/v3/models"))

    def webhook_secret(self) -> str:
        """The account's webhook signing secret ("whsec_..."), for ``verify_webhook``."""
        return str(self._call("GET", "/api/v3/webhook/secret")["secret"])


def _finish(pred: Prediction, raise_on_failure: bool) -> Prediction:
    if raise_on_failure and not pred.ok:
        raise PredictionFailed(pred)
    return pred


def _create_backoff(attempt: int) -> float:
    return min(8.0, 0.5 * 2.0 ** attempt)


def _window(long_poll: float, deadline: float | None, current: Prediction,
            on_progress: Any, poll_interval: float) -> float:
    """How long the next read may be held: the long-poll window (0: plain polling), never
    past the deadline. A held read answers at the end only, so while someone shows progress
    each read is held at most ``poll_interval`` (the refresh rate asked for): the display
    sees the prediction start and its steps, and still hears of its end at once."""
    window = long_poll if on_progress is None else min(long_poll, poll_interval)
    if deadline is None or window <= 0:
        return window
    return max(0.0, min(window, deadline - time.monotonic()))


def _next_delay(started: float, window: float, poll_interval: float,
                hint: float | None) -> float:
    """Pause before the next read. None after a read the server held (the hold was the
    pause); after one answered early and unfinished, the server's hint or poll_interval.
    """
    if time.monotonic() - started >= window * 0.5 and window > 0:
        return 0.0
    return max(poll_interval, hint or 0.0)


def _transient_delay(exc: ReelgateError, deadline: float | None) -> float:
    """How long to back off after a transient poll error (never past the deadline)."""
    delay = exc.retry_after if isinstance(exc, RateLimitError) and exc.retry_after else 1.0
    if deadline is not None:
        delay = max(0.0, min(delay, deadline - time.monotonic()))
    return min(delay, 60.0)


# --- the asyncio client ---------------------------------------------------------------


class AsyncClient(_Base):
    """The asyncio twin of ``Client``: the same methods, awaited. ``on_progress`` may be a
    plain function or a coroutine function. Use ``async with``, or call ``aclose()``."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None,
                 timeout: float | None = None, *, sync_timeout: float = DEFAULT_SYNC_TIMEOUT_S,
                 http_client: httpx.AsyncClient | None = None) -> None:
        super().__init__(api_key, base_url, timeout, sync_timeout)
        self._own_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=self.timeout,
                                                      follow_redirects=True)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def _send(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                    timeout: httpx.Timeout | float | None = None, **kw: Any) -> httpx.Response:
        url = self._url(path)
        try:
            return await self._http.request(
                method, url,
                headers={**self._default_headers, **self._auth(url), **(headers or {})},
                timeout=timeout if timeout is not None else self.timeout, **kw,
            )
        except httpx.HTTPError as exc:
            raise self._connection_error(exc, url) from None

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        return _unwrap(await self._send(method, path, **kw))

    async def create(self, model: str, scene: str = "text-to-video",
                     prompt: str | None = None, *, sync: bool = False,
                     webhook: str | None = None, idempotency_key: str | None = None,
                     **fields: Any) -> Prediction:
        """See ``Client.create``."""
        for name in ("image", "last_image"):
            if _is_local(fields.get(name)):
                fields[name] = await self.upload(fields[name])
        if fields.get("images") is not None:
            fields["images"] = [await self.upload(x) if _is_local(x) else x
                                for x in fields["images"]]
        body = _create_body(prompt, sync, fields)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        for attempt in range(self.create_retries + 1):
            try:
                data = await self._call(
                    "POST", _create_path(model, scene),
                    json=body, params={"webhook": webhook} if webhook else None,
                    timeout=self._sync_timeout() if sync else None, headers=headers,
                )
                break
            except (APIConnectionError, ServerError):
                if attempt == self.create_retries:
                    raise
                await asyncio.sleep(_create_backoff(attempt))
        return Prediction.from_api(data)

    async def get(self, prediction: str | Prediction, wait: float = 0) -> Prediction:
        """See ``Client.get``."""
        return (await self._get(prediction, wait))[0]

    async def _get(self, prediction: str | Prediction,
                   wait: float) -> tuple[Prediction, float | None]:
        r = await self._send("GET", **self._read_args(prediction, wait))
        return Prediction.from_api(_unwrap(r)), _retry_after(r.headers)

    async def wait(self, prediction: str | Prediction, timeout: float | None = None,
                   poll_interval: float = 1.0,
                   on_progress: Callable[[Prediction], Any | Awaitable[Any]] | None = None,
                   *, raise_on_failure: bool = True,
                   long_poll: float = LONG_POLL_S) -> Prediction:
        """See ``Client.wait``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        current = (prediction if isinstance(prediction, Prediction)
                   else await self.get(prediction))
        errors = 0
        delay = 0.0
        while True:
            if on_progress is not None:
                result = on_progress(current)
                if inspect.isawaitable(result):
                    await result
            if current.done:
                return _finish(current, raise_on_failure)
            remaining = math.inf if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(current, timeout or 0)
            if delay:
                await asyncio.sleep(min(delay, remaining))
            window = _window(long_poll, deadline, current, on_progress, poll_interval)
            try:
                started = time.monotonic()
                current, hint = await self._get(current.id, window)
                delay = _next_delay(started, window, poll_interval, hint)
                errors = 0
            except (RateLimitError, ServerError, APIConnectionError) as exc:
                errors += 1
                if errors > MAX_TRANSIENT_POLL_ERRORS:
                    raise
                await asyncio.sleep(_transient_delay(exc, deadline))

    async def run(self, model: str, scene: str = "text-to-video", prompt: str | None = None,
                  *, timeout: float | None = None, poll_interval: float = 1.0,
                  on_progress: Callable[[Prediction], Any] | None = None,
                  webhook: str | None = None, **fields: Any) -> Prediction:
        pred = await self.create(model, scene, prompt, webhook=webhook, **fields)
        return await self.wait(pred, timeout=timeout, poll_interval=poll_interval,
                               on_progress=on_progress)

    async def cancel(self, prediction: str | Prediction) -> Prediction:
        return Prediction.from_api(
            await self._call("POST", f"/api/v3/predictions/{_pid(prediction)}/cancel"))

    async def delete_outputs(self, prediction: str | Prediction) -> Prediction:
        return Prediction.from_api(
            await self._call("DELETE", f"/api/v3/predictions/{_pid(prediction)}/outputs"))

    async def list(self, status: str | None = None, model: str | None = None,
                   since: date | datetime | str | None = None,
                   until: date | datetime | str | None = None,
                   page: int = 1, page_size: int = 20) -> Page:
        return Page.from_api(await self._call(
            "GET", "/api/v3/predictions",
            params=_list_params(status, model, since, until, page, page_size)))

    async def iter_predictions(self, status: str | None = None, model: str | None = None,
                               since: date | datetime | str | None = None,
                               until: date | datetime | str | None = None,
                               page_size: int = 50) -> AsyncIterator[Prediction]:
        page = 1
        while True:
            result = await self.list(status, model, since, until, page, page_size)
            for item in result.items:
                yield item
            if not result.has_more or not result.items:
                return
            page += 1

    async def upload(self, source: UploadSource, filename: str | None = None,
                     content_type: str | None = None, *, multipart: bool = False) -> str:
        """See ``Client.upload``."""
        data, name, ctype = _read_upload(source, filename, content_type)
        if multipart:
            result = await self._call("POST", "/api/v3/media/upload/binary",
                                      files={"file": (name, data, ctype)})
            return str(result["download_url"])
        ticket = await self._call(
            "POST", "/api/v3/media/uploads",
            json={"filename": name, "size": len(data), "content_type": ctype})
        upload = ticket["upload"]
        resp = await self._send(upload.get("method", "PUT"), upload["url"], content=data,
                                headers={"Content-Type": ctype, **(upload.get("headers") or {})})
        if resp.status_code >= 300:
            raise _error_from_response(resp)
        return str(ticket["download_url"])

    async def download(self, prediction_or_url: str | Prediction,
                       path: str | os.PathLike[str] | None = None, *, index: int = 0) -> Path:
        """See ``Client.download``."""
        if isinstance(prediction_or_url, Prediction):
            url, pid = _output_of(prediction_or_url, index), prediction_or_url.id
        elif "://" in prediction_or_url:
            url, pid = prediction_or_url, None
        else:
            url, pid = _output_of(await self.get(prediction_or_url), index), prediction_or_url
        target = _download_target(path, pid)
        if _is_inline(url):
            return _write_inline(url, target)
        part = target.with_name(target.name + ".part")
        try:
            async with self._http.stream(
                "GET", url, headers={**self._default_headers, "Accept": "*/*",
                                     **self._auth(url)},
                timeout=httpx.Timeout(self.timeout),
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise _error_from_response(resp)
                # Local file writes are small and quick next to the network reads.
                with open(part, "wb") as fh:
                    async for chunk in resp.aiter_bytes(1 << 16):
                        fh.write(chunk)
        except httpx.HTTPError as exc:
            part.unlink(missing_ok=True)
            raise self._connection_error(exc, url) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, target)
        return target

    async def balance(self) -> Balance:
        return Balance.from_api(await self._call("GET", "/api/v3/balance"))

    async def models(self) -> builtins.list[dict[str, Any]]:
        return list(await self._call("GET", "/api/v3/models"))

    async def webhook_secret(self) -> str:
        """See ``Client.webhook_secret``."""
        return str((await self._call("GET", "/api/v3/webhook/secret"))["secret"])
