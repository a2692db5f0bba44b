"""Shared fixtures: real server processes on 127.0.0.1, an image server, keys."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests import launcher

# The fake S3 server's fixtures (s3_endpoint, s3_admin, bucket), for every test module, and
# how a parallel run hands tests to its workers.
pytest_plugins = ["tests.fake_s3", "tests.scheduling"]

# Images are served from 127.0.0.2 and only that address is allow-listed, so 127.0.0.1
# stays a refused private address in the same server.
IMAGE_HOST = "127.0.0.2"


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now. Parallel pytest-xdist workers each keep to their own share of the
    ports, so two workers never pick the same port before either binds it. (Shares by
    port // 2: Linux hands out odd ports for bind(0) and keeps even ones for connect().)"""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    for _ in range(1000):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if (port // 2) % workers == index % workers:
            return port
    return port  # a kernel that never gives one: a clash is still caught in start()


# Sandbox renders in test servers: 144 lines at 8 fps instead of full size at 24 fps (a 720p
# render costs about 2 s of CPU, 1080p over 3 s; this about 0.4 s). Tests that look at an
# output's size or frame rate ask for FULL_SIZE_RENDERS; a REELGATE_SANDBOX_* variable set
# in the environment wins over both.
SMALL_RENDERS = {"REELGATE_SANDBOX_MAX_HEIGHT": "144", "REELGATE_SANDBOX_FPS": "8"}
FULL_SIZE_RENDERS = {"REELGATE_SANDBOX_MAX_HEIGHT": "0", "REELGATE_SANDBOX_FPS": "24"}


class ServerProcess:
    """``reelgate serve`` in its own process, configured through REELGATE_* variables."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None,
                 start_timeout: float = 120, fork: bool = True) -> None:
        self.data_dir = data_dir
        # Forked from the tests' zygote (tests/launcher.py) unless the test needs the
        # command's own interpreter start (`serve --workers N`: its supervisor spawns
        # fresh interpreters anyway).
        self.fork = fork
        self.start_timeout = start_timeout
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **SMALL_RENDERS,
            **os.environ,
            "REELGATE_DATA_DIR": str(data_dir),
            "REELGATE_FETCH_ALLOW_HOSTS": IMAGE_HOST,
            "REELGATE_RECONCILE_INTERVAL_S": "0.5",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | launcher.Launched | None = None
        self.log_path = data_dir / "server.log"

    def start(self, timeout: float = 30) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.log_path, "ab") as log:  # the process has its own copy
                self.proc = (launcher.popen if self.fork else subprocess.Popen)(
                    [sys.executable, "-m", "reelgate.cli", "serve", "--port", str(self.port),
                     "--log-level", os.environ.get("REELGATE_TEST_SERVER_LOG", "warning")],
                    env=self.env,
                    stdout=log,
                    stderr=log,
                )
            deadline = time.monotonic() + max(timeout, self.start_timeout)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    text = self.log_path.read_bytes()[log_start:].decode(errors="replace")
                    # A port free in free_port() may be taken before the server binds it
                    # (an outgoing connection's ephemeral port): try another.
                    if "address already in use" in text.lower() and attempt < 2:
                        self.port = free_port()
                        self.base_url = f"http://127.0.0.1:{self.port}"
                        break
                    raise RuntimeError(f"server exited: {text[-3000:]}")
                try:
                    if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            else:
                break
        assert self.proc is not None
        self.proc.kill()  # never leave a half-started server behind
        self.proc.wait()
        raise RuntimeError("server did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return launcher.run([sys.executable, "-m", "reelgate.cli", *args], env=self.env,
                            timeout=180)

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``reelgate keys ...`` / ``reelgate accounts ...`` run in this process, for setup.

        The same command code as :meth:`cli` (argument parsing, create-or-resolve account,
        money parsing, output) against this server's database, without a new interpreter per
        call (1-2 s of imports each, a large share of the suite's time). Only the step that
        opens the database is the tests' own: a bare engine instead of every adapter, so no
        process-wide state (the local model catalog, notifiers) changes in the test process.
        Tests of the command line itself use :meth:`cli`."""
        return run_admin_in_process(self.env, args)

    def create_key(self, name: str = "tester") -> str:
        out = self.admin("keys", "create", "--name", name)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def client(self, key: str | None = None, bare: bool = False) -> httpx.Client:
        headers = {}
        if key:
            headers["Authorization"] = key if bare else f"Bearer {key}"
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=120)


