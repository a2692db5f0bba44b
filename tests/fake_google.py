"""A fake of Google's Veo endpoints: a real HTTP server on 127.0.0.1 that answers the real
google-genai SDK with the documented REST shapes, and records every request.

Both API surfaces are served from one port:

- Gemini API (``/v1beta``): ``models/{m}:predictLongRunning``, ``GET {operation name}``,
  ``files/{id}:download?alt=media`` (answered with a 302 to the bytes, as Google does),
  ``GET models/{m}``. Keys come in ``x-goog-api-key``; a bad key is a 400 API_KEY_INVALID.
- Vertex AI (``/v1beta1``): ``[projects/{p}/locations/{l}/]publishers/google/models/{m}:
  predictLongRunning`` and ``:fetchPredictOperation``, videos inline (bytesBase64Encoded) or,
  with ``storageUri``, as a gs:// object served by a Cloud Storage JSON API fake
  (``/storage/v1/b/{bucket}/o/{object}?alt=media``). Credentials: a Bearer token from the
  fake OAuth token endpoint (``/token``, for service-account files) or an express-mode key.

Behaviour is steered per request by directives in the prompt (``[fake:rai]``,
``[fake:op-error]``, ``[fake:op-safety]``, ``[fake:invalid]``, ``[fake:pending=N]``) and per
test by injected faults (``fail(route, status, ...)``), e.g. a 429 with a RetryInfo delay.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

GEMINI_FILE_HOST = "https://generativelanguage.googleapis.com/v1beta/files/"

STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                503: "UNAVAILABLE"}
DEFAULT_MESSAGES = {
    400: "Request contains an invalid argument.",
    401: "Request had invalid authentication credentials.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report.",
    503: "The service is currently unavailable.",
}

# Parameters the Veo REST API documents, per surface (anything else is a 400, as Google does).
GEMINI_PARAMS = {"aspectRatio", "resolution", "durationSeconds", "negativePrompt",
                 "enhancePrompt", "personGeneration", "sampleCount"}
VERTEX_PARAMS = GEMINI_PARAMS | {"seed", "generateAudio", "storageUri"}
KNOWN_MODELS = {"veo-3.1-generate-preview", "veo-3.1-fast-generate-preview",
                "veo-3.1-lite-generate-preview", "veo-3.1-generate-001",
                "veo-3.1-fast-generate-001", "veo-3.1-lite-generate-001"}

_DIRECTIVE = re.compile(r"\[fake:([a-z-]+)(?:=(\d+))?\]")


@dataclass
class Fault:
    route: str  # create, poll, download, blob, gcs, model
    status: int
    count: int | None = 1  # None: every time
    retry_delay: str | None = None  # RetryInfo.retryDelay, e.g. "2s"
    message: str | None = None
    key: str | None = None  # only requests made with this key/token owner
    delay: float = 0.0  # with status 200: act on the request, then answer this much later


@dataclass
class Operation:
    name: str
    surface: str  # gemini or vertex
    model: str
    body: dict[str, Any]
    key: str | None
    polls_left: int
    outcome: str = "video"  # video, rai, op-error, op-safety
    storage_uri: str | None = None
    done_at: float | None = None


@dataclass
class Recorded:
    route: str
    method: str
    path: str
    key: str | None
    body: Any
    status: int = 0
    at: float = field(default_factory=time.monotonic)


class FakeGoogle:
    def __init__(self, video: bytes, *, api_keys: set[str] | None = None,
                 polls_until_done: int = 1) -> None:
        self.video = video
        self.api_keys = set(api_keys or {"key-good"})
        self.polls_until_done = polls_until_done
        self.hold = False  # while True, every operation stays pending
        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.ops: dict[str, Operation] = {}
        self.faults: list[Fault] = []
        self.tokens: dict[str, str] = {}  # access token -> service account email
        self.blobs: dict[str, bytes] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                fake._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                fake._handle(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    # --- test controls -----------------------------------------------------------------

    def fail(self, route: str, status: int, *, count: int | None = 1,
             retry_delay: str | None = None, message: str | None = None,
             key: str | None = None) -> None:
        with self.lock:
            self.faults.append(Fault(route, status, count, retry_delay, message, key))

    def slow(self, route: str, seconds: float, *, count: int | None = 1,
             key: str | None = None) -> None:
        """Act on the request (a create creates its operation) but answer ``seconds`` late:
        the caller times out, or dies, with the work started at "Google"."""
        with self.lock:
            self.faults.append(Fault(route, 200, count, key=key, delay=seconds))

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.faults.clear()
            self.ops.clear()
            self.hold = False

    def calls(self, route: str | None = None, *, key: str | None = None) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests
                    if (route is None or r.route == route) and (key is None or r.key == key)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- plumbing ------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        path = unquote(url.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        ctype = h.headers.get("Content-Type", "")
        if raw and "json" in ctype:
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
        elif raw:
            body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        else:
            body = None
        route, args = _route(method, path)
        rec = Recorded(route, method, h.path, self._caller(h), body)
        with self.lock:
            self.requests.append(rec)
        try:
            status, headers, payload = self._answer(route, args, rec, url.query)
        except Exception as exc:  # a bug in the fake shows as a 500 with the reason
            status, headers, payload = _error(500, f"fake crashed: {exc!r}")
        rec.status = status
        try:
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the caller gave up waiting (a late answer, on purpose)

    def _caller(self, h: BaseHTTPRequestHandler) -> str | None:
        auth = h.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return self.tokens.get(auth[7:], "bad-token:" + auth[7:])
        return h.headers.get("x-goog-api-key")

    def _fault(self, route: str, key: str | None) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.route == route and (f.key is None or f.key == key) and f.count != 0:
                    if f.count is not None:
                        f.count -= 1
                    return f
        return None

    def _answer(self, route: str, args: dict[str, str], rec: Recorded,
                query: str) -> tuple[int, dict[str, str], bytes]:
        if route == "unknown":
            return _error(404, f"fake: no route for {rec.method} {rec.path}")
        if route == "token":
            return self._token(rec)
        if route == "blob":
            blob = self.blobs.get(args["file"])
            if blob is None:
                return _error(404, "File not found")
            return 200, {"Content-Type": "video/mp4"}, blob
        surface = args.get("surface", "gemini")
        auth = self._check_auth(surface, rec)
        if auth is not None:
            return auth
        fault = self._fault(route, rec.key)
        if fault is not None and fault.status == 200:
            answer = self._answer_plain(route, args, rec, query, surface)
            time.sleep(fault.delay)
            return answer
        if fault is not None:
            return _error(fault.status, fault.message, retry_delay=fault.retry_delay)
        return self._answer_plain(route, args, rec, query, surface)

    def _answer_plain(self, route: str, args: dict[str, str], rec: Recorded, query: str,
                      surface: str) -> tuple[int, dict[str, str], bytes]:
        if route == "create":
            return self._create(surface, args, rec)
        if route == "poll":
            name = args.get("operation") or (rec.body or {}).get("operationName", "")
            return self._poll(name)
        if route == "download":
            if "alt=media" not in query:
                return _error(400, "alt=media is required")
            if args["file"] not in self.blobs:
                return _error(404, "File not found")
            # Google answers the download with a redirect to the bytes.
            return 302, {"Location": f"{self.url}/blobs/{args['file']}"}, b""
        if route == "gcs":
            blob = self.blobs.get(f"gs://{args['bucket']}/{args['object']}")
            if blob is None or "alt=media" not in query:
                return _error(404, "No such object")
            return 200, {"Content-Type": "video/mp4"}, blob
        if route == "model":
            model = args["model"]
            if model not in KNOWN_MODELS:
                return _error(404, f"Model {model} not found")
            name = f"models/{model}" if surface == "gemini" else f"publishers/google/models/{model}"
            return _json(200, {"name": name, "displayName": model,
                               "supportedGenerationMethods": ["predictLongRunning"]})
        return _error(404, "fake: unhandled")

    def _check_auth(self, surface: str,
                    rec: Recorded) -> tuple[int, dict[str, str], bytes] | None:
        key = rec.key
        if surface == "gemini":
            if key in self.api_keys:
                return None
            # The Gemini API answers a bad key with 400 API_KEY_INVALID, not 401.
            return _error(400, "API key not valid. Please pass a valid API key.",
                          reason="API_KEY_INVALID")
        # Vertex AI and Cloud Storage: a token this fake issued (recorded as the service
        # account's email) or an express-mode key.
        if key in self.api_keys or (key or "").endswith(".iam.gserviceaccount.com"):
            return None
        return _error(401, None)

    def _token(self, rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        body = rec.body or {}
        if body.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return _json(400, {"error": "unsupported_grant_type"})
        claims = _jwt_claims(body.get("assertion", ""))
        token = f"ya29.fake-{uuid.uuid4().hex[:12]}"
        with self.lock:
            self.tokens[token] = str(claims.get("iss", "unknown"))
        rec.key = self.tokens[token]
        return _json(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    def _create(self, surface: str, args: dict[str, str],
                rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        body = rec.body if isinstance(rec.body, dict) else {}
        instances = body.get("instances") or []
        if len(instances) != 1 or not isinstance(instances[0].get("prompt"), str):
            return _error(400, "instances[0].prompt is required")
        inst, params = instances[0], body.get("parameters") or {}
        allowed = GEMINI_PARAMS if surface == "gemini" else VERTEX_PARAMS
        for name in params:
            if name not in allowed:
                return _error(400, f"`{name}` isn't supported by this model.")
        for key in ("image", "lastFrame"):
            if key in inst and not _image_ok(inst[key]):
                return _error(400, f"instances[0].{key} must carry bytesBase64Encoded+mimeType")
        for ref in inst.get("referenceImages") or []:
            if ref.get("referenceType", "").upper() != "ASSET" or not _image_ok(ref.get("image")):
                return _error(400, "referenceImages need an ASSET image")
        model = args["model"]
        if model not in KNOWN_MODELS:
            return _error(404, f"models/{model} is not found for API version, or is not "
                               "supported for predictLongRunning.")
        if "lite" in model and params.get("resolution") == "4k":
            return _error(400, "4k resolution is not supported by this model.")
        directives = {m.group(1): m.group(2) for m in _DIRECTIVE.finditer(inst["prompt"])}
        if "invalid" in directives:
            return _error(400, "The prompt is not valid (fake directive).")
        op_id = uuid.uuid4().hex[:16]
        if surface == "gemini":
            name = f"models/{model}/operations/{op_id}"
        else:
            project = args.get("project", "express-project")
            location = args.get("location", "us-central1")
            name = (f"projects/{project}/locations/{location}/publishers/google/models/"
                    f"{model}/operations/{op_id}")
        outcome = next((d for d in ("rai", "op-error", "op-safety") if d in directives), "video")
        polls = int(directives["pending"]) if directives.get("pending") else self.polls_until_done
        op = Operation(name, surface, model, body, rec.key, polls, outcome,
                       params.get("storageUri"))
        with self.lock:
            self.ops[name] = op
        return _json(200, {"name": name})

    def _poll(self, name: str) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            op = self.ops.get(name)
            if op is None:
                return _error(404, f"Operation {name} not found.")
            if op.done_at is None and not self.hold:
                op.polls_left -= 1
                if op.polls_left <= 0:
                    op.done_at = time.monotonic()
            done = op.done_at is not None
        doc: dict[str, Any] = {"name": name}
        if not done:
            doc["metadata"] = {"@type": "type.googleapis.com/fake.Progress"}
            return _json(200, doc)
        doc["done"] = True
        if op.outcome == "op-error":
            doc["error"] = {"code": 3, "message": "Veo could not generate a video for these "
                                                  "inputs (fake operation error)."}
        elif op.outcome == "op-safety":
            doc["error"] = {"code": 3, "message": "The prompt could not be submitted. This "
                            "prompt contains sensitive words that violate Google's "
                            "Responsible AI practices. Try rephrasing the prompt."}
        elif op.outcome == "rai":
            reasons = ["Your video was filtered because it may violate our usage policies "
                       "(fake RAI filter)."]
            inner = {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": reasons}
            doc["response"] = _wrap_response(op.surface, inner)
        else:
            doc["response"] = _wrap_response(op.surface, self._video_sample(op))
        return _json(200, doc)

    def _video_sample(self, op: Operation) -> dict[str, Any]:
        file_id = uuid.uuid4().hex[:12]
        if op.surface == "gemini":
            with self.lock:
                self.blobs[file_id] = self.video
            uri = f"{GEMINI_FILE_HOST}{file_id}:download?alt=media"
            return {"generatedSamples": [{"video": {"uri": uri}}]}
        if op.storage_uri:
            uri = f"{op.storage_uri.rstrip('/')}/{file_id}/sample_0.mp4"
            with self.lock:
                self.blobs[uri] = self.video
            return {"raiMediaFilteredCount": 0,
                    "videos": [{"gcsUri": uri, "mimeType": "video/mp4"}]}
        return {"raiMediaFilteredCount": 0, "videos": [{
            "bytesBase64Encoded": base64.b64encode(self.video).decode(),
            "mimeType": "video/mp4"}]}

    # --- assertions helpers ----------------------------------------------------------------

    def created(self) -> list[Operation]:
        with self.lock:
            return list(self.ops.values())

    def last_create_body(self) -> dict[str, Any]:
        creates = [r for r in self.calls("create") if r.status == 200]
        return creates[-1].body


def _wrap_response(surface: str, inner: dict[str, Any]) -> dict[str, Any]:
    if surface == "gemini":
        return {"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                         "PredictLongRunningResponse", "generateVideoResponse": inner}
    return {"@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse",
            **inner}


def _image_ok(img: Any) -> bool:
    if not isinstance(img, dict) or not img.get("mimeType", "").startswith("image/"):
        return False
    try:
        return bool(base64.b64decode(img.get("bytesBase64Encoded", ""), validate=True))
    except ValueError:
        return False


def _route(method: str, path: str) -> tuple[str, dict[str, str]]:
    if method == "POST" and path == "/token":
        return "token", {}
    if m := re.fullmatch(r"/blobs/([a-z0-9]+)", path):
        return "blob", {"file": m.group(1)}
    if m := re.fullmatch(r"/storage/v1/b/([^/]+)/o/(.+)", path):
        return "gcs", {"bucket": m.group(1), "object": m.group(2), "surface": "vertex"}
    if m := re.fullmatch(r"/v1beta/models/([^/:]+):predictLongRunning", path):
        return ("create" if method == "POST" else "unknown"), {"model": m.group(1)}
    if m := re.fullmatch(r"/v1beta/(models/[^/:]+/operations/[^/:]+)", path):
        return "poll", {"operation": m.group(1)}
    if m := re.fullmatch(r"/v1beta/files/([a-z0-9]+):download", path):
        return "download", {"file": m.group(1)}
    if m := re.fullmatch(r"/v1beta/models/([^/:]+)", path):
        return "model", {"model": m.group(1)}
    vertex = (r"/v1beta1/(?:projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/)?"
              r"publishers/google/models/(?P<model>[^/:]+)")
    if m := re.fullmatch(vertex + r":predictLongRunning", path):
        return "create", {**_groups(m), "surface": "vertex"}
    if m := re.fullmatch(vertex + r":fetchPredictOperation", path):
        return "poll", {**_groups(m), "surface": "vertex"}
    if method == "GET" and (m := re.fullmatch(vertex, path)):
        return "model", {**_groups(m), "surface": "vertex"}
    return "unknown", {}


def _groups(m: re.Match[str]) -> dict[str, str]:
    return {k: v for k, v in m.groupdict().items() if v is not None}


def _json(status: int, doc: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json; charset=UTF-8"}, json.dumps(doc).encode()


def _error(status: int, message: str | None, *, retry_delay: str | None = None,
           reason: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """Google's error body: {"error": {"code", "message", "status", "details"}}."""
    err: dict[str, Any] = {"code": status, "message": message or DEFAULT_MESSAGES.get(status, ""),
                           "status": STATUS_NAMES.get(status, "UNKNOWN")}
    details = []
    if reason:
        details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                        "domain": "googleapis.com"})
    if retry_delay:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": retry_delay})
    if details:
        err["details"] = details
    return _json(status, {"error": err})


def _jwt_claims(assertion: str) -> dict[str, Any]:
    try:
        payload = assertion.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}


def write_service_account(path: Path, token_uri: str, project: str = "fake-project") -> Path:
    """A real service-account key file (a fresh RSA key) whose token_uri is the fake's."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account",
        "project_id": project,
        "private_key_id": "fake-key-1",
        "private_key": pem,
        "client_email": f"reelgate@{project}.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }))
    return path


def make_video(path: Path) -> bytes:
    """A real 720p, 4 s H.264+AAC MP4 (the sandbox renderer), so check_video passes."""
    from reelgate.backends.base import Job
    from reelgate.backends.sandbox.backend import render_sandbox_video

    job = Job(id="fake-google", model="veo3.1", scene="text-to-video",
              prompt="fake google video", resolution="720p", duration=4)
    render_sandbox_video(job, path, fps=12)
    return path.read_bytes()
