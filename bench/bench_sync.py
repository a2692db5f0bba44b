"""Held sync-mode requests on one process: how late does each client hear the end?

N clients (1,000 by default) each POST a text-to-video create with ``enable_sync_mode``
to one embedded ``reelgate serve`` (SQLite, in-process workers, tiny sandbox renders) and
hold the connection. Every prediction first waits ``--hold`` seconds in the sandbox (so all
N are accepted and held before the first one ends), then renders; the renders share the
process's thread pool, so the ends come one after another while N requests are held.
For every answer it measures the end-to-answer delay: the time the client received the
answer minus the row's ``completed_at``. It prints p50/p99/max of that delay, the wall
time, and the peak RSS of the server and its render processes together.

``--baseline-src PATH`` runs the same load, in the same run, against another checkout's
``src`` (e.g. main's, from ``git archive main src``) for a side-by-side ratio.

    .venv/bin/python bench/bench_sync.py --clients 1000
    .venv/bin/python bench/bench_sync.py --clients 1000 --baseline-src /tmp/main/src
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_api import free_port, make_key, start, wait_up  # noqa: E402
from bench_memory import TreeSampler  # noqa: E402

PATH = "/api/v3/google/veo3.1-fast/text-to-video"


async def hold_one(port: int, key: str, i: int, results: list[tuple[str, float]],
                   errors: list[str]) -> None:
    body = json.dumps({"prompt": f"held sync client {i}", "duration": 4,
                       "generate_audio": False, "enable_sync_mode": True}).encode()
    request = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
               "Connection: close\r\n\r\n").encode() + body
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        # The answer's first bytes are what the client "hears"; stamp them at once.
        received = time.time()
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        data = json.loads(await reader.readexactly(length))
        writer.close()
        if status != 200 or data["data"]["status"] != "completed":
            errors.append(f"{status} {str(data)[:200]}")
            return
        results.append((data["data"]["id"], received))
    except Exception as exc:  # noqa: BLE001 - counted and shown, the run goes on
        errors.append(repr(exc))


def completed_at(db: Path, ids: list[str]) -> dict[str, float]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select id, completed_at from predictions").fetchall()
    out = {}
    for pid, value in rows:
        if value is None:
            continue
        dt = datetime.fromisoformat(str(value).replace(" ", "T"))
        out[pid] = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    return {pid: out[pid] for pid in ids if pid in out}




def run(label: str, clients: int, workdir: Path, src: str | None,
        hold_s: float) -> dict[str, float]:
    data_dir = workdir / label
    env = {**os.environ, "REELGATE_DATA_DIR": str(data_dir),
           "REELGATE_SANDBOX_MAX_HEIGHT": "72", "REELGATE_SANDBOX_LATENCY_S": str(hold_s),
           # Two frames a second: the renders are not what is measured here.
           "REELGATE_SANDBOX_FPS": "2",
           "REELGATE_WORKER_CONCURRENCY": str(clients), "REELGATE_RATE_PER_MINUTE": "100000000",
           "REELGATE_MAX_CONCURRENT": "100000000", "REELGATE_SYNC_TIMEOUT_S": "600",
           "REELGATE_LOG_FORMAT": "text"}
    if src:
        env["PYTHONPATH"] = src
    port = free_port()
    proc = start([sys.executable, "-m", "reelgate.cli", "serve", "--port", str(port),
                  "--log-level", "warning"], env, workdir / f"{label}.log")
    try:
        wait_up(f"http://127.0.0.1:{port}/healthz")
        key = make_key(env)
        results: list[tuple[str, float]] = []
        errors: list[str] = []

        async def main() -> None:
            await asyncio.gather(*(hold_one(port, key, i, results, errors)
                                   for i in range(clients)))

        t0 = time.monotonic()
        with TreeSampler(proc.pid) as sampler:
            asyncio.run(main())
        wall = time.monotonic() - t0
        peak = sampler.peak
    finally:
        proc.terminate()
        proc.wait()
    ends = completed_at(data_dir / "reelgate.db", [pid for pid, _ in results])
    delays = sorted((received - ends[pid]) * 1000 for pid, received in results if pid in ends)
    if errors:
        print(f"  {label}: {len(errors)} errors, first: {errors[0]}")

    def q(p: float) -> float:
        return delays[min(len(delays) - 1, int(p * len(delays)))] if delays else float("nan")

    return {"answered": len(delays), "p50": q(0.5), "p99": q(0.99), "max": delays[-1] if
            delays else float("nan"), "wall": wall, "rss": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=15.0,
                        help="sandbox latency: every request is held (accepted) before "
                        "the first prediction ends; the renders then end one by one")
    parser.add_argument("--baseline-src", help="another checkout's src/ to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reelgate-bench-sync-") as tmp:
        rows = {}
        if args.baseline_src:
            rows["baseline"] = run("baseline", args.clients, Path(tmp), args.baseline_src,
                                   args.hold)
        rows["this tree"] = run("current", args.clients, Path(tmp), None, args.hold)
    print(f"\n{args.clients} held sync-mode requests on one process (end -> answer delay)")
    print("| | answered | p50 | p99 | max | wall | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['answered']} | {r['p50']:.1f} ms | {r['p99']:.1f} ms | "
              f"{r['max']:.1f} ms | {r['wall']:.0f} s | {r['rss']:.0f} MiB |")
    if "baseline" in rows:
        print(f"p99 ratio (this tree / baseline): "
              f"{rows['this tree']['p99'] / rows['baseline']['p99']:.3f}")


if __name__ == "__main__":
    main()
