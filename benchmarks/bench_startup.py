"""`workbench --help` and every `workbench STAGE --help` against `litgpt --help`: wall time and
peak memory, median of runs.

Each command runs as a fresh child and its peak RSS is that child's own (`os.wait4`), not the
largest of every child this process ever had. All commands take turns in each round, so a burst
of load on a shared machine hits ours and the peer alike.

Target: ≤ 0.25 s median and ≤ 1/10 of LitGPT's time, for the top-level help and each stage's.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = int(os.environ.get("BENCH_RUNS", "7"))
BIN = Path(sys.executable).parent
# Bytecode is cached as in an installed copy (LitGPT's is), even where the shell turned that off.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_once(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one run of `cmd` in a fresh child."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    return wall, usage.ru_maxrss / 1024  # KiB on Linux


def stage_commands() -> list[list[str]]:
    """`STAGE --help` for every installed stage (`data prepare --help` for dotted names)."""
    from workbench.stages import STAGE_GROUP, discover

    return [[*info.name.split("."), "--help"] for info in discover(STAGE_GROUP)]


def measure(cmds: dict[str, list[str]]) -> dict[str, tuple[float, float]]:
    """Median wall seconds and largest peak RSS of each command, interleaved over RUNS rounds."""
    for cmd in cmds.values():  # warm the page cache and the plugin index
        run_once(cmd)
    walls: dict[str, list[float]] = {k: [] for k in cmds}
    peaks: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(RUNS):
        for key, cmd in cmds.items():
            wall, peak = run_once(cmd)
            walls[key].append(wall)
            peaks[key].append(peak)
    return {k: (statistics.median(walls[k]), max(peaks[k])) for k in cmds}


def rows() -> list[dict]:
    workbench = str(BIN / "workbench")
    cmds = {"--help": [workbench, "--help"]}
    cmds.update({" ".join(c): [workbench, *c] for c in stage_commands()})
    cmds["litgpt"] = [shutil.which("litgpt", path=str(BIN)) or "litgpt", "--help"]
    load = os.getloadavg()[0]
    result = measure(cmds)
    peer_t, peer_m = result.pop("litgpt")
    out = []
    for key, (t, _) in result.items():
        out.append({"figure": f"`workbench {key}` wall time (s, median)", "ours": t, "peer": peer_t,
                    "ratio": t / peer_t, "target": "≤ 0.25 s and ≤ 0.1×"})
    top_m = result["--help"][1]
    worst_m = max(m for _, m in result.values())
    out += [
        {"figure": "`workbench --help` peak RSS (MiB)", "ours": top_m, "peer": peer_m,
         "ratio": top_m / peer_m, "target": None},
        {"figure": "largest `workbench STAGE --help` peak RSS (MiB)", "ours": worst_m, "peer": peer_m,
         "ratio": worst_m / peer_m, "target": None},
        {"figure": "load average (1 min) at start", "ours": load, "peer": None, "ratio": None,
         "target": None},
    ]
    return out


def print_table(title: str, table: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'figure':56} {'ours':>10} {'peer':>10} {'ratio':>8}  target")
    for r in table:
        def f(v):
            return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
        print(f"{r['figure']:56} {f(r['ours']):>10} {f(r['peer']):>10} {f(r['ratio']):>8}  {r['target'] or ''}")


if __name__ == "__main__":
    print_table("workbench --help vs litgpt --help", rows())
