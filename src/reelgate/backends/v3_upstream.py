"""The upstream ``v3`` backend: forward a prediction to another v3 predictions provider
(GPTProto, WaveSpeed, or another reelgate), one channel per base URL + key.

The path of one job: take a channel from the pool (weights, caps, cool-downs, as the Google
backend does) → ``POST {base}/api/v3/google/{model}/{scene}`` → write the upstream prediction
id to the row (``job.checkpoint``) BEFORE waiting, so a restarted worker resumes polling it
and never creates a second one for a stored id → poll ``GET {base}/api/v3/predictions/{id}/
result`` with backoff → download ``outputs[0]`` into the work dir (the runner checks it with
the decoder and stores it in reelgate's storage, like any other output).

A channel that answers 429, 5xx or a network error is cooled down and the next one is tried;
a refused key drops the channel for the job; a content-policy answer (the v3 quirk: 400 with
type "503", or a failed prediction with ``has_nsfw_contents``) fails as a content block,
unpaid, like the Google backend's safety blocks. Plain httpx: the v3 API is four calls, and
the official clients of the providers do not expose the raw answers we sort errors by.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from reelgate.backends.base import Backend, BackendBase, BackendError, Job
from reelgate.backends.google.channels import ChannelPool, NoChannel
from reelgate.backends.registry import NotConfigured, Resolve, register
from reelgate.settings import ReelgateSettings

if TYPE_CHECKING:
    from reelgate.settings import Settings

__all__ = ["UpstreamChannel", "V3UpstreamBackend", "V3UpstreamSettings",
           "load_v3_upstream_settings"]

log = logging.getLogger("reelgate.v3_upstream")

NOT_CHARGED = "You were not charged; please try again."
POLICY_MESSAGE = ("The video was blocked by the upstream provider's content policy and was "
                  "not generated. You were not charged; try a different prompt or input image.")


class UpstreamChannel(BaseModel):
    """One upstream v3 provider account."""

    model_config = ConfigDict(extra="forbid")

    name: str
    base_url: str  # e.g. https://gptproto.com, https://api.wavespeed.ai, http://reelgate:8000
    api_key: str
    weight: int = Field(1, ge=0)
    max_concurrency: int | None = Field(None, ge=0)
    rate_per_minute: int | None = Field(None, ge=0)
    # Public name → the upstream's model name, where it differs (default: the same name).
    models: dict[str, str] = Field(default_factory=dict)
    mode: str = "v3"  # shown in channel listings

    @field_validator("base_url")
    @classmethod
    def _base(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http(s):// URL")
        return v


class V3UpstreamSettings(ReelgateSettings):
    model_config = SettingsConfigDict(env_prefix="REELGATE_V3_UPSTREAM_",
                                      env_file_encoding="utf-8",
                                      extra="ignore")

    # The pool as JSON: [{"name", "base_url", "api_key", "weight", ...}, ...].
    channels: list[UpstreamChannel] = Field(default_factory=list)
    poll_initial_s: float = 5.0
    poll_max_s: float = 30.0
    poll_multiplier: float = 1.5
    max_wait_s: float = 1800.0
    cooldown_429_s: float = 30.0  # when the answer carries no Retry-After
    cooldown_5xx_s: float = 10.0
    cooldown_auth_s: float = 300.0
    submit_attempts: int = Field(6, ge=1)
    acquire_timeout_s: float = 600.0
    request_timeout_s: float = 60.0
    download_attempts: int = Field(4, ge=1)
    # Predictions one worker process relays at once (each mostly waits on the provider).
    concurrency: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _unique(self) -> V3UpstreamSettings:
        names = [c.name for c in self.channels]
        if len(names) != len(set(names)):
            raise ValueError("upstream channel names must be unique")
        return self

    @property
    def configured(self) -> bool:
        return bool(self.channels)


@lru_cache(maxsize=1)
def load_v3_upstream_settings() -> V3UpstreamSettings:
    return V3UpstreamSettings()


@dataclass(frozen=True)
class UpstreamRef:
    """What is written on the row: the channel (it is polled with the same key) and the
    upstream's prediction id."""

    channel: str
    id: str

    def dumps(self) -> str:
        return json.dumps({"channel": self.channel, "id": self.id}, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str) -> UpstreamRef:
        doc = json.loads(raw)
        return cls(str(doc["channel"]), str(doc["id"]))


