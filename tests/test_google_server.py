"""The Google backend behind a real ``reelgate serve`` process, against the fake Google server,
in Gemini API mode (API key) and Vertex AI mode (service-account file, outputs in a gs://
bucket): every scene completes with a stored, decodable video; what Google would refuse is a
400 before anything is sent or held; a safety block fails as a content-policy block, unpaid;
the models endpoint shows the operator's model map."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reelgate.media.video import check_video
from tests.conftest import ImageServer, ServerProcess, make_image, wait_until_done
from tests.fake_google import FakeGoogle, make_video, write_service_account


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGoogle]:
    srv = FakeGoogle(make_video(tmp_path_factory.mktemp("video") / "v.mp4"))
    yield srv
    srv.close()


def google_env(fake: FakeGoogle, mode: str, tmp: Path) -> dict[str, str]:
    env = {
        "REELGATE_DEFAULT_BACKEND": "google",
        "REELGATE_GOOGLE_BASE_URL": fake.url,
        "REELGATE_GOOGLE_POLL_INITIAL_S": "0.1",
        "REELGATE_GOOGLE_POLL_MAX_S": "0.3",
        "REELGATE_WORKER_CONCURRENCY": "3",
    }
    if mode == "gemini":
        env.update({
            "REELGATE_GOOGLE_API_KEY": "key-good",
            # The operator points veo3-fast at the Lite model (no 4k there).
            "REELGATE_GOOGLE_MODELS": json.dumps({"veo3-fast": "veo-3.1-lite-generate-preview"}),
        })
    else:
        sa = write_service_account(tmp / "sa.json", f"{fake.url}/token")
        env.update({
            "REELGATE_GOOGLE_MODE": "vertex",
            "REELGATE_GOOGLE_PROJECT": "fake-project",
            "REELGATE_GOOGLE_LOCATION": "us-central1",
            "REELGATE_GOOGLE_CREDENTIALS_FILE": str(sa),
            "REELGATE_GOOGLE_STORAGE_BASE_URL": fake.url,
            "REELGATE_GOOGLE_OUTPUT_GCS_URI": "gs://reelgate-out/videos",
        })
    return env


class Running:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        key = server.create_key("tester")
        out = server.admin("accounts", "credit", "tester", "100")
        assert out.returncode == 0, out.stderr
        self.client = server.client(key)

    def balance(self) -> str:
        out = self.server.admin("accounts", "list", "--json")
        assert out.returncode == 0, out.stderr
        return str(json.loads(out.stdout)[0]["balance"])


@pytest.fixture(scope="module", params=["gemini", "vertex"])
def running(request: pytest.FixtureRequest, fake: FakeGoogle,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Running]]:
    tmp = tmp_path_factory.mktemp(request.param)
    server = ServerProcess(tmp / "data", google_env(fake, request.param, tmp)).start()
    run = Running(server)
    yield request.param, run
    run.client.close()
    server.stop()


def creates_for(fake: FakeGoogle, marker: str) -> list:  # type: ignore[type-arg]
    return [c for c in fake.calls("create")
            if marker in json.dumps((c.body or {}).get("instances", [{}])[0].get("prompt", ""))]


def scenes(images: ImageServer) -> dict[str, tuple[str, str, dict]]:  # type: ignore[type-arg]
    red = images.add("/g-red.png", make_image((220, 40, 40)))
    blue = images.add("/g-blue.png", make_image((40, 40, 220)))
    return {
        "text": ("veo3.1-fast", "text-to-video", {"duration": 4, "aspect_ratio": "9:16"}),
        "image": ("veo3.1", "image-to-video", {"image": red, "resolution": "1080p"}),
        "first-last": ("veo3", "image-to-video", {"image": red, "last_image": blue}),
        "reference": ("veo3.1", "reference-to-video", {"images": [red, blue]}),
    }


@pytest.mark.parametrize("scene", ["text", "image", "first-last", "reference"])
def test_every_scene_completes_with_a_stored_video(running: tuple[str, Running],
                                                   fake: FakeGoogle, images: ImageServer,
                                                   scene: str, tmp_path: Path) -> None:
    mode, run = running
    model, route, body = scenes(images)[scene]
    marker = f"{mode}-{scene}-scene"
    r = run.client.post(f"/api/v3/google/{model}/{route}",
                        json={"prompt": f"{marker} [fake:pending=2]", **body})
    assert r.status_code == 200, r.text
    done = wait_until_done(run.client, r.json()["data"]["id"], timeout=90)
    assert done["status"] == "completed", done
    assert done["has_nsfw_contents"] == [False]
    video = httpx.get(done["outputs"][0], timeout=30)
    assert video.status_code == 200
    (tmp_path / "out.mp4").write_bytes(video.content)
    assert check_video(tmp_path / "out.mp4").video_codec == "h264"
    # Exactly one operation at Google for this prediction, with the scene's inputs.
    (create,) = creates_for(fake, marker)
    inst = create.body["instances"][0]
    assert ("image" in inst) == (scene in ("image", "first-last"))
    assert ("lastFrame" in inst) == (scene == "first-last")
    assert len(inst.get("referenceImages", [])) == (2 if scene == "reference" else 0)
    if mode == "vertex":
        assert create.body["parameters"]["generateAudio"] is True
        assert create.key == "reelgate@fake-project.iam.gserviceaccount.com"
    else:
        assert create.key == "key-good"


def test_what_google_would_refuse_is_a_400_before_anything_is_spent(
        running: tuple[str, Running], fake: FakeGoogle) -> None:
    mode, run = running
    before = run.balance()
    cases = {
        "seed": {"prompt": "refuse-seed", "seed": 7},
        "generate_audio": {"prompt": "refuse-audio", "generate_audio": False},
    }
    for field, body in cases.items():
        r = run.client.post("/api/v3/google/veo3.1/text-to-video", json=body)
        if mode == "gemini":
            assert r.status_code == 400, r.text
            assert r.json()["error"]["message"].startswith(f"{field}: ")
            assert "Gemini API" in r.json()["error"]["message"]
        else:  # Vertex AI takes both
            assert r.status_code == 200, r.text
            wait_until_done(run.client, r.json()["data"]["id"], timeout=90)
    if mode == "gemini":
        r = run.client.post("/api/v3/google/veo3-fast/text-to-video",
                            json={"prompt": "refuse-4k", "resolution": "4k"})
        assert r.status_code == 400
        assert "veo-3.1-lite-generate-preview" in r.json()["error"]["message"]
        r = run.client.post("/api/v3/google/veo3-fast/text-to-video",
                            json={"prompt": "refuse-4k", "resolution": "1080p",
                                  "enable_upsample": True})
        assert r.status_code == 400
        assert r.json()["error"]["message"].startswith("enable_upsample: asks for 4k")
        assert not creates_for(fake, "refuse-")
        assert run.balance() == before


def test_safety_block_fails_as_content_policy_and_costs_nothing(
        running: tuple[str, Running], fake: FakeGoogle) -> None:
    mode, run = running
    before = run.balance()
    r = run.client.post("/api/v3/google/veo3.1/text-to-video",
                        json={"prompt": f"{mode} blocked [fake:rai]", "duration": 4})
    done = wait_until_done(run.client, r.json()["data"]["id"], timeout=90)
    assert done["status"] == "failed"
    assert done["has_nsfw_contents"] == [True]
    assert "safety" in done["error"] and done["outputs"] == []
    r = run.client.post("/api/v3/google/veo3.1/text-to-video",
                        json={"prompt": f"{mode} broken [fake:op-error]", "duration": 4})
    done = wait_until_done(run.client, r.json()["data"]["id"], timeout=90)
    assert done["status"] == "failed" and done["has_nsfw_contents"] != [True]
    assert "fake operation error" in done["error"]
    assert run.balance() == before


def test_models_endpoint_shows_the_google_model_map(running: tuple[str, Running]) -> None:
    mode, run = running
    data = {m["name"]: m for m in run.client.get("/api/v3/models").json()["data"]}
    assert {m["backend"] for m in data.values()} == {"google"}
    if mode == "gemini":
        assert data["veo3.1"]["google_model"] == "veo-3.1-generate-preview"
        assert data["veo3-fast"]["google_model"] == "veo-3.1-lite-generate-preview"
        assert data["veo3-fast"]["resolutions"] == ["720p", "1080p"]
        assert data["veo3.1"]["upstream"]["models"] == [{
            "mode": "gemini", "model": "veo-3.1-generate-preview", "channels": ["default"],
            "resolutions": ["720p", "1080p", "4k"]}]
    else:
        assert data["veo3.1-fast"]["google_model"] == "veo-3.1-fast-generate-001"
        assert data["veo3"]["google_model"] == "veo-3.1-generate-001"
