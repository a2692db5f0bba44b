"""Issue 16: the calls a WaveSpeed client makes, made exactly as WaveSpeed's pages show them
(webhook verification guide, "List predictions", "Base64 Output"), against a real server."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import wavespeed
from standardwebhooks import Webhook, WebhookVerificationError

from reelgate.media.video import probe_video
from tests.conftest import ServerProcess
from tests.wavespeed_receiver import Refused, WaveSpeedReceiver, verify_wavespeed

T2V = "/api/v3/google/veo3.1-fast/text-to-video"
ADMIN = "admin-token-i16"
# Small renders: these tests are about the door, not the pixels (the CPU is shared).
SMALL = {"REELGATE_SANDBOX_MAX_HEIGHT": "144"}
README = Path(__file__).resolve().parent.parent / "README.md"


def readme_verifiers() -> dict:
    """The two verification snippets of the README's "Verifying a webhook", run as written."""
    section = README.read_text().split("### Verifying a webhook", 1)[1].split("\n## ", 1)[0]
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", section, re.S):
        exec(block, namespace)  # noqa: S102 - our own README
    return namespace


@pytest.fixture
def srv(start_server) -> ServerProcess:  # type: ignore[no-untyped-def]
    return start_server({"REELGATE_ADMIN_TOKEN": ADMIN, "REELGATE_WEBHOOK_RETRY_BASE_S": "0.3",
                         **SMALL})


# WaveSpeed's curl commands as its pages print them; the host and the key are what a user
# pastes in (the pages put the key in single quotes, so the shell does not expand it).
SECRET_CURL = (
    "curl --location --request GET 'https://api.wavespeed.ai/api/v3/webhook/secret' \\\n"
    "--header 'Authorization: Bearer ${WAVESPEED_API_KEY}'"
)
LIST_CURL = (
    "curl --location 'https://api.wavespeed.ai/api/v3/predictions' \\\n"
    "--header 'Authorization: Bearer ${WAVESPEED_API_KEY}' \\\n"
    "--header 'Content-Type: application/json' \\\n"
    "--data '{\n"
    '  "page": 1,\n'
    '  "page_size": 100\n'
    "}'"
)


def run_curl(command: str, srv: ServerProcess, key: str) -> dict:
    command = (command.replace("https://api.wavespeed.ai", srv.base_url)
               .replace("${WAVESPEED_API_KEY}", key))
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", command + " --silent --show-error"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.stdout, out.stderr)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _secret(srv: ServerProcess, key: str) -> str:
    answer = run_curl(SECRET_CURL, srv, key)
    assert answer["code"] == 200
    return str(answer["data"]["secret"])


def _delivery(c: httpx.Client, pid: str) -> dict:
    deadline = time.monotonic() + 10
    while True:
        rows = c.get("/api/v3/webhooks/deliveries", params={"prediction_id": pid}).json()["data"]
        if rows and rows[0]["status"] != "pending" or time.monotonic() > deadline:
            return rows[0]
        time.sleep(0.1)


# --- the secret --------------------------------------------------------------------------


def test_secret_at_the_documented_path_and_the_alias(srv: ServerProcess) -> None:
    key = srv.create_key("sec")
    secret = _secret(srv, key)
    assert secret.startswith("whsec_") and len(secret) > 20
    with srv.client(key) as c:
        alias = c.get("/api/v3/webhooks/secret").json()["data"]
        documented = c.get("/api/v3/webhook/secret").json()["data"]
    assert alias["secret"] == documented["secret"] == secret  # one secret, made once
    assert documented["scheme"] == "wavespeed"
    assert "v3," in documented["verification"]
    assert httpx.get(f"{srv.base_url}/api/v3/webhook/secret").status_code == 401
    # Another account has its own secret.
    assert _secret(srv, srv.create_key("other")) != secret
    # The OpenAPI document describes the new calls.
    paths = httpx.get(f"{srv.base_url}/openapi.json").json()["paths"]
    assert "post" in paths["/api/v3/predictions"] and "get" in paths["/api/v3/webhook/secret"]
    assert "413" in paths["/api/v3/predictions/{prediction_id}/result"]["get"]["responses"]


