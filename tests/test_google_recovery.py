"""Durable Google operations and channel failover, through real ``reelgate serve`` processes
and the fake Google server's request log.

- SIGKILL the server while Google's operation is pending: after a restart the prediction
  completes from the stored operation name, and Google saw exactly one create call.
- One channel answers 429: the prediction completes on the other, and
  ``reelgate google channels`` shows the first one cooling down.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reelgate.backends.google.backend import UpstreamRef
from tests import launcher
from tests.conftest import ServerProcess, wait_until_done
from tests.fake_google import FakeGoogle, make_video, write_service_account


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGoogle]:
    srv = FakeGoogle(make_video(tmp_path_factory.mktemp("video") / "v.mp4"),
                     api_keys={"key-good", "key-a", "key-b"})
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _clean(fake: FakeGoogle) -> None:
    fake.reset()


def row(db: Path, prediction_id: str) -> dict[str, object]:
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


def credited_key(server: ServerProcess) -> str:
    key = server.create_key("tester")
    assert server.admin("accounts", "credit", "tester", "100").returncode == 0
    return key


@pytest.mark.parametrize("mode", ["gemini", "vertex"])
def test_killed_worker_resumes_the_same_operation(start_server, fake: FakeGoogle,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path, mode: str) -> None:
    env = {
        "REELGATE_DEFAULT_BACKEND": "google",
        "REELGATE_GOOGLE_BASE_URL": fake.url,
        "REELGATE_GOOGLE_POLL_INITIAL_S": "0.1",
        "REELGATE_GOOGLE_POLL_MAX_S": "0.2",
        # A short lease, so the restarted server takes the dead worker's row quickly.
        "REELGATE_LEASE_TTL_S": "2",
    }
    if mode == "gemini":
        env["REELGATE_GOOGLE_API_KEY"] = "key-good"
    else:
        sa = write_service_account(tmp_path / "sa.json", f"{fake.url}/token")
        env.update({"REELGATE_GOOGLE_MODE": "vertex", "REELGATE_GOOGLE_PROJECT": "fake-project",
                    "REELGATE_GOOGLE_CREDENTIALS_FILE": str(sa)})
    data_dir = tmp_path / "data"
    db = data_dir / "reelgate.db"
    fake.hold = True  # the operation stays pending until we say so
    srv = start_server(env, data_dir=data_dir)
    key = credited_key(srv)
    with srv.client(key) as c:
        pid = c.post("/api/v3/google/veo3.1/text-to-video",
                     json={"prompt": f"{mode} survives a kill", "duration": 4}).json()["data"]["id"]
    # The operation exists at Google, its name is on the row, and it is being polled.
    wait_for(lambda: bool(row(db, pid).get("upstream_ref")) and len(fake.calls("poll")) >= 2)
    ref = UpstreamRef.loads(str(row(db, pid)["upstream_ref"]))
    (op,) = fake.created()
    assert (ref.channel, ref.operation) == ("default", op.name)

    srv.stop(signal.SIGKILL)
    polls_before = len(fake.calls("poll"))
    fake.hold = False

    srv2 = start_server(env, data_dir=data_dir)
    with srv2.client(key) as c:
        done = wait_until_done(c, pid, timeout=90)
    assert done["status"] == "completed", done
    assert len(done["outputs"]) == 1
    # Exactly one create call for this prediction, and the new process polled the same
    # operation by the name it found on the row.
    assert len(fake.calls("create")) == 1
    later = fake.calls("poll")[polls_before:]
    assert later and all(
        op.name in c.path or (c.body or {}).get("operationName") == op.name for c in later)
    assert row(db, pid)["attempts"] == 2
    assert len(list((data_dir / "videos").rglob("*.mp4"))) == 1


def test_failover_when_a_channel_answers_429(start_server, fake: FakeGoogle,  # type: ignore[no-untyped-def]
                                             tmp_path: Path) -> None:
    fake.fail("create", 429, count=None, key="key-a", retry_delay="60s")
    env = {
        "REELGATE_DEFAULT_BACKEND": "google",
        "REELGATE_GOOGLE_BASE_URL": fake.url,
        "REELGATE_GOOGLE_POLL_INITIAL_S": "0.1",
        "REELGATE_GOOGLE_POLL_MAX_S": "0.2",
        "REELGATE_GOOGLE_CHANNELS": json.dumps([
            {"name": "a", "api_key": "key-a"},
            {"name": "b", "api_key": "key-b", "max_concurrency": 4},
        ]),
    }
    data_dir = tmp_path / "data"
    srv = start_server(env, data_dir=data_dir)
    key = credited_key(srv)
    with srv.client(key) as c:
        pid = c.post("/api/v3/google/veo3.1-fast/text-to-video",
                     json={"prompt": "fail over", "duration": 4}).json()["data"]["id"]
        done = wait_until_done(c, pid, timeout=90)
    assert done["status"] == "completed", done
    creates = fake.calls("create")
    assert [(r.key, r.status) for r in creates] == [("key-a", 429), ("key-b", 200)]
    assert creates[1].at - creates[0].at < 30  # a's 60 s RetryInfo was not waited out
    assert UpstreamRef.loads(str(row(data_dir / "reelgate.db", pid)["upstream_ref"])).channel == "b"
    assert {r.key for r in fake.calls("poll")} == {"key-b"}

    # The admin command shows the pool's state as the server left it.
    out = launcher.run([sys.executable, "-m", "reelgate.backends.google.cli", "channels",
                        "--json"], env=srv.env, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)["channels"]}
    assert rows["a"]["health"] == "cooling" and "429" in rows["a"]["last_error"]
    assert rows["a"]["cooling_until"] and rows["a"]["failures"] == 1
    assert rows["b"]["health"] == "ok" and rows["b"]["completed"] == 1
    assert rows["b"]["max_concurrency"] == 4
    assert rows["a"]["credentials"] == "api key …" and "key-a" not in out.stdout
