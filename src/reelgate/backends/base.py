"""The Backend port: what every backend is and declares. A job in, an MP4 file out, or a
BackendError.

``Job`` is reelgate's one type for a prediction's parameters: built once at intake from the
validated request (requests.py), stored on the row as its ``params`` (``to_params``), read
back by the worker (``from_params``) and handed to the backend with the input bytes and the
runner's callbacks. A new request field is one field here (plus the wire field in
requests.py's body and the backend that uses it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from reelgate import catalog
from reelgate.errors import InvalidInput

__all__ = [
    "Backend",
    "BackendBase",
    "BackendError",
    "Cancelled",
    "Capabilities",
    "Inputs",
    "Job",
]


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


# Marks the fields of Job that are the prediction's parameters (stored on the row); the
# rest is the run: input bytes, the upstream handle and the runner's callbacks.
_PARAM = {"param": True}


@dataclass(frozen=True)
class Job:
    id: str
    model: str  # catalog name, e.g. "veo3.1-fast" or "local/wan2.2-5b"
    scene: str  # "text-to-video", ...
    prompt: str = field(metadata=_PARAM)
    aspect_ratio: str = field(default="16:9", metadata=_PARAM)
    # The resolution to deliver (after enable_upsample); stored as "output_resolution".
    resolution: str = field(default="720p", metadata={"param": "output_resolution"})
    duration: int = field(default=8, metadata=_PARAM)
    generate_audio: bool = field(default=True, metadata=_PARAM)
    enhance_prompt: bool = field(default=True, metadata=_PARAM)
    negative_prompt: str | None = field(default=None, metadata=_PARAM)
    seed: int | None = field(default=None, metadata=_PARAM)
    enable_upsample: bool = field(default=False, metadata=_PARAM)
    # The resolution the client asked for (stored as "resolution"); None: ``resolution``.
    requested_resolution: str | None = field(default=None, metadata={"param": "resolution"})
    # Which inputs the request carries: known at intake before any byte is fetched (what
    # ``check`` decides on); ``inputs`` adds to them once the bytes are read.
    has_image: bool = field(default=False, metadata=_PARAM)
    has_last_image: bool = field(default=False, metadata=_PARAM)
    reference_count: int = field(default=0, metadata=_PARAM)
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

    def __post_init__(self) -> None:
        # Input bytes imply the input is there (jobs built in code give only the bytes).
        i = self.inputs
        if i.image is not None and not self.has_image:
            object.__setattr__(self, "has_image", True)
        if i.last_image is not None and not self.has_last_image:
            object.__setattr__(self, "has_last_image", True)
        if len(i.images) > self.reference_count:
            object.__setattr__(self, "reference_count", len(i.images))
        if self.requested_resolution is None:
            object.__setattr__(self, "requested_resolution", self.resolution)

    # --- the row's params ------------------------------------------------------------------

    def to_params(self) -> dict[str, Any]:
        """The parameters as stored on the prediction row (its ``params`` JSON)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            key = f.metadata.get("param")
            if key:
                out[f.name if key is True else key] = getattr(self, f.name)
        return out

    @classmethod
    def from_params(cls, id: str, model: str, scene: str, params: Mapping[str, Any],
                    **run: Any) -> Job:
        """The job a stored row describes; ``run`` adds the inputs, handle and callbacks.
        Keys a row lacks (written by an older version) take the defaults."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f.metadata.get("param")
            if not key:
                continue
            name = f.name if key is True else key
            if name in params:
                kwargs[f.name] = params[name]
        return cls(id=id, model=model, scene=scene, **kwargs, **run)


# --- what a backend declares ---------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What a backend can make for one model, as data: read by ``check`` (refusals at
    intake), the model list, and the contract suite (which cases apply)."""

    scenes: tuple[str, ...] = catalog.SCENES
    resolutions: tuple[str, ...] = catalog.RESOLUTIONS  # deliverable (after upsample)
    aspect_ratios: tuple[str, ...] = catalog.ASPECT_RATIOS
    durations: tuple[int, ...] = catalog.DURATIONS
    audio: bool = True  # can make a soundtrack
    silent: bool = True  # can leave it out (generate_audio=false)
    seed: bool = True
    last_image: bool = True
    reference_images: bool = True
    # The MP4 has exactly the asked frame size and length (a sandbox render, a local model),
    # as opposed to whatever an upstream returns.
    exact_output: bool = False
    # Reports (step, steps) through ``job.report_progress`` and stops when told to cancel.
    progress: bool = False
    # Writes an upstream handle (``job.checkpoint``) and resumes from it.
    resumable: bool = False

    @classmethod
    def union(cls, caps: list[Capabilities]) -> Capabilities:
        """What at least one of several backends can make (a mix of them)."""
        if not caps:
            return cls()

        def joined(name: str) -> tuple[Any, ...]:
            seen = {v for c in caps for v in getattr(c, name)}
            return tuple(v for v in getattr(cls(), name) if v in seen)

        return cls(
            scenes=joined("scenes"), resolutions=joined("resolutions"),
            aspect_ratios=joined("aspect_ratios"), durations=joined("durations"),
            audio=any(c.audio for c in caps), silent=any(c.silent for c in caps),
            seed=any(c.seed for c in caps), last_image=any(c.last_image for c in caps),
            reference_images=any(c.reference_images for c in caps),
            exact_output=all(c.exact_output for c in caps),
            progress=all(c.progress for c in caps),
            resumable=any(c.resumable for c in caps),
        )

    def refuse_outside(self, job: Job, where: str) -> None:
        """InvalidInput naming the first field of ``job`` these capabilities exclude."""
        if job.scene not in self.scenes:
            raise InvalidInput("scene", f"{job.scene} is not offered by {where}; it offers "
                               f"{', '.join(self.scenes)}")
        if job.resolution not in self.resolutions:
            field_name = "enable_upsample" if job.enable_upsample else "resolution"
            raise InvalidInput(field_name, f"{job.resolution} is not offered by {where}; it "
                               f"offers {', '.join(self.resolutions)}")
        if job.aspect_ratio not in self.aspect_ratios:
            raise InvalidInput("aspect_ratio", f"{job.aspect_ratio} is not offered by {where}")
        if job.duration not in self.durations:
            raise InvalidInput("duration", f"{job.duration} s is not offered by {where}; it "
                               f"offers {', '.join(map(str, self.durations))}")
        if job.generate_audio and not self.audio:
            raise InvalidInput("generate_audio", f"{where} makes silent video; send "
                               "generate_audio=false")
        if not job.generate_audio and not self.silent:
            raise InvalidInput("generate_audio", f"cannot be false on {where} (it always "
                               "generates audio); leave it out")
        if job.seed is not None and not self.seed:
            raise InvalidInput("seed", f"is not supported by {where}; leave it out")
        if job.has_last_image and not self.last_image:
            raise InvalidInput("last_image", f"{where} takes no last frame")
        if job.reference_count and not self.reference_images:
            raise InvalidInput("images", f"reference images are not offered by {where}")