# --- WaveSpeed signatures, the default ---------------------------------------------------


def test_wavespeed_receiver_accepts_deliveries_and_refuses_tampering_and_replays(
    srv: ServerProcess,
) -> None:
    key = srv.create_key("ws")
    receiver = WaveSpeedReceiver(_secret(srv, key))
    try:
        with srv.client(key) as c:
            # WaveSpeed's form: the webhook as a query parameter of the create call.
            pid = c.post(T2V, params={"webhook": receiver.url},
                         json={"prompt": "signed the WaveSpeed way", "duration": 4}
                         ).json()["data"]["id"]
            receiver.wait_calls(1)
            first = receiver.calls[0]
            assert first["verdict"] == "ok", first["verdict"]
            assert first["headers"]["webhook-signature"].startswith("v3,")
            assert first["headers"]["Content-Type"] == "application/json"
            payload = json.loads(first["body"])
            assert payload["id"] == pid and payload["status"] == "completed"
            assert payload["outputs"][0].startswith("http")
            # WaveSpeed's webhook body echoes the request as "input".
            assert payload["input"]["prompt"] == "signed the WaveSpeed way"
            assert payload["input"]["duration"] == 4
            delivery = _delivery(c, pid)
            assert delivery["status"] == "delivered" and delivery["attempts"] == 1
            assert delivery["id"] == first["headers"]["webhook-id"]
    finally:
        receiver.close()

    # The same delivery, altered or late, sent to the same receiver over HTTP.
    def replay(body: bytes, offset_s: float = 0.0) -> int:
        receiver2 = WaveSpeedReceiver(receiver.secret)
        receiver2.clock_offset_s = offset_s
        try:
            headers = {k: v for k, v in first["headers"].items()
                       if k.lower().startswith("webhook-") or k.lower() == "content-type"}
            return httpx.post(receiver2.url, content=body, headers=headers).status_code
        finally:
            receiver2.close()

    assert replay(first["body"]) == 204
    # The README's WaveSpeed snippet agrees.
    headers = {k.lower(): v for k, v in first["headers"].items()}
    readme = readme_verifiers()
    assert readme["verify_wavespeed"](first["body"], headers, receiver.secret) is True
    assert readme["verify_wavespeed"](first["body"] + b" ", headers, receiver.secret) is False
    tampered = first["body"].replace(b'"completed"', b'"failed"')
    assert tampered != first["body"]
    assert replay(tampered) == 401
    assert replay(first["body"], offset_s=301) == 401  # five minutes and a second later
    assert replay(first["body"], offset_s=290) == 204  # still inside the window
    with pytest.raises(Refused, match="timestamp"):
        verify_wavespeed(first["body"], first["headers"], receiver.secret,
                         now=int(first["headers"]["webhook-timestamp"]) + 301)
    with pytest.raises(Refused, match="invalid signature"):
        verify_wavespeed(first["body"], first["headers"], "whsec_" + "x" * 44)
    # Not the Standard Webhooks form: its library refuses the WaveSpeed signature.
    with pytest.raises(WebhookVerificationError):
        Webhook(receiver.secret).verify(first["body"], {k.lower(): v for k, v in
                                                        first["headers"].items()})


