"""Exactly once under faults (issue 10), one test per defect, through real processes:

1. a worker killed after Google accepted a create but before the handle was written:
   with ``fail`` no second operation is made and the prediction fails uncharged; with
   ``resubmit`` the prediction completes (the second operation is counted);
2. a create whose row is committed never answers 5xx (dispatch fails while Redis is down),
   and ``Idempotency-Key`` makes a retried create return the same prediction;
3. queue consumers reconnect after Redis restarts, and say so in /readyz and /metrics;
4. SIGTERM answers held sync-mode requests before the process exits;
5. the pool stays within a PostgreSQL connection limit under a burst of creates;
6. rate limits in Redis;
7. a dead channel (network error) is failed over and cooled down, and messages show no
   address or object repr;
8. (test_inputs_storage.py) inputs reach workers through the storage only.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from reelgate.backends.google.config import ChannelConfig, GoogleSettings
from tests.conftest import (
    PrivateRedis,
    ServerProcess,
    WorkerProcess,
    free_port,
    wait_until_done,
)
from tests.fake_google import FakeGoogle, make_video
from tests.test_google_backend import job

CREATE = "/api/v3/google/veo3.1-fast/text-to-video"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGoogle]:
    srv = FakeGoogle(make_video(tmp_path_factory.mktemp("video") / "v.mp4"),
                     api_keys={"key-good", "key-a", "key-b"})
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _clean(fake: FakeGoogle) -> None:
    fake.reset()


def wait_for(check: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def ledger_kinds(db: Path, prediction_id: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        return sorted(r[0] for r in conn.execute(
            "select kind from ledger where prediction_id = ?", (prediction_id,)))


def google_env(fake: FakeGoogle, **extra: str) -> dict[str, str]:
    return {
        "REELGATE_DEFAULT_BACKEND": "google",
        "REELGATE_GOOGLE_API_KEY": "key-good",
        "REELGATE_GOOGLE_BASE_URL": fake.url,
        "REELGATE_GOOGLE_POLL_INITIAL_S": "0.1",
        "REELGATE_GOOGLE_POLL_MAX_S": "0.2",
        "REELGATE_LEASE_TTL_S": "2",
        **extra,
    }


# --- 1. the window between Google's answer and the checkpoint ------------------------------


@pytest.mark.parametrize("policy", ["fail", "resubmit"])
def test_worker_killed_before_the_handle_is_written(start_server, fake: FakeGoogle,  # type: ignore[no-untyped-def]
                                                    tmp_path: Path, policy: str) -> None:
    env = google_env(fake, REELGATE_UNCONFIRMED_SUBMISSIONS=json.dumps({"google": policy}))
    data_dir = tmp_path / "data"
    server = start_server(env, data_dir)
    key = server.create_key("tester")
    assert server.cli("accounts", "credit", "tester", "100").returncode == 0
    # Google creates the operation at once but answers 30 s later: the worker is killed
    # while it waits for that answer, so the operation exists and the row has no handle.
    fake.slow("create", 30)
    with server.client(key) as c:
        r = c.post(CREATE, json={"prompt": "the window", "duration": 4})
        assert r.status_code == 200, r.text
        pid = r.json()["data"]["id"]
        wait_for(lambda: len(fake.created()) == 1, what="the first create")
        balance_before = c.get("/api/v3/balance").json()["data"]
    server.stop(signal.SIGKILL)

    server = start_server(env, data_dir)
    with server.client(key) as c:
        data = wait_until_done(c, pid, timeout=90)
        balance = c.get("/api/v3/balance").json()["data"]
    db = data_dir / "reelgate.db"
    if policy == "fail":
        assert data["status"] == "failed", data
        assert "not charged" in data["error"] and "not started again" in data["error"]
        assert len(fake.created()) == 1  # Google was asked once: no second operation
        assert ledger_kinds(db, pid) == ["hold", "release"]
        # The hold came back in full.
        assert float(balance["balance"]) > float(balance_before["balance"])
        assert float(balance["balance"]) == 100.0
    else:
        assert data["status"] == "completed", data
        assert len(fake.created()) == 2  # at least once: the duplicate is Google's to bill
        assert ledger_kinds(db, pid) == ["capture", "hold"]


async def test_read_timeout_on_create_is_not_resent_with_fail(fake: FakeGoogle,
                                                               tmp_path: Path) -> None:
    """A create that timed out may have started an operation: at most once never sends it
    again; at least once retries it."""
    from reelgate.backends.base import BackendError
    from reelgate.backends.google.backend import GoogleBackend

    gs = GoogleSettings(_env_file=None, base_url=fake.url, request_timeout_s=1,  # type: ignore[call-arg]
                        poll_initial_s=0.05, poll_max_s=0.1, cooldown_5xx_s=0.1,
                        channels=[ChannelConfig(name="a", mode="gemini", api_key="key-a"),
                                  ChannelConfig(name="b", mode="gemini", api_key="key-b")])
    intents: list[str | None] = []

    async def intend(intent: str | None) -> None:
        intents.append(intent)

    fake.slow("create", 3)
    with pytest.raises(BackendError) as failed:
        await GoogleBackend(gs).generate(job("timeout", intend=intend, on_unconfirmed="fail"),
                                         tmp_path)
    assert "not sent again" in failed.value.message and "not charged" in failed.value.message
    assert "127.0.0.1" not in failed.value.message and "<" not in failed.value.message
    assert len(fake.calls("create")) == 1
    assert intents and intents[-1] is not None  # the intent stays on the row

    fake.reset()
    fake.slow("create", 3)
    out = await GoogleBackend(gs).generate(job("timeout", on_unconfirmed="resubmit"), tmp_path)
    assert out.stat().st_size > 0
    assert len(fake.calls("create")) == 2  # the retry went to the other channel


# --- 7. network errors: failover, cool-down, clean messages ----------------------------------


async def test_unreachable_channel_fails_over_and_cools_down(fake: FakeGoogle,
                                                             tmp_path: Path) -> None:
    from reelgate.backends.base import BackendError
    from reelgate.backends.google.backend import GoogleBackend

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    gs = GoogleSettings(_env_file=None, base_url=fake.url, poll_initial_s=0.05,  # type: ignore[call-arg]
                        poll_max_s=0.1, cooldown_5xx_s=30, submit_attempts=3,
                        channels=[ChannelConfig(name="dead", mode="gemini", api_key="key-a",
                                                base_url=dead),
                                  ChannelConfig(name="live", mode="gemini", api_key="key-b")])
    b = GoogleBackend(gs)
    out = await b.generate(job("failover"), tmp_path)
    assert out.stat().st_size > 0
    dead_row, live_row = b.pool.snapshot()
    assert dead_row["health"] == "cooling", dead_row
    assert "could not be reached" in dead_row["cooldown_reason"]
    assert live_row["completed"] == 1
    assert [c.key for c in fake.calls("create")] == ["key-b"]

    only_dead = GoogleSettings(_env_file=None, base_url=dead, submit_attempts=2,  # type: ignore[call-arg]
                               cooldown_5xx_s=0.05, acquire_timeout_s=1,
                               channels=[ChannelConfig(name="dead", mode="gemini",
                                                       api_key="key-a")])
    with pytest.raises(BackendError) as failed:
        await GoogleBackend(only_dead).generate(job("nowhere"), tmp_path)
    message = failed.value.message
    assert failed.value.retryable
    assert "could not be reached" in message, message
    for leak in ("127.0.0.1", dead, " object at ", "<", "Errno"):
        assert leak not in message, message


# --- 2 and 3. Redis down: creates answer 200; consumers come back ---------------------------


def test_redis_outage_no_5xx_and_consumers_reconnect(start_server, pg_url: str,  # type: ignore[no-untyped-def]
                                                     private_redis: PrivateRedis,
                                                     tmp_path: Path) -> None:
    env = {
        "REELGATE_DATABASE_URL": pg_url,
        "REELGATE_QUEUE_URL": private_redis.url,
        "REELGATE_QUEUE_PREFIX": f"t-{uuid.uuid4().hex[:8]}",
        # This process also consumes, so its /readyz and /metrics show the consumer.
        "REELGATE_RUN_WORKERS": "true",
        "REELGATE_SANDBOX_MAX_HEIGHT": "90",
        # Only the queue can run a row within this test: the reconciler waits 5 minutes.
        "REELGATE_DISPATCH_GRACE_S": "300",
    }
    server = start_server(env, tmp_path / "api")
    key = server.create_key("tester")
    # A separate worker process shows its consumers on its metrics port's /readyz.
    port = free_port()
    worker = WorkerProcess(tmp_path / "worker", ServerProcess(tmp_path / "worker", env).env,
                           ("--metrics-port", str(port))).start()

    def worker_ready() -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code
        except httpx.HTTPError:
            return 0

    try:
        with server.client(key) as c:
            wait_for(lambda: worker_ready() == 200, 60, "the worker's consumers")
            first = c.post(CREATE, json={"prompt": "before", "duration": 4})
            assert first.status_code == 200
            assert wait_until_done(c, first.json()["data"]["id"])["status"] == "completed"

            private_redis.stop()
            during = c.post(CREATE, json={"prompt": "during", "duration": 4},
                            headers={"Idempotency-Key": "outage-1"})
            # Stored and held: a success, whatever the broker says (the reconciler runs it).
            assert during.status_code == 200, during.text
            during_id = during.json()["data"]["id"]
            assert c.get(f"/api/v3/predictions/{during_id}").json()["data"]["status"] in (
                "created", "processing", "completed")

            def readyz() -> dict:  # type: ignore[type-arg]
                return httpx.get(f"{server.base_url}/readyz", timeout=10).json()

            wait_for(lambda: readyz()["checks"].get("consumer:sandbox", "ok") != "ok", 30,
                     "the consumer to report the outage")
            assert readyz()["status"] == "unavailable"
            wait_for(lambda: worker_ready() == 503, 30, "the worker to report the outage")

            private_redis.start()
            wait_for(lambda: readyz()["checks"].get("consumer:sandbox") == "ok", 30,
                     "the consumer to reconnect")
            wait_for(lambda: worker_ready() == 200, 30, "the worker to reconnect")
            metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
            assert 'reelgate_queue_consumer_errors_total{backend="sandbox"}' in metrics
            assert 'reelgate_queue_consumer_up{backend="sandbox"} 1.0' in metrics

            # Created after the broker is back: read from the stream at once (the reconciler
            # would not look at it for 5 minutes).
            after = c.post(CREATE, json={"prompt": "after", "duration": 4})
            assert after.status_code == 200
            assert wait_until_done(c, after.json()["data"]["id"], 60)["status"] == "completed"

            # The client that got no answer retries with its key: the same prediction.
            again = c.post(CREATE, json={"prompt": "during", "duration": 4},
                           headers={"Idempotency-Key": "outage-1"})
            assert again.status_code == 200 and again.json()["data"]["id"] == during_id
    finally:
        worker.stop(signal.SIGKILL)


# --- 2. idempotent creates ---------------------------------------------------------------------


def test_idempotency_key(server: ServerProcess, api: httpx.Client) -> None:
    body = {"prompt": "idempotent", "duration": 4}
    k = f"idem-{uuid.uuid4().hex}"
    first = api.post(CREATE, json=body, headers={"Idempotency-Key": k})
    assert first.status_code == 200
    pid = first.json()["data"]["id"]
    second = api.post(CREATE, json=body, headers={"Idempotency-Key": k})
    assert second.status_code == 200 and second.json()["data"]["id"] == pid

    other = api.post(CREATE, json={**body, "prompt": "something else"},
                     headers={"Idempotency-Key": k})
    assert other.status_code == 409
    assert other.json() == {"error": {"message": other.json()["error"]["message"],
                                      "type": "409"}}
    assert "Idempotency-Key" in other.json()["error"]["message"]

    bad = api.post(CREATE, json=body, headers={"Idempotency-Key": "x" * 300})
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["error"]["message"]

    # Racing retries of one create: one prediction.
    k2 = f"race-{uuid.uuid4().hex}"

    async def race() -> set[str]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60,
                                     headers=dict(api.headers)) as c:
            answers = await asyncio.gather(*(
                c.post(CREATE, json=body, headers={"Idempotency-Key": k2}) for _ in range(8)))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        return {a.json()["data"]["id"] for a in answers}

    assert len(asyncio.run(race())) == 1
    db = server.data_dir / "reelgate.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select count(*) from predictions where idempotency_key = ?",
                            (k2,)).fetchone()[0]
    assert rows == 1


def test_sdk_sends_a_key_and_reuses_it_on_retry(server: ServerProcess, key: str) -> None:
    """The SDK's create carries an Idempotency-Key, and a retry after a lost answer reuses
    it: a proxy that drops the first answer does not make two predictions."""
    from reelgate.client import Client

    seen: list[str] = []
    dropped = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Idempotency-Key", ""))
        with httpx.Client(base_url=server.base_url, timeout=60) as real:
            answer = real.request(request.method, str(request.url.copy_with(
                scheme="http", host="127.0.0.1", port=server.port)),
                headers=dict(request.headers), content=request.content)
        if request.method == "POST" and dropped["n"] == 0:
            dropped["n"] += 1
            raise httpx.ReadError("connection reset after the server answered")
        return httpx.Response(answer.status_code, headers=answer.headers,
                              content=answer.content)

    with Client(key, server.base_url,
                http_client=httpx.Client(transport=httpx.MockTransport(handler))) as sdk:
        pred = sdk.create("veo3.1-fast", prompt="sdk retry", duration=4)
    posts = [k for k in seen if k]
    assert len(posts) == 2 and posts[0] == posts[1] and len(posts[0]) >= 16
    with sqlite3.connect(server.data_dir / "reelgate.db") as conn:
        n = conn.execute("select count(*) from predictions where idempotency_key = ?",
                         (posts[0],)).fetchone()[0]
        assert n == 1
        assert conn.execute("select id from predictions where idempotency_key = ?",
                            (posts[0],)).fetchone()[0] == pred.id


# --- 4. graceful drain -------------------------------------------------------------------------


def test_sigterm_answers_held_sync_requests(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server({"REELGATE_SANDBOX_LATENCY_S": "60",
                           "REELGATE_SHUTDOWN_DRAIN_S": "2",
                           "REELGATE_WORKER_CONCURRENCY": "4"})
    key = server.create_key("tester")
    answers: list[httpx.Response | BaseException] = []

    def hold(i: int) -> None:
        try:
            with server.client(key) as c:
                answers.append(c.post(CREATE, json={"prompt": f"held {i}", "duration": 4,
                                                    "enable_sync_mode": True}))
        except BaseException as exc:
            answers.append(exc)

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    db = server.data_dir / "reelgate.db"

    def held() -> bool:
        with sqlite3.connect(db) as conn:
            return conn.execute("select count(*) from predictions").fetchone()[0] == 4

    wait_for(held, 30, "four held requests")
    time.sleep(0.5)
    started = time.monotonic()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    # uvicorn re-raises the signal once it has shut down gracefully.
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 20
    assert len(answers) == 4
    for a in answers:
        assert isinstance(a, httpx.Response), repr(a)
        assert a.status_code == 200, a.text
        data = a.json()["data"]
        assert len(data["id"]) == 32 and data["urls"]["get"].endswith("/result")
        assert "restarting" in data["error"]


# --- 5. connection pools within the server's limit --------------------------------------------


def test_pool_stays_within_a_connection_limit(start_server, pg_url: str,  # type: ignore[no-untyped-def]
                                              tmp_path: Path) -> None:
    """A role limited to 14 connections (as if 100 were shared by several processes): a
    burst of creates waits for the pool instead of failing with "too many clients"."""
    from tests.conftest import _pg_admin

    role = "reelgate_i10_limited"
    db = pg_url.rsplit("/", 1)[1]
    _pg_admin(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
              f"THEN CREATE ROLE {role} LOGIN; END IF; END $$")
    _pg_admin(f"ALTER ROLE {role} CONNECTION LIMIT 14")
    _pg_admin(f'ALTER DATABASE "{db}" OWNER TO {role}')
    url = pg_url.replace("postgres@", f"{role}@")
    server = start_server({"REELGATE_DATABASE_URL": url, "REELGATE_SANDBOX_MAX_HEIGHT": "90",
                           "REELGATE_MAX_CONCURRENT": "1000",
                           "REELGATE_RATE_PER_MINUTE": "100000"})
    key = server.create_key("tester")

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120,
                                     headers={"Authorization": f"Bearer {key}"}) as c:
            answers = await asyncio.gather(*(
                c.post(CREATE, json={"prompt": f"burst {i}", "duration": 4})
                for i in range(80)))
        return [a.status_code for a in answers]

    statuses = asyncio.run(burst())
    assert statuses == [200] * 80, sorted(set(statuses))


# --- 6. rate limits in Redis -------------------------------------------------------------------


def test_rate_limits_in_redis(start_server, redis_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {"REELGATE_RATE_LIMIT_STORAGE_URL": redis_url, "REELGATE_RATE_PER_MINUTE": "3"}
    first = start_server(env, tmp_path / "a")
    key = first.create_key("tester")
    with first.client(key) as c:
        codes = [c.get("/api/v3/balance").status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    # Another API process (here: the same data, another process) shares the count.
    second = start_server(env, tmp_path / "a")
    with second.client(key) as c:
        limited = c.get("/api/v3/balance")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
