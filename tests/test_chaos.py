"""Chaos: a few hundred predictions run through the scaled-out mode while workers are
killed with SIGKILL at random times and restarted. At the end every prediction has ended
exactly once, none is lost, no hold was captured twice, and every completed one has its
video in storage."""

from __future__ import annotations

import asyncio
import random
import signal
import time

import asyncpg
import httpx

N = 200


def test_sigkill_workers_under_load(cluster) -> None:  # type: ignore[no-untyped-def]
    env = {
        "REELGATE_SANDBOX_LATENCY_S": "0.5",
        "REELGATE_SANDBOX_MAX_HEIGHT": "90",  # tiny frames: this is about the bookkeeping
        "REELGATE_WORKER_CONCURRENCY": "6",
        "REELGATE_LEASE_TTL_S": "2",
        "REELGATE_RECONCILE_INTERVAL_S": "0.5",
        "REELGATE_FREE_BACKENDS": "",
        "REELGATE_MAX_CONCURRENT": "1000",
        "REELGATE_RATE_PER_MINUTE": "100000",
    }
    api = cluster.api(env)
    key = api.create_key("chaos")
    assert api.cli("accounts", "credit", "chaos", "1000").returncode == 0
    workers = [cluster.worker(env) for _ in range(2)]

    async def submit() -> list[str]:
        async with httpx.AsyncClient(base_url=api.base_url, timeout=60,
                                     headers={"Authorization": f"Bearer {key}"}) as c:
            async def one(i: int) -> str:
                prompt = f"chaos {i}" + (" [sandbox:fail]" if i % 10 == 0 else "")
                r = await c.post("/api/v3/google/veo3.1-fast/text-to-video",
                                 json={"prompt": prompt, "duration": 4})
                assert r.status_code == 200, r.text
                return str(r.json()["data"]["id"])

            return list(await asyncio.gather(*(one(i) for i in range(N))))

    ids = asyncio.run(submit())
    rng = random.Random(1234)
    kills = 0
    deadline = time.monotonic() + 240
    with api.client(key) as c:
        def unfinished() -> int:
            page = c.get("/api/v3/predictions", params={"page_size": 1, "status": "created"})
            running = c.get("/api/v3/predictions",
                            params={"page_size": 1, "status": "processing"})
            return int(page.json()["data"]["total"]) + int(running.json()["data"]["total"])

        while unfinished() > 0:
            assert time.monotonic() < deadline, "predictions did not all end"
            time.sleep(rng.uniform(0.5, 2.0))
            if kills < 8:
                victim = rng.randrange(len(workers))
                workers[victim].stop(signal.SIGKILL)
                kills += 1
                workers[victim] = cluster.worker(env)

    async def audit() -> tuple[list, list]:
        dsn = cluster.env["REELGATE_DATABASE_URL"].replace("postgresql+asyncpg", "postgresql")
        conn = await asyncpg.connect(dsn)
        try:
            preds = await conn.fetch("select id, status, outputs::text, price, attempts "
                                     "from predictions")
            entries = await conn.fetch("select prediction_id, kind, amount from ledger "
                                       "where prediction_id is not null")
        finally:
            await conn.close()
        return preds, entries

    preds, entries = asyncio.run(audit())
    assert kills == 8
    assert {p["id"] for p in preds} == set(ids)  # none lost, none invented
    assert all(p["status"] in ("completed", "failed") for p in preds)
    by_pred: dict[str, list[str]] = {}
    for e in entries:
        by_pred.setdefault(e["prediction_id"], []).append(e["kind"])
    for p in preds:
        kinds = sorted(by_pred[p["id"]])
        # One hold, and exactly one end: a capture if it completed, a release if it failed.
        expected = "capture" if p["status"] == "completed" else "release"
        assert kinds == sorted(["hold", expected]), (p["id"], kinds)
    failed = [p for p in preds if p["status"] == "failed"]
    assert len(failed) == N // 10  # exactly the ones that asked to fail
    # Every completed prediction has its video in storage, and it downloads.
    with api.client(key) as c:
        for p in preds:
            if p["status"] != "completed":
                continue
            mp4 = next(api.data_dir.joinpath("videos").rglob(f"{p['id']}.mp4"), None)
            assert mp4 is not None and mp4.stat().st_size > 0, p["id"]
        sample = c.get(f"/api/v3/predictions/{ids[1]}").json()["data"]
        assert httpx.get(sample["outputs"][0]).status_code == 200
    restarted = [p for p in preds if p["attempts"] > 1]
    print(f"chaos: {N} predictions, {kills} SIGKILLs, {len(restarted)} ran more than once")
