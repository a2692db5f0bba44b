"""Memory of near-limit image requests: peak RSS above idle, for one and for four at once.

Each request is a reference-to-video create carrying three 7000x7000 PNGs (49 megapixels
each, just under the 50-megapixel limit) as data: URIs, about 0.8 MB of JSON in all, held
in sync mode until its video is rendered. For each case a fresh ``reelgate serve``
(embedded: it renders too, in its render processes) is measured, summed over the server
and its child processes: RSS when idle, peak RSS over the requests (sampled every 10 ms),
and RSS a few seconds after the answers.

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
import threading
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
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return 0  # the process has just ended
    raise KeyError(field)


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the server's render processes)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


class TreeSampler:
    """Peak of the summed RSS of a process and its children, sampled every 10 ms (each
    process's own VmHWM would add peaks that happened at different times)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> float:
        return sum(status_kib(p, "VmRSS") for p in tree(self.pid)) / 1024

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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
            sampler = TreeSampler(proc.pid)
            idle = sampler.now()
            processes = len(tree(proc.pid))
            t0 = time.monotonic()

            def one(_: int) -> str:
                r = c.post(PATH, json=body)
                return f"{r.status_code} {r.json()['data']['status'] if r.is_success else r.text}"

            with sampler, ThreadPoolExecutor(parallel) as pool:
                answers = list(pool.map(one, range(parallel)))
                wall = time.monotonic() - t0
                time.sleep(3)
            peak = sampler.peak
            after = sampler.now()
    finally:
        proc.terminate()
        proc.wait()
    if any(not a.startswith("200 completed") for a in answers):
        print(f"  {label} x{parallel}: unexpected answers {answers}")
    return {"idle": idle, "peak": peak, "after": after, "wall": wall, "processes": processes}


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
    print("\nRSS summed over the server and its render processes (if any), sampled every 10 ms")
    print(f"\n| | requests at once | processes | idle RSS | peak RSS | peak above idle | "
          f"RSS after | wall | within {CEILING_MIB} MiB? |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, parallel, r in rows:
        above = r["peak"] - r["idle"]
        print(f"| {name} | {parallel} | {r['processes']} | {r['idle']:.0f} MiB | "
              f"{r['peak']:.0f} MiB | "
              f"{above:.0f} MiB | {r['after']:.0f} MiB | {r['wall']:.1f} s | "
              f"{'yes' if above <= CEILING_MIB else 'no'} |")


if __name__ == "__main__":
    main()
