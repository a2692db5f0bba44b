"""The Google Veo backend: real generation through the Gemini API or Vertex AI.

The path of one job: translate it into a Veo request for the channel that takes it (the
model id comes from the operator's map) → create the long-running operation → write the
operation's name to the prediction row (``job.checkpoint``) BEFORE waiting, so a restarted
worker resumes polling the same operation instead of paying twice → poll with backoff
(respecting Google's RetryInfo) → copy the video into the work dir (Gemini's file service,
inline bytes, or a gs:// object) → the runner checks it with a decoder and stores it.

All calls go through the official ``google-genai`` SDK, pinned below 3: 3.x refuses
``generate_videos`` on the Gemini API (API-key mode) and serves Veo only on Vertex AI, while
2.x serves both. The SDK does not retry unless told to; every retry here is explicit.
The README's Google section is the operator's side of this file.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from reelgate import catalog
from reelgate.backends.base import BackendBase, BackendError, Capabilities, Job
from reelgate.backends.google.channels import ChannelPool, ChannelState, NoChannel
from reelgate.backends.google.config import (
    ChannelConfig,
    GoogleSettings,
    load_google_settings,
    model_caps,
)
from reelgate.errors import ApiError, InvalidInput

if TYPE_CHECKING:
    from google import genai
    from google.genai import types

    from reelgate.settings import Settings

__all__ = [
    "POLICY_MESSAGE",
    "GoogleBackend",
    "Plan",
    "UpstreamRef",
    "check_google_request",
    "classify_error",
    "make_client",
    "plan_for",
]

log = logging.getLogger("reelgate.google")

POLICY_MESSAGE = (
    "The video was blocked by Google's safety filters and was not generated. You were not "
    "charged; try a different prompt or input image."
)
NOT_CHARGED = "You were not charged; please try again."

# Words Google uses when a prompt or input is refused for safety, in operation errors and
# 400 answers (Vertex: "... violate Vertex AI's usage guidelines", "Responsible AI practices").
_SAFETY_RE = re.compile(
    r"responsible ai|usage guidelines|sensitive words|safety (?:filter|settings|reasons)"
    r"|content polic|prohibited content|raimediafiltered|could not be submitted",
    re.IGNORECASE,
)

_BAD_KEY_RE = re.compile(r"API_KEY_INVALID|API key not valid|API key expired", re.IGNORECASE)

_IMAGE_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_CLOUD_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


# --- translation (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The Veo request one channel will make: model id and config values as sent."""

    mode: str
    model_id: str
    aspect_ratio: str
    resolution: str
    duration: int
    seed: int | None
    generate_audio: bool | None  # None: not sent (the Gemini API always makes sound)
    enhance_prompt: bool | None  # None: not sent (Google enhances by default)
    negative_prompt: str | None
    person_generation: str | None
    output_gcs_uri: str | None
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, ())}


def _resolution_field(shape: Job) -> str:
    return "enable_upsample" if shape.enable_upsample else "resolution"


