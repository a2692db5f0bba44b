"""The Python SDK (reelgate.Client, reelgate.AsyncClient) against real server processes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import reelgate
from reelgate.client import (
    APIConnectionError,
    AsyncClient,
    AuthenticationError,
    Client,
    ContentPolicyError,
    InvalidRequestError,
    NotFoundError,
    Page,
    PermissionDeniedError,
    Prediction,
    PredictionFailed,
    RateLimitError,
    ReelgateError,
    WaitTimeout,
)
from reelgate.client.config import ConfigError, resolve
from reelgate.media.video import probe_video
from tests.conftest import FULL_SIZE_RENDERS, IMAGE_HOST, ServerProcess, make_image

# Short, small videos keep every render to a second or two of CPU.
FAST = {"duration": 4, "resolution": "720p"}
ORDER = ["created", "processing", "completed", "failed", "cancelled"]


@pytest.fixture
def client(server: ServerProcess, key: str) -> Iterator[Client]:
    with Client(key, server.base_url) as c:
        yield c


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One worker and a render latency: the first prediction stays processing for a while
    and a second one stays created behind it, so waiting, timeouts and cancelling can be
    seen."""
    srv = ServerProcess(
        tmp_path_factory.mktemp("slow"),
        # Full size: a test below checks the downloaded video's dimensions.
        {"REELGATE_SANDBOX_LATENCY_S": "3", "REELGATE_WORKER_CONCURRENCY": "1",
         **FULL_SIZE_RENDERS},
    ).start()
    yield srv
    srv.stop()


def _assert_forward_only(seen: list[str]) -> None:
    ranks = [min(ORDER.index(s), 2) for s in seen]  # the three end states rank alike
    assert ranks == sorted(ranks), seen


# --- the happy path -----------------------------------------------------------------


def test_create_wait_with_progress_and_download(slow_server: ServerProcess,
                                                tmp_path: Path) -> None:
    with Client(slow_server.create_key(), slow_server.base_url) as c:
        pred = c.create("veo3.1-fast", prompt="a lighthouse in a storm", **FAST)
        assert isinstance(pred, Prediction)
        assert pred.status in ("created", "processing") and not pred.done and not pred.ok
        assert pred.model == "google/veo3.1-fast/text-to-video"
        assert pred.model_name == "veo3.1-fast" and pred.scene == "text-to-video"
        assert pred.urls_get == f"{slow_server.base_url}/api/v3/predictions/{pred.id}/result"
        assert isinstance(pred.created_at, datetime) and pred.created_at.tzinfo is not None
        assert abs((datetime.now(UTC) - pred.created_at).total_seconds()) < 60

        seen: list[str] = []
        done = c.wait(pred, timeout=60, poll_interval=0.2,
                      on_progress=lambda p: seen.append(p.status))
        # The callback saw the first state (from create), the render and the end, in order.
        assert seen[0] == pred.status and "processing" in seen and seen[-1] == "completed"
        _assert_forward_only(seen)
        assert done.ok and done.done and done.error == ""
        assert len(done.outputs) == 1 and done.video_url == done.outputs[0]
        assert done.execution_time_ms and done.execution_time_ms > 0
        assert done.has_nsfw_contents == (False,)
        assert done.raw["timings"] == {"inference": done.execution_time_ms}

        path = c.download(done, tmp_path / "out.mp4")
        assert path == tmp_path / "out.mp4"
        assert not list(tmp_path.glob("*.part"))
        info = probe_video(path)
        assert (info.video_codec, info.width, info.height) == ("h264", 1280, 720)
        assert 3.5 < info.duration_s < 4.5


def test_sync_mode_and_download_by_id(client: Client, tmp_path: Path) -> None:
    pred = client.create("veo3-fast", prompt="sync from the SDK", sync=True, **FAST)
    assert pred.status == "completed" and pred.outputs
    # By id, into a directory: the file is named after the prediction.
    path = client.download(pred.id, tmp_path)
    assert path == tmp_path / f"{pred.id}.mp4"
    assert probe_video(path).frames > 0


