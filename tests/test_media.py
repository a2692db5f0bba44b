"""Produced videos, downloaded through the signed URLs and opened with a real decoder."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from reelgate.media.video import VideoInfo, probe_video, read_frame
from tests.conftest import ImageServer, make_image

FRAME = 1 / 24


def download(url: str) -> Path:
    r = httpx.get(url, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4"
    path = Path(tempfile.mkdtemp()) / "out.mp4"
    path.write_bytes(r.content)
    return path


def probe_url(url: str) -> VideoInfo:
    return probe_video(download(url))


def create_sync(api: httpx.Client, model: str, scene: str, body: dict) -> dict:
    r = api.post(f"/api/v3/google/{model}/{scene}", json={**body, "enable_sync_mode": True})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["status"] == "completed", data
    return data


@pytest.mark.parametrize(
    ("aspect", "size"), [("16:9", (1280, 720)), ("9:16", (720, 1280))]
)
def test_720p_frame_size_codec_and_audio(api: httpx.Client, aspect: str, size: tuple) -> None:
    data = create_sync(api, "veo3.1-fast", "text-to-video",
                       {"prompt": "city lights at night", "aspect_ratio": aspect,
                        "duration": 4})
    info = probe_url(data["outputs"][0])
    assert info.video_codec == "h264"
    assert "mp4" in info.container
    assert (info.width, info.height) == size
    assert abs(info.duration_s - 4) <= FRAME
    assert info.audio_codec == "aac"


@pytest.mark.parametrize("duration", [4, 6])
def test_duration_within_one_frame(api: httpx.Client, duration: int) -> None:
    data = create_sync(api, "veo3-fast", "text-to-video",
                       {"prompt": "waves", "duration": duration, "generate_audio": False})
    info = probe_url(data["outputs"][0])
    assert abs(info.duration_s - duration) <= FRAME
    assert info.audio_codec is None  # generate_audio false: no audio track


def test_1080p_and_upsample(api: httpx.Client) -> None:
    data = create_sync(api, "veo3.1", "text-to-video",
                       {"prompt": "mountains", "resolution": "720p", "enable_upsample": True,
                        "aspect_ratio": "9:16"})
    info = probe_url(data["outputs"][0])
    assert (info.width, info.height) == (1080, 1920)
    assert abs(info.duration_s - 8) <= FRAME


def _center(img: Image.Image) -> np.ndarray:
    w, h = img.size
    return np.asarray(img.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)), dtype=np.float32)


def test_image_to_video_first_frame_is_the_input(api: httpx.Client,
                                                 images: ImageServer) -> None:
    src = make_image((30, 90, 200), size=(1280, 720))
    url = images.add("/first.png", src)
    data = create_sync(api, "veo3.1-fast", "image-to-video",
                       {"prompt": "slow push in", "image": url, "duration": 4})
    video = download(data["outputs"][0])
    frame0 = read_frame(video, 0)
    expected = Image.open(__import__("io").BytesIO(src)).convert("RGB")
    diff = np.abs(_center(frame0) - _center(expected)).mean()
    assert diff < 12, diff
    # And an unrelated image does not match, so the check above means something.
    other = Image.open(__import__("io").BytesIO(make_image((220, 200, 20), size=(1280, 720))))
    assert np.abs(_center(frame0) - _center(other.convert("RGB"))).mean() > 40


def test_first_and_last_frame(api: httpx.Client, images: ImageServer) -> None:
    first = make_image((200, 40, 40), size=(1280, 720))
    last = make_image((40, 200, 40), size=(1280, 720), pattern=False)
    data_uri = "data:image/png;base64," + base64.b64encode(last).decode()
    data = create_sync(api, "veo3", "image-to-video",
                       {"prompt": "morph", "image": images.add("/a.png", first),
                        "last_image": data_uri, "generate_audio": False})
    video = download(data["outputs"][0])
    info = probe_video(video)
    end = read_frame(video, info.frames - 1)
    green = _center(end).mean(axis=(0, 1))
    assert green[1] > 150 and green[0] < 90, green


def test_reference_to_video_uses_references(api: httpx.Client, images: ImageServer) -> None:
    refs = [images.add(f"/ref{i}.png", make_image(c, pattern=False))
            for i, c in enumerate([(255, 0, 0), (0, 0, 255)])]
    data = create_sync(api, "veo3.1-fast", "reference-to-video",
                       {"prompt": "a product shot", "images": refs, "generate_audio": False})
    video = download(data["outputs"][0])
    pixels = np.asarray(read_frame(video, 12), dtype=np.int32).reshape(-1, 3)
    reds = ((pixels[:, 0] > 200) & (pixels[:, 1] < 60) & (pixels[:, 2] < 60)).mean()
    blues = ((pixels[:, 2] > 200) & (pixels[:, 0] < 60) & (pixels[:, 1] < 60)).mean()
    assert reds > 0.02 and blues > 0.02, (reds, blues)


def test_signed_url_is_required_and_checked(api: httpx.Client) -> None:
    data = create_sync(api, "veo3-fast", "text-to-video", {"prompt": "signed", "duration": 4})
    url = data["outputs"][0]
    assert httpx.get(url).status_code == 200
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    unsigned = httpx.get(base)
    assert unsigned.status_code == 403
    assert unsigned.json()["error"]["type"] == "403"
    tampered = httpx.get(f"{base}?{urlencode({**q, 'signature': '0' * 64})}")
    assert tampered.status_code == 403
    # A later expiry with the old signature is refused too (the expiry is signed).
    later = httpx.get(f"{base}?{urlencode({**q, 'expires': int(q['expires']) + 3600})}")
    assert later.status_code == 403
    expired = httpx.get(f"{base}?{urlencode({**q, 'expires': 1000})}")
    assert expired.status_code == 403
