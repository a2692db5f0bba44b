"""Long-poll benchmark: N clients each hold `GET /api/v3/predictions/{id}/result?wait=60`
on ONE API process (SQLite, no workers), then some of the predictions end one after another
(cancelled through the API, at a steady rate: --ended of them at --rate per second) and
each of their clients gets its answer at once; the others get theirs after the 60 s.

Reports: errors (any answer that is not 200 with the ended prediction), the server's
resident memory before and while the clients wait, and the delay from a prediction ending
(its completed_at, written in the transaction that ends it) to its waiting client having
the answer, p50/p99/max. The client is one asyncio process with aiohttp on the same
machine: its own event-loop lag is part of the delay it measures.

Run:  .venv/bin/python bench/bench_longpoll.py [--clients 5000] [--ended 1000] [--rate 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import (  # noqa: E402
    BASE_ENV,
    CREATE_BODY,
    CREATE_PATH,
    cpu_seconds,
    make_key,
    serve,
    stop,
)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(base: str, key: str, clients: int, ended_n: int, rate: float,
              pid: int) -> dict:
    import aiohttp

    auth = {"Authorization": f"Bearer {key}"}
    # Create the predictions (no workers run: they stay "created" until cancelled).
    async with aiohttp.ClientSession(base, headers=auth,
                                     connector=aiohttp.TCPConnector(limit=64)) as s:
        async def create() -> str:
            async with s.post(CREATE_PATH, json=CREATE_BODY) as r:
                assert r.status == 200, await r.text()
                return str((await r.json())["data"]["id"])

        ids: list[str] = []
        for i in range(0, clients, 500):
            ids += await asyncio.gather(*(create() for _ in range(min(500, clients - i))))
    rss_idle = rss_mib(pid)

    received: dict[str, float] = {}
    errors: list[str] = []
    timeout = aiohttp.ClientTimeout(total=120)
    waiters = aiohttp.ClientSession(base, headers=auth, timeout=timeout,
                                    connector=aiohttp.TCPConnector(limit=0))
    cancels = aiohttp.ClientSession(base, headers=auth, timeout=timeout,
                                    connector=aiohttp.TCPConnector(limit=16))
    try:
        to_end = set(ids[:ended_n])

        async def hold(pid_: str) -> None:
            try:
                sent = time.monotonic()
                async with waiters.get(f"/api/v3/predictions/{pid_}/result",
                                       params={"wait": "60"}) as r:
                    body = await r.json()
                    received[pid_] = time.time()
                    held = time.monotonic() - sent
                    status = body.get("data", {}).get("status")
                    # Ended ones: "cancelled". The others: still "created", after the 60 s.
                    ok = status == "cancelled" if pid_ in to_end else (
                        status == "created" and held >= 59)
                    if r.status != 200 or not ok:
                        errors.append(f"{r.status} {status} after {held:.1f} s")
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                errors.append(repr(exc)[:200])

        # Arriving over about a second (250 every 50 ms) rather than in one instant, so the
        # kernel's accept queue (net.core.somaxconn) does not overflow into SYN retries.
        holders = []
        for i in range(0, len(ids), 250):
            holders += [asyncio.create_task(hold(p)) for p in ids[i:i + 250]]
            await asyncio.sleep(0.05)
        # Let every request reach the server and settle into its wait: until the server
        # has been idle (under 10% of a core) for a second. At most 20 s: the ended
        # predictions must end inside their clients' 60 s wait.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            used = cpu_seconds(pid)
            await asyncio.sleep(1.0)
            if cpu_seconds(pid) - used < 0.1:
                break
        early = len(received)
        rss_waiting = rss_mib(pid)

        async def cancel(pid_: str) -> None:
            async with cancels.post(f"/api/v3/predictions/{pid_}/cancel") as r:
                if r.status != 200:
                    errors.append(f"cancel {r.status}")

        started = time.monotonic()
        pending = []
        for i, p in enumerate(ids[:ended_n]):
            # A steady rate: prediction i ends at started + i / rate.
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(cancel(p)))
        await asyncio.gather(*pending)
        await asyncio.wait_for(asyncio.gather(*holders), 150)
    finally:
        await waiters.close()
        await cancels.close()
    return {"ids": ids, "received": received, "errors": errors, "early": early,
            "rss_idle": rss_idle, "rss_waiting": rss_waiting}


def completed_at(db: Path, ids: list[str]) -> dict[str, float]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, completed_at FROM predictions WHERE completed_at IS "
                            "NOT NULL").fetchall()
    return {i: datetime.fromisoformat(v).replace(tzinfo=UTC).timestamp() for i, v in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--ended", type=int, default=1000,
                        help="how many of the predictions end while their clients wait")
    parser.add_argument("--rate", type=float, default=100, help="predictions ended per second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = workdir / "data"
        env = {**os.environ, "REELGATE_DATA_DIR": str(data), **BASE_ENV,
               "REELGATE_SYNC_TIMEOUT_S": "120"}
        # A backlog for every client at once: with the default 2048 the rest wait for SYN
        # retries (1, 3, 7 s...), which would be measured as answer delay.
        proc, port = serve(env, workdir / "server.log", "--backlog", str(args.clients + 1024))
        try:
            key = make_key(env)
            r = asyncio.run(run(f"http://127.0.0.1:{port}", key, args.clients,
                                min(args.ended, args.clients), args.rate, proc.pid))
        finally:
            stop(proc)
        ended = completed_at(data / "reelgate.db", r["ids"])
        delays = sorted((r["received"][i] - ended[i]) * 1000 for i in r["ids"]
                        if i in r["received"] and i in ended)
        ended_n = len(ended)
    print(f"long-poll: {args.clients} clients holding ?wait=60 on one API process; "
          f"{ended_n} of the predictions ended while they waited, at {args.rate:g}/s")
    print(f"    errors {len(r['errors'])}   answered before their end {r['early']}   "
          f"answered {len(r['received'])}/{args.clients}")
    for e in r["errors"][:5]:
        print(f"      {e}")
    print(f"    server RSS: {r['rss_idle']:.0f} MiB idle, {r['rss_waiting']:.0f} MiB with "
          f"{args.clients} waiting ({(r['rss_waiting'] - r['rss_idle']) * 1024 / args.clients:.1f}"
          " KiB per waiting client)")
    if delays:
        p99 = delays[min(len(delays) - 1, int(0.99 * len(delays)))]
        print(f"    end -> client answered: p50 {statistics.median(delays):.1f} ms   "
              f"p99 {p99:.1f} ms (goal <= 50)   max {delays[-1]:.1f} ms")


if __name__ == "__main__":
    main()
