"""API benchmarks, measured side by side in one run on this machine.

(a) One API process: a bare ASGI app on the same server stack (uvicorn, answering a fixed
    JSON: the ceiling), reelgate's /healthz (FastAPI alone), a poll (authenticated
    GET /api/v3/predictions/{id}/result) and a create, each at the same number of
    connections, in interleaved rounds (the median round is kept). req/s, p50, p99, and
    the server's CPU time per request (steadier than req/s on a shared machine), with the
    ratios. No workers run (nothing renders); then the same on PostgreSQL + Redis.
(b) Poll throughput of `reelgate serve --workers N` (SQLite) against one process.
(c) The delay from a backend finishing to a sync-mode client getting its answer: the time
    between the prediction's completed_at (written by the worker) and the client receiving
    the response, embedded (in-process notifier) and, when Redis and PostgreSQL are there,
    scaled out (Redis pub/sub across processes).

The long-poll benchmark (5,000 clients holding ?wait=60) is bench_longpoll.py.

Run:  .venv/bin/python bench/bench_api.py [--seconds 9] [--concurrency 64] [--redis-db 11]
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
# Redis database the scaled-out runs use and flush (--redis-db): not one a test run uses.
REDIS_DB = 11
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
    deadline = time.monotonic() + 90  # a busy shared machine starts servers slowly
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


async def load(url: str, headers: dict[str, str], body: dict | None, seconds: float,
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
                r = await (client.get(url) if body is None else client.post(url, json=body))
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

        redis.Redis.from_url(f"redis://127.0.0.1:6379/{REDIS_DB}").flushdb()
        pg_admin(f'CREATE DATABASE "{dbname}"')
    except Exception as exc:  # noqa: BLE001 - any failure: no scaled-out services here
        print(f"    ({label}: skipped, {exc})")
        yield None
        return
    try:
        yield {
            "REELGATE_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{dbname}",
            "REELGATE_QUEUE_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        }
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


WRK_THREADS = 1
ROUNDS = 3


def wrk_load(url: str, headers: dict[str, str], body: dict, seconds: float,
             concurrency: int, workdir: Path) -> dict[str, float]:
    """Load with wrk (C, epoll): a Python client on the same 2 cores would be the
    bottleneck and measure itself, not the servers."""
    script = workdir / "req.lua"
    lines = (['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(body))}",
              'wrk.headers["Content-Type"] = "application/json"'] if body is not None
             else ['wrk.method = "GET"'])
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    # wrk takes whole seconds only ("-d3.3s" is an error).
    duration = f"-d{max(1, round(seconds))}s"
    out = subprocess.run(["wrk", f"-t{WRK_THREADS}", f"-c{concurrency}", duration,
                          "--latency", "-s", str(script), url], capture_output=True, text=True,
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
        elif line.strip().startswith(("Non-2xx", "Socket errors")):
            stats["errors"] += sum(float(p.rstrip(",")) for p in parts if p.rstrip(",").isdigit())
    return stats


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


BASE_ENV = {"REELGATE_RUN_WORKERS": "false", "REELGATE_EVENT_LOOP": "asyncio",
            "REELGATE_RATE_PER_MINUTE": "100000000",
            "REELGATE_MAX_CONCURRENT": "100000000", "REELGATE_LOG_FORMAT": "text"}
CREATE_PATH = "/api/v3/google/veo3.1-fast/text-to-video"
CREATE_BODY = {"prompt": "a benchmark of the create path", "duration": 4}


def serve(env: dict[str, str], log: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = start([sys.executable, "-m", "reelgate.cli", "serve", "--port", str(port),
                  "--log-level", "warning", *extra], env, log)
    wait_up(f"http://127.0.0.1:{port}/healthz")
    return proc, port


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, headers: dict[str, str], body: dict | None, seconds: float,
            concurrency: int, workdir: Path, pid: int | None = None) -> dict[str, float]:
    """Warm up, then load one endpoint with wrk (or httpx when wrk is missing). With the
    server's pid, also the server's CPU time per request: unlike req/s it hardly moves when
    other programs load the machine, so it is the steadier figure to compare."""
    if shutil.which("wrk"):
        wrk_load(url, headers, body, 1.0, 4, workdir)  # warm-up
        cpu0 = cpu_seconds(pid) if pid else 0.0
        stats = wrk_load(url, headers, body, seconds, concurrency, workdir)
    else:
        cpu0 = cpu_seconds(pid) if pid else 0.0
        n, lat, errors = asyncio.run(load(url, headers, body, seconds, concurrency))
        stats = {"rps": n / seconds, "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
                 "errors": errors}
    if pid:
        stats["cpu_us"] = (cpu_seconds(pid) - cpu0) * 1e6 / max(1.0, stats["rps"] * seconds)
    return stats


def bench_endpoints(seconds: float, concurrency: int, workdir: Path,
                    extra_env: dict[str, str] | None = None,
                    with_bare: bool = True) -> dict[str, dict[str, float]]:
    """bare ASGI, /healthz, poll and create, one after the other against one API process
    (and one bare uvicorn process), same client settings. No workers run: nothing renders,
    the poll reads a prediction that stays "created"."""
    data = workdir / f"endpoints-{len(list(workdir.iterdir()))}"
    env = {**os.environ, "REELGATE_DATA_DIR": str(data), **BASE_ENV, **(extra_env or {})}
    bare_file = workdir / "bare_app.py"
    bare_file.write_text(BARE_APP)
    rg, rg_port = serve(env, workdir / "rg.log")
    procs = [rg]
    results: dict[str, dict[str, float]] = {}
    try:
        key = make_key(env)
        auth = {"Authorization": f"Bearer {key}"}
        rg_url = f"http://127.0.0.1:{rg_port}"
        r = httpx.post(rg_url + CREATE_PATH, json=CREATE_BODY, headers=auth, timeout=30)
        r.raise_for_status()
        pid = r.json()["data"]["id"]
        targets: dict[str, tuple[str, dict[str, str], dict | None, int]] = {}
        if with_bare:
            bare_port = free_port()
            # The same server stack as reelgate's: uvicorn on the same event loop.
            procs.append(start([sys.executable, "-m", "uvicorn", "bare_app:app", "--port",
                                str(bare_port), "--log-level", "warning", "--app-dir",
                                str(workdir), "--loop", BASE_ENV["REELGATE_EVENT_LOOP"]],
                               env, workdir / "bare.log"))
            wait_up(f"http://127.0.0.1:{bare_port}/")
            targets["bare"] = (f"http://127.0.0.1:{bare_port}/", {}, None, procs[-1].pid)
        targets["healthz"] = (rg_url + "/healthz", {}, None, rg.pid)
        targets["poll"] = (f"{rg_url}/api/v3/predictions/{pid}/result", auth, None, rg.pid)
        targets["create"] = (rg_url + CREATE_PATH, auth, CREATE_BODY, rg.pid)
        # Interleaved rounds, each endpoint's median round kept: the machine is shared, so
        # a burst of someone else's load hits every endpoint alike instead of one.
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for _ in range(ROUNDS):
            for name, (url, headers, body, server_pid) in targets.items():
                rounds[name].append(measure(url, headers, body, seconds / ROUNDS,
                                            concurrency, workdir, server_pid))
        for name, runs in rounds.items():
            results[name] = sorted(runs, key=lambda v: v["rps"])[len(runs) // 2]
        return results
    finally:
        stop(*procs)


def bench_poll_workers(seconds: float, concurrency: int, workdir: Path,
                       workers: int) -> dict[str, dict[str, float]]:
    """Poll throughput of `reelgate serve --workers N` against one process: both servers
    up at once on the same data dir, measured in interleaved rounds (median kept)."""
    data = workdir / "poll-workers"
    env = {**os.environ, "REELGATE_DATA_DIR": str(data), **BASE_ENV}
    one, one_port = serve(env, workdir / "rg-w1.log", "--workers", "1")
    many, many_port = serve(env, workdir / f"rg-w{workers}.log", "--workers", str(workers))
    try:
        key = make_key(env)
        auth = {"Authorization": f"Bearer {key}"}
        r = httpx.post(f"http://127.0.0.1:{one_port}{CREATE_PATH}", json=CREATE_BODY,
                       headers=auth, timeout=30)
        r.raise_for_status()
        pid = r.json()["data"]["id"]
        rounds: dict[str, list[dict[str, float]]] = {"1": [], str(workers): []}
        for _ in range(ROUNDS):
            for name, port in (("1", one_port), (str(workers), many_port)):
                rounds[name].append(measure(
                    f"http://127.0.0.1:{port}/api/v3/predictions/{pid}/result", auth, None,
                    seconds / ROUNDS, concurrency, workdir))
        return {n: sorted(v, key=lambda x: x["rps"])[len(v) // 2] for n, v in rounds.items()}
    finally:
        stop(one, many)


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


def endpoints_on_postgres(seconds: float, concurrency: int, workdir: Path) -> dict | None:
    """The same endpoints with the scaled-out adapters (a pool of PostgreSQL connections
    instead of SQLite's single writer; dispatch to a Redis stream)."""
    with scaled_out("endpoints") as services:
        if services is None:
            return None
        return bench_endpoints(seconds, concurrency, workdir, services, with_bare=False)


def pg_admin(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def row(name: str, v: dict[str, float]) -> str:
    cpu = f"   server CPU {v['cpu_us']:6.0f} us/req" if "cpu_us" in v else ""
    return (f"    {name:28s} {v['rps']:9.1f} req/s   p50 {v['p50']:7.2f} ms   "
            f"p99 {v['p99']:7.2f} ms   errors {v['errors']:g}{cpu}")


def main() -> None:
    global REDIS_DB, WRK_THREADS, ROUNDS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sync-samples", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2,
                        help="API processes for the multi-process poll run (0: skip)")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--redis-db", type=int, default=REDIS_DB)
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help="interleaved rounds per endpoint (the median is reported)")
    parser.add_argument("--skip", default="", help="comma list of: postgres,workers,sync")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="event loop of every server here, the bare app's too "
                             "(REELGATE_EVENT_LOOP; asyncio is reelgate's default)")
    args = parser.parse_args()
    BASE_ENV["REELGATE_EVENT_LOOP"] = args.loop
    REDIS_DB, WRK_THREADS, ROUNDS = args.redis_db, args.wrk_threads, args.rounds
    skip = set(args.skip.split(","))
    client = "wrk" if shutil.which("wrk") else "httpx (install wrk for a fair ceiling)"
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        r = out["sqlite"] = bench_endpoints(args.seconds, args.concurrency, workdir)
        print(f"(a) one API process, SQLite, {args.concurrency} connections, "
              f"{args.seconds:g} s each, load by {client}, {args.loop} event loop:")
        for name in ("bare", "healthz", "poll", "create"):
            print(row({"bare": "bare ASGI (uvicorn)", "healthz": "reelgate /healthz",
                       "poll": "reelgate poll (GET result)",
                       "create": "reelgate create"}[name], r[name]))
        rps = {k: v["rps"] for k, v in r.items()}
        print(f"    ratios: /healthz/bare {rps['healthz'] / rps['bare']:.3f}   "
              f"poll/healthz {rps['poll'] / rps['healthz']:.3f} (goal >= 0.6)   "
              f"poll/bare {rps['poll'] / rps['bare']:.3f} (goal >= 0.10)   "
              f"create/healthz {rps['create'] / rps['healthz']:.3f} (goal >= 0.3)   "
              f"poll p99 {r['poll']['p99']:.1f} ms (goal <= 20)")
        cpu = {k: v["cpu_us"] for k, v in r.items()}
        print(f"    the same ratios from server CPU per request (steadier on a busy machine): "
              f"poll/healthz {cpu['healthz'] / cpu['poll']:.3f}   "
              f"poll/bare {cpu['bare'] / cpu['poll']:.3f}   "
              f"create/healthz {cpu['healthz'] / cpu['create']:.3f}")
        if "postgres" not in skip:
            pg = out["postgres"] = endpoints_on_postgres(args.seconds, args.concurrency,
                                                         workdir)
            if pg:
                print("(a) the same on PostgreSQL + Redis queue:")
                for name in ("healthz", "poll", "create"):
                    print(row(f"reelgate {name}", pg[name]))
                print(f"    ratios: poll/healthz {pg['poll']['rps'] / pg['healthz']['rps']:.3f}"
                      f"   create/healthz {pg['create']['rps'] / pg['healthz']['rps']:.3f}")
        if args.workers and "workers" not in skip:
            w = out["workers"] = bench_poll_workers(args.seconds, args.concurrency, workdir,
                                                    args.workers)
            print(f"(b) poll, SQLite, `reelgate serve --workers N`, {args.concurrency} "
                  "connections:")
            for n, v in w.items():
                print(row(f"{n} process(es)", v))
            print(f"    ratio {args.workers} processes / 1: "
                  f"{w[str(args.workers)]['rps'] / w['1']['rps']:.2f}x (goal >= 1.7x)")
        if "sync" not in skip:
            emb = bench_sync_embedded(args.sync_samples, workdir)
            print(f"(c) backend end -> sync client answer, embedded ({len(emb)} samples): "
                  f"p50 {statistics.median(emb):.1f} ms, max {max(emb):.1f} ms")
            scaled = bench_sync_scaled(args.sync_samples, workdir)
            if scaled:
                print(f"(c) backend end -> sync client answer, scaled out via Redis pub/sub "
                      f"({len(scaled)} samples): p50 {statistics.median(scaled):.1f} ms, "
                      f"max {max(scaled):.1f} ms")
        print(json.dumps(out))


if __name__ == "__main__":
    main()
