"""API benchmarks, measured side by side in one run on this machine.

(a) The create endpoint's throughput and p50/p99 latency against a bare ASGI app on the same
    server stack (uvicorn, same worker count) that answers a fixed JSON: the ceiling. The
    result is the ratio. The reelgate server runs no workers here (nothing renders), so the
    number is the API path itself: auth, rate limit, validation, policy, price, hold and
    the insert, on SQLite.
(c) The delay from a backend finishing to a sync-mode client getting its answer: the time
    between the prediction's completed_at (written by the worker) and the client receiving
    the response, embedded (in-process notifier) and, when Redis and PostgreSQL are there,
    scaled out (Redis pub/sub across processes).

Run:  .venv/bin/python bench/bench_api.py [--seconds 10] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BARE_APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = b'{"code":200,"message":"success","data":{"id":"x","status":"created"}}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    f = open(log, "ab")  # noqa: SIM115 - lives with the process
    return subprocess.Popen(cmd, env=env, stdout=f, stderr=f, cwd=ROOT)


async def load(url: str, headers: dict[str, str], body: dict, seconds: float,
               concurrency: int) -> tuple[int, list[float], int]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:
        async def loop() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = await client.post(url, json=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return len(latencies), latencies, errors


def make_key(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-m", "reelgate.cli", "keys", "create", "--name",
                           "bench"], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@contextmanager
def scaled_out(label: str) -> Iterator[dict[str, str] | None]:
    """A scratch PostgreSQL database and an emptied Redis db for one benchmark, as the
    REELGATE_* settings that select them; None when either service is not there."""
    dbname = f"reelgate_bench_{label}_{os.getpid()}"
    try:
        import redis

        redis.Redis.from_url("redis://127.0.0.1:6379/9").flushdb()
        pg_admin(f'CREATE DATABASE "{dbname}"')
    except Exception as exc:  # noqa: BLE001 - any failure: no scaled-out services here
        print(f"    ({label}: skipped, {exc})")
        yield None
        return
    try:
        yield {
            "REELGATE_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}",
            "REELGATE_QUEUE_URL": "redis://127.0.0.1:6379/9",
        }
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def wrk_load(url: str, headers: dict[str, str], body: dict, seconds: float,
             concurrency: int, workdir: Path) -> dict[str, float]:
    """Load with wrk (C, epoll): a Python client on the same 2 cores would be the
    bottleneck and measure itself, not the servers."""
    script = workdir / "post.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(body))}",
             'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True,
                         check=True).stdout

    def ms(token: str) -> float:
        for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
            if token.endswith(unit):
                return float(token[: -len(unit)]) * factor
        raise ValueError(token)

    stats: dict[str, float] = {"errors": 0}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            stats["rps"] = float(parts[1])
        elif parts[:1] == ["50%"]:
            stats["p50"] = ms(parts[1])
        elif parts[:1] == ["99%"]:
            stats["p99"] = ms(parts[1])
        elif line.strip().startswith("Non-2xx"):
            stats["errors"] = float(parts[-1])
    return stats


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def bench_create(seconds: float, concurrency: int, workdir: Path,
                 extra_env: dict[str, str] | None = None) -> dict[str, float]:
    env = {**os.environ, "REELGATE_DATA_DIR": str(workdir / "create"),
           "REELGATE_RUN_WORKERS": "false", "REELGATE_RATE_PER_MINUTE": "100000000",
           "REELGATE_MAX_CONCURRENT": "100000000", "REELGATE_LOG_FORMAT": "text",
           **(extra_env or {})}
    bare_file = workdir / "bare_app.py"
    bare_file.write_text(BARE_APP)
    rg_port, bare_port = free_port(), free_port()
    rg = start([sys.executable, "-m", "reelgate.cli", "serve", "--port", str(rg_port),
                "--log-level", "warning"], env, workdir / "rg.log")
    bare = start([sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(bare_port),
                  "--log-level", "warning", "--app-dir", str(workdir)], env,
                 workdir / "bare.log")
    try:
        wait_up(f"http://127.0.0.1:{rg_port}/healthz")
        wait_up(f"http://127.0.0.1:{bare_port}/")
        key = make_key(env)
        body = {"prompt": "a benchmark of the create path", "duration": 4}
        path = "/api/v3/google/veo3.1-fast/text-to-video"
        results = {}
        # Warm both up, then measure one after the other with the same client settings.
        use_wrk = shutil.which("wrk") is not None
        for name, port, headers in (("bare", bare_port, {}),
                                    ("reelgate", rg_port, {"Authorization": f"Bearer {key}"})):
            url = f"http://127.0.0.1:{port}{path}"
            asyncio.run(load(url, headers, body, 1.0, 4))  # warm-up
            if use_wrk:
                results[name] = wrk_load(url, headers, body, seconds, concurrency, workdir)
            else:
                n, lat, errors = asyncio.run(load(url, headers, body, seconds, concurrency))
                results[name] = {"rps": n / seconds, "p50": pct(lat, 0.5),
                                 "p99": pct(lat, 0.99), "errors": errors}
        results["client"] = "wrk" if use_wrk else "httpx (install wrk for a fair ceiling)"
        return results
    finally:
        rg.terminate()
        bare.terminate()
        rg.wait()
        bare.wait()


def sync_delays(base_url: str, key: str, n: int, completed_at: callable) -> list[float]:
    delays = []
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"},
                      timeout=120) as c:
        for i in range(n):
            r = c.post("/api/v3/google/veo3.1-fast/text-to-video",
                       json={"prompt": f"sync delay {i}", "duration": 4,
                             "enable_sync_mode": True})
            received = time.time()
            data = r.json()["data"]
            assert data["status"] == "completed", data
            delays.append((received - completed_at(data["id"])) * 1000)
    return delays


def bench_sync_embedded(n: int, workdir: Path) -> list[float]:
    data_dir = workdir / "sync"
    env = {**os.environ, "REELGATE_DATA_DIR": str(data_dir), "REELGATE_SANDBOX_MAX_HEIGHT": "90",
           "REELGATE_LOG_FORMAT": "text"}
    port = free_port()
    proc = start([sys.executable, "-m", "reelgate.cli", "serve", "--port", str(port),
                  "--log-level", "warning"], env, workdir / "sync.log")
    try:
        wait_up(f"http://127.0.0.1:{port}/healthz")
        key = make_key(env)

        def completed_at(pid: str) -> float:
            with sqlite3.connect(data_dir / "reelgate.db") as conn:
                value = conn.execute("select completed_at from predictions where id = ?",
                                     (pid,)).fetchone()[0]
            return datetime.fromisoformat(value.replace(" ", "T")).timestamp() \
                if "+" in value else datetime.fromisoformat(value + "+00:00").timestamp()

        return sync_delays(f"http://127.0.0.1:{port}", key, n, completed_at)
    finally:
        proc.terminate()
        proc.wait()


def bench_sync_scaled(n: int, workdir: Path) -> list[float] | None:
    with scaled_out("sync") as services:
        if services is None:
            return None
        env = {**os.environ, **services, "REELGATE_DATA_DIR": str(workdir / "scaled"),
               "REELGATE_SANDBOX_MAX_HEIGHT": "90", "REELGATE_LOG_FORMAT": "text"}
        dsn = services["REELGATE_DATABASE_URL"].replace("postgresql+asyncpg", "postgresql")
        port = free_port()
        api = start([sys.executable, "-m", "reelgate.cli", "serve", "--port", str(port),
                     "--log-level", "warning"], env, workdir / "scaled-api.log")
        worker = start([sys.executable, "-m", "reelgate.cli", "worker", "--log-level",
                        "warning"], env, workdir / "scaled-worker.log")
        try:
            wait_up(f"http://127.0.0.1:{port}/healthz")
            key = make_key(env)

            def completed_at(pid: str) -> float:
                import asyncpg

                async def q() -> float:
                    conn = await asyncpg.connect(dsn)
                    try:
                        value = await conn.fetchval(
                            "select completed_at from predictions where id=$1", pid)
                    finally:
                        await conn.close()
                    return value.timestamp()

                return asyncio.run(q())

            return sync_delays(f"http://127.0.0.1:{port}", key, n, completed_at)
        finally:
            api.terminate()
            worker.terminate()
            api.wait()
            worker.wait()


def create_on_postgres(seconds: float, concurrency: int, workdir: Path) -> dict | None:
    """The same create benchmark with the scaled-out adapters (a pool of PostgreSQL
    connections instead of SQLite's single writer; dispatch to a Redis stream)."""
    with scaled_out("create") as services:
        if services is None:
            return None
        (workdir / "create").mkdir(exist_ok=True)
        return bench_create(seconds, concurrency, workdir, services)


def pg_admin(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sync-samples", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        r = bench_create(args.seconds, args.concurrency, workdir)
        print(f"(a) create endpoint, {args.concurrency} concurrent connections, "
              f"{args.seconds:g} s each, one uvicorn process each, SQLite, load by "
              f"{r['client']}:")
        for name in ("bare", "reelgate"):
            v = r[name]
            print(f"    {name:9s} {v['rps']:8.1f} req/s   p50 {v['p50']:7.2f} ms   "
                  f"p99 {v['p99']:7.2f} ms   errors {v['errors']}")
        print(f"    ratio reelgate/bare: throughput {r['reelgate']['rps'] / r['bare']['rps']:.3f}"
              f", p50 latency x{r['reelgate']['p50'] / r['bare']['p50']:.1f}")
        pg = create_on_postgres(args.seconds, args.concurrency, workdir)
        if pg:
            v = pg["reelgate"]
            print(f"    reelgate on PostgreSQL + Redis queue: {v['rps']:8.1f} req/s   "
                  f"p50 {v['p50']:7.2f} ms   p99 {v['p99']:7.2f} ms   "
                  f"(ratio {v['rps'] / pg['bare']['rps']:.3f})")
        emb = bench_sync_embedded(args.sync_samples, workdir)
        print(f"(c) backend end -> sync client answer, embedded ({len(emb)} samples): "
              f"p50 {statistics.median(emb):.1f} ms, max {max(emb):.1f} ms")
        scaled = bench_sync_scaled(args.sync_samples, workdir)
        if scaled:
            print(f"(c) backend end -> sync client answer, scaled out via Redis pub/sub "
                  f"({len(scaled)} samples): p50 {statistics.median(scaled):.1f} ms, "
                  f"max {max(scaled):.1f} ms")
        print(json.dumps({"create": r, "sync_embedded_ms": emb, "sync_scaled_ms": scaled}),
              file=open(workdir / "results.json", "w"))


if __name__ == "__main__":
    main()
