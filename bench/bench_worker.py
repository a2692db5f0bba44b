"""(b) How many predictions one worker process keeps in flight against a slow upstream, and
its memory at 1,000 and 10,000 in flight.

One `reelgate worker` process (scaled-out mode: PostgreSQL + Redis) runs the Google backend
against the fake Google server of the test suite (a real HTTP server on 127.0.0.1) that holds
every operation pending, so each prediction stays in flight: created at "Google", its
operation name stored, polled with backoff. The script queues 1,000 predictions, waits until
the worker holds them all, reads the worker's resident memory (VmRSS) and the fake's count of
create calls, then tops up to 10,000 and measures again. Idle memory is the baseline.

Needs PostgreSQL (127.0.0.1:5432, database `test` reachable as postgres) and Redis
(127.0.0.1:6379). Run:  .venv/bin/python bench/bench_worker.py [--max 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reelgate.jobs.dispatch import RedisQueue  # noqa: E402
from reelgate.store import migrate  # noqa: E402
from reelgate.store.db import create_engine  # noqa: E402
from reelgate.store.repo import Store, new_id  # noqa: E402
from tests.fake_google import FakeGoogle, make_video  # noqa: E402

REDIS = "redis://127.0.0.1:6379/9"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


def in_flight(metrics_url: str) -> int:
    text = httpx.get(metrics_url, timeout=5).text
    m = re.search(r"^reelgate_worker_in_flight (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else 0


async def enqueue(db_url: str, n: int, account: tuple[str, str]) -> None:
    engine = create_engine(db_url)
    store = Store(engine)
    queue = RedisQueue(REDIS, ["google"])
    await queue.start()
    params = {"prompt": "a slow upstream", "aspect_ratio": "16:9", "resolution": "720p",
              "output_resolution": "720p", "duration": 8, "enhance_prompt": True,
              "enable_upsample": False, "negative_prompt": None, "seed": None,
              "generate_audio": True}
    sem = asyncio.Semaphore(32)

    async def one() -> None:
        async with sem:
            pid = new_id()
            await store.insert_prediction(id=pid, account_id=account[0], key_id=account[1],
                                          model="veo3.1-fast", scene="text-to-video",
                                          backend="google", params=params, inputs={})
            await queue.dispatch(pid, "google")

    await asyncio.gather(*(one() for _ in range(n)))
    await queue.close()
    await engine.dispose()


async def setup_db(db_url: str) -> tuple[str, str]:
    engine = create_engine(db_url)
    await migrate.upgrade(engine)
    store = Store(engine)
    account_id = await store.create_account("bench")
    _, key = await store.create_key(account_id, "bench")
    await engine.dispose()
    return account_id, key.id


def wait_for(fake: FakeGoogle, target: int, timeout: float) -> tuple[int, float]:
    """Until ``target`` operations exist upstream: each is a prediction the worker submitted,
    checkpointed and now polls, i.e. really in flight."""
    start = time.monotonic()
    created = 0
    while time.monotonic() - start < timeout:
        created = len(fake.calls("create"))
        if created >= target:
            break
        time.sleep(1)
    return created, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max", type=int, default=10_000)
    args = parser.parse_args()
    dbname = f"reelgate_bench_worker_{os.getpid()}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
        await conn.execute(sql)
        await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{dbname}"'))
    redis.Redis.from_url(REDIS).flushdb()
    db_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}"
    tmp = Path(tempfile.mkdtemp())
    fake = FakeGoogle(make_video(tmp / "v.mp4"))
    fake.hold = True  # every operation stays pending: the upstream is slow, forever
    # The test fake listens with http.server's backlog of 5; at thousands of connections
    # that drops SYNs and measures TCP retransmits, not the worker. Google takes them all.
    fake.httpd.socket.listen(4096)
    metrics_port = free_port()
    env = {
        **os.environ,
        "REELGATE_DATABASE_URL": db_url,
        "REELGATE_QUEUE_URL": REDIS,
        "REELGATE_DATA_DIR": str(tmp / "data"),
        "REELGATE_DEFAULT_BACKEND": "google",
        "REELGATE_GOOGLE_API_KEY": "key-good",
        "REELGATE_GOOGLE_BASE_URL": fake.url,
        "REELGATE_GOOGLE_POLL_INITIAL_S": "10",
        "REELGATE_GOOGLE_POLL_MAX_S": "30",
        "REELGATE_BACKEND_CONCURRENCY": '{"google": 20000}',
        "REELGATE_LEASE_TTL_S": "600",
        "REELGATE_LOG_FORMAT": "text",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "reelgate.cli", "worker", "--backends", "google",
         "--log-level", "warning", "--metrics-port", str(metrics_port)],
        env=env, cwd=ROOT, stdout=open(tmp / "worker.log", "wb"), stderr=subprocess.STDOUT,
    )
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        account = asyncio.run(setup_db(db_url))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                in_flight(metrics_url)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        time.sleep(3)
        print(f"(b) one worker process, Google backend against a fake upstream that keeps "
              f"every operation pending; idle RSS {rss_mib(worker.pid):.0f} MiB")
        queued = 0
        for target in (1_000, args.max):
            t0 = time.monotonic()
            asyncio.run(enqueue(db_url, target - queued, account))
            queued = target
            held, waited = wait_for(fake, target, timeout=900)
            time.sleep(12)  # let a round of polls pass before reading memory
            creates = len(fake.calls("create"))
            print(f"    {target:6d} queued: {in_flight(metrics_url):6d} in flight "
                  f"(reached in {time.monotonic() - t0:5.1f} s), {creates} operations "
                  f"created upstream, RSS {rss_mib(worker.pid):6.0f} MiB")
            if held < target:
                print(f"    (stopped at {held} in flight after {waited:.0f} s)")
                break
        polls = len(fake.calls("poll"))
        print(f"    upstream saw {polls} polls in total; worker log: {tmp / 'worker.log'}")
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        fake.close()
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