@dataclass(frozen=True)
class Failure:
    kind: str  # quota, unavailable, auth, policy, invalid, not_found, other
    status: int
    message: str
    retry_after: float | None = None

    def short(self) -> str:
        return f"{self.status} {self.message}".strip()


def _message(resp: httpx.Response) -> tuple[str, str]:
    """(message, type) of a v3 error body, or the text."""
    try:
        err = resp.json().get("error") or {}
        return str(err.get("message") or resp.text[:300]), str(err.get("type") or "")
    except (ValueError, AttributeError):
        return resp.text[:300], ""


def classify(resp: httpx.Response) -> Failure:
    message, type_ = _message(resp)
    code = resp.status_code
    retry_after = None
    if resp.headers.get("retry-after"):
        try:
            retry_after = max(0.0, float(resp.headers["retry-after"]))
        except ValueError:
            retry_after = None
    if code == 429:
        return Failure("quota", code, message, retry_after)
    if code >= 500:
        return Failure("unavailable", code, message, retry_after)
    if code in (401, 403) and "balance" not in message.lower():
        return Failure("auth", code, message)
    if type_ == "503" or "content polic" in message.lower():
        return Failure("policy", code, message)
    if code == 404:
        return Failure("not_found", code, message)
    if code in (400, 422):
        return Failure("invalid", code, message)
    return Failure("other", code, message)


def _data_uri(data: bytes) -> str:
    # Input images travel inline: every v3 provider takes data: URIs, and the images were
    # already fetched and checked at intake (no public URL of ours to hand out).
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        mime = Image.MIME.get(img.format or "", "image/png")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def request_body(job: Job) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": job.prompt,
        "aspect_ratio": job.aspect_ratio,
        # The job carries the resolution to deliver (after enable_upsample): ask for it.
        "resolution": job.resolution,
        "duration": job.duration,
        "generate_audio": job.generate_audio,
        "enhance_prompt": job.enhance_prompt,
    }
    if job.negative_prompt:
        body["negative_prompt"] = job.negative_prompt
    if job.seed is not None:
        body["seed"] = job.seed
    if job.inputs.image is not None:
        body["image"] = _data_uri(job.inputs.image)
    if job.inputs.last_image is not None:
        body["last_image"] = _data_uri(job.inputs.last_image)
    if job.inputs.images:
        body["images"] = [_data_uri(b) for b in job.inputs.images]
    return body