def test_run_with_options(client: Client) -> None:
    pred = client.run("veo3.1", prompt="a vertical clip", aspect_ratio="9:16",
                      generate_audio=False, timeout=60, poll_interval=0.2, **FAST)
    assert pred.ok
    assert client.get(pred.id) == pred  # equal by value (raw is not compared)


def test_upload_then_image_to_video(client: Client, tmp_path: Path) -> None:
    png = tmp_path / "frame.png"
    png.write_bytes(make_image((20, 160, 90)))
    # The two-step flow from a path, from bytes and from a file; the one-step multipart.
    url = client.upload(png)
    assert url.startswith("http") and "frame.png" in url
    assert client.upload(make_image((200, 40, 40))).startswith("http")
    with png.open("rb") as fh:
        assert client.upload(fh).startswith("http")
    multi = client.upload(png, multipart=True)
    assert multi.startswith("http") and multi != url

    pred = client.run("veo3.1-fast", "image-to-video", "the camera drifts", image=url,
                      timeout=60, poll_interval=0.2, **FAST)
    assert pred.ok and pred.scene == "image-to-video"
    # A Path in an image field is uploaded by create() itself.
    pred = client.run("veo3.1-fast", "image-to-video", "and again", image=png,
                      last_image=Path(png), timeout=60, poll_interval=0.2, duration=8)
    assert pred.ok


def test_list_filters_and_pages(server: ServerProcess) -> None:
    # A fresh account, so the listing holds only what this test made.
    with Client(server.create_key("lister"), server.base_url) as c:
        made = [
            c.create("veo3.1-fast", prompt="one", **FAST),
            c.create("veo3-fast", prompt="two", **FAST),
            c.create("veo3.1-fast", prompt="three [sandbox:fail]", **FAST),
        ]
        for p in made:
            c.wait(p, timeout=60, poll_interval=0.2, raise_on_failure=False)

        first = c.list(page_size=2)
        assert isinstance(first, Page)
        assert (first.total, first.page, first.page_size, len(first)) == (3, 1, 2, 2)
        assert first.has_more
        second = c.list(page=2, page_size=2)
        assert len(second) == 1 and not second.has_more
        ids = [p.id for p in first] + [p.id for p in second]
        assert ids == [p.id for p in reversed(made)]  # newest first
        assert [p.id for p in c.iter_predictions(page_size=1)] == ids

        assert {p.id for p in c.list(model="veo3.1-fast")} == {made[0].id, made[2].id}
        # The long form a Prediction carries works as a filter too.
        assert [p.id for p in c.list(model="google/veo3-fast/text-to-video")] == [made[1].id]
        failed = c.list(status="failed")
        assert [p.id for p in failed] == [made[2].id] and failed.items[0].error
        assert c.list(status="completed").total == 2
        today = datetime.now(UTC).date()
        assert c.list(since=today - timedelta(days=1)).total == 3
        assert c.list(until=today - timedelta(days=1)).total == 0
        assert c.list(since=datetime.now(UTC) + timedelta(hours=1)).total == 0


def test_cancel_a_prediction_that_has_not_started(slow_server: ServerProcess) -> None:
    with Client(slow_server.create_key(), slow_server.base_url) as c:
        running = c.create("veo3.1-fast", prompt="first in line", **FAST)
        queued = c.create("veo3.1-fast", prompt="second in line", **FAST)
        deadline = time.monotonic() + 10
        while c.get(running).status != "processing":
            assert time.monotonic() < deadline, "the first prediction never started"
            time.sleep(0.1)
        assert c.get(queued).status == "created"  # one worker: it waits its turn

        cancelled = c.cancel(queued)
        assert cancelled.status == "cancelled" and cancelled.done and not cancelled.ok
        assert c.get(queued.id).status == "cancelled"
        with pytest.raises(PredictionFailed) as failed:
            c.wait(queued)
        assert failed.value.prediction.status == "cancelled"
        assert c.wait(queued, raise_on_failure=False).status == "cancelled"

        with pytest.raises(InvalidRequestError) as refused:
            c.cancel(running)
        assert refused.value.status == 400 and refused.value.code == 400
        assert c.wait(running, timeout=60, poll_interval=0.2).ok


