"""The v3 API end to end: every model and scene, async and sync mode, the envelope."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from reelgate import catalog
from tests.conftest import ImageServer, ServerProcess, make_image, wait_until_done

ID = re.compile(r"^[0-9a-f]{32}$")


def body_for(scene: str, images: ImageServer) -> dict:
    if scene == "text-to-video":
        return {"prompt": "a lighthouse in a storm", "duration": 4}
    if scene == "image-to-video":
        return {"prompt": "the camera drifts", "duration": 4,
                "image": images.add("/i2v.png", make_image((10, 120, 90)))}
    return {"prompt": "these objects on a table",
            "images": [images.add("/r1.png", make_image((200, 10, 10))),
                       images.add("/r2.png", make_image((10, 10, 200)))]}


COMBOS = [(m, s) for m in catalog.MODELS for s in catalog.SCENES]


@pytest.mark.parametrize(("model", "scene"), COMBOS, ids=[f"{m}/{s}" for m, s in COMBOS])
def test_every_model_and_scene(server: ServerProcess, api: httpx.Client,
                               images: ImageServer, model: str, scene: str) -> None:
    r = api.post(f"/api/v3/google/{model}/{scene}", json=body_for(scene, images))
    if model.endswith("-pro") and scene == "reference-to-video":
        assert r.status_code == 404, r.text
        assert r.json()["error"]["type"] == "404"
        assert "reference-to-video" in r.json()["error"]["message"]
        return
    assert r.status_code == 200, r.text
    envelope = r.json()
    assert envelope["code"] == 200 and envelope["message"] == "success"
    data = envelope["data"]
    assert ID.match(data["id"])
    assert data["model"] == f"google/{model}/{scene}"
    assert data["status"] in ("created", "processing")
    assert data["outputs"] == [] and data["error"] == ""
    assert data["urls"]["get"] == f"{server.base_url}/api/v3/predictions/{data['id']}/result"
    assert data["created_at"].endswith("Z")

    done = wait_until_done(api, data["id"])
    assert done["status"] == "completed", done
    assert len(done["outputs"]) == 1 and done["outputs"][0].startswith(server.base_url)
    assert done["has_nsfw_contents"] == [False]
    assert done["executionTime"] > 0
    assert done["timings"] == {"inference": done["executionTime"]}
    # Both read forms give the same object.
    other = api.get(f"/api/v3/predictions/{data['id']}").json()["data"]
    assert other["status"] == "completed" and other["id"] == data["id"]
    assert httpx.get(done["outputs"][0]).status_code == 200


def test_sync_mode_answers_with_the_ended_prediction(api: httpx.Client) -> None:
    t0 = time.monotonic()
    r = api.post("/api/v3/google/veo3-fast/text-to-video",
                 json={"prompt": "sync please", "duration": 4, "enable_sync_mode": True})
    assert r.status_code == 200
    data = r.json()["data"]
    assert data["status"] == "completed"
    assert len(data["outputs"]) == 1
    assert time.monotonic() - t0 < 60
    # And it stays readable by id.
    again = api.get(data["urls"]["get"]).json()["data"]
    assert again["status"] == "completed" and again["outputs"]


def test_async_mode_moves_forward_only(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server({"REELGATE_SANDBOX_LATENCY_S": "1.5"})
    with srv.client(srv.create_key()) as c:
        r = c.post("/api/v3/google/veo3.1/text-to-video", json={"prompt": "x", "duration": 4})
        assert r.status_code == 200
        pid = r.json()["data"]["id"]
        assert r.json()["data"]["status"] == "created"
        order = {"created": 0, "processing": 1, "completed": 2, "failed": 2}
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = c.get(f"/api/v3/predictions/{pid}/result").json()["data"]["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
            if status in ("completed", "failed"):
                break
            time.sleep(0.05)
        assert seen[-1] == "completed"
        assert "processing" in seen
        assert [order[s] for s in seen] == sorted(order[s] for s in seen)


def test_sync_mode_ceiling_returns_the_object_as_it_stands(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server({"REELGATE_SANDBOX_LATENCY_S": "4", "REELGATE_SYNC_TIMEOUT_S": "1"})
    with srv.client(srv.create_key()) as c:
        t0 = time.monotonic()
        r = c.post("/api/v3/google/veo3.1/text-to-video",
                   json={"prompt": "slow", "duration": 4, "enable_sync_mode": True})
        elapsed = time.monotonic() - t0
        assert r.status_code == 200
        data = r.json()["data"]
        assert data["status"] in ("created", "processing")
        assert 0.9 <= elapsed < 3.5
        assert wait_until_done(c, data["id"])["status"] == "completed"


def test_failed_prediction_is_200_with_error(api: httpx.Client) -> None:
    r = api.post("/api/v3/google/veo3.1-fast/text-to-video",
                 json={"prompt": "please [sandbox:fail]", "enable_sync_mode": True})
    assert r.status_code == 200
    data = r.json()["data"]
    assert data["status"] == "failed"
    assert data["error"] and "sandbox" in data["error"]
    assert data["outputs"] == []
    got = api.get(f"/api/v3/predictions/{data['id']}/result")
    assert got.status_code == 200 and got.json()["data"]["status"] == "failed"


def test_blocked_output_sets_nsfw_flag(api: httpx.Client) -> None:
    r = api.post("/api/v3/google/veo3.1-fast/text-to-video",
                 json={"prompt": "something [sandbox:nsfw]", "enable_sync_mode": True})
    data = r.json()["data"]
    assert data["status"] == "failed"
    assert data["has_nsfw_contents"] == [True]
    assert "content policy" in data["error"]


def test_failure_rate_setting(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server({"REELGATE_SANDBOX_FAILURE_RATE": "1"})
    with srv.client(srv.create_key()) as c:
        r = c.post("/api/v3/google/veo3.1/text-to-video",
                   json={"prompt": "x", "duration": 4, "enable_sync_mode": True})
        data = r.json()["data"]
        assert data["status"] == "failed" and "simulated" in data["error"]


def test_public_base_url_setting(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server({"REELGATE_PUBLIC_BASE_URL": "https://video.example.com"})
    with srv.client(srv.create_key()) as c:
        r = c.post("/api/v3/google/veo3.1/text-to-video",
                   json={"prompt": "x", "duration": 4, "enable_sync_mode": True})
        data = r.json()["data"]
        assert data["urls"]["get"].startswith("https://video.example.com/api/v3/predictions/")
        assert data["outputs"][0].startswith("https://video.example.com/media/")