_ADMIN_LOCK = threading.Lock()


def run_admin_in_process(env: dict[str, str],
                         args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    """Run an operator command of ``reelgate.cli`` in-process with ``env`` as its environment
    (see :meth:`ServerProcess.admin`); the answer has a subprocess's shape."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from unittest import mock

    from typer.testing import CliRunner

    from reelgate import cli
    from reelgate.settings import Settings
    from reelgate.store.admin import AdminStore
    from reelgate.store.db import create_engine
    from reelgate.store.repo import Store

    assert args and args[0] in ("keys", "accounts"), f"not an operator command: {args}"

    def bare_admin(fn: Callable[[AdminStore], Any]) -> Any:
        async def go() -> Any:
            engine = create_engine(settings.resolved_database_url)
            store = Store(engine)
            try:
                # API processes see access changes through the database's auth version
                # (keycache.py); the Redis announcement the full CLI adds only makes that
                # quicker.
                return await fn(AdminStore(store))
            finally:
                await store.close()
                await engine.dispose()

        # A thread and loop of its own: the caller may be inside the tests' event loop.
        with ThreadPoolExecutor(1) as pool:
            try:
                return pool.submit(asyncio.run, go()).result()
            except cli.ApiError as exc:  # what cli._admin does with API errors
                cli.err.print(f"[red]error:[/red] {exc.message}")
                raise cli.typer.Exit(1) from None

    with _ADMIN_LOCK, mock.patch.dict(os.environ, env, clear=True):
        # Settings come from the environment: read them under the server's.
        settings = Settings(_env_file=env.get("REELGATE_SETTINGS_FILE"))
        with mock.patch.object(cli, "_admin", bare_admin):
            result = CliRunner().invoke(cli.app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(["reelgate", *args], result.exit_code,
                                       result.stdout, result.stderr)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def _start(env: dict[str, str] | None = None, data_dir: Path | None = None) -> ServerProcess:
        server = ServerProcess(data_dir or tmp_path / f"data{len(started)}", env).start()
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the tests that do not need special settings. It renders at full size:
    tests of the output (test_media.py, test_validation.py, the README walk-through) use it."""
    srv = ServerProcess(
        tmp_path_factory.mktemp("server"),
        {"REELGATE_POLICY_BLOCKLIST": "forbidden thing,badword",
         "REELGATE_SYNC_TIMEOUT_S": "120",
         "REELGATE_FETCH_MAX_BYTES": str(2 * 1024 * 1024),
         **FULL_SIZE_RENDERS},
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def key(server: ServerProcess) -> str:
    return server.create_key("alice")


@pytest.fixture(scope="session")
def api(server: ServerProcess, key: str) -> Iterator[httpx.Client]:
    with server.client(key) as c:
        yield c


def make_image(color: tuple[int, int, int], size: tuple[int, int] = (640, 360),
               fmt: str = "PNG", pattern: bool = True) -> bytes:
    """A test image: a solid color with distinctive blocks, so a frame can be matched."""
    img = Image.new("RGB", size, color)
    if pattern:
        w, h = size
        for i, c in enumerate([(255, 255, 255), (0, 0, 0), (255, 0, 255), (0, 255, 255)]):
            x0 = (i % 2) * w // 2 + w // 8
            y0 = (i // 2) * h // 2 + h // 8
            img.paste(c, (x0, y0, x0 + w // 4, y0 + h // 4))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


class ImageServer:
    """A real HTTP server on 127.0.0.2 serving images and some hostile answers."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.redirects: dict[str, str] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.end_headers()
                    return
                entry = server.files.get(self.path)
                if entry is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                body, ctype = entry
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((IMAGE_HOST, 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes, ctype: str = "image/png") -> str:
        self.files[path] = (body, ctype)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://{IMAGE_HOST}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def images() -> Iterator[ImageServer]:
    srv = ImageServer()
    yield srv
    srv.close()


def eventually(check: Callable[[], Any], timeout: float = 30, what: str = "the condition",
               interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy, and return that: a test waits for
    the event itself, not for a fixed time that is too long when idle and too short under
    load."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


def wait_until_done(client: httpx.Client, prediction_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"/api/v3/predictions/{prediction_id}/result")
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        if data["status"] in ("completed", "failed"):
            return data
        time.sleep(0.2)
    raise AssertionError(f"prediction {prediction_id} did not end in {timeout}s")


# --- PostgreSQL and Redis: skip locally when absent, fail in CI ------------------------------

PG_ADMIN_URL = os.environ.get("REELGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REELGATE_TEST_REDIS", "redis://127.0.0.1:6379")


def _service_missing(what: str, exc: BaseException) -> None:
    if os.environ.get("REELGATE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required (REELGATE_REQUIRE_SERVICES=1) but unreachable: {exc}")
    pytest.skip(f"{what} not available: {exc}")


def _pg_admin(sql: str) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    # Its own thread and loop: fixtures may run inside the tests' event loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import uuid

    name = f"reelgate_test_{uuid.uuid4().hex[:12]}"
    import asyncpg

    try:
        _pg_admin(f'CREATE DATABASE "{name}"')
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        _service_missing("PostgreSQL", exc)
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    yield f"{base}/{name}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_test_db() -> int:
    """This test process's Redis database: REELGATE_TEST_REDIS_DB (7 by default), plus the
    pytest-xdist worker's index, so parallel workers never flush each other's streams."""
    base = int(os.environ.get("REELGATE_TEST_REDIS_DB", "7"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    db = base + int(worker.removeprefix("gw"))
    if not 0 < db <= 15:
        pytest.fail(f"Redis test database {db} (base {base} + worker {worker}) is outside "
                    "1..15: lower REELGATE_TEST_REDIS_DB or the number of workers (-n)")
    return db


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database of its own (db 7 unless REELGATE_TEST_REDIS_DB says otherwise), emptied
    before and after the test. Test runs sharing one Redis (several checkouts on one machine)
    each pick their own number so one run's flush cannot wipe another's streams."""
    import redis

    url = f"{REDIS_URL}/{redis_test_db()}"
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.flushdb()
    except (OSError, redis.RedisError) as exc:
        _service_missing("Redis", exc)
    yield url
    client.flushdb()
    client.close()


class WorkerProcess:
    """``reelgate worker`` in its own process (scaled-out mode)."""

    def __init__(self, data_dir: Path, env: dict[str, str],
                 args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.env = env
        self.args = args
        self.proc: subprocess.Popen[bytes] | launcher.Launched | None = None
        self.log_path = data_dir / f"worker-{id(self)}.log"

    def start(self) -> WorkerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the process has its own copy
            self.proc = launcher.popen(
                [sys.executable, "-m", "reelgate.cli", "worker", "--log-level",
                 os.environ.get("REELGATE_TEST_WORKER_LOG", "info"), *self.args],
                env=self.env, stdout=log, stderr=log,
            )
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str, redis_url: str):  # type: ignore[no-untyped-def]
    """Start API and worker processes sharing one PostgreSQL database and one Redis."""
    import uuid

    started: list[ServerProcess | WorkerProcess] = []
    data_dir = tmp_path / "cluster"

    class Cluster:
        env = {
            "REELGATE_DATABASE_URL": pg_url,
            "REELGATE_QUEUE_URL": redis_url,
            # Streams of this cluster alone: a stray consumer elsewhere cannot take its work.
            "REELGATE_QUEUE_PREFIX": f"reelgate-test-{uuid.uuid4().hex[:8]}",
        }

        def api(self, extra: dict[str, str] | None = None) -> ServerProcess:
            srv = ServerProcess(data_dir, {**self.env, **(extra or {})}).start()
            started.append(srv)
            return srv

        def worker(self, extra: dict[str, str] | None = None,
                   args: tuple[str, ...] = ()) -> WorkerProcess:
            base = ServerProcess(data_dir, {**self.env, **(extra or {})}).env
            w = WorkerProcess(data_dir, base, args).start()
            started.append(w)
            return w

    yield Cluster()
    for proc in started:
        proc.stop(signal.SIGKILL)


# --- a Redis of one test's own, to stop and start -----------------------------------------


class PrivateRedis:
    """A redis-server of this test's own on a free port, so it can be stopped and started
    without disturbing anyone else's."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            _service_missing("redis-server", FileNotFoundError("not on PATH"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while not _pings(client):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _pings(client) -> bool:  # type: ignore[no-untyped-def]
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis server of the test's own, which the test may stop and start."""
    r = PrivateRedis(tmp_path / "redis").start()
    yield r
    r.stop()
