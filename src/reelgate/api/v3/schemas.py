"""Response shapes of the v3 API, for OpenAPI and for building answers."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Urls(BaseModel):
    get: str = Field(description="Absolute URL to read this prediction.")


class Progress(BaseModel):
    step: int = Field(description="Denoising steps done.")
    steps: int = Field(description="Denoising steps in all.")
    percent: float


class PredictionData(BaseModel):
    id: str
    model: str = Field(description='e.g. "google/veo3.1-fast/text-to-video"')
    outputs: list[str] = Field(description="Video URLs; empty until completed.")
    urls: Urls
    status: str = Field(description="created, processing, completed or failed")
    error: str = Field(description="Empty unless failed.")
    executionTime: int = Field(description="Milliseconds from start to end (or to now).")
    timings: dict[str, int]
    has_nsfw_contents: list[bool]
    created_at: str
    dialect: str = Field("v3", description="The API it was asked through: v3, google, openai")
    cost: str = Field("0.000000", description="Held or charged price; 0 once refunded.")
    progress: Progress | None = Field(
        None, description="Local backend only: step i of n while it denoises (absent "
        "for other backends).")


class PredictionEnvelope(BaseModel):
    code: int = 200
    message: str = "success"
    data: PredictionData


class ErrorDetail(BaseModel):
    message: str
    type: str


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Invalid parameters, or a content-policy block (type \"503\")",
        401: "API key missing or invalid",
        403: "Not allowed for this key",
        404: "Unknown model, scene or prediction",
        429: "Rate or concurrency limit",
        500: "Internal error",
    }.items()
}
