"""The local backend against the raw diffusers pipeline, interleaved in one run.

For each family, builds its real architecture with random weights (no download), then
  raw:      loads it with diffusers in this process and calls the pipeline as a script would;
  reelgate: declares the same weights as a local model, starts `reelgate serve` (embedded:
            the local backend in-process on the same device) and sends the same request
            (size, frames, steps, guidance, seed) over HTTP in sync mode (one held request,
            no polling load on the server while it denoises).
Both are warmed up (weights loaded, first-call allocations made), then run INTERLEAVED for
--rounds rounds (raw then reelgate, then reelgate then raw, ...), so that the shared
machine's drifting load hits both alike. Printed per family, as medians with the spread of
the per-round ratios:

  seconds per step       between the first and the last step callback (text encoding and
                         the first step's warm-up excluded); reelgate's includes its step
                         callback (hand-over to the event loop, cancel check)
  VAE decode             last step to the pipeline's return
  generation             the whole pipeline call: what the 5 % goal is about
  whole prediction       reelgate's executionTime (claim to completed row: generation +
                         MP4 mux + decode check + storage + rows), and the client's round
                         trip (HTTP, auth, intake, queue, sync answer)
  per prediction         whole prediction - generation: what reelgate adds once per video
  step callback          reelgate's own time inside the step callback, per step

CPU (default sizes: a step costs ~50-500 ms here):   python bench/bench_local.py
A short CI-like run (tiny sizes, 2 rounds):           python bench/bench_local.py --quick
One family, more rounds:          python bench/bench_local.py --family wan --rounds 9
On a GPU, real sizes:   ... --family wan --device cuda --dtype bfloat16 --rounds 3 \
                          --weights /srv/models/Wan2.1-T2V-1.3B-Diffusers --width 832 \
                          --height 480 --fps 16 --duration 5 --steps 30
(without --weights the random architectures stay small unless --layers/--heads/--head-dim
grow them; their VAE and text encoder stay tiny.) Real-size random transformers, no
download (bench/gpu_local.sh runs these):
  Wan2.1 1.3B's:    --family wan --layers 30 --heads 12 --head-dim 128 --ffn-dim 8960
  LTX-Video 2B's:   --family ltx --layers 28 --heads 32 --head-dim 64 --real-compression
(--real-compression: the tiny LTX VAE compresses as the real one, 32x in space and 8x in
time, so a real frame size gives the real token count; the tiny Wan VAE always does.)
Ctrl-C (or `timeout -s INT`) ends the rounds early and reports the complete ones.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import ServerProcess  # noqa: E402

ADMIN = "bench-admin"
LOG_LINE = re.compile(r"(\d+) steps, ([\d.]+) s/step, denoise ([\d.]+)s, decode ([\d.]+)s, "
                      r"mp4 ([\d.]+)s, callback ([\d.]+)s, progress writes (\d+), cpu ([\d.]+)s")
GOAL = 1.05

# Sizes where a CPU step costs enough to be measured above the machine's noise (Wan:
# ~70 ms, LTX-Video ~150 ms, LTX-2 ~250 ms on one core). The tiny test VAEs compress less
# than the real ones (LTX-2's only 2x), hence LTX's small frames.
PROFILES: dict[str, dict[str, int]] = {
    "wan": dict(layers=4, heads=4, head_dim=32, width=160, height=96, fps=8, steps=20),
    "ltx": dict(layers=2, heads=4, head_dim=32, width=64, height=32, fps=4, steps=12),
    "ltx2": dict(layers=2, heads=2, head_dim=8, width=32, height=32, fps=2, steps=10),
}
# --quick: the tests' tiny sizes, a few steps: checks the bench runs, not the goal.
QUICK: dict[str, dict[str, int]] = {
    "wan": dict(layers=2, heads=2, head_dim=12, width=64, height=32, fps=4, steps=4),
    "ltx": dict(layers=1, heads=4, head_dim=8, width=64, height=32, fps=4, steps=4),
    "ltx2": dict(layers=2, heads=2, head_dim=8, width=32, height=32, fps=2, steps=3),
}


def build(family: str, root: Path, p: dict[str, int], args: argparse.Namespace) -> Path:
    import gc

    import torch

    from reelgate.backends.local import tiny

    kw: dict[str, Any] = dict(layers=p["layers"], heads=p["heads"], head_dim=p["head_dim"])
    if family == "wan":
        kw.update(ffn_dim=args.ffn_dim, text_only=True)  # the bench times text-to-video
    elif family == "ltx":
        kw.update(real_compression=args.real_compression)
    builders: dict[str, Callable[..., dict[str, Path]]] = {
        "wan": tiny.build_wan, "ltx": tiny.build_ltx, "ltx2": tiny.build_ltx2}
    # Built on the device it runs on: the random initialisation of a real-size transformer
    # takes a minute on a CPU (one value at a time), a moment on a GPU.
    with torch.device(args.device):
        weights = builders[family](root, **kw)["text-to-video"]
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the build's memory, for the server process
    return weights


class Raw:
    """The raw diffusers pipeline, loaded once in this process and kept warm."""

    def __init__(self, args: argparse.Namespace, family: str, p: dict[str, int],
                 weights: Path, frames: int) -> None:
        import diffusers
        import torch

        from reelgate.backends.local.families import PIPELINES

        self.torch = torch
        cls = getattr(diffusers, PIPELINES[family]["text-to-video"])
        self.pipe = cls.from_pretrained(weights, dtype=getattr(torch, args.dtype),
                                        local_files_only=True).to(args.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.kw: dict[str, Any] = dict(
            prompt=args.prompt, width=p["width"], height=p["height"], num_frames=frames,
            num_inference_steps=p["steps"], guidance_scale=args.guidance, output_type="np")
        if family != "wan":
            self.kw["frame_rate"] = p["fps"]
        if family == "ltx2" and not args.weights:  # the tiny Gemma's short context
            self.kw["max_sequence_length"] = 16
        self.seed, self.steps = args.seed, p["steps"]

    def run(self) -> dict[str, float]:
        torch = self.torch
        marks: list[float] = []

        def cb(pipe: Any, step: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            marks.append(time.perf_counter())
            return kwargs

        start = time.perf_counter()
        cpu = time.thread_time()
        with torch.inference_mode():
            self.pipe(**self.kw, generator=torch.Generator("cpu").manual_seed(self.seed),
                      callback_on_step_end=cb)
        end = time.perf_counter()
        return {"per_step": (marks[-1] - marks[0]) / max(1, self.steps - 1),
                "decode": end - marks[-1], "generation": end - start,
                "cpu": time.thread_time() - cpu}


class Reelgate:
    """`reelgate serve` with the same weights declared as a local model."""

    def __init__(self, args: argparse.Namespace, family: str, p: dict[str, int],
                 weights: Path, tmp: Path) -> None:
        models = tmp / "models.toml"
        models.write_text(textwrap.dedent(f"""
            [[models]]
            name = "bench"
            family = "{family}"
            weights = "{weights}"
            dtype = "{args.dtype}"
            fps = {p["fps"]}
            sizes = {{ "720p" = [{p["width"]}, {p["height"]}] }}
            steps = {p["steps"]}
            guidance = {args.guidance}
            {"max_sequence_length = 16" if family == "ltx2" and not args.weights else ""}
        """))
        os.environ["REELGATE_TEST_SERVER_LOG"] = "info"
        self.srv = ServerProcess(tmp / "data", {
            "REELGATE_LOCAL_MODELS_FILE": str(models), "REELGATE_LOCAL_DEVICE": args.device,
            "REELGATE_LOCAL_TORCH_THREADS": str(args.threads), "REELGATE_ADMIN_TOKEN": ADMIN,
            "REELGATE_WORKER_CONCURRENCY": "1",
            # The server's own default, not the tests' 0.5 s.
            "REELGATE_RECONCILE_INTERVAL_S": "2",
        }, start_timeout=180).start()
        with httpx.Client(base_url=self.srv.base_url, timeout=60,
                          headers={"Authorization": f"Bearer {ADMIN}"}) as a:
            acct = a.post("/admin/v1/accounts", json={"name": "bench"}).json()["id"]
            key = a.post(f"/admin/v1/accounts/{acct}/keys", json={"name": "b"}).json()["key"]
        self.client = self.srv.client(key)
        self.client.timeout = httpx.Timeout(600)
        self.body = {"prompt": args.prompt, "duration": args.duration, "seed": args.seed,
                     "enable_sync_mode": True}

    def run(self) -> dict[str, float]:
        import psutil

        server = psutil.Process(self.srv.proc.pid)  # type: ignore[union-attr]
        cpu = server.cpu_times()
        start = time.perf_counter()
        r = self.client.post("/api/v3/local/bench/text-to-video", json=self.body)
        round_trip = time.perf_counter() - start
        after = server.cpu_times()
        r.raise_for_status()
        data = r.json()["data"]
        assert data["status"] == "completed", data
        pid = data["id"]
        line = next(m for x in self.srv.log_path.read_text().splitlines()
                    if pid in x and (m := LOG_LINE.search(x)))
        generation = float(line.group(3)) + float(line.group(4))
        steps = int(line.group(1))
        return {"per_step": float(line.group(2)), "decode": float(line.group(4)),
                "generation": generation, "mp4": float(line.group(5)),
                "callback": float(line.group(6)) / steps,
                "writes": float(line.group(7)),
                "whole": data["executionTime"] / 1000, "round_trip": round_trip,
                "per_prediction": data["executionTime"] / 1000 - generation,
                "cpu": float(line.group(8)),
                # Every thread of the server: HTTP, intake, rows, progress, MP4, check.
                "server_cpu": (after.user + after.system) - (cpu.user + cpu.system)}

    def close(self) -> None:
        self.client.close()
        self.srv.stop()


def bench_family(args: argparse.Namespace, family: str) -> dict[str, Any]:
    import torch

    from reelgate.backends.local.config import FAMILY_FRAME_STEP

    p = dict((QUICK if args.quick else PROFILES)[family])
    for k in ("layers", "heads", "head_dim", "width", "height", "fps", "steps"):
        if getattr(args, k) is not None:
            p[k] = getattr(args, k)
    torch.set_num_threads(args.threads)
    wanted = args.duration * p["fps"]
    step = FAMILY_FRAME_STEP[family]
    frames = 1 + step * -(-(wanted - 1) // step)
    raw_rows: list[dict[str, float]] = []
    ours_rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # Real checkpoints (a diffusers directory or a repo id in the HF cache) for
        # real-size figures on a GPU; otherwise the random architecture built here.
        weights = Path(args.weights) if args.weights else build(family, tmp / "weights", p,
                                                                  args)
        raw = Raw(args, family, p, weights, frames)
        ours = Reelgate(args, family, p, weights, tmp)
        try:
            for _ in range(args.warmup):
                raw.run()
                ours.run()
            for r in range(args.rounds):
                # Alternate who goes first: a load that rises or falls through a round
                # favours neither.
                if r % 2 == 0:
                    raw_rows.append(raw.run())
                    ours_rows.append(ours.run())
                else:
                    ours_rows.append(ours.run())
                    raw_rows.append(raw.run())
                print(f"  {family} round {r + 1}/{args.rounds}: s/step raw "
                      f"{raw_rows[-1]['per_step']:.4f} reelgate {ours_rows[-1]['per_step']:.4f}"
                      f"; generation raw {raw_rows[-1]['generation']:.3f} reelgate "
                      f"{ours_rows[-1]['generation']:.3f}", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            # Out of time (timeout -s INT) or stopped by hand: report the complete rounds,
            # dropping a half-run one.
            done = min(len(raw_rows), len(ours_rows))
            del raw_rows[done:], ours_rows[done:]
            print(f"  {family}: interrupted after {done} complete round(s)", file=sys.stderr,
                  flush=True)
        finally:
            ours.close()
    return {"family": family, "p": p, "frames": frames, "wanted": wanted,
            "raw": raw_rows, "ours": ours_rows}


def med(rows: list[dict[str, float]], k: str) -> float:
    return statistics.median(r[k] for r in rows)


def report(args: argparse.Namespace, res: dict[str, Any]) -> bool:
    p, raw, ours = res["p"], res["raw"], res["ours"]
    ffn = f", ffn {args.ffn_dim}" if args.ffn_dim and res["family"] == "wan" else ""
    vae = ", real VAE compression" if args.real_compression and res["family"] == "ltx" else ""
    print(f"\n{res['family']} on {args.device} ({args.dtype}, {args.threads} thread(s)): "
          f"{p['width']}x{p['height']}, {res['frames']} frames generated "
          f"({res['wanted']} delivered), {p['steps']} steps, transformer {p['layers']} layers "
          f"x {p['heads']} heads x {p['head_dim']}{ffn}{vae}; medians of {len(raw)} "
          f"interleaved rounds")
    if not raw:
        print("no complete round: nothing to compare")
        return False
    print(f"{'':30}{'raw':>10}{'reelgate':>10}{'ratio':>8}   per-round ratio min-max")
    for label, key in (("seconds per step", "per_step"), ("VAE decode (s)", "decode"),
                       ("generation: pipeline call (s)", "generation")):
        a, b = med(raw, key), med(ours, key)
        ratios = [o[key] / r[key] for r, o in zip(raw, ours, strict=True)]
        print(f"{label:30}{a:>10.4f}{b:>10.4f}{b / a:>8.3f}   "
              f"{min(ratios):.3f}-{max(ratios):.3f}")
    a, b = med(raw, "cpu"), med(ours, "cpu")
    ratios = [o["cpu"] / r["cpu"] for r, o in zip(raw, ours, strict=True)]
    print(f"{'generation, thread CPU (s)':30}{a:>10.4f}{b:>10.4f}{b / a:>8.3f}   "
          f"{min(ratios):.3f}-{max(ratios):.3f}  (not inflated by others' load)")
    s_cpu = med(ours, "server_cpu")
    print(f"{'whole prediction, CPU (s)':30}{'':>10}{s_cpu:>10.4f}{s_cpu / a:>8.3f}   "
          f"every server thread, request to answer, against raw generation CPU")
    gen_raw, gen_ours = med(raw, "generation"), med(ours, "generation")
    print(f"{'whole prediction (s)':30}{'':>10}{med(ours, 'whole'):>10.4f}"
          f"{med(ours, 'whole') / gen_raw:>8.3f}   executionTime: + MP4 mux "
          f"{med(ours, 'mp4'):.3f} s, decode check, storage, rows")
    print(f"{'client round trip (s)':30}{'':>10}{med(ours, 'round_trip'):>10.4f}"
          f"{med(ours, 'round_trip') / gen_raw:>8.3f}   HTTP, auth, intake, queue, sync answer")
    print(f"per prediction, reelgate adds {med(ours, 'per_prediction'):.3f} s after the "
          f"pipeline (executionTime - generation); step callback "
          f"{med(ours, 'callback') * 1e6:.0f} us/step "
          f"({med(ours, 'callback') / med(ours, 'per_step') * 100:.3f} % of a step), "
          f"{med(ours, 'writes'):.0f} progress writes per prediction")
    step = med(ours, "per_step") / med(raw, "per_step")
    cpu_ratio = med(ours, "cpu") / med(raw, "cpu")
    wall = gen_ours / gen_raw
    rounds = [o["generation"] / r["generation"] for r, o in zip(raw, ours, strict=True)]
    # Wall time is what the goal is about, but on a shared machine one round's wall ratio
    # swings by tens of percent; the generating thread's CPU time does not, and it is where
    # reelgate could add work to a step. Wall time decides when its rounds agree.
    decisive = max(rounds) - min(rounds) <= 0.10
    if decisive:
        ok = max(step, wall) <= GOAL and cpu_ratio <= GOAL
        how = "wall time (rounds agree) and CPU"
    else:
        ok = cpu_ratio <= GOAL
        how = (f"CPU time; wall time is noise here (rounds {min(rounds):.2f}-"
               f"{max(rounds):.2f})")
    print(f"5 % goal on the generation: {'HOLDS' if ok else 'DOES NOT HOLD'} by {how}: "
          f"s/step {step:.3f}, pipeline call {wall:.3f}, its CPU {cpu_ratio:.3f}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=["wan", "ltx", "ltx2", "all"], default="all")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes, 2 rounds, 1 warm-up: checks the bench, not the goal")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--fps", type=int)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--head-dim", dest="head_dim", type=int)
    ap.add_argument("--ffn-dim", dest="ffn_dim", type=int,
                    help="Wan's feed-forward width (default 3x the model width; 8960 in "
                    "Wan2.1 1.3B)")
    ap.add_argument("--real-compression", action="store_true",
                    help="LTX-Video: the tiny VAE compresses as the real one (32x space, 8x "
                    "time), so real frame sizes give real token counts")
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", help="a real checkpoint to time instead of the random "
                    "architecture (with --family, --width, --height, --fps, --steps)")
    ap.add_argument("--json", type=Path, help="also write every round's figures here")
    ap.add_argument("--prompt", default="a red car on the city night")
    args = ap.parse_args()
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5
    families = ["wan", "ltx", "ltx2"] if args.family == "all" else [args.family]
    if args.weights and len(families) > 1:
        ap.error("--weights needs --family")
    if args.weights and (args.ffn_dim or args.real_compression):
        ap.error("--ffn-dim and --real-compression shape the random weights, not --weights")
    if args.ffn_dim and "wan" not in families:
        ap.error("--ffn-dim is Wan's")
    if args.real_compression and "ltx" not in families:
        ap.error("--real-compression is LTX-Video's (the tiny Wan VAE compresses as the "
                 "real one; LTX-2's does not have the option)")
    results = [bench_family(args, f) for f in families]
    held = [report(args, r) for r in results]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"\n5 % goal: {'held' if all(held) else 'NOT held'} for "
          f"{', '.join(r['family'] for r in results)}"
          + ("" if not args.quick else " (quick mode: tiny steps, noise-dominated)"))


if __name__ == "__main__":
    main()
