"""The web console over plain HTTP: the session cookie, CSRF refusals, who may see what,
the price preview, poster frames and the operator's CSV. The browser tests are in
test_console_browser.py."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import ServerProcess, wait_until_done
from tests.console_helpers import ADMIN_TOKEN, CONSOLE_ENV, admin, new_user


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("console"), CONSOLE_ENV).start()
    yield server
    server.stop()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def signed_in(server: ServerProcess, secret: str) -> httpx.Client:
    c = httpx.Client(base_url=server.base_url, timeout=60)
    token = csrf_of(c.get("/console/login").text)
    r = c.post("/console/login", data={"key": secret, "csrf": token})
    assert r.status_code == 303, r.text
    return c


def test_session_cookie_is_signed_httponly_strict_and_holds_no_key(srv: ServerProcess) -> None:
    _, key = new_user(srv, "cookie-user")
    c = httpx.Client(base_url=srv.base_url, timeout=30)
    token = csrf_of(c.get("/console/login").text)
    r = c.post("/console/login", data={"key": key, "csrf": token})
    assert r.status_code == 303 and r.headers["location"] == "/console/playground"
    assert key not in r.headers["location"]
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    assert "Path=/console" in cookie
    assert key not in cookie and key[3:] not in cookie  # only a hash is kept
    page = c.get("/console/playground")
    assert page.status_code == 200 and "Playground" in page.text
    assert key not in page.text
    # A tampered cookie is no session.
    value = c.cookies.get("reelgate_console")
    bad = httpx.Client(base_url=srv.base_url, cookies={"reelgate_console": value[:-2] + "xx"})
    assert bad.get("/console/playground").status_code == 303
    # Signing out ends it.
    c.post("/console/logout", data={"csrf": csrf_of(page.text)})
    assert c.get("/console/playground").status_code == 303


def test_wrong_key_and_revoked_key(srv: ServerProcess) -> None:
    c = httpx.Client(base_url=srv.base_url, timeout=30)
    token = csrf_of(c.get("/console/login").text)
    r = c.post("/console/login", data={"key": "rg_wrong", "csrf": token})
    assert r.status_code == 401 and "not valid" in r.text
    # A session ends the moment its key is revoked.
    _, key = new_user(srv, "revoked-user")
    user = signed_in(srv, key)
    assert user.get("/console/history").status_code == 200
    with admin(srv) as a:
        prefix = key[:10]
        assert a.post(f"/keys/{prefix}/revoke").status_code == 200
    r = user.get("/console/history")
    assert r.status_code == 303 and r.headers["location"] == "/console/login"


def test_failed_sign_ins_are_limited(tmp_path: Path) -> None:
    # A server of its own: the limit is per client address, and every test here is 127.0.0.1.
    server = ServerProcess(tmp_path / "guard", CONSOLE_ENV).start()
    try:
        _, key = new_user(server, "guarded")
        c = httpx.Client(base_url=server.base_url, timeout=30)
        token = csrf_of(c.get("/console/login").text)
        codes = [c.post("/console/login", data={"key": f"rg_guess{i}", "csrf": token}).status_code
                 for i in range(11)]
        assert codes == [401] * 10 + [429]
        # Locked out: even the right key waits (a guesser cannot tell a hit from a miss).
        r = c.post("/console/login", data={"key": key, "csrf": token})
        assert r.status_code == 429 and "Too many failed sign-ins" in r.text
        r = c.post("/console/login", data={"key": ADMIN_TOKEN, "csrf": token})
        assert r.status_code == 429
    finally:
        server.stop()


def test_forms_without_the_token_or_from_another_origin_are_refused(srv: ServerProcess) -> None:
    account_id, key = new_user(srv, "csrf-user")
    user = signed_in(srv, key)
    token = csrf_of(user.get("/console/account").text)

    def keys() -> int:
        with admin(srv) as a:
            return len(a.get(f"/accounts/{account_id}/keys").json())

    before = keys()
    # No token, a wrong token, or a right token from another site's page: all refused.
    r = user.post("/console/account/keys", data={"name": "x"})
    assert r.status_code == 403 and "refused" in r.text
    r = user.post("/console/account/keys", data={"name": "x", "csrf": "guess"})
    assert r.status_code == 403
    r = user.post("/console/account/keys", data={"name": "x", "csrf": token},
                  headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert keys() == before
    # The same form from this origin works.
    r = user.post("/console/account/keys", data={"name": "x", "csrf": token},
                  headers={"Origin": srv.base_url})
    assert r.status_code == 303
    assert keys() == before + 1


def test_users_see_only_their_own_and_admin_pages_need_the_token(srv: ServerProcess) -> None:
    _, key_a = new_user(srv, "owner-a")
    _, key_b = new_user(srv, "owner-b")
    made = httpx.post(f"{srv.base_url}/api/v3/google/veo3.1-fast/text-to-video",
                      headers={"Authorization": f"Bearer {key_a}"},
                      json={"prompt": "mine [sandbox:fail]", "duration": 4})
    assert made.status_code == 403  # billed sandbox, no credit: refused, nothing stored
    account_a, key_a = new_user(srv, "owner-a2", credit="5.00")
    made = httpx.post(f"{srv.base_url}/api/v3/google/veo3.1-fast/text-to-video",
                      headers={"Authorization": f"Bearer {key_a}"},
                      json={"prompt": "mine [sandbox:fail]", "duration": 4})
    assert made.status_code == 200, made.text
    pid = made.json()["data"]["id"]
    a = signed_in(srv, key_a)
    b = signed_in(srv, key_b)
    assert a.get(f"/console/p/{pid}").status_code == 200
    for path in (f"/console/p/{pid}", f"/console/p/{pid}/status"):
        r = b.get(path)
        assert r.status_code == 404 and pid[:8] not in r.text.replace(pid, "")
    r = b.post(f"/console/p/{pid}/cancel", data={"csrf": csrf_of(b.get("/console/account").text)})
    assert r.status_code == 404
    # A user session does not open the operator's pages; the admin token does.
    assert b.get("/console/admin").status_code == 303
    op = signed_in(srv, ADMIN_TOKEN)
    page = op.get("/console/admin")
    assert page.status_code == 200 and "owner-a2" in page.text
    assert op.get("/console/history").status_code == 303  # and not a user's pages


def test_price_preview_and_errors_come_from_the_api_rules(srv: ServerProcess) -> None:
    _, key = new_user(srv, "price-user")
    c = signed_in(srv, key)
    token = csrf_of(c.get("/console/playground").text)
    form = {"csrf": token, "model": "veo3.1-fast", "scene": "text-to-video",
            "resolution": "720p", "duration": "4", "aspect_ratio": "16:9",
            "generate_audio__present": "1", "generate_audio": "on"}
    r = c.post("/console/playground/price", data=form)
    assert 'data-micros="400000"' in r.text and "0.40" in r.text
    r = c.post("/console/playground/price", data={**form, "resolution": "4k"})
    assert "only available with duration 8" in r.text
    # Submitting shows the API's refusal in plain words, beside the field it is about.
    r = c.post("/console/playground", data={**form, "prompt": "   "})
    assert 'id="err-prompt"' in r.text and "must not be empty" in r.text
    r = c.post("/console/playground", data={**form, "prompt": "a koi pond"})
    assert "Not enough balance" in r.text and "costs 0.400000" in r.text
    r = c.post("/console/playground", data={**form, "prompt": "a Forbidden  Thing"})
    assert "Blocked by the content policy" in r.text and 'id="err-prompt"' in r.text
    assert "forbidden" not in r.text.lower().split("blocked by the content policy", 1)[1]
    # The operator sees the block (the same record as for the API).
    blocks = signed_in(srv, ADMIN_TOKEN).get("/console/admin/blocks").text
    row = next(r for r in blocks.split("<tr>") if "price-user" in r)
    assert "blocklist" in row and "prompt" in row and "a Forbidden  Thing" in row
    # The key's rate limit applies to the console as to the API.
    with admin(srv) as a:
        assert a.patch("/accounts/price-user", json={"rate_per_minute": 1}).status_code == 200
    answers = [c.post("/console/playground", data={**form, "prompt": "a koi pond"}).text
               for _ in range(3)]
    assert any("Slow down" in text and "Try again in" in text for text in answers)


def test_poster_frame_is_stored_beside_the_video_and_deleted_with_it(srv: ServerProcess) -> None:
    _, key = new_user(srv, "poster-user", credit="10.00")
    api = srv.client(key)
    made = api.post("/api/v3/google/veo3.1-fast/text-to-video",
                    json={"prompt": "a lighthouse at dusk", "duration": 4})
    pid = made.json()["data"]["id"]
    assert wait_until_done(api, pid)["status"] == "completed"
    poster = srv.data_dir / "videos" / pid[:2] / f"{pid}.jpg"
    assert poster.is_file()
    with Image.open(poster) as img:
        assert img.format == "JPEG" and img.width <= 480 and img.width > 0
    c = signed_in(srv, key)
    page = c.get("/console/history").text
    src = re.search(r'<img src="([^"]+)" alt="poster of ' + pid, page)
    assert src, page
    served = httpx.get(src.group(1).replace("&amp;", "&"))
    assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
    token = csrf_of(c.get(f"/console/p/{pid}").text)
    r = c.post(f"/console/p/{pid}/delete-outputs", data={"csrf": token})
    assert r.status_code == 303
    assert not poster.exists()
    assert not (srv.data_dir / "videos" / pid[:2] / f"{pid}.mp4").exists()


def test_operator_usage_csv_and_account_controls(srv: ServerProcess) -> None:
    account_id, key = new_user(srv, "csv-user", credit="3.00")
    api = srv.client(key)
    pid = api.post("/api/v3/google/veo3.1-fast/text-to-video",
                   json={"prompt": "csv row", "duration": 4}).json()["data"]["id"]
    wait_until_done(api, pid)
    op = signed_in(srv, ADMIN_TOKEN)
    page = op.get("/console/admin/usage")
    assert page.status_code == 200 and "<svg" in page.text and "csv-user" in page.text
    today = time.strftime("%Y-%m-%d", time.gmtime())
    csv = op.get("/console/admin/usage", params={"from": today, "to": today, "format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    line = next(row for row in csv.text.splitlines() if ",csv-user," in row)
    assert line.split(",")[2:] == ["veo3.1-fast", "1", "1", "0", "4", "0.400000"]
    # Disabling the account from its page ends the user's console session too.
    user = signed_in(srv, key)
    token = csrf_of(op.get(f"/console/admin/accounts/{account_id}").text)
    r = op.post(f"/console/admin/accounts/{account_id}/disable",
                data={"csrf": token, "disabled": "1"})
    assert r.status_code == 303
    assert user.get("/console/playground").status_code == 303
    assert api.get("/api/v3/balance").status_code == 403
    system = op.get("/console/admin/system").text
    assert "veo3.1-fast" in system and "sandbox" in system and "in-process" in system


def test_console_assets_ship_in_the_package() -> None:
    import reelgate.console as console

    static = Path(console.__file__).parent / "static"
    assert (static / "htmx.min.js").read_text().startswith("/*! htmx 2.")
    assert "Zero-Clause BSD" in (static / "htmx.LICENSE.txt").read_text()


async def test_poster_frames_go_to_s3_as_jpeg(s3_endpoint: str, bucket: str, s3_admin: Any,
                                              tmp_path: Path) -> None:
    from reelgate.backends.base import Job
    from reelgate.backends.sandbox.backend import render_sandbox_video
    from reelgate.jobs.runner import poster_key
    from reelgate.media.video import poster_frame
    from tests.fake_s3 import make_s3

    video = tmp_path / "v.mp4"
    render_sandbox_video(Job(id="poster", model="veo3.1-fast", scene="text-to-video",
                             prompt="a poster", duration=1, resolution="720p"), video, fps=24)
    still = poster_frame(video, tmp_path / "poster.jpg")
    with Image.open(still) as img:
        assert img.format == "JPEG" and img.size == (480, 270)
    storage = make_s3(s3_endpoint, f"s3://{bucket}/videos")
    key = poster_key("ab" + "0" * 30)
    await storage.put_file(key, still)
    head = s3_admin.head_object(Bucket=bucket, Key=f"videos/{key}")
    assert head["ContentType"] == "image/jpeg"
    assert head["ContentLength"] == still.stat().st_size


def test_prediction_page_lists_webhook_deliveries(srv: ServerProcess) -> None:
    from tests.conftest import IMAGE_HOST

    _, key = new_user(srv, "hook-user", credit="1.00")
    api = srv.client(key)
    # An allow-listed loopback address that answers the POST with an error: the delivery is
    # recorded with the answer's status.
    hook = f"http://{IMAGE_HOST}:9/hook"
    made = api.post("/api/v3/google/veo3.1-fast/text-to-video",
                    json={"prompt": "hooked [sandbox:fail]", "duration": 4, "webhook": hook})
    assert made.status_code == 200, made.text
    pid = made.json()["data"]["id"]
    wait_until_done(api, pid)
    c = signed_in(srv, key)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        page = c.get(f"/console/p/{pid}").text
        if 'id="deliveries"' in page:
            break
        time.sleep(0.3)
    assert 'id="deliveries"' in page and "<code>msg_" in page
    assert hook in page
    delivery = re.search(r"<code>(msg_[0-9a-f]+)</code>", page).group(1)  # type: ignore[union-attr]
    r = c.post(f"/console/p/{pid}/deliveries/{delivery}/retry", data={"csrf": csrf_of(page)})
    assert r.status_code == 303 and "sent+again" in r.headers["location"]
    # Another account cannot touch it.
    _, other = new_user(srv, "hook-other")
    o = signed_in(srv, other)
    r = o.post(f"/console/p/{pid}/deliveries/{delivery}/retry",
               data={"csrf": csrf_of(o.get("/console/account").text)})
    assert "No+such+delivery" in r.headers["location"]


def test_operator_sees_google_channels_and_their_health(tmp_path: Path) -> None:
    import json

    data_dir = tmp_path / "google-status"
    data_dir.mkdir()
    # What a worker's channel pool writes: one channel cooling down after a 429.
    (data_dir / "google-channels.json").write_text(json.dumps({
        "updated_at": "2026-11-26T12:00:00Z",
        "channels": [
            {"name": "key-1", "mode": "gemini", "health": "ok", "in_flight": 3,
             "completed": 40, "failures": 1, "cooldown_reason": "", "last_error": ""},
            {"name": "key-2", "mode": "gemini", "health": "cooling", "in_flight": 0,
             "completed": 7, "failures": 5, "cooldown_reason": "429 RESOURCE_EXHAUSTED",
             "last_error": "quota exceeded"},
        ],
    }))
    server = ServerProcess(data_dir, {
        **CONSOLE_ENV, "REELGATE_GOOGLE_API_KEYS": "AIza-one,AIza-two",
        "REELGATE_MODEL_BACKENDS": '{"veo3.1": "google"}', "REELGATE_RUN_WORKERS": "false",
    }).start()
    try:
        op = signed_in(server, ADMIN_TOKEN)
        page = op.get("/console/admin/system").text
        table = page.split('id="channels"', 1)[1].split("</table>", 1)[0]
        assert "key-1" in table and "key-2" in table
        assert "cooling" in table and "429 RESOURCE_EXHAUSTED" in table
        assert "quota exceeded" in table
        assert "40 / 1" in table
        models = page.split('id="models"', 1)[1].split("</table>", 1)[0]
        assert re.search(r"<td>veo3\.1</td>.*?<td>google</td>", models, re.S)
        assert re.search(r"<td>veo3\.1-fast</td>.*?<td>sandbox</td>", models, re.S)
        assert "AIza" not in page  # credentials never reach a page
    finally:
        server.stop()


def test_console_in_scaled_out_mode_shows_the_redis_queue(cluster: Any) -> None:
    # An API process with no worker: the prediction waits in its Redis stream.
    server = cluster.api({**CONSOLE_ENV, "REELGATE_FREE_BACKENDS": "sandbox"})
    _, key = new_user(server, "scaled-user")
    pid = server.client(key).post("/api/v3/google/veo3.1-fast/text-to-video",
                                  json={"prompt": "queued", "duration": 4}).json()["data"]["id"]
    op = signed_in(server, ADMIN_TOKEN)
    page = op.get("/console/admin/system").text
    queue = page.split('id="queue"', 1)[1].split("</table>", 1)[0]
    assert "Redis streams" in queue
    assert re.search(r"waiting \(sandbox\)</th><td>1</td>", queue), queue
    assert re.search(r"sandbox/created</th><td>1</td>", queue), queue
    user = signed_in(server, key)
    history = user.get("/console/history").text  # the same pages on PostgreSQL
    assert "1 prediction" in history and pid in history
    status = user.get(f"/console/p/{pid}/status").text
    assert 'data-status="created"' in status


def test_a_key_restricted_to_some_models_cannot_manage_keys(srv: ServerProcess) -> None:
    account_id, _ = new_user(srv, "scoped-user")
    with admin(srv) as a:
        scoped = a.post(f"/accounts/{account_id}/keys",
                        json={"name": "scoped", "models": ["veo3"]}).json()["key"]

        def count() -> int:
            return len(a.get(f"/accounts/{account_id}/keys").json())

        c = signed_in(srv, scoped)
        page = c.get("/console/account").text
        assert 'id="new-key-form"' not in page and "cannot create or revoke keys" in page
        before = count()
        r = c.post("/console/account/keys", data={"name": "escalate", "csrf": csrf_of(page)})
        assert r.status_code == 303 and "cannot+create+keys" in r.headers["location"]
        assert count() == before
        # The playground offers only the key's models; a forged form meets the API's rule.
        playground = c.get("/console/playground").text
        assert re.findall(r'<option value="([^"]+)"', playground.split('id="model"')[1]
                          .split("</select>")[0]) == ["veo3"]
        r = c.post("/console/playground", data={
            "csrf": csrf_of(page), "model": "veo3.1-fast", "scene": "text-to-video",
            "prompt": "not allowed", "duration": "4"})
        assert "may not use model" in r.text


def test_every_console_post_needs_the_csrf_token(srv: ServerProcess) -> None:
    from reelgate.console import admin as admin_pages
    from reelgate.console import routes

    posts = sorted({route.path for route in [*routes.router.routes, *admin_pages.router.routes]
                    if "POST" in (getattr(route, "methods", None) or ())})
    assert len(posts) >= 14, posts  # the discovery found the forms
    _, key = new_user(srv, "every-form")
    user, op = signed_in(srv, key), signed_in(srv, ADMIN_TOKEN)
    anonymous = httpx.Client(base_url=srv.base_url)
    for path in posts:
        url = re.sub(r"\{[^}]+\}", "0" * 32, path)
        client = anonymous if path in ("/console/login", "/console/logout") else (
            op if path.startswith("/console/admin") else user)
        r = client.post(url, data={"name": "x", "amount": "1", "key": key})
        assert r.status_code == 403 and "refused" in r.text, (path, r.status_code)


def test_user_text_is_escaped_in_pages(srv: ServerProcess) -> None:
    _, key = new_user(srv, "<b>xss</b>", credit="1.00")
    api = srv.client(key)
    pid = api.post("/api/v3/google/veo3.1-fast/text-to-video",
                   json={"prompt": "<script>alert(1)</script> [sandbox:fail]",
                         "duration": 4}).json()["data"]["id"]
    wait_until_done(api, pid)
    c = signed_in(srv, key)
    page = c.get(f"/console/p/{pid}").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>xss</b>" not in c.get("/console/account").text
    assert "<b>xss</b>" not in signed_in(srv, ADMIN_TOKEN).get("/console/admin").text
