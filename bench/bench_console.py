"""Console benchmark: how long the history page takes with 1,000 predictions in the account.

The app runs in this process and is called through httpx's ASGI transport (no socket), so
the figure is the server's own work for one page: the session lookup, the two queries
(count and page), signing 20 thumbnail links and rendering the template. Side by side, in
the same run and on the same data, the JSON list of the v3 API (same query, same page size)
gives the ratio of the HTML page to the API's answer. Then the same page is fetched from a
real `reelgate serve` process over loopback HTTP.

Target: the history page renders in under 100 ms.

Run:  .venv/bin/python bench/bench_console.py [--predictions 1000] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx


async def seed(services, key_account: str, key_id: str, n: int) -> None:  # type: ignore[no-untyped-def]
    """n predictions through the store's own calls: most completed with a video and a
    poster key, some failed, like a real account's history."""
    from reelgate.store.repo import new_id

    store = services.store
    params = {"prompt": "a benchmark", "aspect_ratio": "16:9", "resolution": "720p",
              "output_resolution": "720p", "duration": 8, "enhance_prompt": True,
              "enable_upsample": False, "negative_prompt": None, "seed": None,
              "generate_audio": True, "reference_count": 0, "has_image": False,
              "has_last_image": False}
    models = ["veo3.1-fast", "veo3.1", "veo3-fast"]
    for i in range(n):
        pid = new_id()
        await store.insert_prediction(id=pid, account_id=key_account, key_id=key_id,
                                      model=models[i % 3], scene="text-to-video",
                                      backend="sandbox", params=params, inputs={}, price=0)
        await store.claim(pid, "bench", 60)
        if i % 10 == 9:
            await store.fail(pid, "bench", "a failure")
        else:
            await store.complete(pid, "bench", [f"{pid[:2]}/{pid}.mp4"], f"{pid[:2]}/{pid}.jpg")


async def timed(client: httpx.AsyncClient, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        r = await client.get(url)
        out.append((time.perf_counter() - start) * 1000)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
    return out


def summary(ms: list[float]) -> str:
    ms = sorted(ms)
    p95 = ms[int(len(ms) * 0.95) - 1]
    return f"median {statistics.median(ms):6.2f} ms   p95 {p95:6.2f} ms   max {ms[-1]:6.2f} ms"


async def real_server(data_dir: Path, secret: str, n: int) -> list[float]:
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "REELGATE_DATA_DIR": str(data_dir), "REELGATE_RUN_WORKERS": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "reelgate.cli", "serve", "--port", str(port),
                             "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as c:
            for _ in range(300):
                try:
                    if (await c.get("/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)
            login = await c.get("/console/login")
            token = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)  # type: ignore[union-attr]
            r = await c.post("/console/login", data={"key": secret, "csrf": token})
            assert r.status_code == 303, r.text
            await timed(c, "/console/history", 10)
            return await timed(c, "/console/history", n)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--predictions", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    from reelgate.api.app import create_app
    from reelgate.services import Services
    from reelgate.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), run_workers=False)
        app = create_app(settings)
        services = await Services.open(settings, run_workers=False)
        app.state.services = services
        try:
            account = await services.store.create_account("bench")
            secret, key = await services.store.create_key(account, "bench")
            t0 = time.perf_counter()
            await seed(services, account, key.id, args.predictions)
            print(f"seeded {args.predictions} predictions in {time.perf_counter() - t0:.1f} s")

            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as c:
                login = await c.get("/console/login")
                token = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)  # type: ignore[union-attr]
                r = await c.post("/console/login", data={"key": secret, "csrf": token})
                assert r.status_code == 303, r.text
                page = await c.get("/console/history")
                assert f"{args.predictions} predictions" in page.text, page.text[:500]
                assert page.text.count('alt="poster of') >= 18
                api = httpx.AsyncClient(transport=transport, base_url="http://bench",
                                        headers={"Authorization": f"Bearer {secret}"})
                cases = [
                    ("history page 1 (HTML)", c, "/console/history"),
                    ("history page 1, status+model filter (HTML)", c,
                     "/console/history?status=completed&model=veo3.1-fast"),
                    ("history page 40 (HTML)", c, "/console/history?page=40"),
                    ("v3 API list page 1 (JSON)", api,
                     "/api/v3/predictions?page=1&page_size=20"),
                ]
                for _, client, url in cases:  # warm up: templates compiled, caches filled
                    await timed(client, url, 10)
                results = {}
                for name, client, url in cases:
                    results[name] = await timed(client, url, args.requests)
                    print(f"{name:45s} {summary(results[name])}")
                await api.aclose()
        finally:
            await services.close()
        # The same page from a real server process over loopback HTTP (uvicorn, the same
        # data): what a browser waits for, socket and HTTP parsing included.
        over_http = await real_server(Path(tmp), secret, args.requests)
        print(f"{'history page 1 over HTTP (reelgate serve)':45s} {summary(over_http)}")
        html = statistics.median(results["history page 1 (HTML)"])
        json_ms = statistics.median(results["v3 API list page 1 (JSON)"])
        print(f"\nhistory page with {args.predictions} predictions: median {html:.2f} ms "
              f"(target < 100 ms: {'met' if html < 100 else 'NOT met'}); "
              f"ratio to the JSON API's list: {html / json_ms:.2f}x; over HTTP: median "
              f"{statistics.median(over_http):.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
