"""The upstream ``v3`` backend against a second, real ``reelgate serve`` as the upstream
provider (and a tiny 429-answering fake on 127.0.0.1 for failover):

- text-to-video and image-to-video complete; the video is copied into the downstream's own
  storage, byte for byte, and decodes;
- SIGKILL the downstream while the upstream prediction runs: after a restart it completes
  from the stored upstream id, and the upstream saw exactly one create;
- a channel answering 429 is cooled down and the next one takes the job;
- content-policy answers (a refused create, a blocked prediction) fail as blocks, unpaid;
- the ``mix`` backend: Google first, the v3 provider when Google answers 429.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from reelgate.media.video import check_video
from tests.conftest import ImageServer, ServerProcess, make_image, wait_until_done
from tests.fake_google import FakeGoogle, make_video


def credited_key(server: ServerProcess, name: str = "tester", amount: str = "100") -> str:
    key = server.create_key(name)
    out = server.admin("accounts", "credit", name, amount)
    assert out.returncode == 0, out.stderr
    return key


class Upstream:
    """A second reelgate (sandbox backend, billed) playing the v3 provider; each test is a
    reseller account of its own there, so its predictions list is the test's alone."""

    def __init__(self, server: ServerProcess, name: str = "reseller") -> None:
        self.server = server
        self.key = credited_key(server, name)
        self.client = server.client(self.key)

    def predictions(self) -> list[dict[str, Any]]:
        r = self.client.get("/api/v3/predictions", params={"page_size": 100})
        assert r.status_code == 200, r.text
        return r.json()["data"]["items"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def upstream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("upstream"), {
        "REELGATE_FREE_BACKENDS": "",
        "REELGATE_SANDBOX_MAX_HEIGHT": "144",
        "REELGATE_SANDBOX_FPS": "8",
        "REELGATE_POLICY_BLOCKLIST": "forbidden thing",
        "REELGATE_WORKER_CONCURRENCY": "3",
    }).start()
    yield server
    server.stop()


@pytest.fixture
def upstream(upstream_server: ServerProcess, request: pytest.FixtureRequest) -> Iterator[Upstream]:
    up = Upstream(upstream_server, f"reseller-{request.node.name[:40]}")
    yield up
    up.client.close()


def downstream_env(*channels: dict[str, Any], **extra: str) -> dict[str, str]:
    return {
        "REELGATE_DEFAULT_BACKEND": "v3",
        "REELGATE_FREE_BACKENDS": "",
        "REELGATE_V3_UPSTREAM_CHANNELS": json.dumps(list(channels)),
        "REELGATE_V3_UPSTREAM_POLL_INITIAL_S": "0.2",
        "REELGATE_V3_UPSTREAM_POLL_MAX_S": "0.4",
        **extra,
    }


def channel(up: Upstream, name: str = "up", **kw: Any) -> dict[str, Any]:
    return {"name": name, "base_url": up.server.base_url, "api_key": up.key, **kw}


def stored_videos(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "videos").rglob("*.mp4"))


def test_forwards_copies_and_bills(start_server, upstream: Upstream,  # type: ignore[no-untyped-def]
                                   images: ImageServer, tmp_path: Path) -> None:
    data_dir = tmp_path / "down"
    down = start_server(downstream_env(channel(upstream)), data_dir=data_dir)
    key = credited_key(down)
    image_url = images.add("/up.png", make_image((30, 160, 60)))
    with down.client(key) as c:
        t2v = c.post("/api/v3/google/veo3.1-fast/text-to-video",
                     json={"prompt": "a red kite", "duration": 4, "aspect_ratio": "9:16"})
        i2v = c.post("/api/v3/google/veo3.1/image-to-video",
                     json={"prompt": "it moves", "image": image_url, "duration": 6})
        assert t2v.status_code == 200 and i2v.status_code == 200, (t2v.text, i2v.text)
        done = {label: wait_until_done(c, r.json()["data"]["id"])
                for label, r in (("t2v", t2v), ("i2v", i2v))}
        balance = c.get("/api/v3/balance").json()["data"]["balance"]
    for d in done.values():
        assert d["status"] == "completed", d
        assert d["outputs"][0].startswith(down.base_url)  # our storage, not the upstream's
    # The upstream made exactly these two, with the same requests.
    ups = {u["model"]: u for u in upstream.predictions()}
    assert set(ups) == {"google/veo3.1-fast/text-to-video", "google/veo3.1/image-to-video"}
    assert all(u["status"] == "completed" for u in ups.values())
    # The bytes were copied: the downstream's stored file is the upstream's video.
    for label, model in (("t2v", "google/veo3.1-fast/text-to-video"),
                         ("i2v", "google/veo3.1/image-to-video")):
        mine = httpx.get(done[label]["outputs"][0]).content
        theirs = httpx.get(ups[model]["outputs"][0]).content
        assert mine == theirs and len(mine) > 1000
    files = stored_videos(data_dir)
    assert len(files) == 2
    infos = sorted((check_video(f).duration_s, check_video(f).height > check_video(f).width)
                   for f in files)
    assert infos[0][0] == pytest.approx(4, abs=0.3) and infos[0][1]  # 9:16, 4 s
    assert infos[1][0] == pytest.approx(6, abs=0.3)
    assert float(balance) < 100  # the downstream's own customer was billed


