"""What one test server start costs: wall time until /healthz answers, and the CPU the
server process has used by then (psutil), started as a fresh interpreter
(REELGATE_TEST_FORK=0) or forked from the tests' zygote (tests/launcher.py).

    PYTHONPATH=$PWD/src python -m bench.bench_server_start --runs 5

Both ways run in this one process, alternating, so a busy machine weighs on both alike.
The zygote's own start (its imports, once per test process) is reported apart.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from tests import launcher
from tests.conftest import ServerProcess


def one(root: Path, fork: bool) -> tuple[float, float]:
    os.environ["REELGATE_TEST_FORK"] = "1" if fork else "0"
    srv = ServerProcess(root / f"data-{time.monotonic_ns()}")
    t0 = time.monotonic()
    srv.start()
    wall = time.monotonic() - t0
    assert srv.proc is not None
    cpu = psutil.Process(srv.proc.pid).cpu_times()
    srv.stop(signal.SIGKILL)
    return wall, cpu.user + cpu.system


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.monotonic()
        launcher._get_zygote()
        print(f"zygote ready in {time.monotonic() - t0:.2f} s (once per test process)")
        results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(args.runs):
            for fork in (False, True):
                results[fork].append(one(root, fork))
        for fork, rows in results.items():
            walls = [w for w, _ in rows]
            cpus = [c for _, c in rows]
            print(f"{'forked' if fork else 'fresh '}: wall {statistics.median(walls):.2f} s "
                  f"(runs: {', '.join(f'{w:.2f}' for w in walls)}), "
                  f"CPU {statistics.median(cpus):.2f} s "
                  f"(runs: {', '.join(f'{c:.2f}' for c in cpus)})")
        print("refusals:", launcher.refusals or "none")


if __name__ == "__main__":
    main()