def plan_for(shape: Job, channel: ChannelConfig, gs: GoogleSettings,
             model_id: str | None = None, _tried: tuple[str, ...] = ()) -> Plan:
    """Translate ``shape`` for ``channel``, or raise InvalidInput naming the field Google
    would refuse. Operator fallbacks (gs.fallbacks, gs.fallback_models) turn some refusals
    into a documented substitute."""
    mode = channel.mode or gs.mode
    model_id = model_id or gs.model_id(shape.model, channel)
    caps = model_caps(model_id)
    notes: list[str] = []

    def refuse_or_switch(field_name: str, rule: str) -> Plan:
        alt = gs.fallback_models.get(model_id)
        if alt and alt != model_id and alt not in _tried:
            plan = plan_for(shape, channel, gs, alt, (*_tried, model_id))
            return Plan(**{**plan.__dict__,
                           "notes": (f"{model_id} cannot: {rule}; using {alt}",) + plan.notes})
        raise InvalidInput(field_name, rule)

    resolution = shape.resolution
    if resolution not in caps.resolutions:
        rule = (f"{resolution} is not offered by {shape.model} on this server (Google model "
                f"{model_id} offers {', '.join(caps.resolutions)})")
        if shape.enable_upsample:
            rule = f"asks for {resolution}, which " + rule
        if model_id not in gs.fallback_models and "lower_resolution" in gs.fallbacks:
            resolution = caps.resolutions[-1]
            notes.append(f"resolution lowered to {resolution} ({model_id} has no "
                         f"{shape.resolution})")
        else:
            return refuse_or_switch(_resolution_field(shape), rule)
    if shape.reference_count and not caps.reference_images:
        return refuse_or_switch(
            "images", f"reference images are not offered by {shape.model} on this server "
            f"(Google model {model_id})")
    if shape.has_last_image and not caps.last_frame:
        return refuse_or_switch(
            "last_image", f"a last frame is not offered by {shape.model} on this server "
            f"(Google model {model_id})")

    seed = shape.seed
    generate_audio: bool | None = shape.generate_audio
    if mode == "gemini":
        if seed is not None:
            if "drop_seed" not in gs.fallbacks:
                raise InvalidInput(
                    "seed", "is not supported by this server's Google backend (the Gemini API "
                    "takes no seed for Veo; only Vertex AI does); leave it out")
            notes.append("seed not sent (the Gemini API takes none)")
            seed = None
        if not shape.generate_audio and "audio_always_on" not in gs.fallbacks:
            raise InvalidInput(
                "generate_audio", "cannot be false on this server's Google backend (Veo on the "
                "Gemini API always generates audio); leave it out")
        if not shape.generate_audio:
            notes.append("generate_audio=false not sent (the Gemini API always makes sound)")
        generate_audio = None  # the SDK refuses the field in Gemini API mode

    express = mode == "vertex" and bool(channel.api_key)
    return Plan(
        mode=mode,
        model_id=model_id,
        aspect_ratio=shape.aspect_ratio,
        resolution=resolution,
        duration=shape.duration,
        seed=seed,
        generate_audio=generate_audio,
        enhance_prompt=False if not shape.enhance_prompt else None,
        negative_prompt=shape.negative_prompt,
        person_generation=gs.person_generation or None,
        # Express mode has no credentials that could read the bucket back.
        output_gcs_uri=(gs.output_gcs_uri or None) if mode == "vertex" and not express else None,
        notes=tuple(notes),
    )


def eligible_plans(shape: Job, gs: GoogleSettings,
                   channels: list[ChannelConfig]) -> tuple[dict[str, Plan], InvalidInput | None]:
    """The plan of every channel that can serve ``shape``, and the first refusal."""
    plans: dict[str, Plan] = {}
    first: InvalidInput | None = None
    for ch in channels:
        try:
            plans[ch.name] = plan_for(shape, ch, gs)
        except InvalidInput as exc:
            first = first or exc
    return plans, first


def not_configured_error() -> ApiError:
    return ApiError(500, "The google backend is not configured on this server: set "
                         "REELGATE_GOOGLE_API_KEY, REELGATE_GOOGLE_CHANNELS or "
                         "REELGATE_GOOGLE_MODE=vertex with REELGATE_GOOGLE_PROJECT.")


def check_google_request(job: Job, gs: GoogleSettings | None = None) -> None:
    """Intake check: refuse with a 400 what no configured channel can send to Google."""
    gs = gs or load_google_settings()
    channels = gs.resolved_channels()
    if not channels:
        raise not_configured_error()
    plans, first = eligible_plans(job, gs, channels)
    if not plans and first is not None:
        raise first


# --- upstream references --------------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamRef:
    """What is written on the row: the channel that created the operation (it must be polled
    with the same credentials) and the operation's name."""

    channel: str
    operation: str
    model: str = ""

    def dumps(self) -> str:
        return json.dumps({"channel": self.channel, "operation": self.operation,
                           "model": self.model}, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str) -> UpstreamRef:
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and doc.get("operation"):
            return cls(str(doc.get("channel") or ""), str(doc["operation"]),
                       str(doc.get("model") or ""))
        return cls("", raw)  # a bare operation name (no pool when it was written)


# --- errors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    """One failed call, sorted by what to do about it."""

    kind: str  # quota, unavailable, auth, invalid, not_found, safety, other
    code: int
    message: str
    retry_after: float | None = None
    # A network error after the request may have left (a read timeout, a dropped
    # connection): Google may have acted on it. An HTTP answer, or a connection that never
    # opened, is certain.
    uncertain: bool = False

    def short(self) -> str:
        return f"{self.code or ''} {self.message}".strip()