def test_a_retry_is_signed_again_with_a_fresh_timestamp(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server({"REELGATE_WEBHOOK_RETRY_BASE_S": "1.1", **SMALL})
    key = srv.create_key("retry")
    receiver = WaveSpeedReceiver("whsec_not-the-right-one")  # refuses: 401, so reelgate retries
    try:
        with srv.client(key) as c:
            c.post(T2V, params={"webhook": receiver.url}, json={"prompt": "x", "duration": 4})
            receiver.wait_calls(2)
        a, b = receiver.calls[:2]
        assert a["headers"]["webhook-id"] == b["headers"]["webhook-id"]
        assert int(b["headers"]["webhook-timestamp"]) > int(a["headers"]["webhook-timestamp"])
        secret = _secret(srv, key)
        for call in (a, b):  # each attempt verifies on its own with the right secret
            verify_wavespeed(call["body"], call["headers"], secret)
    finally:
        receiver.close()


# --- Standard Webhooks, per account ------------------------------------------------------


def test_standard_webhooks_as_an_account_setting(srv: ServerProcess) -> None:
    key = srv.create_key("stdhooks")
    secret = _secret(srv, key)
    admin = httpx.Client(base_url=srv.base_url, headers={"Authorization": f"Bearer {ADMIN}"})
    bad = admin.patch("/admin/v1/accounts/stdhooks", json={"webhook_scheme": "v2"})
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("webhook_scheme:")
    r = admin.patch("/admin/v1/accounts/stdhooks", json={"webhook_scheme": "standard"})
    assert r.status_code == 200 and r.json()["webhook_scheme"] == "standard"
    receiver = WaveSpeedReceiver(secret)  # a WaveSpeed-style receiver, to see it refuse
    try:
        with srv.client(key) as c:
            assert c.get("/api/v3/webhook/secret").json()["data"]["scheme"] == "standard"
            pid = c.post(T2V, params={"webhook": receiver.url},
                         json={"prompt": "signed the standard way", "duration": 4}
                         ).json()["data"]["id"]
            receiver.wait_calls(1)
            call = receiver.calls[0]
            headers = {k.lower(): v for k, v in call["headers"].items()}
            assert headers["webhook-signature"].startswith("v1,")
            # The Standard Webhooks library verifies it (and a wrong secret does not).
            payload = Webhook(secret).verify(call["body"], headers)
            assert payload["id"] == pid and payload["status"] == "completed"
            assert readme_verifiers()["verify_standard"](call["body"], headers, secret) == payload
            with pytest.raises(WebhookVerificationError):
                Webhook("whsec_" + base64.b64encode(b"k" * 32).decode()).verify(
                    call["body"], headers)
            assert call["verdict"].startswith("invalid signature header format")
    finally:
        receiver.close()
    # Back to the dialect's default, from the command line this time.
    out = srv.cli("accounts", "webhook-scheme", "stdhooks", "default")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "default"
    assert admin.get("/admin/v1/accounts/stdhooks").json()["webhook_scheme"] is None
    out = srv.cli("accounts", "webhook-scheme", "stdhooks", "standard")
    assert out.returncode == 0 and out.stdout.strip() == "standard"
    out = srv.cli("accounts", "webhook-scheme", "stdhooks", "nonsense")
    assert out.returncode == 1 and "webhook_scheme" in out.stderr


# --- POST /api/v3/predictions --------------------------------------------------------------


def test_list_predictions_by_post_as_documented(srv: ServerProcess) -> None:
    key = srv.create_key("lister")
    with srv.client(key) as c:
        ids = [c.post(T2V, json={"prompt": f"clip {i}", "duration": 4}).json()["data"]["id"]
               for i in range(3)]
        failed = c.post("/api/v3/google/veo3.1/text-to-video",
                        json={"prompt": "no [sandbox:fail]", "duration": 4,
                              "enable_sync_mode": True}).json()["data"]["id"]
        for pid in ids:
            deadline = time.monotonic() + 60
            while c.get(f"/api/v3/predictions/{pid}/result").json()["data"]["status"] != \
                    "completed":
                assert time.monotonic() < deadline
                time.sleep(0.1)
    # The documented curl, run as printed: POST (by --data), Bearer key, JSON, this body.
    body = run_curl(LIST_CURL, srv, key)
    assert body["code"] == 200 and body["message"] == "success"
    data = body["data"]
    assert data["page"] == 1 and data["total"] == 4
    # Newest first, each a full prediction object.
    assert [p["id"] for p in data["items"]] == [failed, *reversed(ids)]
    assert data["items"][0]["status"] == "failed"
    assert data["items"][1]["model"] == "google/veo3.1-fast/text-to-video"
    assert data["items"][1]["outputs"][0].startswith("http")

    def post(body: dict | str) -> httpx.Response:
        with srv.client(key) as c:
            if isinstance(body, str):
                return c.post("/api/v3/predictions", content=body,
                              headers={"Content-Type": "application/json"})
            return c.post("/api/v3/predictions", json=body)

    page2 = post({"page": 2, "page_size": 3}).json()["data"]
    assert page2["page"] == 2 and page2["total"] == 4 and [p["id"] for p in page2["items"]] == \
        [ids[0]]
    assert post({"page": 1, "page_size": 100, "status": "failed"}).json()["data"]["total"] == 1
    # The model as predictions name it, or without the scene, or the bare name.
    for name in ("google/veo3.1-fast/text-to-video", "google/veo3.1-fast", "veo3.1-fast"):
        assert post({"page": 1, "page_size": 100, "model": name}).json()["data"]["total"] == 3
    assert post({"model": "google/veo3.1-fast/image-to-video"}).json()["data"]["total"] == 0
    # ISO 8601 windows: created_after is inclusive, created_before exclusive.
    now = datetime.now(UTC)
    iso = "%Y-%m-%dT%H:%M:%SZ"
    recent = {"page": 1, "page_size": 100,
              "created_after": (now - timedelta(hours=1)).strftime(iso),
              "created_before": (now + timedelta(hours=1)).strftime(iso)}
    assert post(recent).json()["data"]["total"] == 4
    assert post({"created_before": "2023-10-02T00:00:00Z"}).json()["data"]["total"] == 0
    assert post({"created_after": (now + timedelta(hours=1)).strftime(iso)}
                ).json()["data"]["total"] == 0
    # The GET form shares the filter: the same answer from the same criteria.
    with srv.client(key) as c:
        got = c.get("/api/v3/predictions", params={**recent, "model": "veo3.1-fast"}).json()
    assert [p["id"] for p in got["data"]["items"]] == list(reversed(ids))
    # An empty body is page 1 of up to 100; refusals name the field.
    assert post("").json()["data"]["total"] == 4
    for bad, field in (({"page_size": 101}, "page_size"), ({"page": 0}, "page"),
                       ({"page": "1"}, "page"), ({"status": "done"}, "status"),
                       ({"created_after": "yesterday"}, "created_after"),
                       ({"created_after": "2023-10-02T00:00:00Z",
                         "created_before": "2023-10-01T00:00:00Z"}, "created_before"),
                       ("[1, 2]", "body"), ("{not json", "body")):
        r = post(bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["message"].startswith(f"{field}:"), r.text
    # Another tenant sees none of them.
    with srv.client(srv.create_key("stranger")) as other:
        assert other.post("/api/v3/predictions", json={"page": 1, "page_size": 100}
                          ).json()["data"] == {"page": 1, "page_size": 100, "total": 0,
                                               "items": []}


# --- enable_base64_output ------------------------------------------------------------------


def _is_mp4(data: bytes, tmp_path: Path) -> bool:
    path = tmp_path / "b64.mp4"
    path.write_bytes(data)
    return probe_video(path).video_codec == "h264"


def test_base64_output_decodes_to_the_same_mp4(srv: ServerProcess, tmp_path: Path) -> None:
    key = srv.create_key("b64")
    with srv.client(key) as c:
        sync = c.post(T2V, json={"prompt": "inline please", "duration": 4,
                                 "enable_base64_output": True, "enable_sync_mode": True})
        assert sync.status_code == 200, sync.text[:500]
        data = sync.json()["data"]
        assert data["status"] == "completed" and len(data["outputs"]) == 1
        inline = data["outputs"][0]
        assert not inline.startswith(("http", "data:")) and "\n" not in inline
        video = base64.b64decode(inline, validate=True)
        # The same bytes as the URL download of the same prediction.
        as_url = c.get(f"/api/v3/predictions/{data['id']}/result",
                       params={"enable_base64_output": "false"}).json()["data"]["outputs"][0]
        assert as_url.startswith("http")
        assert httpx.get(as_url).content == video
        assert _is_mp4(video, tmp_path)
        # Reading it later (both paths) answers base64 too; listings keep URLs.
        for path in (f"/api/v3/predictions/{data['id']}/result",
                     f"/api/v3/predictions/{data['id']}"):
            assert c.get(path).json()["data"]["outputs"] == [inline]
        listed = c.post("/api/v3/predictions", json={"page": 1, "page_size": 1}).json()
        assert listed["data"]["items"][0]["outputs"] == [as_url]
        # Async mode: polled until completed, then base64.
        pid = c.post(T2V, json={"prompt": "poll me", "duration": 4,
                                "enable_base64_output": True}).json()["data"]["id"]
        deadline = time.monotonic() + 60
        while (got := c.get(f"/api/v3/predictions/{pid}/result").json()["data"])["status"] \
                != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert _is_mp4(base64.b64decode(got["outputs"][0]), tmp_path)


def test_base64_output_with_a_webhook_is_refused(srv: ServerProcess) -> None:
    key = srv.create_key("b64hook")
    receiver = WaveSpeedReceiver()
    try:
        with srv.client(key) as c:
            for kw in ({"params": {"webhook": receiver.url}, "json": {}},
                       {"json": {"webhook": receiver.url}}):
                body = {"prompt": "x", "duration": 4, "enable_base64_output": True,
                        **kw.pop("json")}
                r = c.post(T2V, json=body, **kw)
                assert r.status_code == 400, r.text
                assert r.json() == {"error": {"type": "400", "message": r.json()["error"][
                    "message"]}}
                assert r.json()["error"]["message"].startswith(
                    "enable_base64_output: webhook callback does not support base64 output")
            # Nothing was stored.
            assert c.post("/api/v3/predictions", json={}).json()["data"]["total"] == 0
    finally:
        receiver.close()


def test_base64_output_over_the_limit_is_a_clear_error(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    srv = start_server({"REELGATE_BASE64_OUTPUT_MAX_BYTES": "2000", **SMALL})
    with srv.client(srv.create_key("big")) as c:
        r = c.post(T2V, json={"prompt": "too big to inline", "duration": 4,
                              "enable_base64_output": True, "enable_sync_mode": True})
        assert r.status_code == 413, r.text[:300]
        message = r.json()["error"]["message"]
        assert message.startswith("enable_base64_output: the video of prediction")
        assert "over this server's inline limit of 2000 bytes" in message
        pid = message.split("prediction ")[1].split(" ")[0]
        # Kept and completed; the escape hatch named in the message gives the URL.
        assert c.get(f"/api/v3/predictions/{pid}/result").status_code == 413
        url_form = c.get(f"/api/v3/predictions/{pid}/result",
                         params={"enable_base64_output": "false"}).json()["data"]
        assert url_form["status"] == "completed"
        assert _is_mp4(httpx.get(url_form["outputs"][0]).content, tmp_path)


def test_wavespeed_sdk_gets_base64_outputs(srv: ServerProcess, tmp_path: Path) -> None:
    client = wavespeed.Client(api_key=srv.create_key("sdk64"), base_url=srv.base_url,
                              max_retries=0)
    out = client.run("google/veo3.1-fast/text-to-video",
                     {"prompt": "inline through the SDK", "duration": 4,
                      "enable_base64_output": True}, enable_sync_mode=True)
    assert _is_mp4(base64.b64decode(out["outputs"][0]), tmp_path)


# --- reelgate's own SDK --------------------------------------------------------------------


def test_sdk_verifies_both_signatures_and_saves_base64_outputs(srv: ServerProcess,
                                                                tmp_path: Path) -> None:
    from reelgate import Client, WebhookVerificationError, verify_webhook

    key = srv.create_key("sdkhooks")
    receiver = WaveSpeedReceiver()
    try:
        with Client(key, srv.base_url) as client:
            secret = client.webhook_secret()
            receiver.secret = secret
            pred = client.run("veo3.1-fast", prompt="sdk hook", webhook=receiver.url,
                              duration=4, timeout=60, poll_interval=0.2)
            receiver.wait_calls(1)
            call = receiver.calls[0]
            assert call["verdict"] == "ok"
            assert verify_webhook(call["body"], call["headers"], secret)["id"] == pred.id
            with pytest.raises(WebhookVerificationError, match="does not match"):
                verify_webhook(call["body"].replace(b"completed", b"failed"), call["headers"],
                               secret)
            with pytest.raises(WebhookVerificationError, match="away from now"):
                verify_webhook(call["body"], call["headers"], secret,
                               now=int(call["headers"]["webhook-timestamp"]) + 301)
            # The account switches to Standard Webhooks: the same helper verifies v1 too.
            admin = httpx.Client(base_url=srv.base_url,
                                 headers={"Authorization": f"Bearer {ADMIN}"})
            assert admin.patch("/admin/v1/accounts/sdkhooks",
                               json={"webhook_scheme": "standard"}).status_code == 200
            client.run("veo3.1-fast", prompt="sdk hook v1", webhook=receiver.url, duration=4,
                       timeout=60, poll_interval=0.2)
            receiver.wait_calls(2)
            v1 = receiver.calls[1]
            assert v1["headers"]["webhook-signature"].startswith("v1,")
            assert verify_webhook(v1["body"], v1["headers"], secret)["status"] == "completed"
            with pytest.raises(WebhookVerificationError):
                verify_webhook(v1["body"] + b" ", v1["headers"], secret)
            # enable_base64_output through the SDK: download() writes the decoded video.
            inline = client.create("veo3.1-fast", prompt="inline sdk", duration=4, sync=True,
                                   enable_base64_output=True)
            assert inline.ok and "://" not in inline.outputs[0]
            path = client.download(inline, tmp_path / "inline.mp4")
            assert path.read_bytes() == base64.b64decode(inline.outputs[0])
            assert probe_video(path).video_codec == "h264"
    finally:
        receiver.close()


# --- the smaller documented details ----------------------------------------------------------


def test_seed_minus_one_means_random_and_balance_is_a_number(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server({"REELGATE_ADMIN_TOKEN": ADMIN, **SMALL})
    key = srv.create_key("details")
    with srv.client(key) as c:
        # WaveSpeed's pages give seed the range -1 ~ 2147483647, -1 being random.
        r = c.post(T2V, json={"prompt": "any seed", "duration": 4, "seed": -1,
                              "enable_sync_mode": True})
        assert r.status_code == 200 and r.json()["data"]["status"] == "completed", r.text
        bad = c.post(T2V, json={"prompt": "x", "seed": -2})
        assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("seed:")
        # GET /api/v3/balance and GET /api/v3/account/balance: data.balance is a number.
        assert srv.admin("accounts", "credit", "details", "156.78").returncode == 0
        for path in ("/api/v3/balance", "/api/v3/account/balance"):
            data = c.get(path).json()["data"]
            assert data["balance"] == 156.78 and isinstance(data["balance"], float)
            assert data["balance_micros"] == 156_780_000 and data["currency"] == "USD"


def test_signing_scheme_follows_account_then_dialect() -> None:
    from reelgate.jobs.signing import scheme_for, signature_headers

    assert scheme_for(None) == scheme_for(None, "v3") == "wavespeed"
    assert scheme_for("standard") == scheme_for(None, "openai") == "standard"
    assert scheme_for("wavespeed", "openai") == "wavespeed"
    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    body = b'{"id":"x","status":"completed"}'
    when = datetime.now(UTC)
    v3 = signature_headers("wavespeed", secret, "msg_1", when, body)
    verify_wavespeed(body, v3, secret)
    v1 = signature_headers("standard", secret, "msg_1", when, body)
    assert Webhook(secret).verify(body, v1) == {"id": "x", "status": "completed"}
    with pytest.raises(ValueError):
        signature_headers("v2", secret, "msg_1", when, body)


def test_base64_answer_is_spliced_exactly() -> None:
    from reelgate.api.v3.present import json_with_outputs

    # A hostile error text that spells the key: json.dumps escapes its quotes, so the splice
    # still lands on the real field.
    answer = {"code": 200, "message": "success",
              "data": {"id": "p", "error": 'x "outputs":[] y', "outputs": ["https://u"],
                       "urls": {"get": "g"}}}
    parts = [base64.b64encode(b"\x00\xff" * 100), base64.b64encode(b"second")]
    parsed = json.loads(json_with_outputs(answer, parts))
    assert parsed["data"]["outputs"] == [p.decode() for p in parts]
    assert parsed["data"]["error"] == 'x "outputs":[] y'
    assert {**parsed, "data": {**parsed["data"], "outputs": ["https://u"]}} == answer
