"""Keys, tenant isolation, and every error status this server produces, in the documented
body."""

from __future__ import annotations

import sqlite3
import time

import httpx

from tests.conftest import ImageServer, ServerProcess, make_image

T2V = "/api/v3/google/veo3.1-fast/text-to-video"


def error_of(r: httpx.Response, status: int, type_: str | None = None) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type"}
    assert body["error"]["type"] == (type_ or str(status))
    assert "Traceback" not in r.text
    return body["error"]["message"]


def test_keys_create_prints_only_the_key(server: ServerProcess) -> None:
    out = server.cli("keys", "create", "--name", "ci-key")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rg_") and len(lines[0]) > 40
    # Stored hashed: the secret is nowhere in the database file.
    db = (server.data_dir / "reelgate.db").read_bytes()
    assert lines[0].encode() not in db
    with sqlite3.connect(server.data_dir / "reelgate.db") as conn:
        names = [r[0] for r in conn.execute("select name from api_keys")]
    assert "ci-key" in names


def test_bearer_and_bare_forms(server: ServerProcess, key: str) -> None:
    for bare in (False, True):
        with server.client(key, bare=bare) as c:
            r = c.post(T2V, json={"prompt": "auth forms", "duration": 4})
            assert r.status_code == 200, r.text
            pid = r.json()["data"]["id"]
            assert c.get(f"/api/v3/predictions/{pid}/result").status_code == 200


def test_missing_and_unknown_key_is_401(server: ServerProcess) -> None:
    with server.client() as c:
        assert "API key" in error_of(c.post(T2V, json={"prompt": "x"}), 401)
        assert "API key" in error_of(c.get("/api/v3/predictions/abc/result"), 401)
    with server.client("rg_not-a-real-key") as c:
        assert "Invalid" in error_of(c.post(T2V, json={"prompt": "x"}), 401)
    r = httpx.get(f"{server.base_url}/api/v3/predictions/abc", headers={"Authorization": "Bearer"})
    error_of(r, 401)


def test_other_tenant_gets_404(server: ServerProcess, api: httpx.Client) -> None:
    pid = api.post(T2V, json={"prompt": "mine", "duration": 4}).json()["data"]["id"]
    assert api.get(f"/api/v3/predictions/{pid}/result").status_code == 200
    with server.client(server.create_key("mallory")) as other:
        msg = error_of(other.get(f"/api/v3/predictions/{pid}/result"), 404)
        assert pid in msg
        error_of(other.get(f"/api/v3/predictions/{pid}"), 404)
    # Two keys of one account see the same predictions.
    out = server.admin("keys", "create", "--name", "alice-2", "--account", "alice")
    with server.client(out.stdout.strip()) as same_account:
        assert same_account.get(f"/api/v3/predictions/{pid}").status_code == 200


def test_unknown_model_scene_prediction_route_is_404(api: httpx.Client) -> None:
    assert "veo9" in error_of(api.post("/api/v3/google/veo9/text-to-video",
                                       json={"prompt": "x"}), 404)
    assert "dance" in error_of(api.post("/api/v3/google/veo3/dance", json={"prompt": "x"}), 404)
    assert "veo3-pro" in error_of(
        api.post("/api/v3/google/veo3-pro/reference-to-video", json={"prompt": "x"}), 404
    )
    error_of(api.get("/api/v3/predictions/0123456789abcdef0123456789abcdef/result"), 404)
    error_of(api.get("/api/v3/nothing-here"), 404)


def test_content_policy_block_is_400_type_503(server: ServerProcess, api: httpx.Client) -> None:
    db = server.data_dir / "reelgate.db"
    with sqlite3.connect(db) as conn:
        before = conn.execute("select count(*) from predictions").fetchone()[0]
    msg = error_of(api.post(T2V, json={"prompt": "A Forbidden   Thing in the park"}), 400, "503")
    assert "content policy" in msg and "prompt" in msg
    assert "forbidden" not in msg.lower()  # names the category, not the words
    msg = error_of(api.post(T2V, json={"prompt": "ok", "negative_prompt": "BADWORD"}), 400, "503")
    assert "negative prompt" in msg
    # Whole words only: a longer word that contains a term passes.
    assert api.post(T2V, json={"prompt": "badwords are fine", "duration": 4}).status_code == 200
    with sqlite3.connect(db) as conn:
        after = conn.execute("select count(*) from predictions").fetchone()[0]
    assert after == before + 1


def test_internal_error_is_500_without_stack_trace(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server()
    key = srv.create_key()
    with sqlite3.connect(srv.data_dir / "reelgate.db") as conn:
        conn.execute("alter table predictions rename to predictions_gone")
    with srv.client(key) as c:
        msg = error_of(c.get("/api/v3/predictions/abc/result"), 500)
        assert msg == "Internal server error"


def test_input_fetch_refusals_over_http(server: ServerProcess, api: httpx.Client,
                                        images: ImageServer) -> None:
    i2v = "/api/v3/google/veo3.1/image-to-video"
    ok = images.add("/ok.png", make_image((1, 2, 3)))
    # The image server itself is allow-listed (127.0.0.2); 127.0.0.1 is not.
    msg = error_of(api.post(i2v, json={"prompt": "x", "image": ok.replace("127.0.0.2",
                                                                         "127.0.0.1")}), 400)
    assert msg.startswith("image:") and "loopback" in msg
    t0 = time.monotonic()
    msg = error_of(api.post(i2v, json={"prompt": "x",
                                      "image": "http://169.254.169.254/latest/meta-data/"}), 400)
    assert "metadata" in msg and time.monotonic() - t0 < 5
    images.redirects["/jump.png"] = ok.replace("127.0.0.2", "127.0.0.1")
    msg = error_of(api.post(i2v, json={"prompt": "x", "image": images.url("/jump.png")}), 400)
    assert "redirect" in msg and "loopback" in msg
    big = images.add("/big.png", b"\x89PNG" + b"0" * (3 * 1024 * 1024))
    msg = error_of(api.post(i2v, json={"prompt": "x", "image": big}), 400)
    assert "larger than" in msg
    text = images.add("/not-image.png", b"hello, I am text", "image/png")
    msg = error_of(api.post(i2v, json={"prompt": "x", "image": text}), 400)
    assert "image" in msg and "decod" in msg
    msg = error_of(api.post("/api/v3/google/veo3.1/reference-to-video",
                            json={"prompt": "x", "images": [ok, "file:///etc/passwd"]}), 400)
    assert msg.startswith("images[1]:")