def test_wait_timeout_carries_the_prediction(slow_server: ServerProcess) -> None:
    with Client(slow_server.create_key(), slow_server.base_url) as c:
        pred = c.create("veo3.1-fast", prompt="too slow for this wait", **FAST)
        t0 = time.monotonic()
        with pytest.raises(WaitTimeout) as exc:
            c.wait(pred, timeout=0.5, poll_interval=0.2)
        assert time.monotonic() - t0 < 2
        assert exc.value.prediction.id == pred.id and not exc.value.prediction.done
        assert pred.id in str(exc.value)


def test_delete_outputs(client: Client, tmp_path: Path) -> None:
    pred = client.run("veo3-fast", prompt="short lived", timeout=60, poll_interval=0.2, **FAST)
    url = pred.outputs[0]
    gone = client.delete_outputs(pred)
    assert gone.id == pred.id and gone.outputs == ()
    assert client.get(pred.id).outputs == ()
    with pytest.raises(ReelgateError, match="no video"):
        client.download(pred.id, tmp_path)
    # The old link no longer serves the file.
    with pytest.raises(NotFoundError):
        client.download(url, tmp_path / "old.mp4")
    assert not (tmp_path / "old.mp4").exists() and not list(tmp_path.glob("*.part"))


def test_balance_and_models(client: Client) -> None:
    balance = client.balance()
    assert isinstance(balance.balance, Decimal) and balance.balance_micros >= 0
    names = {m["name"] for m in client.models()}
    assert {"veo3.1-fast", "veo3.1-pro"} <= names


