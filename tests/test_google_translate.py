"""The Google backend's pure parts: settings, the model map, the translation of a v3 request
into a Veo request per mode (and the 400s for what Google would refuse), upstream refs,
error sorting, and the channel pool's choices. No network."""

from __future__ import annotations

import asyncio

import pytest

from reelgate.backends.base import Job
from reelgate.backends.google.backend import (
    UpstreamRef,
    check_google_request,
    classify_error,
    plan_for,
)
from reelgate.backends.google.channels import ChannelPool, NoChannel
from reelgate.backends.google.config import DEFAULT_MODELS, ChannelConfig, GoogleSettings
from reelgate.errors import ApiError, InvalidInput
from reelgate.requests import validate_create

GEMINI = ChannelConfig(name="g", mode="gemini", api_key="k")
VERTEX = ChannelConfig(name="v", mode="vertex", project="p", location="us-central1")


def gs(**kw: object) -> GoogleSettings:
    return GoogleSettings(_env_file=None, **kw)  # type: ignore[arg-type]


def shape(**kw: object) -> Job:
    base: dict[str, object] = {"id": "t", "prompt": "a boat", "model": "veo3.1",
                               "scene": "text-to-video", "aspect_ratio": "16:9",
                               "resolution": "720p", "duration": 8}
    return Job(**{**base, **kw})  # type: ignore[arg-type]


def req(model: str = "veo3.1", scene: str = "text-to-video", **body: object) -> Job:
    return validate_create(model, scene, {"prompt": "a boat", **body}).job


# --- settings and the model map ------------------------------------------------------------


def test_default_map_points_at_live_models_only() -> None:
    for mode, mapping in DEFAULT_MODELS.items():
        assert set(mapping) == {"veo3", "veo3-fast", "veo3-pro", "veo3.1", "veo3.1-fast",
                                "veo3.1-pro"}
        for model_id in mapping.values():
            # The Veo 3.0 ids were shut down on 2026-06-30.
            assert model_id.startswith("veo-3.1-"), (mode, model_id)
    assert DEFAULT_MODELS["gemini"]["veo3.1-fast"] == "veo-3.1-fast-generate-preview"
    assert DEFAULT_MODELS["vertex"]["veo3.1"] == "veo-3.1-generate-001"


def test_operator_map_overrides_defaults_per_channel() -> None:
    s = gs(api_key="k", models={"veo3": "veo-3.1-lite-generate-preview"})
    ch = s.resolved_channels()[0]
    assert s.model_id("veo3", ch) == "veo-3.1-lite-generate-preview"
    assert s.model_id("veo3.1", ch) == "veo-3.1-generate-preview"
    own = ch.model_copy(update={"models": {"veo3": "veo-3.1-fast-generate-preview"}})
    assert s.model_id("veo3", own) == "veo-3.1-fast-generate-preview"
    with pytest.raises(ValueError, match="unknown model name"):
        gs(api_key="k", models={"veo9": "x"})


def test_channel_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gs().resolved_channels() == []
    assert not gs().configured
    keys = gs(api_keys="a,b , c").resolved_channels()
    assert [(c.name, c.api_key, c.mode) for c in keys] == [
        ("key-1", "a", "gemini"), ("key-2", "b", "gemini"), ("key-3", "c", "gemini")]
    vertex = gs(mode="vertex", project="proj", location="europe-west4",
                credentials_file="/sa.json").resolved_channels()
    assert [(c.mode, c.project, c.location, c.credentials_file) for c in vertex] == [
        ("vertex", "proj", "europe-west4", "/sa.json")]
    express = gs(mode="vertex", api_key="xk").resolved_channels()[0]
    assert (express.mode, express.api_key, express.project) == ("vertex", "xk", None)
    # The JSON form, from the environment, with per-channel caps over the defaults.
    monkeypatch.setenv("REELGATE_GOOGLE_CHANNELS", '[{"name": "a", "api_key": "ka", '
                       '"weight": 3, "max_concurrency": 2}, {"name": "b", "mode": "vertex", '
                       '"project": "pb"}]')
    monkeypatch.setenv("REELGATE_GOOGLE_RATE_PER_MINUTE", "5")
    a, b = GoogleSettings().resolved_channels()
    assert (a.weight, a.max_concurrency, a.rate_per_minute) == (3, 2, 5)
    assert (b.mode, b.project, b.location) == ("vertex", "pb", "us-central1")
    with pytest.raises(ValueError, match="needs an api_key"):
        gs(channels=[{"name": "x"}]).resolved_channels()
    with pytest.raises(ValueError, match="unknown fallback"):
        gs(fallbacks="make_it_work")


