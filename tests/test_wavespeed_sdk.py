"""The official WaveSpeed SDK, unchanged, pointed at reelgate: only the base URL and the key
differ from a client of the hosted service."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import wavespeed

from reelgate.media.video import probe_video
from tests.conftest import ServerProcess, make_image


@pytest.fixture(scope="module")
def client(server: ServerProcess, key: str) -> wavespeed.Client:
    return wavespeed.Client(api_key=key, base_url=server.base_url, max_retries=0)


def _is_video(url: str, tmp_path: Path) -> bool:
    path = tmp_path / "v.mp4"
    path.write_bytes(httpx.get(url, timeout=60).content)
    return probe_video(path).video_codec == "h264"


def test_text_to_video_async_mode(client: wavespeed.Client, tmp_path: Path) -> None:
    out = client.run("google/veo3.1-fast/text-to-video",
                     {"prompt": "a koi pond at dawn", "duration": 4}, poll_interval=0.2,
                     timeout=120)
    assert len(out["outputs"]) == 1
    assert _is_video(out["outputs"][0], tmp_path)


def test_text_to_video_sync_mode(client: wavespeed.Client, tmp_path: Path) -> None:
    out = client.run("google/veo3-fast/text-to-video",
                     {"prompt": "rain on a tin roof", "duration": 4}, enable_sync_mode=True)
    assert len(out["outputs"]) == 1
    assert _is_video(out["outputs"][0], tmp_path)


def test_upload_then_image_to_video(client: wavespeed.Client, tmp_path: Path) -> None:
    frame = tmp_path / "first-frame.png"
    frame.write_bytes(make_image((250, 120, 20), size=(1280, 720)))
    url = client.upload(str(frame))
    assert url.startswith("http") and "first-frame.png" in url
    out = client.run("google/veo3.1/image-to-video",
                     {"prompt": "the camera pushes in", "image": url, "duration": 4},
                     poll_interval=0.2, timeout=120)
    assert _is_video(out["outputs"][0], tmp_path)


def test_failed_prediction_raises_its_error(client: wavespeed.Client) -> None:
    with pytest.raises(RuntimeError) as info:
        client.run("google/veo3.1-fast/text-to-video",
                   {"prompt": "this one fails [sandbox:fail]", "duration": 4},
                   poll_interval=0.2, timeout=120)
    assert "Prediction failed" in str(info.value)
    assert "simulated failure" in str(info.value)
    with pytest.raises(RuntimeError, match="simulated failure"):
        client.run("google/veo3.1-fast/text-to-video",
                   {"prompt": "this one fails [sandbox:fail]", "duration": 4},
                   enable_sync_mode=True)


def test_sync_timeout_is_reported_as_such(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server({"REELGATE_SANDBOX_LATENCY_S": "5", "REELGATE_SYNC_TIMEOUT_S": "1"})
    client = wavespeed.Client(api_key=srv.create_key(), base_url=srv.base_url, max_retries=0)
    result = client.run_no_throw("google/veo3.1/text-to-video",
                                 {"prompt": "slow", "duration": 4}, enable_sync_mode=True)
    assert result["status"] == "processing"
    assert result["task_id"] != "unknown"
    assert "Sync mode timed out" in result["error"]
    assert f"/api/v3/predictions/{result['task_id']}/result" in result["error"]
    later = client.get_result(result["task_id"])
    assert later["data"]["id"] == result["task_id"]


def test_refused_request_raises(client: wavespeed.Client) -> None:
    with pytest.raises(RuntimeError, match="HTTP 400"):
        client.run("google/veo3.1-fast/text-to-video",
                   {"prompt": "x", "resolution": "1080p", "duration": 4})
    with pytest.raises(RuntimeError, match="HTTP 401"):
        wavespeed.Client(api_key="rg_wrong", base_url=client.base_url).run(
            "google/veo3.1-fast/text-to-video", {"prompt": "x"})