class BackendError(Exception):
    """The prediction fails with ``message`` (shown to the user as ``error``), uncharged.

    ``nsfw`` marks a safety block of the output. ``retryable`` says another attempt may
    succeed (upstream quota, 5xx, no free channel): the mix backend then hands the job to
    its next member (if that member wrote no handle yet), and the runner calls ``generate``
    again in place, up to the backend's ``retries`` times, when the error came before any
    upstream handle was written (so nothing upstream can be paid twice), then fails the
    prediction. The built-in backends declare ``retries = 0``: they retry their upstream
    calls themselves. It also labels the upstream-errors metric."""

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


@runtime_checkable
class Backend(Protocol):
    """The port. A backend is built from the settings by its registry factory (cheap, no
    I/O: API processes build backends only to ``check`` and price requests), started by the
    worker process that runs it, and closed when that process stops."""

    name: str
    # Jobs one worker process runs at once on this backend (settings.backend_concurrency
    # overrides it): a GPU runs one, a relay to an upstream waits on many.
    concurrency: int
    # Seconds one ``generate`` may take before the runner fails the prediction (None: no
    # bound of the runner's; the backend's own waits bound it).
    timeout: float | None
    # Extra attempts the runner makes in place after a retryable BackendError raised before
    # any upstream handle was written (0: the first such error fails the prediction).
    retries: int

    def capabilities(self, model: str) -> Capabilities:
        """What this backend can make for ``model`` (a catalog name)."""
        ...

    def check(self, job: Job) -> None:
        """Refuse at intake (InvalidInput: 400; ApiError 500 when not configured) what this
        backend cannot make. Pure and configuration-based: never calls out."""
        ...

    def price(self, job: Job) -> int | None:
        """The job's price in micro-units, or None for the catalog's price."""
        ...

    def describe(self, model: str) -> dict[str, Any]:
        """Extra fields of ``model``'s entry in the model list (GET /api/v3/models)."""
        ...

    async def start(self) -> None:
        """Open what generation needs (clients, process pools, loaded weights). Called once
        per worker process; calling it again does nothing."""
        ...

    async def close(self) -> None:
        """Release what ``start`` or ``generate`` opened. Idempotent."""
        ...

    async def generate(self, job: Job, workdir: Path) -> Path:
        """Produce the video for ``job`` as an MP4 file inside ``workdir`` and return its
        path. Raise BackendError for a failure the user should see, Cancelled when the user
        cancelled it (``job.report_progress`` answered True)."""
        ...


class BackendBase:
    """Defaults of the port for a backend to inherit: capabilities of the whole catalog,
    no price of its own, no lifecycle. Not required: the Protocol is the contract."""

    name: str = "base"
    concurrency: int = 1
    timeout: float | None = None
    retries: int = 0

    def capabilities(self, model: str) -> Capabilities:
        return Capabilities()

    def check(self, job: Job) -> None:
        self.capabilities(job.model).refuse_outside(job, f"the {self.name} backend")

    def price(self, job: Job) -> int | None:
        return None

    def describe(self, model: str) -> dict[str, Any]:
        return {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