def _parse_duration(value: Any) -> float | None:
    # google.protobuf.Duration in JSON: "2s", "1.500s".
    if isinstance(value, str) and value.endswith("s"):
        try:
            return max(0.0, float(value[:-1]))
        except ValueError:
            return None
    if isinstance(value, dict) and "seconds" in value:
        return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
    return None


def retry_delay(exc: Exception) -> float | None:
    """Google's RetryInfo.retryDelay from an error body, else a Retry-After header."""
    details = getattr(exc, "details", None)
    err = details.get("error", details) if isinstance(details, dict) else {}
    for item in (err.get("details") or []) if isinstance(err, dict) else []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = _parse_duration(item.get("retryDelay"))
            if delay is not None:
                return delay
    response = getattr(exc, "response", None)
    header = getattr(response, "headers", {}).get("retry-after") if response is not None else None
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            return None
    return None


def classify_error(exc: Exception) -> Upstream:
    from google.genai import errors as genai_errors

    if isinstance(exc, genai_errors.APIError):
        code = int(exc.code or 0)
        message = str(exc.message or exc.status or "").strip()
        if code == 429:
            return Upstream("quota", code, message, retry_delay(exc))
        if code >= 500:
            return Upstream("unavailable", code, message, retry_delay(exc))
        if code in (401, 403) or (code == 400 and _BAD_KEY_RE.search(
                f"{message} {json.dumps(exc.details, default=str)}")):
            # The Gemini API answers a bad key with 400 API_KEY_INVALID, not 401.
            return Upstream("auth", code, message)
        if code == 404:
            return Upstream("not_found", code, message)
        if _SAFETY_RE.search(message):
            return Upstream("safety", code, message)
        return Upstream("invalid" if code == 400 else "other", code, message)
    network = network_error(exc)
    if network is not None:
        return network
    if isinstance(exc, ValueError):  # the SDK's own checks of a request
        return Upstream("invalid", 0, str(exc))
    # Not shown with its repr or text: an unknown error may carry internal details.
    log.warning("unclassified Google error: %r", exc)
    return Upstream("other", 0, f"unexpected {type(exc).__name__}")


