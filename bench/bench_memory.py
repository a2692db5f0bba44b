"""Memory of near-limit image requests: peak RSS above idle, for one and for four at once.

Each request is a reference-to-video create carrying three 7000x7000 PNGs (49 megapixels
each, just under the 50-megapixel limit) as data: URIs, about 0.8 MB of JSON in all, held
in sync mode until its video is rendered. For each case a fresh ``reelgate serve``
(embedded: the render runs in the same process) is measured: RSS when idle, peak RSS
(VmHWM) over the whole request, and RSS a few seconds after the answer.

``--baseline-src PATH`` measures another checkout's ``src`` (e.g. main's) in the same run.

    .venv/bin/python bench/bench_memory.py
    .venv/bin/python bench/bench_memory.py --baseline-src /tmp/main/src
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_api import free_port, make_key, start, wait_up  # noqa: E402

SIDE = 7000
CEILING_MIB = 600
PATH = "/api/v3/google/veo3.1-fast/reference-to-video"


def near_limit_png(seed: int) -> str:
    """A smooth 7000x7000 picture: PNG's filters make it small on the wire (~250 KB)."""
    ramp = np.linspace(0, 255, SIDE, dtype=np.float32)
    rgb = np.empty((SIDE, SIDE, 3), dtype=np.uint8)
    rgb[..., 0] = ramp[None, :]
    rgb[..., 1] = ramp[:, None]
    rgb[..., 2] = (seed * 80) % 256
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", compress_level=9)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(label: str, parallel: int, body: dict, workdir: Path,
            src: str | None) -> dict[str, float]:
    data_dir = workdir / f"{label}-{parallel}"
    env = {**os.environ, "REELGATE_DATA_DIR": str(data_dir), "REELGATE_SANDBOX_FPS": "8",
           "REELGATE_SYNC_TIMEOUT_S": "600", "REELGATE_WORKER_CONCURRENCY": "4",
           "REELGATE_LOG_FORMAT": "text"}
    if src:
        env["PYTHONPATH"] = src
    port = free_port()
    proc = start([sys.executable, "-m", "reelgate.cli", "serve", "--port", str(port),
                  "--log-level", "warning"], env, workdir / f"{label}-{parallel}.log")
    try:
        wait_up(f"http://127.0.0.1:{port}/healthz")
        key = make_key(env)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers,
                          timeout=600) as c:
            # Warm up imports and the render path with a small request first.
            c.post("/api/v3/google/veo3.1-fast/text-to-video",
                   json={"prompt": "warm-up", "duration": 4, "generate_audio": False,
                         "enable_sync_mode": True}).raise_for_status()
            time.sleep(1)
            idle = status_kib(proc.pid, "VmRSS") / 1024
            base_hwm = status_kib(proc.pid, "VmHWM") / 1024
            t0 = time.monotonic()

            def one(_: int) -> str:
                r = c.post(PATH, json=body)
                return f"{r.status_code} {r.json()['data']['status'] if r.is_success else r.text}"

            with ThreadPoolExecutor(parallel) as pool:
                answers = list(pool.map(one, range(parallel)))
            wall = time.monotonic() - t0
            time.sleep(3)
            peak = status_kib(proc.pid, "VmHWM") / 1024
            after = status_kib(proc.pid, "VmRSS") / 1024
    finally:
        proc.terminate()
        proc.wait()
    if any(not a.startswith("200 completed") for a in answers):
        print(f"  {label} x{parallel}: unexpected answers {answers}")
    return {"idle": idle, "peak": max(peak, base_hwm), "after": after, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-src", help="another checkout's src/ to compare with")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    images = [near_limit_png(i) for i in range(3)]
    body = {"prompt": "three very large references", "images": images, "duration": 8,
            "generate_audio": False, "enable_sync_mode": True}
    size = len(str(body))
    print(f"one request: three {SIDE}x{SIDE} PNGs, {size / 1e6:.2f} MB of JSON")
    rows = []
    with tempfile.TemporaryDirectory(prefix="reelgate-bench-memory-") as tmp:
        for parallel in args.parallel:
            if args.baseline_src:
                rows.append(("baseline", parallel,
                             measure("baseline", parallel, body, Path(tmp), args.baseline_src)))
            rows.append(("this tree", parallel, measure("current", parallel, body, Path(tmp),
                                                        None)))
    print(f"\n| | requests at once | idle RSS | peak RSS | peak above idle | RSS after | "
          f"wall | within {CEILING_MIB} MiB? |")
    print("|---|---|---|---|---|---|---|---|")
    for name, parallel, r in rows:
        above = r["peak"] - r["idle"]
        print(f"| {name} | {parallel} | {r['idle']:.0f} MiB | {r['peak']:.0f} MiB | "
              f"{above:.0f} MiB | {r['after']:.0f} MiB | {r['wall']:.1f} s | "
              f"{'yes' if above <= CEILING_MIB else 'no'} |")


if __name__ == "__main__":
    main()
