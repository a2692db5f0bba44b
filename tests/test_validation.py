"""Every catalog rule, through HTTP: a 400 in the documented body that names the field and
the rule, and nothing stored."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.conftest import make_image

PNG = "data:image/png;base64," + base64.b64encode(make_image((200, 30, 30))).decode()
T2V = "/api/v3/google/veo3.1-fast/text-to-video"
I2V = "/api/v3/google/veo3.1-fast/image-to-video"
R2V = "/api/v3/google/veo3.1-fast/reference-to-video"


def assert_400(r: httpx.Response, field: str, *words: str) -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == "400"
    message = body["error"]["message"]
    assert message.startswith(f"{field}:"), message
    for w in words:
        assert w in message, message


CASES = [
    # (path, body, field, words in the message)
    (T2V, {}, "prompt", ["required"]),
    (T2V, {"prompt": "   "}, "prompt", ["empty"]),
    (T2V, {"prompt": 42}, "prompt", ["string"]),
    (T2V, {"prompt": "x" * 4001}, "prompt", ["4000"]),
    (T2V, {"prompt": "a cat", "aspect_ratio": "4:3"}, "aspect_ratio", ["16:9", "9:16"]),
    (T2V, {"prompt": "a cat", "resolution": "8k"}, "resolution", ["720p", "1080p", "4k"]),
    (T2V, {"prompt": "a cat", "duration": 5}, "duration", ["4, 6, 8"]),
    (T2V, {"prompt": "a cat", "duration": "long"}, "duration", ["integer"]),
    (T2V, {"prompt": "a cat", "resolution": "1080p", "duration": 4}, "resolution",
     ["1080p", "duration 8"]),
    (T2V, {"prompt": "a cat", "resolution": "4k", "duration": 6}, "resolution",
     ["4k", "duration 8"]),
    (T2V, {"prompt": "a cat", "enable_sync_mode": "maybe"}, "enable_sync_mode", ["boolean"]),
    # -1 is WaveSpeed's "random" (test_v3_door.py); below it is out of range.
    (T2V, {"prompt": "a cat", "seed": -2}, "seed", ["between"]),
    (T2V, {"prompt": "a cat", "image": PNG}, "image", ["image-to-video"]),
    (T2V, {"prompt": "a cat", "images": [PNG]}, "images", ["reference-to-video"]),
    (T2V, {"prompt": "a cat", "last_image": PNG}, "last_image", ["together with image"]),
    (I2V, {"prompt": "a cat"}, "image", ["required", "image-to-video"]),
    (I2V, {"prompt": "a cat", "image": 7}, "image", ["string"]),
    (I2V, {"prompt": "a cat", "image": PNG, "images": [PNG]}, "images",
     ["reference-to-video"]),
    (I2V, {"prompt": "a cat", "image": PNG, "last_image": PNG, "duration": 4}, "duration",
     ["8", "last_image"]),
    (R2V, {"prompt": "a cat"}, "images", ["1 to 3"]),
    (R2V, {"prompt": "a cat", "images": []}, "images", ["1 to 3"]),
    (R2V, {"prompt": "a cat", "images": [PNG] * 4}, "images", ["at most 3"]),
    (R2V, {"prompt": "a cat", "images": "not-a-list"}, "images", ["list"]),
    (R2V, {"prompt": "a cat", "images": [PNG], "duration": 6}, "duration", ["8", "reference"]),
    (R2V, {"prompt": "a cat", "images": [PNG], "image": PNG}, "image", ["images"]),
]


@pytest.mark.parametrize(("path", "body", "field", "words"), CASES,
                         ids=[f"{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_rule_answers_400_naming_field_and_rule(api: httpx.Client, path: str, body: dict,
                                                field: str, words: list[str]) -> None:
    assert_400(api.post(path, json=body), field, *words)


def test_body_that_is_not_json(api: httpx.Client) -> None:
    r = api.post(T2V, content=b"{not json", headers={"Content-Type": "application/json"})
    assert_400(r, "body", "JSON")
    assert_400(api.post(T2V, json=["a list"]), "body", "JSON object")
    assert_400(api.post(T2V, content=b""), "body")


def test_unknown_fields_are_ignored(api: httpx.Client) -> None:
    r = api.post(T2V, json={"prompt": "a calm lake", "duration": 4, "mystery": {"x": 1}})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["status"] in ("created", "processing", "completed")


def test_refusals_store_nothing(server, key: str) -> None:  # type: ignore[no-untyped-def]
    """A refused request leaves no prediction behind (no row, so nothing to run or bill)."""
    import sqlite3

    db = server.data_dir / "reelgate.db"

    def count() -> int:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("select count(*) from predictions").fetchone()[0])

    before = count()
    with server.client(key) as c:
        for path, body, _field, _words in CASES[:6]:
            assert c.post(path, json=body).status_code == 400
    assert count() == before


def test_defaults_are_applied(api: httpx.Client) -> None:
    r = api.post(T2V, json={"prompt": "defaults", "enable_sync_mode": True})
    assert r.status_code == 200
    data = r.json()["data"]
    assert data["status"] == "completed", data
    from tests.test_media import probe_url

    info = probe_url(data["outputs"][0])
    assert (info.width, info.height) == (1280, 720)
    assert abs(info.duration_s - 8) <= 1 / 24 + 1e-6
    assert info.audio_codec == "aac"