def row(db: Path, prediction_id: str) -> dict[str, Any]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        r = conn.execute("select status, upstream_ref, attempts from predictions where id = ?",
                         (prediction_id,)).fetchone()
        return dict(r) if r else {}


def wait_for(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_killed_worker_resumes_without_a_second_create(  # type: ignore[no-untyped-def]
        start_server, tmp_path: Path) -> None:
    up = Upstream(start_server({"REELGATE_SANDBOX_LATENCY_S": "4",
                                "REELGATE_SANDBOX_MAX_HEIGHT": "144",
                                "REELGATE_SANDBOX_FPS": "8"}))
    data_dir = tmp_path / "down"
    env = downstream_env(channel(up), REELGATE_LEASE_TTL_S="2")
    down = start_server(env, data_dir=data_dir)
    key = credited_key(down)
    with down.client(key) as c:
        pid = c.post("/api/v3/google/veo3.1-fast/text-to-video",
                     json={"prompt": "survive a kill", "duration": 4}).json()["data"]["id"]
    db = data_dir / "reelgate.db"
    wait_for(lambda: bool(row(db, pid).get("upstream_ref")))
    stored = json.loads(row(db, pid)["upstream_ref"])
    (made,) = up.predictions()
    assert stored == {"channel": "up", "id": made["id"]}
    assert made["status"] in ("created", "processing")

    down.stop(signal.SIGKILL)
    down2 = start_server(env, data_dir=data_dir)
    with down2.client(key) as c:
        done = wait_until_done(c, pid, timeout=90)
    assert done["status"] == "completed", done
    assert len(up.predictions()) == 1  # one upstream create, ever
    assert row(db, pid)["attempts"] == 2
    assert len(stored_videos(data_dir)) == 1
    up.client.close()


class TooMany:
    """A v3 provider that answers every create with 429 (and counts them)."""

    def __init__(self) -> None:
        self.creates = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.creates += 1
                body = json.dumps({"error": {"message": "Too many requests", "type": "429"}})
                self.send_response(429)
                self.send_header("Content-Type", "application/json")
                self.send_header("Retry-After", "60")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_fails_over_from_a_channel_answering_429(start_server, upstream: Upstream,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path) -> None:
    busy = TooMany()
    try:
        data_dir = tmp_path / "down"
        # The busy channel weighs more, so it is asked first.
        down = start_server(downstream_env(
            {"name": "busy", "base_url": busy.url, "api_key": "k", "weight": 5},
            channel(upstream, "good")), data_dir=data_dir)
        key = credited_key(down)
        started = time.monotonic()
        with down.client(key) as c:
            pid = c.post("/api/v3/google/veo3.1-fast/text-to-video",
                         json={"prompt": "fail over", "duration": 4}).json()["data"]["id"]
            done = wait_until_done(c, pid, timeout=90)
        assert done["status"] == "completed", done
        assert time.monotonic() - started < 45  # the 60 s Retry-After was not waited out
        assert busy.creates == 1
        assert len(upstream.predictions()) == 1
        assert json.loads(row(data_dir / "reelgate.db", pid)["upstream_ref"])["channel"] == "good"
        status = json.loads((data_dir / "v3-upstream-channels.json").read_text())
        rows = {r["name"]: r for r in status["channels"]}
        assert rows["busy"]["health"] == "cooling" and "429" in rows["busy"]["last_error"]
        assert rows["good"]["completed"] == 1
    finally:
        busy.close()


class HangUp:
    """A v3 provider that reads the create and closes the connection without answering."""

    def __init__(self) -> None:
        self.creates = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.creates += 1
                self.close_connection = True  # no status line: the client sees a hang-up

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_network_errors_fail_over_only_when_nothing_was_sent(  # type: ignore[no-untyped-def]
        start_server, upstream: Upstream, tmp_path: Path) -> None:
    from tests.conftest import free_port

    hangup = HangUp()
    try:
        down = start_server(downstream_env(
            # Nothing listens here: the create never left, so the next channel takes it.
            {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}", "api_key": "k",
             "weight": 5},
            channel(upstream, "good")), data_dir=tmp_path / "a")
        key = credited_key(down)
        with down.client(key) as c:
            pid = c.post("/api/v3/google/veo3.1-fast/text-to-video",
                         json={"prompt": "dead channel", "duration": 4}).json()["data"]["id"]
            assert wait_until_done(c, pid)["status"] == "completed"
        assert len(upstream.predictions()) == 1

        # Sent and never answered: it may exist upstream, so it is not sent anywhere again.
        down2 = start_server(downstream_env(
            {"name": "hangup", "base_url": hangup.url, "api_key": "k", "weight": 5},
            channel(upstream, "good")), data_dir=tmp_path / "b")
        key2 = credited_key(down2)
        with down2.client(key2) as c:
            before = c.get("/api/v3/balance").json()["data"]["balance"]
            pid = c.post("/api/v3/google/veo3.1-fast/text-to-video",
                         json={"prompt": "hang up", "duration": 4}).json()["data"]["id"]
            done = wait_until_done(c, pid)
            assert c.get("/api/v3/balance").json()["data"]["balance"] == before
        assert done["status"] == "failed" and "did not answer" in done["error"], done
        assert hangup.creates == 1 and len(upstream.predictions()) == 1
    finally:
        hangup.close()