class _Receiver:
    """A webhook receiver on the allow-listed test address."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.bodies.append(json.loads(raw or b"{}"))
                self.send_response(200)
                self.end_headers()

        self.httpd = ThreadingHTTPServer((IMAGE_HOST, 0), Handler)
        self.url = f"http://{IMAGE_HOST}:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_webhook_is_passed_to_the_server(client: Client) -> None:
    receiver = _Receiver()
    try:
        pred = client.run("veo3.1-fast", prompt="call me back", webhook=receiver.url,
                          timeout=60, poll_interval=0.2, **FAST)
        deadline = time.monotonic() + 20
        while not receiver.bodies and time.monotonic() < deadline:
            time.sleep(0.1)
        assert receiver.bodies, "the webhook was never called"
        assert json.dumps(receiver.bodies[0]).count(pred.id) >= 1
    finally:
        receiver.close()


# --- errors -------------------------------------------------------------------------


def test_errors_map_to_exceptions(server: ServerProcess, client: Client) -> None:
    with Client("rg_not-a-real-key", server.base_url) as bad, \
            pytest.raises(AuthenticationError) as auth:
        bad.create("veo3.1-fast", prompt="x", **FAST)
    assert (auth.value.status, auth.value.code, auth.value.type) == (401, 401, "401")
    assert "Invalid API key" in auth.value.message

    with pytest.raises(NotFoundError) as nf:
        client.create("veo9", prompt="x")
    assert nf.value.status == 404 and "veo9" in nf.value.message
    with pytest.raises(NotFoundError):
        client.get("0" * 32)

    with pytest.raises(InvalidRequestError) as bad_req:
        client.create("veo3.1-fast", prompt="x", aspect_ratio="4:3")
    assert bad_req.value.status == 400 and "aspect_ratio" in bad_req.value.message
    assert not isinstance(bad_req.value, ContentPolicyError)

    # The documented quirk: HTTP 400 with type "503"; still an InvalidRequestError.
    with pytest.raises(ContentPolicyError) as policy:
        client.create("veo3.1-fast", prompt="a badword here", **FAST)
    err = policy.value
    assert (err.status, err.type, err.code) == (400, "503", 503)
    assert isinstance(err, InvalidRequestError) and "badword" not in err.message

    with pytest.raises(PredictionFailed) as failed:
        client.run("veo3.1-fast", prompt="please [sandbox:fail]", timeout=60,
                   poll_interval=0.2, **FAST)
    pred = failed.value.prediction
    assert pred.status == "failed" and pred.error and pred.error in str(failed.value)
    assert not failed.value.content_policy

    with pytest.raises(PredictionFailed) as nsfw:
        client.run("veo3.1-fast", prompt="please [sandbox:nsfw]", timeout=60,
                   poll_interval=0.2, **FAST)
    assert nsfw.value.content_policy and nsfw.value.prediction.has_nsfw_contents == (True,)

    with Client("k", "http://127.0.0.1:1", timeout=2) as nowhere, \
            pytest.raises(APIConnectionError) as conn:
        nowhere.get("abc")
    assert conn.value.status is None and "127.0.0.1:1" in conn.value.message


def test_permission_denied_for_a_restricted_key(server: ServerProcess) -> None:
    out = server.admin("keys", "create", "--name", "narrow", "--models", "veo3.1")
    assert out.returncode == 0, out.stderr
    with Client(out.stdout.strip(), server.base_url) as c:
        with pytest.raises(PermissionDeniedError) as denied:
            c.create("veo3-fast", prompt="not mine to use", **FAST)
        assert denied.value.status == 403 and denied.value.message


def test_rate_limit_error_has_retry_after(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server({"REELGATE_RATE_PER_MINUTE": "2"})
    with Client(srv.create_key(), srv.base_url) as c:
        c.balance()
        c.balance()
        with pytest.raises(RateLimitError) as limited:
            c.balance()
    assert limited.value.status == 429 and limited.value.retry_after
    assert 0 < limited.value.retry_after <= 60


# --- configuration ------------------------------------------------------------------


def test_settings_come_from_arguments_environment_then_file(tmp_path: Path) -> None:
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text('base_url = "http://file.example:9/"\napi_key = "from-file"\n'
                        "timeout = 7\n")
    env = {"REELGATE_CONFIG": str(cfg_file)}
    cfg = resolve(env=env)
    assert (cfg.base_url, cfg.api_key, cfg.timeout) == ("http://file.example:9", "from-file", 7)
    assert cfg.api_key_source == str(cfg_file)
    env |= {"REELGATE_API_KEY": "from-env", "REELGATE_BASE_URL": "http://env.example"}
    cfg = resolve(env=env)
    assert (cfg.base_url, cfg.api_key, cfg.api_key_source) == (
        "http://env.example", "from-env", "environment")
    cfg = resolve(api_key="from-arg", env=env)
    assert (cfg.api_key, cfg.api_key_source) == ("from-arg", "argument")
    # Defaults, with no file at all (XDG_CONFIG_HOME points at an empty folder).
    cfg = resolve(env={"XDG_CONFIG_HOME": str(tmp_path / "empty")})
    assert (cfg.base_url, cfg.api_key) == ("http://127.0.0.1:8000", None)

    cfg_file.write_text("base_url = [1]\n")
    with pytest.raises(ConfigError, match="base_url"):
        resolve(env={"REELGATE_CONFIG": str(cfg_file)})
    cfg_file.write_text("api_kye = 'typo'\n")
    with pytest.raises(ConfigError, match="api_kye"):
        resolve(env={"REELGATE_CONFIG": str(cfg_file)})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(env={"REELGATE_CONFIG": str(tmp_path / "missing.toml")})
    with pytest.raises(ConfigError, match="http"):
        resolve(base_url="ftp://x", env={"XDG_CONFIG_HOME": str(tmp_path / "empty")})


def test_client_reads_the_config_file(server: ServerProcess, key: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text(f'base_url = "{server.base_url}"\napi_key = "{key}"\n')
    monkeypatch.delenv("REELGATE_API_KEY", raising=False)
    monkeypatch.delenv("REELGATE_BASE_URL", raising=False)
    monkeypatch.setenv("REELGATE_CONFIG", str(cfg_file))
    with reelgate.Client() as c:
        assert c.base_url == server.base_url
        assert c.balance().balance_micros >= 0
        assert key not in repr(c)


def test_the_key_goes_only_to_the_api_origin(server: ServerProcess, key: str) -> None:
    # Output and upload URLs may live on a CDN or object store that must not see the key.
    with Client(key, server.base_url) as c:
        assert c._auth(f"{server.base_url}/media/x.mp4") == {"Authorization": f"Bearer {key}"}
        assert c._auth("https://cdn.example/x.mp4") == {}
        assert c._auth(f"http://{IMAGE_HOST}:{server.port}/x") == {}


def test_importing_reelgate_does_not_import_the_client() -> None:
    import subprocess
    import sys

    code = ("import sys, reelgate; assert 'reelgate.client' not in sys.modules; "
            "assert 'httpx' not in sys.modules; reelgate.Client; "
            "assert 'reelgate.client' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_client_package_loads_without_the_server() -> None:
    """An application that only calls a server gets the SDK, the user CLI and webhook
    verification without the server's web framework, database or queue libraries."""
    import subprocess
    import sys

    code = ("import sys, reelgate.client, reelgate.client.cli, reelgate.client.webhooks; "
            "from reelgate import Client, AsyncClient, PredictionFailed, verify_webhook; "
            "heavy = {'fastapi', 'starlette', 'sqlalchemy', 'alembic', 'redis', 'taskiq'}; "
            "loaded = sorted({m.split('.')[0] for m in sys.modules} & heavy); "
            "server = sorted(m for m in sys.modules if m.startswith('reelgate.') "
            "and not m.startswith('reelgate.client')); "
            "assert not loaded and not server, (loaded, server)")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the asyncio client -------------------------------------------------------------


