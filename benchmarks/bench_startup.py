"""`workbench --help` against `litgpt --help`: wall time and peak memory, median of runs.

Target: ≤ 0.3 s median and ≤ 1/10 of LitGPT's time.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = int(os.environ.get("BENCH_RUNS", "7"))
BIN = Path(sys.executable).parent


def measure(cmd: list[str]) -> tuple[float, float]:
    """Median wall seconds and peak RSS (MiB) of `cmd`."""
    times, peaks = [], []
    for _ in range(RUNS):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
        peaks.append(max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024)
    return statistics.median(times), max(peaks)


def rows() -> list[dict]:
    workbench = [str(BIN / "workbench"), "--help"]
    litgpt = [shutil.which("litgpt", path=str(BIN)) or "litgpt", "--help"]
    ours_t, ours_m = measure(workbench)
    peer_t, peer_m = measure(litgpt)
    return [
        {"figure": "`--help` wall time (s, median)", "ours": ours_t, "peer": peer_t,
         "ratio": ours_t / peer_t, "target": "≤ 0.3 s and ≤ 0.1×"},
        {"figure": "`--help` peak RSS (MiB)", "ours": ours_m, "peer": peer_m,
         "ratio": ours_m / peer_m, "target": None},
    ]


def print_table(title: str, table: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'figure':42} {'ours':>10} {'peer':>10} {'ratio':>8}  target")
    for r in table:
        def f(v):
            return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
        print(f"{r['figure']:42} {f(r['ours']):>10} {f(r['peer']):>10} {f(r['ratio']):>8}  {r['target'] or ''}")


if __name__ == "__main__":
    print_table("workbench --help vs litgpt --help", rows())
