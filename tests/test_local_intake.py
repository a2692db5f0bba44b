"""Local models as the API sees them (no torch needed): declared in a TOML file, routed at
/api/v3/local/<name>/<scene>, listed with their capabilities, priced by the operator, and
what a model cannot do refused with a 400 before anything is stored or spent."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, make_image

ADMIN = "local-admin-token"


def funded_account(srv: ServerProcess, name: str, credit: str) -> tuple[str, str]:
    """An account with ``credit`` on it and one key, through the admin API."""
    with httpx.Client(base_url=srv.base_url, headers={"Authorization": f"Bearer {ADMIN}"},
                      timeout=60) as a:
        account_id = a.post("/admin/v1/accounts", json={"name": name}).json()["id"]
        r = a.post(f"/admin/v1/accounts/{account_id}/credits",
                   json={"amount": credit, "note": "test credit"})
        assert r.status_code == 200, r.text
        key = a.post(f"/admin/v1/accounts/{account_id}/keys", json={"name": f"{name}-key"})
        return account_id, key.json()["key"]

MODELS_TOML = textwrap.dedent("""
    [[models]]
    name = "wan-test"
    family = "wan"
    weights = "/nonexistent/wan"
    fps = 2
    sizes = { "720p" = [64, 32] }
    steps = 2
    price_per_second = 0.01
    serves = ["veo3.1-fast"]

    [[models]]
    name = "ltx-test"
    family = "ltx"
    weights = "/nonexistent/ltx"
    fps = 2
    sizes = { "720p" = [64, 32], "1080p" = [96, 64] }
    resolution_fallback = "nearest"
    audio_fallback = "silent"

    [[models]]
    name = "ltx2-test"
    family = "ltx2"
    weights = "/nonexistent/ltx2"
    fps = 2
    sizes = { "720p" = [64, 32] }

    [[models]]
    name = "ltx-short"
    family = "ltx"
    weights = "/nonexistent/ltx"
    fps = 8
    sizes = { "720p" = [64, 32] }
    max_duration = 5
    max_frames = 41
    price_per_second = 0.01

    [[models]]
    name = "wan-clips"
    family = "wan"
    weights = "/nonexistent/wan"
    fps = 16
    sizes = { "720p" = [64, 32] }
    durations = [5, 2]
    default_duration = 2
    price_per_second = 0.01
