"""Uploads, webhooks, history, cancel and output deletion through HTTP."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import IMAGE_HOST, ServerProcess, eventually, make_image, wait_until_done
from tests.wavespeed_receiver import Refused, verify_wavespeed

T2V = "/api/v3/google/veo3.1-fast/text-to-video"


# --- uploads ---------------------------------------------------------------------------------


def test_two_step_upload_then_image_to_video(api: httpx.Client) -> None:
    png = make_image((10, 200, 120), size=(1280, 720))
    r = api.post("/api/v3/media/uploads",
                 json={"filename": "frame.png", "size": len(png), "content_type": "image/png"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert r.json()["code"] == 200
    assert data["upload"]["method"] == "PUT"
    put = httpx.put(data["upload"]["url"], content=png, headers=data["upload"]["headers"])
    assert put.status_code == 200, put.text
    # The download URL serves the same bytes, and works as an image input.
    assert httpx.get(data["download_url"]).content == png
    made = api.post("/api/v3/google/veo3.1-fast/image-to-video",
                    json={"prompt": "go", "image": data["download_url"], "duration": 4,
                          "enable_sync_mode": True})
    assert made.status_code == 200, made.text
    assert made.json()["data"]["status"] == "completed"
    # A second PUT to the same ticket is refused: an upload is written once.
    again = httpx.put(data["upload"]["url"], content=png, headers=data["upload"]["headers"])
    assert again.status_code == 400


def test_upload_refusals(api: httpx.Client) -> None:
    r = api.post("/api/v3/media/uploads", json={"filename": "x.exe", "size": 10})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("content_type:")
    r = api.post("/api/v3/media/uploads",
                 json={"filename": "big.png", "size": 10**9, "content_type": "image/png"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("size:")
    # The bytes must match the declared size and be an image.
    ticket = api.post("/api/v3/media/uploads",
                      json={"filename": "a.png", "size": 20}).json()["data"]
    r = httpx.put(ticket["upload"]["url"], content=b"x" * 10)
    assert r.status_code == 400 and "declared" in r.json()["error"]["message"]
    ticket = api.post("/api/v3/media/uploads",
                      json={"filename": "a.png", "size": 16}).json()["data"]
    r = httpx.put(ticket["upload"]["url"], content=b"not an image!!!!")
    assert r.status_code == 400 and "decodable image" in r.json()["error"]["message"]
    # A tampered PUT URL is refused; an unfinished upload is not a usable input.
    r = httpx.put(ticket["upload"]["url"].replace("signature=", "signature=0"), content=b"x")
    assert r.status_code == 403
    r = api.post("/api/v3/google/veo3.1/image-to-video",
                 json={"prompt": "x", "image": ticket["download_url"]})
    assert r.status_code == 400 and "upload it again" in r.json()["error"]["message"]
    forged = ticket["download_url"].replace("signature=", "signature=f")
    r = api.post("/api/v3/google/veo3.1/image-to-video", json={"prompt": "x", "image": forged})
    assert r.status_code == 400 and "invalid or has expired" in r.json()["error"]["message"]


def test_binary_upload_multipart_and_raw(api: httpx.Client) -> None:
    png = make_image((1, 2, 250))
    r = api.post("/api/v3/media/upload/binary", files={"file": ("ref.png", png, "image/png")})
    assert r.status_code == 200, r.text
    url = r.json()["data"]["download_url"]
    assert r.json()["data"]["size"] == len(png)
    assert r.json()["data"]["type"] == "image"  # WaveSpeed's field
    assert httpx.get(url).content == png
    raw = api.post("/api/v3/media/upload/binary?filename=raw.png", content=png,
                   headers={"Content-Type": "image/png"})
    assert raw.status_code == 200
    made = api.post("/api/v3/google/veo3.1-fast/reference-to-video",
                    json={"prompt": "compose", "images": [url, raw.json()["data"]["download_url"]],
                          "enable_sync_mode": True, "generate_audio": False})
    assert made.json()["data"]["status"] == "completed"
    assert api.post("/api/v3/media/upload/binary", content=b"").status_code == 400


def test_upload_quota_and_expiry(start_server) -> None:  # type: ignore[no-untyped-def]
    png = make_image((9, 9, 9))
    srv = start_server({"REELGATE_UPLOAD_QUOTA_BYTES": str(len(png) * 2),
                        "REELGATE_UPLOAD_TTL_S": "2"})
    with srv.client(srv.create_key()) as c:
        urls = [c.post("/api/v3/media/upload/binary", files={"file": ("a.png", png)})
                .json()["data"]["download_url"] for _ in range(2)]
        over = c.post("/api/v3/media/upload/binary", files={"file": ("a.png", png)})
        assert over.status_code == 403 and "quota" in over.json()["error"]["message"]
        time.sleep(2.5)
        # Expired: the link is dead, and the quota is free again.
        assert httpx.get(urls[0]).status_code == 403
        r = c.post("/api/v3/google/veo3.1/image-to-video", json={"prompt": "x", "image": urls[0]})
        assert r.status_code == 400
        assert c.post("/api/v3/media/upload/binary",
                      files={"file": ("a.png", png)}).status_code == 200


# --- webhooks --------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on 127.0.0.2 that fails the first ``failures`` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append({"headers": dict(self.headers), "body": body})
                ok = len(receiver.calls) > receiver.failures
                self.send_response(204 if ok else 503)
                self.end_headers()

        self.httpd = ThreadingHTTPServer((IMAGE_HOST, 0), Handler)
        self.url = f"http://{IMAGE_HOST}:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_calls(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n:
            assert time.monotonic() < deadline, f"only {len(self.calls)} calls"
            time.sleep(0.1)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hooks(start_server) -> Iterator[tuple[ServerProcess, str]]:  # type: ignore[no-untyped-def]
    srv = start_server({"REELGATE_WEBHOOK_RETRY_BASE_S": "0.5"})
    yield srv, srv.create_key()


def verify(secret: str, call: dict[str, Any]) -> dict[str, Any]:
    # v3 webhooks are signed WaveSpeed's way by default (test_v3_door.py covers the
    # Standard Webhooks option); verified as WaveSpeed's guide says, then parsed.
    verify_wavespeed(call["body"], call["headers"], secret)
    return json.loads(call["body"])  # type: ignore[no-any-return]


def test_webhook_signed_and_retried_until_accepted(hooks) -> None:  # type: ignore[no-untyped-def]
    srv, key = hooks
    receiver = Receiver(failures=2)
    try:
        with srv.client(key) as c:
            secret = c.get("/api/v3/webhook/secret").json()["data"]["secret"]
            assert secret.startswith("whsec_")
            r = c.post(T2V, params={"webhook": receiver.url},
                       json={"prompt": "hook me", "duration": 4})
            pid = r.json()["data"]["id"]
            receiver.wait_calls(3)
            payloads = [verify(secret, call) for call in receiver.calls]
            assert all(p["id"] == pid and p["status"] == "completed" for p in payloads)
            assert payloads[-1]["outputs"] and payloads[-1]["outputs"][0].startswith("http")
            # At least once, one message: every attempt carries the same webhook-id.
            ids = {call["headers"]["webhook-id"] for call in receiver.calls}
            assert len(ids) == 1
            # A wrong secret does not verify, so the check above means something.
            with pytest.raises(Refused):
                verify("whsec_" + "A" * 43 + "=", receiver.calls[0])
            # The third answer is a 2xx: wait for the server to record the delivery as done.
            delivery = eventually(lambda: next(
                (d for d in c.get("/api/v3/webhooks/deliveries", params={"prediction_id": pid})
                 .json()["data"] if d["status"] != "pending"), None), 30, "the delivery's end")
            assert delivery["status"] == "delivered" and delivery["attempts"] == 3
            assert len(receiver.calls) == 3
            # Retried by hand: delivered once more.
            assert c.post(f"/api/v3/webhooks/deliveries/{delivery['id']}/retry").status_code == 200
            receiver.wait_calls(4)
    finally:
        receiver.close()


def test_webhook_in_body_for_failed_prediction(hooks) -> None:  # type: ignore[no-untyped-def]
    srv, key = hooks
    receiver = Receiver()
    try:
        with srv.client(key) as c:
            secret = c.get("/api/v3/webhooks/secret").json()["data"]["secret"]
            c.post(T2V, json={"prompt": "no [sandbox:fail]", "webhook": receiver.url})
            receiver.wait_calls(1)
            payload = verify(secret, receiver.calls[0])
            assert payload["status"] == "failed" and "simulated" in payload["error"]
    finally:
        receiver.close()


def test_webhook_gives_up_and_is_listed_failed(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server({"REELGATE_WEBHOOK_RETRY_BASE_S": "0.2",
                        "REELGATE_WEBHOOK_MAX_ATTEMPTS": "3"})
    receiver = Receiver(failures=100)
    try:
        with srv.client(srv.create_key()) as c:
            pid = c.post(T2V, params={"webhook": receiver.url},
                         json={"prompt": "x", "duration": 4}).json()["data"]["id"]
            receiver.wait_calls(3)
            # Given up after the third attempt: wait until the delivery is listed as failed.
            def listed_failed() -> dict[str, Any] | None:
                rows = c.get("/api/v3/webhooks/deliveries", params={"status": "failed"}).json()
                return rows if rows["data"] else None

            rows = eventually(listed_failed, 30, "the delivery listed as failed")
            assert [d["prediction_id"] for d in rows["data"]] == [pid]
            assert rows["data"][0]["attempts"] == 3
            assert rows["data"][0]["last_status_code"] == 503
            assert len(receiver.calls) == 3
    finally:
        receiver.close()


def test_webhook_to_private_address_is_refused(api: httpx.Client) -> None:
    for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/", "ftp://example.com/"):
        r = api.post(T2V, params={"webhook": url}, json={"prompt": "x"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["message"].startswith("webhook:")


# --- history, cancel, delete -----------------------------------------------------------------


def test_history_filters_and_pagination(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server()
    with srv.client(srv.create_key()) as c:
        ids = []
        for model, prompt in [("veo3.1-fast", "a"), ("veo3", "b"),
                              ("veo3.1-fast", "c [sandbox:fail]"), ("veo3.1-fast", "d")]:
            r = c.post(f"/api/v3/google/{model}/text-to-video",
                       json={"prompt": prompt, "duration": 4, "enable_sync_mode": True})
            ids.append(r.json()["data"]["id"])
        page = c.get("/api/v3/predictions", params={"page_size": 3}).json()["data"]
        assert page["total"] == 4 and [p["id"] for p in page["items"]] == ids[::-1][:3]
        page2 = c.get("/api/v3/predictions", params={"page_size": 3, "page": 2}).json()["data"]
        assert [p["id"] for p in page2["items"]] == [ids[0]]
        fast = c.get("/api/v3/predictions", params={"model": "veo3.1-fast"}).json()["data"]
        assert fast["total"] == 3
        failed = c.get("/api/v3/predictions", params={"status": "failed"}).json()["data"]
        assert [p["id"] for p in failed["items"]] == [ids[2]]
        none = c.get("/api/v3/predictions", params={"to": "2020-01-01"}).json()["data"]
        assert none["total"] == 0
        bad = c.get("/api/v3/predictions", params={"status": "weird"})
        assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("status:")
    with srv.client(srv.create_key("someone-else")) as other:
        assert other.get("/api/v3/predictions").json()["data"]["total"] == 0


def test_cancel_releases_the_hold(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server({"REELGATE_SANDBOX_LATENCY_S": "3", "REELGATE_WORKER_CONCURRENCY": "1",
                        "REELGATE_FREE_BACKENDS": "", "REELGATE_ADMIN_TOKEN": "t"})
    key = srv.create_key("payer")
    srv.admin("accounts", "credit", "payer", "2.00")
    with srv.client(key) as c:
        first = c.post(T2V, json={"prompt": "runs", "duration": 4}).json()["data"]["id"]
        second = c.post(T2V, json={"prompt": "waits", "duration": 4}).json()["data"]["id"]
        assert c.get("/api/v3/balance").json()["data"]["balance"] == 1.2
        eventually(lambda: c.get(f"/api/v3/predictions/{first}").json()["data"]["status"]
                   == "processing", 30, "the first prediction to start")
        started = c.post(f"/api/v3/predictions/{first}/cancel")
        assert started.status_code == 400 and "not started" in started.json()["error"]["message"]
        r = c.post(f"/api/v3/predictions/{second}/cancel")
        assert r.status_code == 200 and r.json()["data"]["status"] == "cancelled"
        assert c.get("/api/v3/balance").json()["data"]["balance"] == 1.6
        assert wait_until_done(c, first)["status"] == "completed"
        time.sleep(1)
        # Never run, never charged; the ledger says so.
        assert c.get(f"/api/v3/predictions/{second}").json()["data"]["status"] == "cancelled"
        assert c.post(f"/api/v3/predictions/{second}/cancel").status_code == 400
    with sqlite3.connect(srv.data_dir / "reelgate.db") as conn:
        kinds = [r[0] for r in conn.execute(
            "select kind from ledger where prediction_id = ? order by id", (second,))]
    assert kinds == ["hold", "release"]


def test_delete_outputs(api: httpx.Client, server: ServerProcess) -> None:
    data = api.post(T2V, json={"prompt": "to delete", "duration": 4,
                               "enable_sync_mode": True}).json()["data"]
    url = data["outputs"][0]
    assert httpx.get(url).status_code == 200
    r = api.delete(f"/api/v3/predictions/{data['id']}/outputs")
    assert r.status_code == 200 and r.json()["data"]["outputs"] == []
    assert r.json()["data"]["status"] == "completed"
    assert httpx.get(url).status_code == 404
    assert not list(server.data_dir.rglob(f"{data['id']}.mp4"))
    assert json.loads(api.get(f"/api/v3/predictions/{data['id']}").text)["data"]["outputs"] == []
