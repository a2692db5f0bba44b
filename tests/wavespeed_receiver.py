"""A webhook receiver that verifies the way WaveSpeed's "Verifying Webhooks" guide says a
client must, written from the guide's steps and nothing of reelgate:

1. read ``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` and the raw body;
2. the signed content is ``{webhook-id}.{webhook-timestamp}.{raw body}``;
3. HMAC-SHA256 keyed with the secret after its ``whsec_`` prefix, NOT base64-decoded, as hex;
4. the header is ``v3,<hex>``: split on the comma, compare in constant time;
5. refuse a timestamp more than 300 s away from the receiver's clock.

It answers 204 to a delivery that verifies and 401 (with the reason) to one that does not,
and keeps every request it saw, so a test can replay them altered.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_AGE_S = 300


class Refused(Exception):
    pass


def verify_wavespeed(body: bytes, headers: Mapping[str, str], secret: str,
                     now: float | None = None) -> None:
    """Raise Refused unless the delivery verifies by the guide's five steps."""
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, timestamp, header = (h.get("webhook-id"), h.get("webhook-timestamp"),
                                 h.get("webhook-signature"))
    if not (msg_id and timestamp and header):
        raise Refused("missing required headers")
    parts = header.split(",")
    if len(parts) != 2 or parts[0] != "v3":
        raise Refused(f"invalid signature header format: {header[:20]!r}")
    key = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    content = f"{msg_id}.{timestamp}.".encode() + body
    expected = hmac.new(key.encode(), content, hashlib.sha256).hexdigest()
    if abs((time.time() if now is None else now) - int(timestamp)) > MAX_AGE_S:
        raise Refused("signature timestamp too old")
    if not hmac.compare_digest(expected, parts[1]):
        raise Refused("invalid signature")


class WaveSpeedReceiver:
    """On 127.0.0.2 (the address the test servers allow); ``clock_offset_s`` moves the
    receiver's clock, to show what a replay some minutes later meets."""

    def __init__(self, secret: str = "", host: str = "127.0.0.2") -> None:
        self.secret = secret
        self.clock_offset_s = 0.0
        self.calls: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = dict(self.headers)
                try:
                    verify_wavespeed(body, headers, receiver.secret,
                                     now=time.time() + receiver.clock_offset_s)
                    verdict = "ok"
                except Refused as exc:
                    verdict = str(exc)
                receiver.calls.append({"headers": headers, "body": body, "verdict": verdict})
                self.send_response(204 if verdict == "ok" else 401)
                self.end_headers()

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}/wavespeed-hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_calls(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n:
            assert time.monotonic() < deadline, f"only {len(self.calls)} calls"
            time.sleep(0.05)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
