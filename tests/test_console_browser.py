"""The web console in a real browser: Playwright driving Debian's chromium
(``apt-get install chromium``; ``.ci/run`` installs it). Each test saves screenshots of the
pages it visits into $REELGATE_SCREENSHOTS (or a temporary folder)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ImageServer, ServerProcess, make_image, wait_until_done
from tests.console_helpers import ADMIN_TOKEN, CONSOLE_ENV, admin, new_user, screenshots_dir

CHROMIUM = os.environ.get("REELGATE_CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _missing(what: str) -> None:
    if os.environ.get("REELGATE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required (REELGATE_REQUIRE_SERVICES=1)")
    pytest.skip(f"{what} not available")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright")
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).is_file()):
        _missing(f"chromium at {CHROMIUM}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--headless", "--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("console-ui"), CONSOLE_ENV).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return screenshots_dir(tmp_path_factory.mktemp("screenshots"))


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    ctx.set_default_timeout(30_000)
    yield ctx
    ctx.close()


def sign_in(ctx: Any, server: ServerProcess, secret: str) -> Any:
    page = ctx.new_page()
    page.goto(f"{server.base_url}/console")
    page.fill("#key", secret)
    page.click("#login button[type=submit]")
    page.wait_for_load_state()
    return page


def assert_plays(page: Any) -> dict[str, Any]:
    """The <video> really plays: it decodes (readyState), its clock moves (currentTime),
    and no media error is raised. No faking: chromium decodes the H.264 file itself."""
    page.wait_for_selector("#video", timeout=120_000)
    state = page.evaluate(
        """async () => {
            const v = document.querySelector('#video');
            v.muted = true;
            await v.play();
            const t0 = v.currentTime;
            await new Promise(r => setTimeout(r, 1500));
            return {ready: v.readyState, t0: t0, t1: v.currentTime,
                    error: v.error ? v.error.code : null, duration: v.duration,
                    h264: v.canPlayType('video/mp4; codecs="avc1.640028"')};
        }"""
    )
    assert state["error"] is None, state
    assert state["ready"] >= 2, state  # HAVE_CURRENT_DATA or better: frames decoded
    assert state["t1"] > state["t0"] + 0.3, state
    assert state["duration"] > 3, state
    return state


def test_text_to_video_plays_in_the_page(context: Any, srv: ServerProcess, shots: Path) -> None:
    _, key = new_user(srv, "t2v-user", credit="2.00")
    page = sign_in(context, srv, key)
    assert page.url.endswith("/console/playground")
    # A refusal is shown in plain words beside the field it is about.
    page.click("#submit")
    page.wait_for_selector("#submit-error")
    assert page.inner_text("#err-prompt") == "must not be empty"
    page.fill("#prompt", "A paper boat drifting down a rainy street, soft piano")
    page.select_option("#duration", "4")
    # The price is on the page before anything is submitted.
    page.wait_for_selector("#price-value[data-micros='400000']")
    page.screenshot(path=str(shots / "playground.png"))
    page.click("#submit")
    state = assert_plays(page)
    assert page.get_attribute("#download", "href").startswith(f"{srv.base_url}/media/")
    assert page.inner_text("#status-badge") == "completed"
    page.screenshot(path=str(shots / "playground-video.png"))
    # The money moved: 2.00 - 0.40 captured.
    page.goto(f"{srv.base_url}/console/account")
    assert page.inner_text("#balance") == "1.60"
    assert "capture" in page.inner_text("#ledger")
    page.screenshot(path=str(shots / "account.png"), full_page=True)
    assert state["h264"] in ("probably", "maybe")


def test_image_to_video_with_a_file_chosen_in_the_page(context: Any, srv: ServerProcess,
                                                       shots: Path, tmp_path: Path) -> None:
    _, key = new_user(srv, "i2v-user", credit="2.00")
    frame = tmp_path / "first.png"
    frame.write_bytes(make_image((30, 120, 200), size=(640, 360)))
    page = sign_in(context, srv, key)
    page.select_option("#scene", "image-to-video")
    page.wait_for_selector("input[data-for=image]")
    page.set_input_files("input[data-for=image]", str(frame))
    # Uploaded through the upload flow: the field now holds a signed upload link.
    page.wait_for_function(
        "document.querySelector('input[type=hidden][name=image]').value.includes('/media/uploads/')"
    )
    page.fill("#prompt", "The camera pushes in slowly")
    page.select_option("#duration", "4")
    page.screenshot(path=str(shots / "playground-image.png"))
    page.click("#submit")
    assert_plays(page)
    pid = page.get_attribute(".status", "id").removeprefix("status-")
    page.goto(f"{srv.base_url}/console/p/{pid}")
    # The detail page shows the input image, served only to its owner.
    src = page.get_attribute(".inputs img", "src")
    assert page.evaluate("(s) => fetch(s).then(r => r.headers.get('content-type'))",
                         src) == "image/png"
    assert "image-to-video" in page.inner_text("#params")
    page.screenshot(path=str(shots / "prediction.png"), full_page=True)
    # "Run again" brings the settings and the image back into the playground.
    page.click("#again")
    page.wait_for_selector("input[data-for=image]")
    assert page.input_value("#prompt") == "The camera pushes in slowly"
    assert "/media/uploads/" in page.input_value("input[type=hidden][name=image]")
    assert page.input_value("#scene") == "image-to-video"


def test_history_filters_and_pages(context: Any, srv: ServerProcess, shots: Path) -> None:
    # 22 creates in a row: more than the default 10 at once may be unfinished on a busy
    # machine, and this test is about the history pages, not the concurrency limit.
    _, key = new_user(srv, "history-user", credit="20.00", max_concurrent=50)
    api = srv.client(key)
    ok = api.post("/api/v3/google/veo3-fast/text-to-video",
                  json={"prompt": "a kite", "duration": 4}).json()["data"]["id"]
    failed = [
        api.post("/api/v3/google/veo3.1-fast/text-to-video",
                 json={"prompt": f"fails {i} [sandbox:fail]", "duration": 4}).json()["data"]["id"]
        for i in range(21)
    ]
    for pid in [ok, *failed]:
        wait_until_done(api, pid)
    page = sign_in(context, srv, key)
    page.goto(f"{srv.base_url}/console/history")
    assert page.inner_text("#total") == "22 predictions"
    assert page.locator("#history tbody tr").count() == 20
    page.click("#pager a[rel=next]")
    assert page.locator("#history tbody tr").count() == 2
    # The oldest, on the last page, is the one completed: a poster frame as its thumbnail.
    assert page.locator("#history img[alt^='poster of']").count() == 1
    page.wait_for_function("document.querySelector(\"#history img[alt^='poster of']\")"
                           ".naturalWidth > 0")
    page.screenshot(path=str(shots / "history.png"), full_page=True)
    page.goto(f"{srv.base_url}/console/history")
    page.select_option("#filters select[name=status]", "completed")
    page.click("#filters button[type=submit]")
    rows = page.locator("#history tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-id") == ok
    page.select_option("#filters select[name=status]", "")
    page.select_option("#filters select[name=model]", "veo3.1-fast")
    page.click("#filters button[type=submit]")
    assert page.inner_text("#total") == "21 predictions"
    tomorrow = page.evaluate("new Date(Date.now() + 86400000).toISOString().slice(0, 10)")
    page.fill("#filters input[name=from]", tomorrow)
    page.click("#filters button[type=submit]")
    assert page.inner_text("#total") == "0 predictions"


def test_cancel_a_prediction_that_has_not_started(context: Any, browser: Any,
                                                   tmp_path: Path, shots: Path) -> None:
    # A server that runs no workers: what is accepted stays "created" until cancelled.
    idle = ServerProcess(tmp_path / "idle", {**CONSOLE_ENV,
                                             "REELGATE_RUN_WORKERS": "false"}).start()
    try:
        _, key = new_user(idle, "cancel-user", credit="1.00")
        page = sign_in(context, idle, key)
        page.fill("#prompt", "never rendered")
        page.select_option("#duration", "4")
        page.click("#submit")
        page.wait_for_selector("#status-badge")
        assert page.inner_text("#status-badge") == "created"
        pid = page.get_attribute(".status", "id").removeprefix("status-")
        page.goto(f"{idle.base_url}/console/account")
        assert page.inner_text("#balance") == "0.60"  # 0.40 held
        page.goto(f"{idle.base_url}/console/p/{pid}")
        page.click("#cancel")
        page.wait_for_selector(".flash")
        assert "Cancelled" in page.inner_text(".flash")
        assert page.inner_text("#status-badge") == "cancelled"
        page.screenshot(path=str(shots / "cancelled.png"))
        page.goto(f"{idle.base_url}/console/account")
        assert page.inner_text("#balance") == "1.00"  # the hold was released
        assert "release" in page.inner_text("#ledger")
    finally:
        idle.stop()


def test_keys_created_once_and_revoked(context: Any, srv: ServerProcess, shots: Path) -> None:
    _, key = new_user(srv, "keys-user")
    page = sign_in(context, srv, key)
    page.goto(f"{srv.base_url}/console/account")
    page.fill("#new-key-form input[name=name]", "laptop")
    page.click("#new-key-form button")
    page.wait_for_selector("#new-key")
    secret = page.inner_text("#new-key").strip()
    assert secret.startswith("rg_")
    page.screenshot(path=str(shots / "account-new-key.png"))
    r = httpx.get(f"{srv.base_url}/api/v3/balance", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200
    # Shown once: a reload no longer has it.
    page.reload()
    assert page.locator("#new-key").count() == 0
    assert secret not in page.content()
    page.on("dialog", lambda d: d.accept())
    page.click(f"tr[data-key='{secret[:10]}'] button.revoke")
    page.wait_for_selector(".flash")
    assert "revoked" in page.inner_text(f"tr[data-key='{secret[:10]}']")
    r = httpx.get(f"{srv.base_url}/api/v3/balance", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 401
    # Signing out ends the session: the pages ask to sign in again.
    page.click("header button:has-text('Sign out')")
    page.wait_for_url("**/console/login")
    page.goto(f"{srv.base_url}/console/account")
    assert page.url.endswith("/console/login")


def test_admin_credits_an_account_and_the_user_sees_it(browser: Any, srv: ServerProcess,
                                                       shots: Path) -> None:
    account_id, key = new_user(srv, "credited-user")
    user_ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    admin_ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    try:
        user = sign_in(user_ctx, srv, key)
        user.goto(f"{srv.base_url}/console/account")
        assert user.inner_text("#balance") == "0.00"
        op = sign_in(admin_ctx, srv, ADMIN_TOKEN)
        assert op.url.endswith("/console/admin")
        op.screenshot(path=str(shots / "admin-accounts.png"), full_page=True)
        op.click("tr[data-account='credited-user'] a")
        op.fill("#credit input[name=amount]", "12.50")
        op.fill("#credit input[name=note]", "invoice 7")
        op.click("#credit button")
        op.wait_for_selector(".flash")
        assert "balance is now 12.50" in op.inner_text(".flash")
        assert op.inner_text("#balance") == "12.50"
        op.screenshot(path=str(shots / "admin-account.png"), full_page=True)
        user.reload()
        assert user.inner_text("#balance") == "12.50"
        assert "invoice 7" in user.inner_text("#ledger")
        for name in ("usage", "system", "blocks"):
            op.goto(f"{srv.base_url}/console/admin/{name}")
            op.screenshot(path=str(shots / f"admin-{name}.png"), full_page=True)
        with admin(srv) as a:
            assert a.get(f"/accounts/{account_id}").json()["balance"] == "12.500000"
    finally:
        user_ctx.close()
        admin_ctx.close()


def test_a_cross_site_form_post_is_refused(context: Any, srv: ServerProcess,
                                           images: ImageServer) -> None:
    account_id, key = new_user(srv, "victim")
    page = sign_in(context, srv, key)
    page.goto(f"{srv.base_url}/console/account")
    # A page on another origin (127.0.0.2) that posts a form to the console on load.
    evil = images.add("/evil.html", f"""<!doctype html><html><body>
        <form method="post" action="{srv.base_url}/console/account/keys">
          <input name="name" value="planted"><input name="csrf" value="guess"></form>
        <script>document.forms[0].submit()</script></body></html>""".encode(), "text/html")
    with page.expect_navigation(url=f"{srv.base_url}/console/account/keys") as nav:
        page.goto(evil)
    assert nav.value.status == 403
    assert "refused" in page.content()
    with admin(srv) as a:
        names = [k["name"] for k in a.get(f"/accounts/{account_id}/keys").json()]
    assert "planted" not in names


def test_a_user_cannot_open_another_users_prediction(browser: Any, srv: ServerProcess,
                                                     shots: Path) -> None:
    _, owner_key = new_user(srv, "owner", credit="1.00")
    _, other_key = new_user(srv, "other")
    api = srv.client(owner_key)
    pid = api.post("/api/v3/google/veo3.1-fast/text-to-video",
                   json={"prompt": "private", "duration": 4}).json()["data"]["id"]
    wait_until_done(api, pid)
    ctx = browser.new_context()
    try:
        page = sign_in(ctx, srv, other_key)
        response = page.goto(f"{srv.base_url}/console/p/{pid}")
        assert response.status == 404
        assert "private" not in page.content()
        page.screenshot(path=str(shots / "not-found.png"))
        response = page.goto(f"{srv.base_url}/console/p/{pid}/status")
        assert response.status == 404
    finally:
        ctx.close()


def _settled(page: Any) -> None:
    """No htmx request in flight and no swap settling."""
    page.wait_for_function("!document.querySelector("
                           "'.htmx-request, .htmx-swapping, .htmx-settling')")


def test_images_can_be_dropped_on_the_form(context: Any, srv: ServerProcess) -> None:
    _, key = new_user(srv, "drop-user")
    page = sign_in(context, srv, key)
    # Each select swaps the form's fields (htmx): wait for one swap to settle before the next
    # select, or a late swap for the model resets the scene chosen meanwhile.
    with page.expect_response(lambda r: "/console/playground/fields" in r.url):
        page.select_option("#model", "veo3.1")
    _settled(page)
    page.wait_for_selector("#scene option[value=reference-to-video]", state="attached")
    page.select_option("#scene", "reference-to-video")
    page.wait_for_selector(".drop[data-name=images]")
    assert page.locator(".drop[data-name=images]").count() == 3  # up to 3 references
    assert page.locator("#duration option").all_inner_texts() == ["8 s"]  # references: 8 s
    png = make_image((200, 60, 60), size=(320, 180))
    # A real drop event carrying a file, as a browser makes when a file is dragged in.
    page.evaluate(
        """(bytes) => {
            const file = new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"});
            const dt = new DataTransfer();
            dt.items.add(file);
            const target = document.querySelector(".drop[data-name=images]");
            target.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true,
                                                        cancelable: true}));
        }""",
        list(png),
    )
    page.wait_for_function(
        "document.querySelector('.drop[data-name=images] input[type=hidden]')"
        ".value.includes('/media/uploads/')")
    url = page.input_value(".drop[data-name=images] input[type=hidden]")
    assert httpx.get(url).content == png  # the upload flow stored exactly these bytes
    # The preview shows once the browser has decoded it: waited for, then asserted.
    page.wait_for_selector(".drop[data-name=images] img.preview", state="visible")
    assert page.is_visible(".drop[data-name=images] img.preview")
    # A file that is not an image is refused in plain words.
    page.evaluate(
        """() => {
            const dt = new DataTransfer();
            dt.items.add(new File(["hello"], "notes.txt", {type: "text/plain"}));
            document.querySelectorAll(".drop[data-name=images]")[1].dispatchEvent(
                new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""")
    state = page.locator(".drop[data-name=images] .upload-state").nth(1)
    state.wait_for(state="visible")
    page.wait_for_function(
        "document.querySelectorAll('.drop[data-name=images] .upload-state')[1]"
        ".textContent.includes('content_type')")


def test_operator_creates_an_account_and_its_keys(context: Any, srv: ServerProcess) -> None:
    page = sign_in(context, srv, ADMIN_TOKEN)
    page.fill("#new-account input[name=name]", "made-in-console")
    page.click("#new-account button")
    page.wait_for_selector("#credit")
    assert page.inner_text("h1").startswith("made-in-console")
    page.fill("#keys input[name=name]", "first")
    page.click("#keys form.inline-form button")
    page.wait_for_selector("#new-key")
    secret = page.inner_text("#new-key").strip()
    auth = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(f"{srv.base_url}/api/v3/balance", headers=auth).status_code == 200
    page.click(f"tr[data-key='{secret[:10]}'] button")
    page.wait_for_selector(".flash")
    assert "revoked" in page.inner_text(f"tr[data-key='{secret[:10]}']")
    assert httpx.get(f"{srv.base_url}/api/v3/balance", headers=auth).status_code == 401
