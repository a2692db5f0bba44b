"""Bounded request input: JSON bodies, query strings and paths, checked before any route.

Python's ``json`` module has no limits of its own that answer politely: an integer of more
than 4,300 digits raises ``ValueError`` (the int-string limit), 1,000+ levels of nesting raise
``RecursionError``, ``NaN``/``Infinity`` are accepted, and a string may carry NUL characters
or unpaired surrogates that PostgreSQL (and UTF-8 encoders) refuse later, mid-query. Each of
those became an HTTP 500. This module parses with bounds (size, depth, integer digits) and
answers 400 in the documented error body, naming the field, for every JSON endpoint at once:
an ASGI middleware runs before routing, so a route added later is covered without a change.

Hand-written rather than a library: the limits are a few hooks on the standard parser
(``parse_int``, ``parse_constant``) plus one pass over the parsed value; no maintained
package offers exactly this with our error body.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reelgate.api.dialects import error_body_for
from reelgate.errors import InvalidInput

MAX_DEPTH = 32
# Our largest integers are money in micro-units and 32-bit seeds; 64 digits leaves room.
MAX_INT_DIGITS = 64
# Characters no text column accepts: NUL (PostgreSQL refuses it in text) and unpaired
# surrogates (not encodable as UTF-8 at all).
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")

# Where the parsed body is left for routes that read the body themselves (the create
# route), so it is parsed once.
SCOPE_KEY = "reelgate.json"


class _Refused:
    """Stands in for a value the parser met but we refuse; reported with its path."""

    __slots__ = ("rule",)

    def __init__(self, rule: str) -> None:
        self.rule = rule


def _parse_int(text: str) -> int | _Refused:
    digits = len(text) - (text[0] == "-")
    if digits > MAX_INT_DIGITS:
        return _Refused(f"is an integer of {digits} digits; at most {MAX_INT_DIGITS} are allowed")
    return int(text)


def _parse_float(text: str) -> float | _Refused:
    value = float(text)
    if not math.isfinite(value):
        return _Refused("is a number too large to represent")
    return value


def _parse_constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a JSON number")


def bad_char_rule(text: str) -> str | None:
    match = _BAD_CHARS.search(text)
    if match is None:
        return None
    if match.group() == "\x00":
        return "must not contain NUL characters"
    return "must not contain unpaired surrogate characters"


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent or 'body'}[{key}]"
    return f"{parent}.{key}" if parent else key


def check_value(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Walk a parsed value (iteratively: the point is to survive hostile nesting) and raise
    InvalidInput naming the first field that breaks a bound."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, _Refused):
            raise InvalidInput(path or "body", item.rule)
        if isinstance(item, str):
            rule = bad_char_rule(item)
            if rule:
                raise InvalidInput(path or "body", rule)
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise InvalidInput(path or "body", f"is nested more than {max_depth} levels deep")
            if isinstance(item, dict):
                for key, child in item.items():
                    rule = bad_char_rule(key)
                    if rule:
                        raise InvalidInput(_path(path, "<key>"), f"a field name {rule}")
                    stack.append((child, _path(path, key), depth + 1))
            else:
                stack.extend((child, _path(path, i), depth + 1) for i, child in enumerate(item))


def parse_json(raw: bytes, *, max_bytes: int | None = None) -> Any:
    """Parse a request body with bounds; InvalidInput("body" or the field) when refused."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise InvalidInput("body", f"is larger than {max_bytes} bytes")
    if not raw.strip():
        raise InvalidInput("body", "must be a JSON object")
    try:
        value = json.loads(raw, parse_int=_parse_int, parse_float=_parse_float,
                           parse_constant=_parse_constant)
    except RecursionError:
        raise InvalidInput("body", f"is nested more than {MAX_DEPTH} levels deep") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput("body", f"is not valid JSON ({exc})") from None
    except ValueError as exc:  # anything else the parser refuses
        raise InvalidInput("body", f"is not valid JSON ({exc})") from None
    check_value(value)
    return value


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _error(status: int, message: str, path: str) -> bytes:
    # In the body of the dialect that owns the path, as every other error (api/errors.py).
    return json.dumps(error_body_for(path)(status, message, None)).encode()


class BoundedInputMiddleware:
    """Refuses, before routing: a NUL in the path (404: no resource has one), a NUL in a
    query parameter (400 naming it), and a JSON body that is too large, too deep, holds an
    over-long integer, a non-finite number or a character no database column accepts (400
    naming the field). A body that passes is handed on unchanged, with its parsed value in
    the scope."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def refuse(status: int, message: str) -> None:
            await self._answer(send, status, message, scope["path"])

        if "\x00" in scope["path"]:
            await refuse(404, f"Not found: {scope['method']} (a path with a NUL)")
            return
        query = scope.get("query_string", b"")
        if b"%00" in query or b"\x00" in query:
            for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                if "\x00" in name or "\x00" in value:
                    shown = name.replace("\x00", "\\0")
                    await refuse(400, f"{shown}: must not contain NUL characters")
                    return
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").decode("latin-1")
        if scope["method"] not in ("POST", "PUT", "PATCH") or not _is_json(ctype):
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await refuse(400, f"body: is larger than {self.max_body_bytes} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await refuse(400, f"body: is larger than {self.max_body_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        del chunks
        if raw.strip():
            try:
                scope[SCOPE_KEY] = parse_json(raw)
            except InvalidInput as exc:
                await refuse(400, exc.message)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _answer(send: Send, status: int, message: str, path: str) -> None:
        body = _error(status, message, path)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