# --- translation ---------------------------------------------------------------------------


def test_every_field_translates_on_vertex() -> None:
    p = plan_for(shape(model="veo3.1-fast", aspect_ratio="9:16", resolution="1080p", seed=42,
                       generate_audio=False, enhance_prompt=False, negative_prompt="blur"),
                 VERTEX, gs(person_generation="allow_adult", output_gcs_uri="gs://b/out"))
    assert p.describe() == {
        "mode": "vertex", "model_id": "veo-3.1-fast-generate-001", "aspect_ratio": "9:16",
        "resolution": "1080p", "duration": 8, "seed": 42, "generate_audio": False,
        "enhance_prompt": False, "negative_prompt": "blur", "person_generation": "allow_adult",
        "output_gcs_uri": "gs://b/out"}


def test_gemini_api_sends_no_seed_or_audio_flag() -> None:
    p = plan_for(shape(duration=4), GEMINI, gs(output_gcs_uri="gs://b/out"))
    assert (p.model_id, p.duration, p.seed, p.generate_audio, p.enhance_prompt,
            p.output_gcs_uri) == ("veo-3.1-generate-preview", 4, None, None, None, None)


@pytest.mark.parametrize(("field", "kw"), [("seed", {"seed": 7}),
                                           ("generate_audio", {"generate_audio": False})])
def test_gemini_api_refuses_seed_and_silence_unless_a_fallback_is_set(
        field: str, kw: dict[str, object]) -> None:
    with pytest.raises(InvalidInput) as e:
        plan_for(shape(**kw), GEMINI, gs())
    assert e.value.field == field
    assert "Gemini API" in e.value.rule
    fallback = {"seed": "drop_seed", "generate_audio": "audio_always_on"}[field]
    p = plan_for(shape(**kw), GEMINI, gs(fallbacks=fallback))
    assert p.seed is None and p.generate_audio is None and p.notes


def test_lite_model_has_no_4k_and_no_reference_images() -> None:
    lite = gs(models={"veo3.1-fast": "veo-3.1-lite-generate-preview"})
    with pytest.raises(InvalidInput) as e:
        plan_for(shape(model="veo3.1-fast", resolution="4k"), GEMINI, lite)
    assert e.value.field == "resolution" and "veo-3.1-lite-generate-preview" in e.value.rule
    # 4k reached through enable_upsample names that field.
    with pytest.raises(InvalidInput) as e:
        plan_for(shape(model="veo3.1-fast", resolution="4k", enable_upsample=True), GEMINI, lite)
    assert e.value.field == "enable_upsample"
    with pytest.raises(InvalidInput) as e:
        plan_for(shape(model="veo3.1-fast", scene="reference-to-video", reference_count=2),
                 GEMINI, lite)
    assert e.value.field == "images"


def test_operator_fallbacks_for_what_a_model_cannot_do() -> None:
    switch = gs(models={"veo3.1-fast": "veo-3.1-lite-generate-preview"},
                fallback_models={"veo-3.1-lite-generate-preview": "veo-3.1-fast-generate-preview"})
    p = plan_for(shape(model="veo3.1-fast", resolution="4k"), GEMINI, switch)
    assert (p.model_id, p.resolution) == ("veo-3.1-fast-generate-preview", "4k")
    assert "using veo-3.1-fast-generate-preview" in p.notes[0]
    lower = gs(models={"veo3.1-fast": "veo-3.1-lite-generate-preview"},
               fallbacks="lower_resolution")
    p = plan_for(shape(model="veo3.1-fast", resolution="4k"), GEMINI, lower)
    assert (p.model_id, p.resolution) == ("veo-3.1-lite-generate-preview", "1080p")


def test_intake_check_uses_the_configured_mode() -> None:
    gemini = gs(api_key="k")
    check_google_request(req(duration=4), gemini)
    with pytest.raises(InvalidInput, match="seed"):
        check_google_request(req(seed=1), gemini)
    check_google_request(req(seed=1, generate_audio=False), gs(mode="vertex", project="p"))
    # A mixed pool accepts what at least one channel can send (the worker routes it there).
    mixed = gs(channels=[GEMINI.model_dump(), VERTEX.model_dump()])
    check_google_request(req(seed=1), mixed)
    with pytest.raises(ApiError) as e:
        check_google_request(req(), gs())
    assert e.value.status == 500 and "not configured" in e.value.message


