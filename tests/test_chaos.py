"""Chaos: 2 API and 2 worker processes (each with a data dir of its own) on PostgreSQL and a
private Redis, the Google backend against the fake Google server, and 300 predictions
created while:

- workers AND API processes are SIGKILLed and restarted,
- Redis is stopped and restarted (without persistence: streams and groups are lost),
- Google answers 503 to every create for a while, and answers some creates too late (the
  worker's request times out after Google started the operation),
- clients whose create got no answer (or a 5xx) retry it, with the same Idempotency-Key, on
  the other API process.

Printed and checked at the end: lost 0, ended twice 0, charged without a 200 0, duplicate
upstream creates 0 with ``fail`` (counted with ``resubmit``), ledger balanced, every
completed video decodes; and the time to drain.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from reelgate.backends.base import Job
from reelgate.backends.sandbox.backend import render_sandbox_video
from reelgate.media.video import check_video
from tests.conftest import PrivateRedis, ServerProcess, WorkerProcess
from tests.fake_google import FakeGoogle

CREATE = "/api/v3/google/veo3.1-fast/text-to-video"


def tiny_video(path: Path) -> bytes:
    """A real, small H.264 MP4: the bookkeeping is under test, not the codec."""
    job = Job(id="chaos", model="veo3.1-fast", scene="text-to-video", prompt="chaos",
              resolution="720p", duration=4)
    render_sandbox_video(job, path, fps=6, max_height=90)
    return path.read_bytes()


@pytest.mark.parametrize(("policy", "n"), [("fail", 300), ("resubmit", 120)])
def test_chaos(policy: str, n: int, tmp_path: Path, pg_url: str,  # type: ignore[no-untyped-def]
               private_redis: PrivateRedis) -> None:
    fake = FakeGoogle(tiny_video(tmp_path / "v.mp4"), api_keys={"key-a", "key-b"},
                      polls_until_done=2)
    storage = tmp_path / "storage"
    env = {
        "REELGATE_DATABASE_URL": pg_url,
        "REELGATE_QUEUE_URL": private_redis.url,
        "REELGATE_QUEUE_PREFIX": f"chaos-{uuid.uuid4().hex[:8]}",
        "REELGATE_STORAGE_URL": str(storage),
        "REELGATE_URL_SIGNING_KEY": "chaos-signing-key",
        "REELGATE_DEFAULT_BACKEND": "google",
        "REELGATE_GOOGLE_API_KEYS": "key-a,key-b",
        "REELGATE_GOOGLE_BASE_URL": fake.url,
        "REELGATE_GOOGLE_POLL_INITIAL_S": "0.3",
        "REELGATE_GOOGLE_POLL_MAX_S": "0.6",
        "REELGATE_GOOGLE_REQUEST_TIMEOUT_S": "2",
        "REELGATE_GOOGLE_COOLDOWN_5XX_S": "1",
        "REELGATE_GOOGLE_SUBMIT_ATTEMPTS": "30",
        "REELGATE_UNCONFIRMED_SUBMISSIONS": json.dumps({"google": policy}),
        "REELGATE_LEASE_TTL_S": "8",
        "REELGATE_RECONCILE_INTERVAL_S": "0.5",
        "REELGATE_DISPATCH_GRACE_S": "3",
        "REELGATE_MAX_CONCURRENT": "100000",
        "REELGATE_RATE_PER_MINUTE": "1000000",
        "REELGATE_DB_POOL_SIZE": "4",
        "REELGATE_DB_MAX_OVERFLOW": "4",
    }
    procs: list[ServerProcess | WorkerProcess] = []

    def api(i: int) -> ServerProcess:
        # A generous start: the machine is busy with everything else this test runs.
        p = ServerProcess(tmp_path / f"api{i}", env).start(timeout=120)
        procs.append(p)
        return p

    def worker(i: int) -> WorkerProcess:
        d = tmp_path / f"worker{i}"
        w = WorkerProcess(d, ServerProcess(d, env).env).start()
        procs.append(w)
        return w

    try:
        apis = [api(0), api(1)]
        key = apis[0].create_key("chaos")
        assert apis[0].admin("accounts", "credit", "chaos", "100000").returncode == 0
        workers = [worker(0), worker(1)]
        ok: dict[str, str] = {}  # Idempotency-Key -> prediction id, for creates answered 200
        retries = 0
        stop_faults = threading.Event()
        faults: list[str] = []
        restarts: list[threading.Thread] = []

        def chaos() -> None:
            rng = random.Random(policy)
            plan = [
                (1.5, "kill worker 0"), (3.0, "kill api 0"), (4.0, "google 503"),
                (6.0, "redis down"), (8.0, "google slow"), (9.0, "redis up"),
                (10.0, "kill worker 1"), (11.0, "kill api 1"), (12.0, "google ok"),
                (14.0, "kill worker 0"),
            ]
            t0 = time.monotonic()

            def restart_api(i: int) -> None:
                # In its own thread: a start may take seconds (Redis down, a busy machine),
                # and the other faults keep their schedule meanwhile.
                while not stop_faults.is_set():
                    try:
                        apis[i] = api(i)
                        return
                    except RuntimeError:
                        continue

            for at, what in plan:
                while time.monotonic() - t0 < at:
                    if stop_faults.wait(0.05):
                        return
                faults.append(what)
                if what.startswith("kill worker"):
                    i = int(what[-1])
                    workers[i].stop(signal.SIGKILL)
                    workers[i] = worker(i)
                elif what.startswith("kill api"):
                    i = int(what[-1])
                    apis[i].stop(signal.SIGKILL)
                    restarts.append(threading.Thread(target=restart_api, args=(i,)))
                    restarts[-1].start()
                elif what == "google 503":
                    fake.fail("create", 503, count=None)
                elif what == "google ok":
                    fake.clear_faults()
                elif what == "google slow":
                    fake.clear_faults()
                    fake.slow("create", 3, count=8)
                elif what == "redis down":
                    private_redis.stop()
                elif what == "redis up":
                    private_redis.start()
                time.sleep(rng.uniform(0, 0.2))

        async def submit() -> None:
            nonlocal retries
            gate = asyncio.Semaphore(24)
            async with httpx.AsyncClient(timeout=30,
                                         headers={"Authorization": f"Bearer {key}"}) as c:
                async def one(i: int) -> None:
                    nonlocal retries
                    idem = f"chaos-{i}-{uuid.uuid4().hex[:8]}"
                    body = {"prompt": f"chaos {idem}", "duration": 4}
                    await asyncio.sleep(i * 14.0 / n)  # spread over the faults
                    async with gate:
                        give_up = time.monotonic() + 240
                        attempt = 0
                        while time.monotonic() < give_up:
                            attempt += 1
                            base = apis[(i + attempt) % 2].base_url
                            try:
                                r = await c.post(base + CREATE, json=body,
                                                 headers={"Idempotency-Key": idem})
                            except httpx.HTTPError:
                                r = None
                            if r is not None and r.status_code == 200:
                                ok[idem] = r.json()["data"]["id"]
                                return
                            assert r is None or r.status_code >= 500, r.text
                            retries += 1  # no answer, or a 5xx: the same key, elsewhere
                            await asyncio.sleep(0.25)
                        raise AssertionError(f"create {idem} never answered")

                await asyncio.gather(*(one(i) for i in range(n)))

        chaos_thread = threading.Thread(target=chaos)
        chaos_thread.start()
        started = time.monotonic()
        asyncio.run(submit())
        submitted = time.monotonic()
        chaos_thread.join(60)
        for t in restarts:
            t.join(120)
        stop_faults.set()
        fake.clear_faults()

        dsn = pg_url.replace("postgresql+asyncpg", "postgresql")

        async def unfinished() -> int:
            conn = await asyncpg.connect(dsn)
            try:
                return int(await conn.fetchval(
                    "select count(*) from predictions where status in ('created', "
                    "'processing')"))
            finally:
                await conn.close()

        deadline = time.monotonic() + 240
        while asyncio.run(unfinished()) > 0:
            assert time.monotonic() < deadline, "predictions did not all end"
            time.sleep(0.5)
        drained = time.monotonic()

        async def audit() -> tuple[list, list, int]:  # type: ignore[type-arg]
            conn = await asyncpg.connect(dsn)
            try:
                preds = await conn.fetch("select id, status, outputs::text, price, error "
                                         "from predictions")
                entries = await conn.fetch("select prediction_id, kind, amount, delta from ledger")
                balance = int(await conn.fetchval("select balance from accounts where "
                                                  "name = 'chaos'"))
            finally:
                await conn.close()
            return preds, entries, balance

        preds, entries, balance = asyncio.run(audit())
    finally:
        for p in procs:
            p.stop(signal.SIGKILL)
        fake.close()

    by_id = {p["id"]: p for p in preds}
    # Lost: a create answered 200 whose prediction is not there, or one that never ended.
    lost = sum(1 for pid in ok.values() if pid not in by_id)
    lost += sum(1 for p in preds if p["status"] not in ("completed", "failed"))
    # Ended twice / balanced: one hold and exactly one capture or release per prediction.
    kinds: dict[str, list[str]] = {}
    money: dict[str, list[tuple[str, int]]] = {}
    credits = 0
    for e in entries:
        if e["prediction_id"] is None:
            credits += int(e["amount"]) if e["kind"] == "credit" else 0
            continue
        kinds.setdefault(e["prediction_id"], []).append(e["kind"])
        money.setdefault(e["prediction_id"], []).append((e["kind"], int(e["amount"])))
    ended_twice = sum(1 for k in kinds.values() if len([x for x in k if x != "hold"]) > 1)
    wrong_end = [p["id"] for p in preds if sorted(kinds.get(p["id"], [])) != sorted(
        ["hold", "capture" if p["status"] == "completed" else "release"])]
    captured = sum(a for m in money.values() for k, a in m if k == "capture")
    # The balance is the sum of the ledger, and is what was credited less what was captured.
    balanced = (balance == sum(int(e["delta"]) for e in entries) == credits - captured
                and not wrong_end)
    # Charged without a 200: a captured prediction no client was ever answered with.
    answered = set(ok.values())
    charged_no_200 = sum(1 for p in preds if p["status"] == "completed"
                         and p["id"] not in answered)
    # Duplicate upstream creates: Google operations beyond the first for one prediction.
    per_prompt: dict[str, int] = {}
    for op in fake.created():
        prompt = op.body["instances"][0]["prompt"]
        per_prompt[prompt] = per_prompt.get(prompt, 0) + 1
    duplicates = sum(c - 1 for c in per_prompt.values())
    # Every completed video decodes.
    completed = [p for p in preds if p["status"] == "completed"]
    undecodable = 0
    for p in completed:
        for key_ in json.loads(p["outputs"]):
            try:
                check_video(storage / key_)
            except Exception:
                undecodable += 1
    failed = [p for p in preds if p["status"] == "failed"]
    reasons: dict[str, int] = {}
    for p in failed:
        reasons[p["error"][:60]] = reasons.get(p["error"][:60], 0) + 1
    print(f"\nchaos[{policy}]: {n} predictions, faults: {', '.join(faults)}")
    print(f"  created (200): {len(ok)}, create retries with the same key: {retries}")
    unconfirmed = sum(1 for p in failed if p["error"].startswith("An earlier attempt"))
    print(f"  completed {len(completed)}, failed {len(failed)} (of which {unconfirmed} "
          f"failed at most once after a worker died mid-create): {reasons}")
    print(f"  lost {lost}, ended twice {ended_twice}, charged without a 200 "
          f"{charged_no_200}, duplicate upstream creates {duplicates}, ledger "
          f"{'balanced' if balanced else 'NOT balanced'}, undecodable videos {undecodable}")
    print(f"  submitting took {submitted - started:.1f} s, time to drain after the last "
          f"create {drained - submitted:.1f} s")

    assert len(ok) == n and len(set(ok.values())) == n
    assert set(by_id) == answered  # none lost, none invented (retries made nothing extra)
    assert lost == 0
    assert ended_twice == 0 and not wrong_end
    assert charged_no_200 == 0
    assert balanced
    assert undecodable == 0
    assert completed, "nothing completed"
    if policy == "fail":
        assert duplicates == 0
