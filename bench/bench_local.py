"""The local backend against the raw diffusers pipeline, side by side in one run.

Builds a family's real architecture with random weights (no download), then
  raw:      loads it with diffusers and calls the pipeline as a script would;
  reelgate: declares the same weights as a local model, starts `reelgate serve` (embedded,
            the local backend in-process on the same device) and sends the same request
            (size, frames, steps, guidance, seed) over HTTP.
Both are warmed up once (weights loaded, first-call allocations made), then timed over
--runs calls. Printed: seconds per denoising step, VAE decode time, the whole pipeline call,
and the ratio reelgate / raw; reelgate's figures come from its worker log line (the same
callback marks), its "total" is the prediction's executionTime (claim to completed row:
pipeline + MP4 encode + storage + row).

CPU, tiny sizes (the default; seconds):   .venv/bin/python bench/bench_local.py
Heavier transformer:                      .venv/bin/python bench/bench_local.py --layers 8
On a GPU:   ... --device cuda --dtype bfloat16 --width 832 --height 480
(the random architectures stay the tiny ones unless --layers/--width/--height grow them;
real-size figures need the real checkpoints declared in a models file.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import ServerProcess  # noqa: E402

ADMIN = "bench-admin"
LOG_LINE = re.compile(r"(\d+) steps, ([\d.]+) s/step, denoise ([\d.]+)s, decode ([\d.]+)s, "
                      r"mp4 ([\d.]+)s")


def build(family: str, root: Path, layers: int) -> Path:
    from reelgate.backends.local import tiny

    if family == "wan":
        return tiny.build_wan(root, layers=layers)["text-to-video"]
    if family == "ltx":
        return tiny.build_ltx(root, layers=layers)["text-to-video"]
    return tiny.build_ltx2(root, layers=layers)["text-to-video"]


def raw_runs(args: argparse.Namespace, weights: Path, frames: int) -> list[dict[str, float]]:
    import diffusers
    import torch

    from reelgate.backends.local.families import PIPELINES

    cls = getattr(diffusers, PIPELINES[args.family]["text-to-video"])
    pipe = cls.from_pretrained(weights, dtype=getattr(torch, args.dtype),
                               local_files_only=True).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt=args.prompt, width=args.width, height=args.height, num_frames=frames,
              num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np")
    if args.family != "wan":
        kw |= {"frame_rate": args.fps}
    if args.family == "ltx2":
        kw |= {"max_sequence_length": 16}
    results = []
    for i in range(args.runs + 1):
        marks: dict[str, float] = {}

        def cb(p, step, t, kwargs, marks=marks):  # type: ignore[no-untyped-def]
            now = time.perf_counter()
            marks.setdefault("first", now)
            marks["last"] = now
            return kwargs

        start = time.perf_counter()
        with torch.inference_mode():
            pipe(**kw, generator=torch.Generator("cpu").manual_seed(args.seed),
                 callback_on_step_end=cb)
        end = time.perf_counter()
        if i == 0:
            continue  # warm-up
        results.append({"per_step": (marks["last"] - marks["first"]) / max(1, args.steps - 1),
                        "decode": end - marks["last"], "total": end - start})
    return results


def reelgate_runs(args: argparse.Namespace, weights: Path, tmp: Path) -> list[dict[str, float]]:
    models = tmp / "models.toml"
    models.write_text(textwrap.dedent(f"""
        [[models]]
        name = "bench"
        family = "{args.family}"
        weights = "{weights}"
        dtype = "{args.dtype}"
        fps = {args.fps}
        sizes = {{ "720p" = [{args.width}, {args.height}] }}
        steps = {args.steps}
        guidance = {args.guidance}
        {"max_sequence_length = 16" if args.family == "ltx2" else ""}
    """))
    os.environ["REELGATE_TEST_SERVER_LOG"] = "info"
    srv = ServerProcess(tmp / "data", {
        "REELGATE_LOCAL_MODELS_FILE": str(models), "REELGATE_LOCAL_DEVICE": args.device,
        "REELGATE_LOCAL_TORCH_THREADS": str(args.threads), "REELGATE_ADMIN_TOKEN": ADMIN,
        "REELGATE_WORKER_CONCURRENCY": "1",
        # The bench polls every 20 ms; the default per-key limit (600/min) would answer 429.
        "REELGATE_RATE_PER_MINUTE": "1000000",
    }, start_timeout=180).start()
    try:
        with httpx.Client(base_url=srv.base_url, timeout=60,
                          headers={"Authorization": f"Bearer {ADMIN}"}) as a:
            acct = a.post("/admin/v1/accounts", json={"name": "bench"}).json()["id"]
            key = a.post(f"/admin/v1/accounts/{acct}/keys", json={"name": "b"}).json()["key"]
        results = []
        with srv.client(key) as c:
            for i in range(args.runs + 1):
                r = c.post("/api/v3/local/bench/text-to-video",
                           json={"prompt": args.prompt, "duration": args.duration,
                                 "seed": args.seed})
                r.raise_for_status()
                pid = r.json()["data"]["id"]
                while True:
                    data = c.get(f"/api/v3/predictions/{pid}/result").json()["data"]
                    if data["status"] not in ("created", "processing"):
                        break
                    time.sleep(0.02)
                assert data["status"] == "completed", data
                if i == 0:
                    continue
                lines = [json.loads(x).get("message", "") if x.startswith("{") else x
                         for x in srv.log_path.read_text().splitlines() if pid in x]
                m = next(LOG_LINE.search(x) for x in lines if LOG_LINE.search(x))
                results.append({"per_step": float(m.group(2)), "decode": float(m.group(4)),
                                "pipeline": float(m.group(3)) + float(m.group(4)),
                                "mp4": float(m.group(5)),
                                "total": data["executionTime"] / 1000})
        return results
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=["wan", "ltx", "ltx2"], default="wan")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--fps", type=int, default=4)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", default="a red car on the city night")
    args = ap.parse_args()

    import torch

    from reelgate.backends.local.config import FAMILY_FRAME_STEP

    torch.set_num_threads(args.threads)
    wanted = args.duration * args.fps
    step = FAMILY_FRAME_STEP[args.family]
    frames = 1 + step * -(-(wanted - 1) // step)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        weights = build(args.family, tmp / "weights", args.layers)
        # Side by side: raw, reelgate, raw again (the machine is shared; noise shows up as
        # a difference between the two raw passes).
        raw = raw_runs(args, weights, frames)
        ours = reelgate_runs(args, weights, tmp)
        raw2 = raw_runs(args, weights, frames)
    for name, rows in (("raw (before)", raw), ("reelgate", ours), ("raw (after)", raw2)):
        print(f"{name:14} s/step " + " ".join(f"{r['per_step']:.4f}" for r in rows)
              + "   total " + " ".join(f"{r['total']:.3f}" for r in rows))
    raw += raw2

    def med(rows: list[dict[str, float]], k: str) -> float:
        return statistics.median(r[k] for r in rows)

    print(f"{args.family} on {args.device} ({args.dtype}), {args.width}x{args.height}, "
          f"{frames} frames generated ({wanted} delivered), {args.steps} steps, "
          f"{args.layers} transformer layers, medians of {args.runs} (+{args.runs}) runs")
    print(f"{'':26}{'raw diffusers':>15}{'reelgate':>12}{'ratio':>8}")
    for label, key_raw, key_ours in (("seconds per step", "per_step", "per_step"),
                                     ("VAE decode (s)", "decode", "decode"),
                                     ("pipeline call (s)", "total", "pipeline")):
        a, b = med(raw, key_raw), med(ours, key_ours)
        print(f"{label:26}{a:>15.4f}{b:>12.4f}{b / a:>8.3f}")
    a, b = med(raw, "total"), med(ours, "total")
    print(f"{'whole prediction (s)':26}{a:>15.4f}{b:>12.4f}{b / a:>8.3f}"
          f"   (reelgate: + MP4 encode {med(ours, 'mp4'):.4f} s, storage, rows)")


if __name__ == "__main__":
    main()
