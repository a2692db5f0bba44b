"""Adding a backend is one folder plus one contract fixture: the echo backend lives in
tests/echo_backend, a server loads it by name from REELGATE_BACKEND_MODULES, and a model
routed to it is served end to end over HTTP: its capabilities shape the model list and the
intake's refusals, its price hook the charge, its timeout the failure of a hung job."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx

from reelgate.media.video import check_video
from tests.conftest import ServerProcess, wait_until_done

T2V = "/api/v3/google/veo3.1-fast/text-to-video"


def balance(c: httpx.Client) -> int:
    return int(c.get("/api/v3/balance").json()["data"]["balance_micros"])


def test_a_backend_from_a_module_serves_a_model_end_to_end(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    srv = start_server({
        "REELGATE_BACKEND_MODULES": "tests.echo_backend",
        "REELGATE_MODEL_BACKENDS": json.dumps({"veo3.1-fast": "echo"}),
        "REELGATE_FREE_BACKENDS": "",
        "REELGATE_ECHO_PRICE_PER_SECOND": "25000",
        # Long enough for a 720p encode on a busy machine (2 s was not, once), short enough
        # for the hung job below to fail soon.
        "REELGATE_ECHO_TIMEOUT_S": "8",
    })
    key = srv.create_key("echo-user")
    assert srv.cli("accounts", "credit", "echo-user", "5").returncode == 0
    with srv.client(key) as c:
        models = {m["name"]: m for m in c.get("/api/v3/models").json()["data"]}
        assert models["veo3.1-fast"]["backend"] == "echo"
        assert models["veo3.1-fast"]["resolutions"] == ["720p"]  # what echo declares
        assert models["veo3.1-fast"]["echo"] is True  # its describe()
        assert models["veo3.1"]["backend"] == "sandbox"

        start = balance(c)
        r = c.post(T2V, json={"prompt": "a red boat", "resolution": "1080p"})
        assert r.status_code == 400 and "1080p" in r.json()["error"]["message"]
        r = c.post("/api/v3/google/veo3.1-fast/reference-to-video",
                   json={"prompt": "a red boat", "images": ["https://example.com/a.png"]})
        assert r.status_code == 400 and "scene" in r.json()["error"]["message"]
        assert balance(c) == start

        r = c.post(T2V, json={"prompt": "a red boat", "duration": 4,
                              "enable_sync_mode": True})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert data["status"] == "completed", data
        video = tmp_path / "echo.mp4"
        video.write_bytes(httpx.get(data["outputs"][0], timeout=30).content)
        info = check_video(video)
        assert (info.width, info.height) == (1280, 720) and abs(info.duration_s - 4) < 0.3
        assert info.has_audio
        assert balance(c) == start - 4 * 25_000  # the backend's own price per second

        r = c.post(T2V, json={"prompt": "wait forever [echo:hang]", "duration": 4})
        done = wait_until_done(c, r.json()["data"]["id"], timeout=60)
        assert done["status"] == "failed"
        assert "time limit" in done["error"] and "not charged" in done["error"]
        assert balance(c) == start - 4 * 25_000