async def test_async_client_end_to_end(server: ServerProcess, key: str,
                                       tmp_path: Path) -> None:
    async with AsyncClient(key, server.base_url) as c:
        url = await c.upload(make_image((90, 30, 200)), filename="start.png")
        pred = await c.create("veo3.1-fast", "image-to-video", "async drift", image=url,
                              **FAST)
        seen: list[str] = []

        async def progress(p: Prediction) -> None:  # a coroutine callback is awaited
            seen.append(p.status)

        done = await c.wait(pred, timeout=60, poll_interval=0.2, on_progress=progress)
        assert done.ok and seen[-1] == "completed"
        _assert_forward_only(seen)
        path = await c.download(done, tmp_path / "a.mp4")
        assert probe_video(path).video_codec == "h264"

        page = await c.list(page_size=1)
        assert page.total >= 1 and len(page) == 1
        assert [p.id async for p in c.iter_predictions(page_size=50)][0] == page.items[0].id

        with pytest.raises(ContentPolicyError):
            await c.create("veo3.1-fast", prompt="forbidden thing", **FAST)
        with pytest.raises(InvalidRequestError):
            await c.create("veo3.1-fast", prompt="x", duration=5)
        with pytest.raises(PredictionFailed):
            await c.run("veo3.1-fast", prompt="[sandbox:fail]", timeout=60,
                        poll_interval=0.2, **FAST)
        synced = await c.create("veo3-fast", prompt="async sync", sync=True, **FAST)
        assert synced.ok
        assert (await c.balance()).balance_micros >= 0

    async with AsyncClient("rg_wrong", server.base_url) as bad:
        with pytest.raises(AuthenticationError):
            await bad.get("abc")


async def test_async_cancel(slow_server: ServerProcess) -> None:
    async with AsyncClient(slow_server.create_key(), slow_server.base_url) as c:
        first = await c.create("veo3-fast", prompt="async first", **FAST)
        second = await c.create("veo3-fast", prompt="async second", **FAST)
        # Whichever has not started yet can be cancelled; with one worker busy on the
        # first (or on a previous test's), the second is still waiting.
        assert (await c.cancel(second)).status == "cancelled"
        with pytest.raises(WaitTimeout):
            await c.wait(first, timeout=0.3, poll_interval=0.1)


def test_date_bounds_are_sent_as_the_api_takes_them() -> None:
    from reelgate.client.sdk import _when

    assert _when(date(2026, 11, 7)) == "2026-11-07"
    assert _when(datetime(2026, 11, 7, 3, 4, 5, tzinfo=UTC)) == "2026-11-07T03:04:05Z"
    assert _when("2026-11") == "2026-11"