def test_content_policy_answers_fail_as_blocks_unpaid(start_server, upstream: Upstream,  # type: ignore[no-untyped-def]
                                                      tmp_path: Path) -> None:
    down = start_server(downstream_env(channel(upstream)), data_dir=tmp_path / "down")
    key = credited_key(down)
    with down.client(key) as c:
        before = c.get("/api/v3/balance").json()["data"]["balance"]
        refused = c.post("/api/v3/google/veo3.1-fast/text-to-video",
                         json={"prompt": "a forbidden thing", "duration": 4}).json()["data"]
        blocked = c.post("/api/v3/google/veo3.1-fast/text-to-video",
                         json={"prompt": "x [sandbox:nsfw]", "duration": 4}).json()["data"]
        ends = [wait_until_done(c, p["id"]) for p in (refused, blocked)]
        after = c.get("/api/v3/balance").json()["data"]["balance"]
    for d in ends:
        assert d["status"] == "failed" and d["has_nsfw_contents"] == [True], d
        assert "content policy" in d["error"] and d["cost"] == "0.000000"
    assert "forbidden thing" not in ends[0]["error"] or "upstream" in ends[0]["error"]
    assert after == before


@pytest.fixture
def google_429(tmp_path: Path) -> Iterator[FakeGoogle]:
    fake = FakeGoogle(make_video(tmp_path / "g.mp4"))
    fake.fail("create", 429, count=None, retry_delay="60s")
    yield fake
    fake.close()


def test_mix_google_first_then_v3_on_429(start_server, upstream: Upstream,  # type: ignore[no-untyped-def]
                                         google_429: FakeGoogle, tmp_path: Path) -> None:
    data_dir = tmp_path / "down"
    env = downstream_env(
        channel(upstream),
        REELGATE_DEFAULT_BACKEND="sandbox",
        REELGATE_MODEL_BACKENDS=json.dumps({"veo3.1-fast": "mix"}),
        REELGATE_MIX_MEMBERS=json.dumps([{"name": "google"},
                                         {"name": "v3", "priority": 1}]),
        REELGATE_GOOGLE_API_KEY="key-good",
        REELGATE_GOOGLE_BASE_URL=google_429.url,
        REELGATE_GOOGLE_ACQUIRE_TIMEOUT_S="0.5",
    )
    down = start_server(env, data_dir=data_dir)
    key = credited_key(down)
    with down.client(key) as c:
        pid = c.post("/api/v3/google/veo3.1-fast/text-to-video",
                     json={"prompt": "google is out of quota", "duration": 4}).json()["data"]["id"]
        done = wait_until_done(c, pid, timeout=90)
    assert done["status"] == "completed", done
    assert [r.status for r in google_429.calls("create")] == [429]  # Google was asked first
    assert len(upstream.predictions()) == 1  # then the v3 provider made it
    ref = json.loads(row(data_dir / "reelgate.db", pid)["upstream_ref"])
    assert ref["member"] == "v3" and json.loads(ref["ref"])["channel"] == "up"
    assert len(stored_videos(data_dir)) == 1