def _aiohttp_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(never-sent, maybe-sent) aiohttp errors; google-genai's async calls go through aiohttp
    whenever it is installed (taskiq pulls it in), else through httpx."""
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with taskiq
        return (), ()
    unsent: tuple[type[BaseException], ...] = (aiohttp.ClientConnectorError,
                                               aiohttp.ClientProxyConnectionError)
    connect_timeout = getattr(aiohttp, "ConnectionTimeoutError", None)  # aiohttp >= 3.10
    if connect_timeout is not None:
        unsent += (connect_timeout,)
    return unsent, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)


def network_error(exc: BaseException) -> Upstream | None:
    """A transport failure of any HTTP client the SDK may use (httpx or aiohttp), as an
    ``unavailable`` answer: retried on another channel, the channel cooled down. The message
    names the kind of failure only: no address, no object repr (it may reach the user)."""
    unsent, maybe_sent = _aiohttp_errors()
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:  # the SDK may wrap the client's error
        seen.add(id(cur))
        if isinstance(cur, (httpx.ConnectError, httpx.ConnectTimeout, *unsent,
                            ConnectionRefusedError)):
            return Upstream("unavailable", 0, "Google could not be reached (connection failed)")
        if isinstance(cur, (httpx.TimeoutException, TimeoutError)):
            return Upstream("unavailable", 0, "Google did not answer in time", uncertain=True)
        if isinstance(cur, (httpx.TransportError, *maybe_sent, ConnectionError)):
            return Upstream("unavailable", 0, "the connection to Google broke", uncertain=True)
        cur = cur.__cause__ or cur.__context__
    return None


# --- clients --------------------------------------------------------------------------------


def load_credentials(channel: ChannelConfig) -> Any:
    """Google Cloud credentials for a Vertex project channel: the service-account (or
    authorized-user) JSON file named by credentials_file, else Application Default
    Credentials. Each file type is loaded by its own loader, as google-auth recommends for
    files that name their type."""
    import google.auth

    path = channel.credentials_file
    if not path:
        creds, _ = google.auth.default(scopes=[_CLOUD_SCOPE])
        return creds
    kind = json.loads(Path(path).read_text()).get("type")
    if kind == "service_account":
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_file(path, scopes=[_CLOUD_SCOPE])
    if kind == "authorized_user":
        from google.oauth2 import credentials

        return credentials.Credentials.from_authorized_user_file(path, scopes=[_CLOUD_SCOPE])
    raise ValueError(f"{path}: credentials of type {kind!r} are not supported here; use a "
                     "service-account key file, or leave credentials_file empty for "
                     "Application Default Credentials")


def make_client(channel: ChannelConfig, gs: GoogleSettings,
                credentials: Any = None) -> genai.Client:
    from google import genai
    from google.genai import types

    options = types.HttpOptions(
        base_url=channel.base_url or None,
        timeout=int(gs.request_timeout_s * 1000),
    )
    if channel.mode == "vertex":
        if channel.api_key:  # Vertex AI express mode
            return genai.Client(vertexai=True, api_key=channel.api_key, http_options=options)
        return genai.Client(vertexai=True, project=channel.project, location=channel.location,
                            credentials=credentials or load_credentials(channel),
                            http_options=options)
    return genai.Client(vertexai=False, api_key=channel.api_key, http_options=options)


# --- the backend ----------------------------------------------------------------------------


@dataclass
class _Channel:
    config: ChannelConfig
    client: genai.Client
    credentials: Any = None


class GoogleBackend(BackendBase):
    name = "google"

    def __init__(self, gs: GoogleSettings, *, status_path: Path | None = None) -> None:
        self.gs = gs
        self.channels = gs.resolved_channels()
        if not self.channels:
            raise ValueError("no Google channel is configured")
        self.pool = ChannelPool(self.channels, status_path=status_path)
        self._clients: dict[str, _Channel] = {}
        self._create_slots = asyncio.Semaphore(gs.create_concurrency)
        # Jobs mostly wait on Google: one process keeps many in flight.
        self.concurrency = gs.concurrency
        # No bound of the runner's: max_wait_s and acquire_timeout_s bound each wait, and a
        # cut poll would leave an operation Google bills for.
        self.timeout = None

    # --- the port: what intake, the model list and prices ask (pure) --------------------

    def capabilities(self, model: str) -> Capabilities:
        """The union over the channels: what at least one can make. Resolutions are what
        the mapped models deliver; ``check`` decides per request, with the operator's
        fallbacks (which may lower a resolution or switch the model)."""
        gs = self.gs
        caps = [model_caps(gs.model_id(model, ch)) for ch in self.channels]
        resolutions = {r for c in caps for r in c.resolutions}
        vertex = any(ch.mode == "vertex" for ch in self.channels)
        return Capabilities(
            resolutions=tuple(r for r in catalog.RESOLUTIONS if r in resolutions),
            silent=vertex or "audio_always_on" in gs.fallbacks,
            seed=vertex or "drop_seed" in gs.fallbacks,
            last_image=any(c.last_frame for c in caps) or bool(gs.fallback_models),
            reference_images=any(c.reference_images for c in caps) or bool(gs.fallback_models),
            resumable=True,
        )

    def check(self, job: Job) -> None:
        plans, first = eligible_plans(job, self.gs, self.channels)
        if not plans and first is not None:
            raise first

    def describe(self, model: str) -> dict[str, Any]:
        """The Google model id(s) serving ``model``: one entry per distinct (mode, model
        id) among the channels, with the resolutions that model offers."""
        targets: dict[tuple[str, str], list[str]] = {}
        for ch in self.channels:
            targets.setdefault((str(ch.mode), self.gs.model_id(model, ch)), []).append(ch.name)
        upstream = [
            {"mode": mode, "model": model_id, "channels": channels,
             "resolutions": list(model_caps(model_id).resolutions)}
            for (mode, model_id), channels in targets.items()
        ]
        return {
            "google_model": upstream[0]["model"] if upstream else None,
            "upstream": {"provider": "google", "models": upstream},
        }

    async def close(self) -> None:
        # The SDK's clients hold connection pools; a later job builds them again.
        self._clients.clear()

    @classmethod
    def from_settings(cls, settings: Settings, gs: GoogleSettings | None = None) -> GoogleBackend:
        return cls(gs or load_google_settings(),
                   status_path=settings.data_dir / "google-channels.json")

    def _channel(self, name: str) -> _Channel:
        ch = self._clients.get(name)
        if ch is None:
            config = next(c for c in self.channels if c.name == name)
            creds = None
            try:
                if config.mode == "vertex" and not config.api_key:
                    creds = load_credentials(config)
                client = make_client(config, self.gs, creds)
            except Exception as exc:  # a configuration problem: the details are the operator's
                log.error("google channel %s: cannot build a client: %s", name, exc)
                self.pool.note_error(name, f"credentials: {type(exc).__name__}: {exc}")
                raise BackendError("The video could not be generated because of a problem with "
                                   "this server's Google credentials. " + NOT_CHARGED) from None
            ch = _Channel(config, client, creds)
            self._clients[name] = ch
        return ch

    # --- the job -------------------------------------------------------------------------

    async def generate(self, job: Job, workdir: Path) -> Path:
        ref = UpstreamRef.loads(job.upstream_ref) if job.upstream_ref else None
        if ref is not None:
            name = ref.channel or self.channels[0].name
            if self.pool.attach(name) is None:
                raise BackendError(
                    f"This prediction's video is being made on Google channel '{name}', which "
                    "is no longer configured on this server; it cannot be collected.")
            operation = ref.operation
            log.info("prediction %s: resuming Google operation %s on channel %s", job.id,
                     operation, name)
            op = None
        else:
            name, op = await self._submit(job)
            operation = op.name or ""
        ok = False
        try:
            ch = self._channel(name)
            op = await self._wait(ch, operation, op, started=ref is None)
            video = self._video_of(op)
            workdir.mkdir(parents=True, exist_ok=True)
            out = workdir / f"{job.id}.mp4"
            await self._save(ch, video, out)
            ok = True
            return out
        finally:
            self.pool.release(name, ok=ok)

    async def _submit(self, job: Job) -> tuple[str, types.GenerateVideosOperation]:
        gs = self.gs
        plans, first = eligible_plans(job, gs, self.channels)
        if not plans:
            raise BackendError(f"Google cannot make this video: {first.message if first else ''}")
        source, config_images = await asyncio.to_thread(_source_parts, job)
        attempts = 0
        last: Upstream | None = None
        while attempts < gs.submit_attempts:
            try:
                state = await self.pool.acquire(plans, timeout=gs.acquire_timeout_s)
            except NoChannel as exc:
                raise BackendError(
                    f"Google is busy right now (every channel is cooling down or full: {exc}). "
                    + NOT_CHARGED, retryable=True) from None
            attempts += 1
            plan = plans[state.name]
            async with self._create_slots:
                try:
                    # On the row just before the call leaves: see Job.intend.
                    await job.intend(json.dumps({"channel": state.name,
                                                 "model": plan.model_id,
                                                 "attempt": attempts, "at": time.time()}))
                    op = await self._create(state, plan, source, config_images)
                except (asyncio.CancelledError, BackendError):
                    self.pool.release(state.name)
                    raise
                except Exception as exc:  # sorted below: retry elsewhere, or fail
                    self.pool.release(state.name)
                    last = classify_error(exc)
                    self._after_failure(state.name, last)
                    if last.uncertain and job.on_unconfirmed == "fail":
                        # Google may have started the operation; at most once means never
                        # sending another. The intent stays on the row.
                        raise BackendError(
                            f"Google did not confirm the request to start this video "
                            f"({last.message}), and this server is set never to start a "
                            "video twice, so it was not sent again. " + NOT_CHARGED) from None
                    if not last.uncertain:
                        await job.intend(None)  # Google answered: nothing was started
                    if last.kind == "auth":
                        # A refused key does not recover in seconds: drop the channel for
                        # this job and go on with the others, if any.
                        plans.pop(state.name, None)
                        if plans:
                            continue
                        break
                    if last.kind in ("quota", "unavailable"):
                        continue
                    raise self._failure(last) from None
                # The handle goes on the row before anything else can go wrong (and before
                # the slot frees, so at most create_concurrency predictions per process are
                # ever between intent and handle): from here on a restart resumes this
                # operation instead of creating another.
                try:
                    await job.checkpoint(UpstreamRef(state.name, op.name or "",
                                                     plan.model_id).dumps())
                except BaseException:
                    self.pool.release(state.name)
                    raise
            log.info("prediction %s: Google operation %s on channel %s (%s)", job.id, op.name,
                     state.name, plan.describe())
            return state.name, op
        assert last is not None
        if last.kind == "auth":
            raise BackendError(f"Google refused this server's credentials ({last.short()}). "
                               + NOT_CHARGED)
        raise BackendError(f"Google did not accept the request after {attempts} attempts "
                           f"({last.short()}). " + NOT_CHARGED, retryable=True)

    async def _create(self, state: ChannelState, plan: Plan, source: dict[str, Any],
                      config_images: dict[str, Any]) -> types.GenerateVideosOperation:
        from google.genai import types

        ch = self._channel(state.name)
        config = types.GenerateVideosConfig(
            number_of_videos=1,
            aspect_ratio=plan.aspect_ratio,
            resolution=plan.resolution,
            duration_seconds=plan.duration,
            seed=plan.seed,
            generate_audio=plan.generate_audio,
            enhance_prompt=plan.enhance_prompt,
            negative_prompt=plan.negative_prompt,
            person_generation=plan.person_generation,
            output_gcs_uri=plan.output_gcs_uri,
            **config_images,
        )
        op = await ch.client.aio.models.generate_videos(
            model=plan.model_id, source=types.GenerateVideosSource(**source), config=config)
        if not op.name:
            raise ValueError("Google answered without an operation name")
        return op

    def _after_failure(self, name: str, up: Upstream) -> None:
        gs = self.gs
        if up.kind == "quota":
            self.pool.cool_down(name, up.retry_after if up.retry_after is not None
                                else gs.cooldown_429_s, f"429 {up.message}")
        elif up.kind == "unavailable":
            self.pool.cool_down(name, up.retry_after if up.retry_after is not None
                                else gs.cooldown_5xx_s, up.short())
        elif up.kind == "auth":
            self.pool.cool_down(name, gs.cooldown_auth_s, up.short())
        else:
            self.pool.note_error(name, up.short())

    @staticmethod
    def _failure(up: Upstream) -> BackendError:
        if up.kind == "safety":
            return BackendError(POLICY_MESSAGE + f" (Google: {up.message})", nsfw=True)
        if up.kind == "invalid":
            return BackendError(f"Google rejected the request as invalid: {up.message}")
        if up.kind == "not_found":
            return BackendError(f"Google does not know the requested model or operation: "
                                f"{up.message}")
        return BackendError(f"Google could not make the video ({up.short()}). " + NOT_CHARGED)

    async def _wait(self, ch: _Channel, operation: str,
                    op: types.GenerateVideosOperation | None, *,
                    started: bool) -> types.GenerateVideosOperation:
        from google.genai import types

        gs = self.gs
        # name= is a field of the SDK's operation model that its stubs do not declare.
        current = op or types.GenerateVideosOperation(name=operation)  # type: ignore[call-arg]
        delay = gs.poll_initial_s if started else 0.0
        deadline = time.monotonic() + gs.max_wait_s
        while not current.done:
            if time.monotonic() + delay > deadline:
                raise BackendError(
                    f"Google did not finish the video within {gs.max_wait_s:.0f} s. "
                    + NOT_CHARGED, retryable=True)
            await asyncio.sleep(delay)
            try:
                current = await ch.client.aio.operations.get(current)
            except Exception as exc:  # sorted below
                up = classify_error(exc)
                if up.kind in ("quota", "unavailable"):
                    self._after_failure(ch.config.name, up)
                    # The operation lives on this channel: wait, then ask the same one again.
                    delay = max(up.retry_after or 0.0, self._next_delay(delay))
                    continue
                self.pool.note_error(ch.config.name, up.short())
                if up.kind == "not_found":
                    raise BackendError(
                        "Google no longer knows this prediction's operation (it may have "
                        f"expired): {up.message}") from None
                raise self._failure(up) from None
            delay = self._next_delay(delay)
        return current

    def _next_delay(self, delay: float) -> float:
        gs = self.gs
        return min(gs.poll_max_s, max(gs.poll_initial_s, delay * gs.poll_multiplier))

    @staticmethod
    def _video_of(op: types.GenerateVideosOperation) -> types.Video:
        if op.error:
            message = str(op.error.get("message") or op.error)
            if _SAFETY_RE.search(message):
                raise BackendError(POLICY_MESSAGE + f" (Google: {message})", nsfw=True)
            raise BackendError(f"Google could not make the video: {message}")
        result = op.response or op.result
        videos = [g.video for g in (result.generated_videos or []) if g.video] if result else []
        if videos:
            return videos[0]
        if result is not None and (result.rai_media_filtered_count
                                   or result.rai_media_filtered_reasons):
            reasons = "; ".join(result.rai_media_filtered_reasons or [])
            raise BackendError(POLICY_MESSAGE + (f" (Google: {reasons})" if reasons else ""),
                               nsfw=True)
        raise BackendError("Google finished without returning a video. " + NOT_CHARGED)

    # --- outputs ---------------------------------------------------------------------------

    async def _save(self, ch: _Channel, video: types.Video, out: Path) -> None:
        if video.video_bytes:
            await asyncio.to_thread(out.write_bytes, video.video_bytes)
            return
        uri = video.uri or ""
        if uri.startswith("gs://"):
            await self._retrying(lambda: self._download_gcs(ch, uri, out), ch)
        elif ch.config.mode == "gemini" and "files/" in uri:
            # The SDK takes the file id out of the URI and downloads it from the channel's
            # base URL (…/files/{id}:download?alt=media), following Google's redirect.
            await self._retrying(
                lambda: ch.client.aio.files.download(file=video, destination=str(out)), ch)
        else:
            raise BackendError("Google returned the video at an address reelgate cannot "
                               f"fetch ({uri.split(':', 1)[0] or 'none'}). " + NOT_CHARGED)
        if not out.exists() or out.stat().st_size == 0:
            raise BackendError("Google returned an empty video file. " + NOT_CHARGED)

    async def _retrying(self, fn: Any, ch: _Channel) -> None:
        delay = 1.0
        for attempt in range(1, self.gs.download_attempts + 1):
            try:
                await fn()
                return
            except BackendError:
                raise
            except Exception as exc:  # sorted below
                up = classify_error(exc)
                self.pool.note_error(ch.config.name, f"download: {up.short()}")
                if up.kind == "not_found":
                    raise BackendError("The video is no longer available at Google (generated "
                                       "files are kept for 2 days). " + NOT_CHARGED) from None
                if up.kind not in ("quota", "unavailable") or attempt == self.gs.download_attempts:
                    raise BackendError(f"The video could not be downloaded from Google "
                                       f"({up.short()}). " + NOT_CHARGED) from None
                await asyncio.sleep(max(delay, up.retry_after or 0.0))
                delay *= 2

    async def _download_gcs(self, ch: _Channel, uri: str, out: Path) -> None:
        from google.auth.transport.requests import Request

        bucket, _, name = uri[len("gs://"):].partition("/")
        creds = ch.credentials
        headers = {}
        if creds is not None:
            if not creds.valid:
                await asyncio.to_thread(creds.refresh, Request())
            headers["Authorization"] = f"Bearer {creds.token}"
        url = (f"{self.gs.storage_base_url.rstrip('/')}/storage/v1/b/{quote(bucket, safe='')}"
               f"/o/{quote(name, safe='')}")
        async with httpx.AsyncClient(timeout=self.gs.request_timeout_s,
                                     follow_redirects=True) as client:
            async with client.stream("GET", url, params={"alt": "media"},
                                     headers=headers) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    from google.genai import errors as genai_errors

                    try:
                        body = resp.json()
                    except ValueError:
                        body = {"message": resp.text[:200]}
                    raise genai_errors.APIError(resp.status_code, body, resp)
                with open(out, "wb") as f:
                    async for chunk in resp.aiter_bytes():
                        f.write(chunk)


def _image(data: bytes) -> types.Image:
    """Veo takes PNG, JPEG or WebP; anything else that passed intake is re-encoded as PNG."""
    from google.genai import types
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        mime = _IMAGE_MIME.get(img.format or "")
        if mime is None:
            buf = io.BytesIO()
            img.convert("RGBA" if "A" in img.getbands() else "RGB").save(buf, "PNG")
            data, mime = buf.getvalue(), "image/png"
    return types.Image(image_bytes=data, mime_type=mime)


def _source_parts(job: Job) -> tuple[dict[str, Any], dict[str, Any]]:
    """The job's inputs as the SDK takes them: (GenerateVideosSource fields, config fields)."""
    from google.genai import types

    source: dict[str, Any] = {"prompt": job.prompt}
    config: dict[str, Any] = {}
    if job.inputs.image is not None:
        source["image"] = _image(job.inputs.image)
    if job.inputs.last_image is not None:
        config["last_frame"] = _image(job.inputs.last_image)
    if job.inputs.images:
        config["reference_images"] = [
            types.VideoGenerationReferenceImage(image=_image(b), reference_type="ASSET")
            for b in job.inputs.images
        ]
    return source, config
