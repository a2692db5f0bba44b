"""What ``enable_base64_output`` costs the API process, next to the URL answer of the same
prediction, measured side by side in one run.

One embedded ``reelgate serve`` process (SQLite, local storage). For each size, one
prediction is made with ``enable_base64_output`` (a tiny sandbox render), then its stored
video is replaced by that many random bytes (the answer path reads and encodes the file, it
does not decode it), and the same prediction is read alternately in both forms:
``GET /api/v3/predictions/{id}/result`` (base64) and the same with
``?enable_base64_output=false`` (URL). Printed: median answer time of each form, their ratio,
the answer size, and the server's peak resident memory (VmHWM) after the base64 reads of that
size, against its peak before the first one.

Run:  .venv/bin/python bench/bench_base64.py [--sizes-mib 1 8 32] [--reads 7]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

T2V = "/api/v3/google/veo3.1-fast/text-to-video"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hwm_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


def timed_get(client: httpx.Client, url: str, params: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    r = client.get(url, params=params)
    elapsed = time.perf_counter() - start
    r.raise_for_status()
    return elapsed * 1000, len(r.content)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--reads", type=int, default=7)
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="bench-b64-"))
    port = free_port()
    env = {**os.environ, "REELGATE_DATA_DIR": str(data), "REELGATE_SANDBOX_MAX_HEIGHT": "144",
           "REELGATE_BASE64_OUTPUT_MAX_BYTES": str(max(args.sizes_mib) * 1024 * 1024)}
    cli = [sys.executable, "-m", "reelgate.cli"]
    key = subprocess.run([*cli, "keys", "create", "--name", "bench"], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    server = subprocess.Popen([*cli, "serve", "--port", str(port), "--log-level", "warning"],
                              env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"},
                          timeout=120) as c:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
            peak_before = hwm_mib(server.pid)
            print(f"server peak RSS before any base64 read: {peak_before:.0f} MiB")
            print("| video | URL answer | base64 answer | ratio | base64 answer size | "
                  "server peak RSS after |")
            print("|---|---|---|---|---|---|")
            for size in sorted(args.sizes_mib):
                made = c.post(T2V, json={"prompt": f"bench {size}", "duration": 4,
                                         "enable_base64_output": True,
                                         "enable_sync_mode": True})
                made.raise_for_status()
                pid = made.json()["data"]["id"]
                video = data / "videos" / pid[:2] / f"{pid}.mp4"
                video.write_bytes(os.urandom(size * 1024 * 1024))
                url = f"/api/v3/predictions/{pid}/result"
                as_url, as_b64, answer = [], [], 0
                for _ in range(args.reads):  # alternate, so load changes hit both alike
                    as_url.append(timed_get(c, url, {"enable_base64_output": "false"})[0])
                    ms, answer = timed_get(c, url, {})
                    as_b64.append(ms)
                u, b = statistics.median(as_url), statistics.median(as_b64)
                print(f"| {size} MiB | {u:.1f} ms | {b:.1f} ms | {b / u:.0f}x | "
                      f"{answer / 1024 / 1024:.1f} MiB | {hwm_mib(server.pid):.0f} MiB |")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
