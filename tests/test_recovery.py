"""Restart recovery: predictions left created or processing when the process died complete
after a restart, each exactly once, with their video."""

from __future__ import annotations

import signal
import sqlite3
import time

from tests.conftest import wait_until_done


def statuses(db) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("select id, status from predictions"))


def test_killed_server_finishes_its_work_after_restart(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {
        "REELGATE_SANDBOX_LATENCY_S": "3",
        "REELGATE_WORKER_CONCURRENCY": "1",
        "REELGATE_LEASE_TTL_S": "2",
    }
    data_dir = tmp_path / "shared-data"
    srv = start_server(env, data_dir=data_dir)
    key = srv.create_key()
    with srv.client(key) as c:
        ids = [
            c.post("/api/v3/google/veo3.1-fast/text-to-video",
                   json={"prompt": f"job {i}", "duration": 4}).json()["data"]["id"]
            for i in range(3)
        ]
        deadline = time.monotonic() + 20
        while "processing" not in statuses(data_dir / "reelgate.db").values():
            assert time.monotonic() < deadline
            time.sleep(0.1)
    before = statuses(data_dir / "reelgate.db")
    # One running (processing), the others waiting (created): kill without any cleanup.
    assert sorted(before.values()) == ["created", "created", "processing"], before
    srv.stop(signal.SIGKILL)

    srv2 = start_server(env, data_dir=data_dir)
    with srv2.client(key) as c:
        for pid in ids:
            done = wait_until_done(c, pid, timeout=90)
            assert done["status"] == "completed", done
            assert len(done["outputs"]) == 1
            assert c.get(done["outputs"][0].replace(srv2.base_url, "")).status_code == 200
    with sqlite3.connect(data_dir / "reelgate.db") as conn:
        attempts = dict(conn.execute("select id, attempts from predictions"))
    # The interrupted one ran twice; the waiting ones ran once.
    assert sorted(attempts.values()) == [1, 1, 2]
    videos = list((data_dir / "videos").rglob("*.mp4"))
    assert len(videos) == 3


def test_graceful_stop_hands_work_back(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"REELGATE_SANDBOX_LATENCY_S": "3", "REELGATE_LEASE_TTL_S": "60"}
    data_dir = tmp_path / "graceful"
    srv = start_server(env, data_dir=data_dir)
    key = srv.create_key()
    with srv.client(key) as c:
        pid = c.post("/api/v3/google/veo3/text-to-video",
                     json={"prompt": "x", "duration": 4}).json()["data"]["id"]
        deadline = time.monotonic() + 20
        while statuses(data_dir / "reelgate.db")[pid] != "processing":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    srv.stop(signal.SIGTERM)
    # The lease was handed back: a new process takes it at once, not after 60 s.
    srv2 = start_server(env, data_dir=data_dir)
    t0 = time.monotonic()
    with srv2.client(key) as c:
        assert wait_until_done(c, pid, timeout=30)["status"] == "completed"
    assert time.monotonic() - t0 < 20
