"""Validation of a create request against the catalog. Pure: no I/O, no settings.

Types are checked by Pydantic (the same model documents the body in OpenAPI); the catalog's
rules (allowed values, capabilities, cross-field rules) are checked here, each with a message
that names the field and the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from reelgate import catalog
from reelgate.backends.base import Job
from reelgate.errors import InvalidInput, NotFound

MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**32 - 1
RANDOM_SEED = -1
# A URL field holds an https:// URL (browsers stop near 2,000 characters; 8 KiB is generous)
# or a data: URI, which the fetcher bounds by its decoded size (REELGATE_FETCH_MAX_BYTES).
MAX_URL_CHARS = 8192


class CreateBody(BaseModel):
    """The body of ``POST /api/v3/google/{model}/{scene}``. Unknown fields are ignored, as
    the hosted services do."""

    model_config = ConfigDict(extra="ignore")

    # Strict types: "yes", "8" or 1 are not a boolean or an integer here; a client that
    # sends them has a bug that coercion would hide (wrong types are a 400, API.md).
    prompt: StrictStr = Field(
        description=f"What the video shows; audio cues allowed; at most {MAX_PROMPT_CHARS} "
        "characters."
    )
    image: StrictStr | None = Field(None, description="First frame: https:// URL or data: URI.")
    images: list[StrictStr] | None = Field(
        None, description="1 to 3 reference images (reference-to-video only)."
    )
    last_image: StrictStr | None = Field(
        None, description="Last frame; only together with image."
    )
    aspect_ratio: StrictStr | None = Field(None, description="16:9 (default) or 9:16.",
                                           max_length=16)
    resolution: StrictStr | None = Field(None, description="720p (default), 1080p or 4k.",
                                         max_length=16)
    duration: StrictInt | None = Field(None, description="Seconds: 4, 6 or 8 (default).")
    enhance_prompt: StrictBool | None = Field(
        None, description="Let the backend rewrite the prompt."
    )
    enable_upsample: StrictBool | None = Field(
        None, description="Deliver the next resolution up (720p→1080p, 1080p→4k)."
    )
    enable_sync_mode: StrictBool | None = Field(
        None, description="Hold the request until the prediction ends."
    )
    enable_base64_output: StrictBool | None = Field(
        None,
        description="Answer with each output video as naked base64 (no data: prefix) instead "
        "of a URL, in the sync answer and when reading the prediction; not with a webhook.",
    )
    negative_prompt: StrictStr | None = Field(
        None, description=f"What the video should not show; at most {MAX_PROMPT_CHARS} "
        "characters."
    )
    seed: StrictInt | None = Field(None, description=f"-1 (random) or 0 to {MAX_SEED}.")
    generate_audio: StrictBool | None = None
    webhook: StrictStr | None = Field(
        None, description="URL to POST the prediction to when it ends (or ?webhook=...).",
        max_length=MAX_URL_CHARS,
    )


@dataclass(frozen=True)
class CreateRequest:
    """A request that passed every rule, with defaults applied: the prediction's parameters
    as one ``Job`` (what is stored and what the backend gets), plus what only this request
    carries (input URLs, fetched at intake; how to answer)."""

    job: Job  # id "" until the row is stored
    image: str | None
    images: tuple[str, ...]
    last_image: str | None
    enable_sync_mode: bool
    enable_base64_output: bool = False

    # The job's parameters, read through (routes, prices and pages read them here).
    model = property(lambda self: self.job.model)
    scene = property(lambda self: self.job.scene)
    prompt = property(lambda self: self.job.prompt)
    negative_prompt = property(lambda self: self.job.negative_prompt)
    aspect_ratio = property(lambda self: self.job.aspect_ratio)
    duration = property(lambda self: self.job.duration)
    enhance_prompt = property(lambda self: self.job.enhance_prompt)
    enable_upsample = property(lambda self: self.job.enable_upsample)
    seed = property(lambda self: self.job.seed)
    generate_audio = property(lambda self: self.job.generate_audio)

    @property
    def resolution(self) -> str:
        """As requested (``output_resolution`` is what is delivered)."""
        return self.job.requested_resolution or self.job.resolution

    @property
    def output_resolution(self) -> str:
        return self.job.resolution

    def params(self) -> dict[str, Any]:
        """What is stored on the row for the worker (input URLs are fetched at request time
        and stored separately)."""
        return {**self.job.to_params(), "enable_base64_output": self.enable_base64_output}


def resolve_model_scene(model: str, scene: str) -> catalog.Model:
    m = catalog.find(model)
    if m is None:
        available = [*catalog.MODELS, *catalog.LOCAL_MODELS]
        raise NotFound(f"Unknown model '{model}'. Available: {', '.join(available)}")
    if scene not in catalog.SCENES:
        raise NotFound(f"Unknown scene '{scene}'. Available: {', '.join(catalog.SCENES)}")
    if not m.supports(scene):
        raise NotFound(f"Model '{model}' has no {scene} scene; it offers {', '.join(m.scenes)}")
    return m


def _type_error(exc: ValidationError) -> InvalidInput:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "body"
    if err["type"] == "missing":
        return InvalidInput(loc, "is required")
    msg = err["msg"]
    # Pydantic says "Input should be ..."; the field name already stands in front.
    if msg.startswith("Input "):
        msg = msg[len("Input ") :]
    return InvalidInput(loc, msg)


def _blank_to_none(value: Any) -> Any:
    # Clients often send "" or null for an unused optional field; both mean "not given".
    if value is None or value == [] or (isinstance(value, str) and not value.strip()):
        return None
    return value


def validate_create(model: str, scene: str, body: Any) -> CreateRequest:
    m = resolve_model_scene(model, scene)
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    cleaned = {k: v if k == "prompt" else _blank_to_none(v) for k, v in body.items()}
    if cleaned.get("prompt") is None:
        cleaned.pop("prompt", None)
    try:
        b = CreateBody.model_validate(cleaned)
    except ValidationError as exc:
        raise _type_error(exc) from None

    prompt = b.prompt.strip()
    if not prompt:
        raise InvalidInput("prompt", "must not be empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidInput("prompt", f"must be at most {MAX_PROMPT_CHARS} characters")

    aspect_ratio = b.aspect_ratio or str(catalog.DEFAULTS["aspect_ratio"])
    if aspect_ratio not in catalog.ASPECT_RATIOS:
        raise InvalidInput(
            "aspect_ratio",
            f"must be one of {', '.join(catalog.ASPECT_RATIOS)} (got {aspect_ratio!r})",
        )
    resolution = (b.resolution or str(catalog.DEFAULTS["resolution"])).lower()
    if resolution not in catalog.RESOLUTIONS:
        raise InvalidInput(
            "resolution", f"must be one of {', '.join(catalog.RESOLUTIONS)} (got {b.resolution!r})"
        )
    # A model served from the operator's GPUs has its own durations (its declaration);
    # Veo's rules (4/6/8 s, 8 s with 1080p, 4k, a last frame or references) are Google's.
    local = catalog.local_config(m.name)
    veo_rules = local is None
    if local is not None:
        duration = b.duration if b.duration is not None else local.duration_default
        try:
            local.check_duration(duration)
        except ValueError as exc:
            raise InvalidInput("duration", str(exc)) from None
    else:
        duration = b.duration if b.duration is not None else int(catalog.DEFAULTS["duration"])  # type: ignore[call-overload]
    if veo_rules and duration not in catalog.DURATIONS:
        raise InvalidInput(
            "duration",
            f"must be one of {', '.join(map(str, catalog.DURATIONS))} seconds (got {duration})",
        )
    if (veo_rules and resolution in catalog.FULL_LENGTH_ONLY_RESOLUTIONS
            and duration != catalog.FULL_LENGTH_S):
        raise InvalidInput(
            "resolution",
            f"{resolution} is only available with duration {catalog.FULL_LENGTH_S} "
            f"(got {duration})",
        )

    negative_prompt = (b.negative_prompt or "").strip() or None
    if negative_prompt is not None and len(negative_prompt) > MAX_PROMPT_CHARS:
        raise InvalidInput("negative_prompt", f"must be at most {MAX_PROMPT_CHARS} characters")

    image, last_image = b.image, b.last_image
    images = tuple(b.images) if b.images is not None else None
    for name, url in (("image", image), ("last_image", last_image),
                      *((f"images[{i}]", u) for i, u in enumerate(images or ()))):
        if url is not None and not url[:5].lower() == "data:" and len(url) > MAX_URL_CHARS:
            raise InvalidInput(name, f"must be a URL of at most {MAX_URL_CHARS} characters "
                               "(or a data: URI)")

    if scene == "image-to-video" and image is None:
        raise InvalidInput("image", "is required for image-to-video")
    if scene == "text-to-video" and image is not None:
        raise InvalidInput("image", "is not accepted by text-to-video; use image-to-video")
    if scene == "reference-to-video" and image is not None:
        raise InvalidInput(
            "image", "is not accepted by reference-to-video; pass reference images in images"
        )
    if last_image is not None and image is None:
        raise InvalidInput("last_image", "is only allowed together with image")
    if veo_rules and last_image is not None and duration != catalog.FULL_LENGTH_S:
        raise InvalidInput(
            "duration", f"must be {catalog.FULL_LENGTH_S} when last_image is given (got {duration})"
        )

    if images is not None and scene != "reference-to-video":
        raise InvalidInput("images", "is only allowed for reference-to-video")
    if scene == "reference-to-video":
        if not images:
            raise InvalidInput("images", "reference-to-video needs 1 to 3 reference images")
        if len(images) > catalog.MAX_REFERENCE_IMAGES:
            raise InvalidInput(
                "images",
                f"at most {catalog.MAX_REFERENCE_IMAGES} reference images (got {len(images)})",
            )
        for i, url in enumerate(images):
            if not isinstance(url, str) or not url.strip():
                raise InvalidInput(f"images[{i}]", "must be a non-empty URL")
        if veo_rules and duration != catalog.FULL_LENGTH_S:
            raise InvalidInput(
                "duration",
                f"must be {catalog.FULL_LENGTH_S} with reference images (got {duration})",
            )

    # WaveSpeed documents seed -1 as "random", and its clients send it by default.
    seed = None if b.seed == RANDOM_SEED else b.seed
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InvalidInput("seed", f"must be -1 (random) or between 0 and {MAX_SEED}")

    enable_upsample = _default(b.enable_upsample, "enable_upsample")
    job = Job(
        id="",
        model=m.name,
        scene=scene,
        prompt=prompt,
        aspect_ratio=aspect_ratio,
        resolution=catalog.UPSAMPLE_TO[resolution] if enable_upsample else resolution,
        requested_resolution=resolution,
        duration=duration,
        enhance_prompt=_default(b.enhance_prompt, "enhance_prompt"),
        enable_upsample=enable_upsample,
        negative_prompt=negative_prompt,
        seed=seed,
        generate_audio=_audio(b.generate_audio, m),
        has_image=image is not None,
        has_last_image=last_image is not None,
        reference_count=len(images or ()),
    )
    return CreateRequest(
        job=job,
        image=image,
        images=images or (),
        last_image=last_image,
        enable_sync_mode=_default(b.enable_sync_mode, "enable_sync_mode"),
        enable_base64_output=_default(b.enable_base64_output, "enable_base64_output"),
    )


def _audio(value: bool | None, m: catalog.Model) -> bool:
    # A silent local model defaults to silent: only an explicit ask for audio is refused.
    local = catalog.local_config(m.name)
    if value is None and local is not None:
        return bool(local.audio)
    return _default(value, "generate_audio")


def _default(value: bool | None, name: str) -> bool:
    return bool(catalog.DEFAULTS[name]) if value is None else value