""")


@pytest.fixture
def local_api(start_server, tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "local-models.toml"
    path.write_text(MODELS_TOML)
    # API only: no worker in this process, so no torch is needed to accept requests.
    srv = start_server({"REELGATE_LOCAL_MODELS_FILE": str(path),
                        "REELGATE_RUN_WORKERS": "false",
                        "REELGATE_ADMIN_TOKEN": ADMIN})
    _, key = funded_account(srv, "op", "5.00")
    with srv.client(key) as c:
        yield srv, c


def test_models_lists_local_models_with_backend_and_capabilities(local_api) -> None:  # type: ignore[no-untyped-def]
    _, c = local_api
    rows = {r["model"]: r for r in c.get("/api/v3/models").json()["data"]}
    wan = rows["local/wan-test"]
    assert wan["backend"] == "local"
    assert wan["family"] == "wan"
    assert wan["scenes"] == ["text-to-video", "image-to-video", "reference-to-video"]
    assert wan["resolutions"] == ["720p"]
    assert wan["capabilities"]["audio"] is False
    assert wan["capabilities"]["frame_sizes"] == {"720p": [64, 32]}
    assert rows["local/ltx-test"]["scenes"] == ["text-to-video", "image-to-video"]
    assert rows["local/ltx2-test"]["capabilities"]["audio"] is True
    # The Veo alias is now served by the local model.
    assert rows["google/veo3.1-fast"]["backend"] == "local"
    assert rows["google/veo3.1-fast"]["served_by"] == "local/wan-test"
    assert rows["google/veo3"]["backend"] == "sandbox"
    # The operator's price per second is what callers read for the local model.
    prices = c.get("/api/v3/prices").json()["data"]["prices"]
    wan_price = [p for p in prices if p["model"] == "local/wan-test"]
    assert [(p["resolution"], p["per_second"]) for p in wan_price] == [("720p", "0.010000")]


def _refused(c, path: str, body: dict, field: str) -> None:  # type: ignore[no-untyped-def]
    r = c.post(path, json=body)
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]["message"], r.json()


def test_refusals_at_intake_store_nothing(local_api) -> None:  # type: ignore[no-untyped-def]
    _, c = local_api
    # Audio asked of a silent family; 4k that no size declares; a scene LTX cannot do.
    _refused(c, "/api/v3/local/wan-test/text-to-video",
             {"prompt": "a cat", "generate_audio": True}, "generate_audio")
    _refused(c, "/api/v3/local/wan-test/text-to-video",
             {"prompt": "a cat", "resolution": "4k"}, "resolution")
    r = c.post("/api/v3/local/ltx-test/reference-to-video",
               json={"prompt": "a cat", "images": ["https://example.com/a.png"]})
    assert r.status_code in (400, 404), r.text
    _refused(c, "/api/v3/local/ltx2-test/text-to-video",
             {"prompt": "a cat", "resolution": "1080p"}, "resolution")
    # LTX conditions on a first frame only.
    _refused(c, "/api/v3/local/ltx-test/image-to-video",
             {"prompt": "a cat", "image": "https://example.com/a.png",
              "last_image": "https://example.com/b.png", "duration": 8}, "last_image")
    # The alias inherits the refusals of the model that serves it.
    _refused(c, "/api/v3/google/veo3.1-fast/text-to-video",
             {"prompt": "a cat", "generate_audio": True}, "generate_audio")
    assert c.get("/api/v3/predictions").json()["data"]["total"] == 0
    # An unknown local model is a 404.
    assert c.post("/api/v3/local/nope/text-to-video", json={"prompt": "x"}).status_code == 404


def test_fallbacks_and_defaults_accept(local_api) -> None:  # type: ignore[no-untyped-def]
    srv, c = local_api
    # Silent families default to silent: no generate_audio in the body is fine.
    r = c.post("/api/v3/local/wan-test/text-to-video", json={"prompt": "a cat"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["model"] == "local/wan-test/text-to-video"
    assert data["status"] == "created"
    # Configured fallbacks: audio -> silent, 4k -> nearest declared resolution.
    r = c.post("/api/v3/local/ltx-test/text-to-video",
               json={"prompt": "a cat", "generate_audio": True, "resolution": "4k",
                     "duration": 8})
    assert r.status_code == 200, r.text
    # The alias is accepted and priced at the local model's price: 0.01/s x 8 s is held.
    before = c.get("/api/v3/balance").json()["data"]["balance_micros"]
    r = c.post("/api/v3/google/veo3.1-fast/text-to-video", json={"prompt": "a cat"})
    assert r.status_code == 200, r.text
    after = c.get("/api/v3/balance").json()["data"]["balance_micros"]
    assert before - after == 80_000
    listed = c.get("/api/v3/predictions").json()["data"]
    assert listed["total"] == 3


def test_bad_models_file_is_a_clear_start_error(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.toml"
    path.write_text('[[models]]\nname = "x"\nfamily = "ltx"\nweights = "w"\n'
                    'sizes = { "720p" = [100, 50] }\n')
    with pytest.raises(RuntimeError, match="multiples of 32"):
        start_server({"REELGATE_LOCAL_MODELS_FILE": str(path),
                      "REELGATE_RUN_WORKERS": "false"})


def test_local_models_have_their_own_durations(local_api) -> None:  # type: ignore[no-untyped-def]
    """A local model's durations come from its declaration, not from Veo's rules."""
    _, c = local_api
    rows = {r["model"]: r for r in c.get("/api/v3/models").json()["data"]}
    assert rows["local/ltx-short"]["durations"] == [1, 2, 3, 4, 5]
    assert rows["local/ltx-short"]["capabilities"]["max_frames"] == 41
    assert rows["local/ltx-short"]["capabilities"]["frame_step"] == 8
    assert rows["local/wan-clips"]["durations"] == [2, 5]
    assert rows["local/wan-clips"]["capabilities"]["default_duration"] == 2
    assert rows["local/wan-test"]["durations"] == [4, 6, 8]  # undeclared: Veo's set
    # The alias lists the durations of the model serving it.
    assert rows["google/veo3.1-fast"]["durations"] == [4, 6, 8]

    # Out of the declared range or set: a clear 400 naming the rule, nothing stored.
    r = c.post("/api/v3/local/ltx-short/text-to-video", json={"prompt": "a cat", "duration": 6})
    assert r.status_code == 400, r.text
    msg = r.json()["error"]["message"]
    assert "duration" in msg and "1 to 5 seconds at 8 fps" in msg and "got 6" in msg, msg
    r = c.post("/api/v3/local/wan-clips/text-to-video", json={"prompt": "a cat", "duration": 4})
    assert r.status_code == 400, r.text
    assert "2, 5 seconds at 16 fps" in r.json()["error"]["message"]
    _refused(c, "/api/v3/local/ltx-short/text-to-video", {"prompt": "a cat", "duration": 0},
             "duration")
    assert c.get("/api/v3/predictions").json()["data"]["total"] == 0

    before = balance_of(c)
    # Durations Veo does not offer (3 s, 5 s) are accepted, and priced per second.
    for path, body, seconds in (
        ("/api/v3/local/ltx-short/text-to-video", {"duration": 3}, 3),
        # No duration: the model's longest when Veo's default (8 s) is not offered...
        ("/api/v3/local/ltx-short/text-to-video", {}, 5),
        # ...or its declared default.
        ("/api/v3/local/wan-clips/text-to-video", {}, 2),
        # Veo's "8 s only" rules for a last frame or references are not a local model's.
        ("/api/v3/local/wan-clips/image-to-video",
         {"image": PNG, "last_image": PNG, "duration": 5}, 5),
        ("/api/v3/local/wan-clips/reference-to-video", {"images": [PNG], "duration": 2}, 2),
    ):
        r = c.post(path, json={"prompt": "a cat", **body})
        assert r.status_code == 200, r.text
        after = balance_of(c)
        assert before - after == 10_000 * seconds, (path, body)
        before = after
    # Veo models keep Veo's rules.
    r = c.post("/api/v3/google/veo3/reference-to-video",
               json={"prompt": "a cat", "images": ["https://example.com/a.png"], "duration": 4})
    assert r.status_code == 400 and "duration" in r.json()["error"]["message"]


PNG = "data:image/png;base64," + base64.b64encode(make_image((200, 30, 30), (64, 32))).decode()


def balance_of(c) -> int:  # type: ignore[no-untyped-def]
    return int(c.get("/api/v3/balance").json()["data"]["balance_micros"])


@pytest.mark.parametrize(("extra", "error"), [
    # 6 s at 8 fps is 48 frames, generated as 49 (1 + 8k): more than the model takes.
    ("fps = 8\nmax_duration = 6\nmax_frames = 41\n", "more than max_frames 41"),
    ("durations = [2, 4]\nmax_duration = 4\n", "not both"),
    ("durations = [2, 4]\ndefault_duration = 3\n", "default_duration 3"),
])
def test_bad_duration_declarations_are_start_errors(start_server, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                   extra: str, error: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[models]]\nname = "x"\nfamily = "ltx"\nweights = "w"\n'
                    'sizes = { "720p" = [64, 32] }\n' + extra)
    with pytest.raises(RuntimeError, match=error):
        start_server({"REELGATE_LOCAL_MODELS_FILE": str(path),
                      "REELGATE_RUN_WORKERS": "false"})
