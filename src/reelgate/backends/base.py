"""What every backend is: a job in, an MP4 file out, or a BackendError."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


async def _no_checkpoint(ref: str) -> None:
    return None


async def _no_intent(intent: str | None) -> None:
    return None


async def _no_progress(step: int, steps: int) -> bool:
    return False


@dataclass(frozen=True)
class Inputs:
    """Input images as fetched and checked at request time (raw encoded bytes)."""

    image: bytes | None = None
    last_image: bytes | None = None
    images: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Job:
    id: str
    model: str  # public name, e.g. "veo3.1-fast"
    scene: str  # "text-to-video", ...
    prompt: str
    aspect_ratio: str = "16:9"
    resolution: str = "720p"  # the resolution to deliver (after enable_upsample)
    duration: int = 8
    generate_audio: bool = True
    enhance_prompt: bool = True
    negative_prompt: str | None = None
    seed: int | None = None
    inputs: Inputs = field(default_factory=Inputs)
    # Durable upstream work: a backend that starts a long-running upstream operation calls
    # ``checkpoint(handle)`` BEFORE waiting on it (the handle is written to the row), and a
    # later attempt of the same prediction finds it in ``upstream_ref`` and resumes polling
    # instead of submitting (and paying) twice.
    #
    # Before each call that may start (and bill) upstream work, a backend calls
    # ``intend(description)``: the intent is on the row before the call leaves, so a worker
    # that dies between the upstream's answer and ``checkpoint`` leaves a trace. A later
    # attempt that finds an intent and no handle does what ``on_unconfirmed`` says (the
    # runner applies "fail" before the backend is called). ``intend(None)`` withdraws an
    # intent whose call certainly did not reach the upstream (refused before it was sent,
    # or answered with an error).
    upstream_ref: str | None = None
    checkpoint: Callable[[str], Awaitable[None]] = field(
        default=_no_checkpoint, compare=False, repr=False
    )
    intend: Callable[[str | None], Awaitable[None]] = field(
        default=_no_intent, compare=False, repr=False
    )
    # "resubmit" (at least once) or "fail" (at most once): also what a backend does when a
    # call's fate is unknown (sent, then the connection broke or timed out).
    on_unconfirmed: str = "resubmit"
    # A backend that works in steps (local denoising) reports ``(step, steps)`` here; the
    # answer says whether the user asked to cancel, so it stops before the next step.
    report_progress: Callable[[int, int], Awaitable[bool]] = field(
        default=_no_progress, compare=False, repr=False
    )


class BackendError(Exception):
    """The prediction fails with ``message`` (shown to the user as ``error``).

    ``nsfw`` marks a safety block of the output; ``retryable`` says another attempt may
    succeed (upstream quota, 5xx)."""

    def __init__(self, message: str, *, nsfw: bool = False, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.nsfw = nsfw
        self.retryable = retryable


class Cancelled(Exception):
    """The user cancelled a running prediction and the backend stopped; ``message`` says
    where (the row ends cancelled and nothing is charged)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Backend(Protocol):
    name: str

    async def generate(self, job: Job, workdir: Path) -> Path:
        """Produce the video for ``job`` as an MP4 file inside ``workdir`` and return its
        path. Raise BackendError for a failure the user should see."""
        ...