class V3UpstreamBackend(BackendBase):
    """Relays every catalog request as it is (the provider answers for what it cannot do):
    the default capabilities, no check beyond being configured."""

    name = "v3"

    def __init__(self, us: V3UpstreamSettings, *, status_path: Path | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not us.channels:
            raise ValueError("no upstream v3 channel is configured")
        self.us = us
        self.channels = {c.name: c for c in us.channels}
        self.pool = ChannelPool(us.channels, status_path=status_path)
        self.concurrency = us.concurrency
        self._transport = transport
        self._http: httpx.AsyncClient | None = None

    @classmethod
    def from_settings(cls, settings: Settings,
                      us: V3UpstreamSettings | None = None) -> V3UpstreamBackend:
        return cls(us or load_v3_upstream_settings(),
                   status_path=settings.data_dir / "v3-upstream-channels.json")

    @property
    def _client(self) -> httpx.AsyncClient:
        # Opened by start() (or the first job): API processes build this backend only to
        # check requests, and must hold no connection pool for it.
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.us.request_timeout_s,
                                           transport=self._transport, follow_redirects=True)
        return self._http

    async def start(self) -> None:
        self._client  # noqa: B018 - opens the client

    async def close(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    aclose = close

    def _headers(self, ch: UpstreamChannel) -> dict[str, str]:
        return {"Authorization": f"Bearer {ch.api_key}"}

    # --- the job -----------------------------------------------------------------------------

    async def generate(self, job: Job, workdir: Path) -> Path:
        if job.upstream_ref:
            ref = UpstreamRef.loads(job.upstream_ref)
            if ref.channel not in self.channels or self.pool.attach(ref.channel) is None:
                raise BackendError(
                    f"This prediction's video is being made on upstream channel "
                    f"'{ref.channel}', which is no longer configured on this server.")
            log.info("prediction %s: resuming upstream prediction %s on %s", job.id, ref.id,
                     ref.channel)
            started = False
        else:
            ref = await self._submit(job)
            started = True
        ok = False
        try:
            ch = self.channels[ref.channel]
            data = await self._wait(ch, ref.id, started=started)
            workdir.mkdir(parents=True, exist_ok=True)
            out = workdir / f"{job.id}.mp4"
            await self._download(ch, data, out)
            ok = True
            return out
        finally:
            self.pool.release(ref.channel, ok=ok)

    async def _submit(self, job: Job) -> UpstreamRef:
        us = self.us
        eligible = list(self.channels)
        body = await asyncio.to_thread(request_body, job)
        last: Failure | None = None
        for _ in range(us.submit_attempts):
            try:
                state = await self.pool.acquire(eligible, timeout=us.acquire_timeout_s)
            except NoChannel as exc:
                raise BackendError(f"Every upstream provider is busy right now ({exc}). "
                                   + NOT_CHARGED, retryable=True) from None
            ch = self.channels[state.name]
            model = ch.models.get(job.model, job.model)
            url = f"{ch.base_url}/api/v3/google/{model}/{job.scene}"
            try:
                resp = await self._client.post(url, json=body, headers=self._headers(ch))
            except asyncio.CancelledError:
                self.pool.release(ch.name)
                raise
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # The request never reached the provider: another channel may take it.
                self.pool.release(ch.name)
                last = Failure("unavailable", 0, f"{type(exc).__name__}: {exc}")
                self._after_failure(ch.name, last)
                continue
            except httpx.HTTPError as exc:
                # Sent, but no answer: the provider may have made a prediction whose id we
                # will never see. Asking again (here or elsewhere) could pay for it twice,
                # so this prediction fails, unpaid, and the channel cools down.
                self.pool.release(ch.name)
                self._after_failure(ch.name, Failure("unavailable", 0,
                                                     f"{type(exc).__name__}: {exc}"))
                raise BackendError("The upstream provider did not answer the request "
                                   f"({type(exc).__name__}). " + NOT_CHARGED) from None
            if resp.status_code == 200:
                try:
                    upstream_id = str(resp.json()["data"]["id"])
                except (ValueError, KeyError, TypeError):
                    self.pool.release(ch.name)
                    raise BackendError("The upstream provider answered without a prediction "
                                       "id. " + NOT_CHARGED) from None
                ref = UpstreamRef(ch.name, upstream_id)
                # On the row before any waiting: a restart resumes this one.
                try:
                    await job.checkpoint(ref.dumps())
                except BaseException:
                    self.pool.release(ch.name)
                    raise
                log.info("prediction %s: upstream prediction %s on %s", job.id, upstream_id,
                         ch.name)
                return ref
            self.pool.release(ch.name)
            last = classify(resp)
            self._after_failure(ch.name, last)
            if last.kind == "auth":
                eligible.remove(ch.name)
                if eligible:
                    continue
                break
            if last.kind in ("quota", "unavailable"):
                continue
            raise self._failure(last)
        assert last is not None
        if last.kind == "auth":
            raise BackendError(f"The upstream provider refused this server's key "
                               f"({last.short()}). " + NOT_CHARGED)
        raise BackendError(f"No upstream provider accepted the request ({last.short()}). "
                           + NOT_CHARGED, retryable=True)

    def _after_failure(self, name: str, f: Failure) -> None:
        us = self.us
        if f.kind == "quota":
            self.pool.cool_down(name, f.retry_after if f.retry_after is not None
                                else us.cooldown_429_s, f"429 {f.message}")
        elif f.kind == "unavailable":
            self.pool.cool_down(name, f.retry_after if f.retry_after is not None
                                else us.cooldown_5xx_s, f.short())
        elif f.kind == "auth":
            self.pool.cool_down(name, us.cooldown_auth_s, f.short())
        else:
            self.pool.note_error(name, f.short())

    @staticmethod
    def _failure(f: Failure) -> BackendError:
        if f.kind == "policy":
            return BackendError(f"{POLICY_MESSAGE} (upstream: {f.message})", nsfw=True)
        if f.kind == "invalid":
            return BackendError(f"The upstream provider rejected the request: {f.message}")
        return BackendError(f"The upstream provider could not make the video ({f.short()}). "
                            + NOT_CHARGED)

    async def _wait(self, ch: UpstreamChannel, upstream_id: str, *,
                    started: bool) -> dict[str, Any]:
        us = self.us
        url = f"{ch.base_url}/api/v3/predictions/{upstream_id}/result"
        delay = us.poll_initial_s if started else 0.0
        deadline = time.monotonic() + us.max_wait_s
        while True:
            if time.monotonic() + delay > deadline:
                raise BackendError(f"The upstream provider did not finish the video within "
                                   f"{us.max_wait_s:.0f} s. " + NOT_CHARGED)
            await asyncio.sleep(delay)
            delay = min(us.poll_max_s, max(us.poll_initial_s, delay * us.poll_multiplier))
            try:
                resp = await self._client.get(url, headers=self._headers(ch))
            except httpx.HTTPError as exc:
                self.pool.note_error(ch.name, f"poll: {type(exc).__name__}: {exc}")
                continue  # the prediction lives upstream: ask the same channel again
            if resp.status_code != 200:
                f = classify(resp)
                if f.kind in ("quota", "unavailable"):
                    self._after_failure(ch.name, f)
                    delay = max(delay, f.retry_after or 0.0)
                    continue
                self.pool.note_error(ch.name, f"poll: {f.short()}")
                if f.kind == "not_found":
                    raise BackendError("The upstream provider no longer knows this "
                                       f"prediction: {f.message}")
                raise self._failure(f)
            try:
                data = resp.json()["data"]
                status = data["status"]
            except (ValueError, KeyError, TypeError):
                self.pool.note_error(ch.name, "poll: an answer without data.status")
                continue
            if status == "completed":
                if not data.get("outputs"):
                    raise BackendError("The upstream provider finished without a video. "
                                       + NOT_CHARGED)
                return data  # type: ignore[no-any-return]
            if status in ("failed", "cancelled"):
                message = str(data.get("error") or f"the upstream prediction {status}")
                if any(data.get("has_nsfw_contents") or []) or "content polic" in \
                        message.lower():
                    raise BackendError(f"{POLICY_MESSAGE} (upstream: {message})", nsfw=True)
                raise BackendError(f"The upstream provider could not make the video: "
                                   f"{message}")

    async def _download(self, ch: UpstreamChannel, data: dict[str, Any], out: Path) -> None:
        url = str(data["outputs"][0])
        delay = 1.0
        for attempt in range(1, self.us.download_attempts + 1):
            try:
                # Output links are signed or public; no key is sent to a storage host.
                async with self._client.stream("GET", url) as resp:
                    if resp.status_code == 200:
                        with open(out, "wb") as f:
                            async for chunk in resp.aiter_bytes(1024 * 1024):
                                f.write(chunk)
                        if out.stat().st_size > 0:
                            return
                        problem = "an empty file"
                    else:
                        await resp.aread()
                        problem = f"HTTP {resp.status_code}"
                        if resp.status_code < 500 and resp.status_code != 429:
                            break
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            self.pool.note_error(ch.name, f"download: {problem}")
            if attempt < self.us.download_attempts:
                await asyncio.sleep(delay)
                delay *= 2
        raise BackendError(f"The video could not be downloaded from the upstream provider "
                           f"({problem}). " + NOT_CHARGED)


def _build(settings: Settings, resolve: Resolve) -> Backend:
    us = load_v3_upstream_settings()
    if not us.configured:
        raise NotConfigured("The v3 upstream backend is not configured on this server: "
                            "set REELGATE_V3_UPSTREAM_CHANNELS.")
    return V3UpstreamBackend.from_settings(settings, us)


register("v3", _build)
