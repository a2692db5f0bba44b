"""The ``mix`` backend: one model served by several backends (e.g. Google first, an upstream
v3 provider when Google answers 429), each a member of the same channel pool as Google's
keys and the v3 provider's accounts (weights, caps, cool-downs; backends/google/channels.py).

Members are tried by ``priority`` (0 first), by weight within one priority. A member that
fails *before it submitted anything* with a retryable error (quota, every channel busy,
upstream down) is cooled down and the next member takes the job. Once a member has written
an upstream handle (``job.checkpoint``), the prediction belongs to it: the handle is stored
as ``{"member", "ref"}`` and a restarted worker resumes on that member, never elsewhere.

Operator's side: ``REELGATE_MODEL_BACKENDS='{"veo3.1-fast": "mix"}'`` and
``REELGATE_MIX_MEMBERS='[{"name": "google"}, {"name": "v3", "priority": 1}]'``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from reelgate.backends.base import Backend, BackendBase, BackendError, Capabilities, Job
from reelgate.backends.google.channels import ChannelPool, NoChannel
from reelgate.backends.registry import NotConfigured, Resolve, register
from reelgate.settings import ReelgateSettings

if TYPE_CHECKING:
    from reelgate.settings import Settings

__all__ = ["MixMember", "MixSettings", "MixedBackend", "check_mixed_request",
           "load_mix_settings"]

log = logging.getLogger("reelgate.mix")


class MixMember(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str  # a backend: google, v3, sandbox
    weight: int = Field(1, ge=0)
    priority: int = 0  # lower first
    max_concurrency: int | None = Field(None, ge=0)
    rate_per_minute: int | None = Field(None, ge=0)

    @property
    def mode(self) -> str:
        return "mix"


class MixSettings(ReelgateSettings):
    model_config = SettingsConfigDict(env_prefix="REELGATE_MIX_", env_file_encoding="utf-8",
                                      extra="ignore")

    members: list[MixMember] = Field(default_factory=list)
    # How long a member that failed retryably is passed over.
    cooldown_s: float = 30.0
    # Longest a job waits for a member to free up when all are cooling down or full.
    acquire_timeout_s: float = 600.0
    # Predictions one worker process runs at once through the mix.
    concurrency: int = Field(1000, ge=1)


@lru_cache(maxsize=1)
def load_mix_settings() -> MixSettings:
    return MixSettings()


NO_MEMBERS = "The mix backend has no members on this server: set REELGATE_MIX_MEMBERS."


def check_mixed_request(job: Job, members: list[Backend]) -> None:
    """Intake: accept what at least one member can make; otherwise the first refusal."""
    from reelgate.errors import ApiError

    first: ApiError | None = None
    for member in members:
        try:
            member.check(job)
            return
        except ApiError as exc:
            first = first or exc
    if first is not None:
        raise first
    raise ApiError(500, NO_MEMBERS)


class MixedBackend(BackendBase):
    name = "mix"

    def __init__(self, ms: MixSettings, backends: dict[str, Backend], *,
                 status_path: Path | None = None) -> None:
        missing = [m.name for m in ms.members if m.name not in backends]
        if missing or not ms.members:
            raise ValueError(f"mix members not configured as backends: {', '.join(missing)}"
                             if missing else "the mix backend needs members")
        self.ms = ms
        self.members = {m.name: backends[m.name] for m in ms.members}
        self.tiers = sorted({m.priority for m in ms.members})
        self.by_tier = {t: [m.name for m in ms.members if m.priority == t] for t in self.tiers}
        self.pool = ChannelPool(ms.members, status_path=status_path)
        self.concurrency = ms.concurrency

    def capabilities(self, model: str) -> Capabilities:
        return Capabilities.union([m.capabilities(model) for m in self.members.values()])

    def check(self, job: Job) -> None:
        check_mixed_request(job, list(self.members.values()))

    # Members are backends of the same process: starting and closing them again is
    # harmless (both are idempotent), and a worker running only the mix needs them.
    async def start(self) -> None:
        for member in self.members.values():
            await member.start()

    async def close(self) -> None:
        for member in self.members.values():
            await member.close()

    async def generate(self, job: Job, workdir: Path) -> Path:
        if job.upstream_ref:
            doc = json.loads(job.upstream_ref)
            name = str(doc["member"])
            if name not in self.members or self.pool.attach(name) is None:
                raise BackendError(f"This prediction is being made by backend '{name}', "
                                   "which is no longer a member of this server's mix.")
            ok = False
            try:
                out = await self.members[name].generate(
                    replace(job, upstream_ref=str(doc["ref"]),
                            checkpoint=self._checkpoint(job, name, {})), workdir)
                ok = True
                return out
            finally:
                self.pool.release(name, ok=ok)
        tried: set[str] = set()
        last: BackendError | None = None
        while len(tried) < len(self.members):
            taken = await self._take(tried)
            if taken is None:
                break
            name = taken
            tried.add(name)
            wrote: dict[str, bool] = {}
            ok = False
            try:
                out = await self.members[name].generate(
                    replace(job, checkpoint=self._checkpoint(job, name, wrote)), workdir)
                ok = True
                return out
            except BackendError as exc:
                if not exc.retryable or wrote:
                    raise
                last = exc
                self.pool.cool_down(name, self.ms.cooldown_s, exc.message[:200])
                log.info("prediction %s: %s could not take it (%s); trying the next member",
                         job.id, name, exc.message)
            finally:
                self.pool.release(name, ok=ok)
        raise last or BackendError("No backend of this server's mix is available right now. "
                                   "You were not charged; please try again.", retryable=True)

    async def _take(self, tried: set[str]) -> str | None:
        """The next member: the first priority tier with a ready one, else wait for any."""
        for tier in self.tiers:
            names = [n for n in self.by_tier[tier] if n not in tried]
            state = self.pool.try_acquire(names) if names else None
            if state is not None:
                return state.name
        rest = [n for n in self.members if n not in tried]
        if not rest:
            return None
        try:
            return (await self.pool.acquire(rest, timeout=self.ms.acquire_timeout_s)).name
        except NoChannel:
            return None

    @staticmethod
    def _checkpoint(job: Job, name: str, wrote: dict[str, bool]):  # type: ignore[no-untyped-def]
        async def checkpoint(ref: str) -> None:
            wrote["yes"] = True
            await job.checkpoint(json.dumps({"member": name, "ref": ref},
                                            separators=(",", ":")))

        return checkpoint


def _build(settings: Settings, resolve: Resolve) -> Backend:
    ms = load_mix_settings()
    if not ms.members:
        raise NotConfigured(NO_MEMBERS)
    backends: dict[str, Backend] = {}
    first: NotConfigured | None = None
    for member in ms.members:
        try:
            backends[member.name] = resolve(member.name)
        except NotConfigured as exc:
            # A member not set up here is left out; the others serve the model.
            first = first or exc
    if not backends:
        raise first or NotConfigured(NO_MEMBERS)
    available = ms.model_copy(update={"members": [m for m in ms.members
                                                  if m.name in backends]})
    return MixedBackend(available, backends, status_path=settings.data_dir / "mix-members.json")


register("mix", _build, composite=True)