def test_enable_upsample_asks_google_for_the_next_resolution() -> None:
    # job.resolution is the output resolution after upsample: 720p + upsample -> 1080p.
    r = req(resolution="720p", enable_upsample=True)
    p = plan_for(r, GEMINI, gs(api_key="k"))
    assert p.resolution == "1080p"


# --- refs and errors -----------------------------------------------------------------------


def test_upstream_ref_round_trip() -> None:
    ref = UpstreamRef("key-2", "models/veo-3.1-generate-preview/operations/abc", "veo-3.1")
    assert UpstreamRef.loads(ref.dumps()) == ref
    assert UpstreamRef.loads("models/x/operations/y") == UpstreamRef("", "models/x/operations/y")


def test_errors_are_sorted_with_retry_info() -> None:
    from google.genai import errors

    def err(code: int, status: str, message: str, details: list | None = None):  # type: ignore[no-untyped-def]
        body = {"error": {"code": code, "status": status, "message": message,
                          **({"details": details} if details else {})}}
        return errors.APIError(code, body)

    up = classify_error(err(429, "RESOURCE_EXHAUSTED", "quota", [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]))
    assert (up.kind, up.retry_after) == ("quota", 17.0)
    assert classify_error(err(503, "UNAVAILABLE", "x")).kind == "unavailable"
    assert classify_error(err(500, "INTERNAL", "x")).kind == "unavailable"
    assert classify_error(err(403, "PERMISSION_DENIED", "x")).kind == "auth"
    assert classify_error(err(400, "INVALID_ARGUMENT", "API key not valid.", [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}])
    ).kind == "auth"
    assert classify_error(err(400, "INVALID_ARGUMENT", "bad aspect")).kind == "invalid"
    assert classify_error(err(400, "INVALID_ARGUMENT", "violates usage guidelines")
                          ).kind == "safety"
    assert classify_error(err(404, "NOT_FOUND", "x")).kind == "not_found"


# --- the channel pool ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ch(name: str, **kw: object) -> ChannelConfig:
    return ChannelConfig(name=name, mode="gemini", api_key=name, **kw)  # type: ignore[arg-type]


def test_pool_spreads_by_weight_and_skips_cooling_channels() -> None:
    clock = Clock()
    pool = ChannelPool([ch("a", weight=3), ch("b", weight=1)], clock=clock)
    picks = []
    for _ in range(8):
        s = pool.try_acquire(["a", "b"])
        assert s is not None
        picks.append(s.name)
        pool.release(s.name)
    assert picks.count("a") == 6 and picks.count("b") == 2
    pool.cool_down("a", 30, "429 quota")
    assert {pool.try_acquire(["a", "b"]).name for _ in range(3)} == {"b"}  # type: ignore[union-attr]
    assert [r["health"] for r in pool.snapshot()] == ["cooling", "ok"]
    clock.now += 31
    assert pool.snapshot()[0]["health"] == "ok"


def test_pool_caps_concurrency_and_rate() -> None:
    clock = Clock()
    pool = ChannelPool([ch("a", max_concurrency=1), ch("r", rate_per_minute=2)], clock=clock)
    assert pool.try_acquire(["a"]) is not None
    assert pool.try_acquire(["a"]) is None  # full
    pool.release("a")
    assert pool.try_acquire(["a"]) is not None
    assert pool.try_acquire(["r"]) is not None
    assert pool.try_acquire(["r"]) is not None
    assert pool.try_acquire(["r"]) is None  # 2 per minute used
    clock.now += 61
    assert pool.try_acquire(["r"]) is not None


async def test_pool_acquire_waits_for_a_release_then_times_out() -> None:
    pool = ChannelPool([ch("a", max_concurrency=1)])
    first = await pool.acquire(["a"], timeout=1)
    waiter = asyncio.create_task(pool.acquire(["a"], timeout=5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    pool.release(first.name)
    assert (await asyncio.wait_for(waiter, 2)).name == "a"
    with pytest.raises(NoChannel, match="a: full"):
        await pool.acquire(["a"], timeout=0.1)
