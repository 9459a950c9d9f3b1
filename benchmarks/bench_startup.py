"""`workbench --help` and every `workbench STAGE --help` against `litgpt --help`: wall time and
peak memory, median of runs.

Each command runs as a fresh child and its peak RSS is that command's own (`/usr/bin/time`), not
the largest of every child this process ever had. All commands take turns in each round, so a burst
of load on a shared machine hits ours and the peer alike.

Target: ≤ 0.25 s median and ≤ 1/10 of LitGPT's time, for the top-level help and each stage's.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = int(os.environ.get("BENCH_RUNS", "7"))
BIN = Path(sys.executable).parent
# Bytecode is cached as in an installed copy (LitGPT's is), even where the shell turned that off.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run_once(cmd: list[str]) -> tuple[float, float | None]:
    """Wall seconds and peak RSS (MiB) of one run of `cmd` in a fresh child.

    The peak comes from `/usr/bin/time`, which forks the command from its own small process:
    a child forked from this one starts with this process's resident pages counted in its
    ru_maxrss (Linux records the high-water mark across exec), so asking the kernel about a
    direct child would report this runner's size as a floor.
    """
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rss"
        timed = [TIME, "-f", "%M", "-o", str(report), *cmd] if TIME else cmd
        t0 = time.perf_counter()
        done = subprocess.run(timed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}")
        peak = int(report.read_text().split()[-1]) / 1024 if TIME else None  # KiB
    return wall, peak


def stage_commands() -> list[list[str]]:
    """`STAGE --help` for every installed stage (`data prepare --help` for dotted names)."""
    from workbench.stages import STAGE_GROUP, discover

    return [[*info.name.split("."), "--help"] for info in discover(STAGE_GROUP)]


def measure(cmds: dict[str, list[str]]) -> dict[str, tuple[float, float | None]]:
    """Median wall seconds and largest peak RSS of each command, interleaved over RUNS rounds."""
    for cmd in cmds.values():  # warm the page cache and the plugin index
        run_once(cmd)
    walls: dict[str, list[float]] = {k: [] for k in cmds}
    peaks: dict[str, list[float | None]] = {k: [] for k in cmds}
    for _ in range(RUNS):
        for key, cmd in cmds.items():
            wall, peak = run_once(cmd)
            walls[key].append(wall)
            peaks[key].append(peak)
    return {k: (statistics.median(walls[k]), max(peaks[k]) if TIME else None) for k in cmds}


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
    if TIME:  # without it the peaks would include this runner's own size
        top_m = result["--help"][1]
        worst_m = max(m for _, m in result.values() if m is not None)
        out += [
            {"figure": "`workbench --help` peak RSS (MiB)", "ours": top_m, "peer": peer_m,
             "ratio": top_m / peer_m, "target": None},
            {"figure": "largest `workbench STAGE --help` peak RSS (MiB)", "ours": worst_m, "peer": peer_m,
             "ratio": worst_m / peer_m, "target": None},
        ]
    out.append({"figure": "load average (1 min) at start", "ours": load, "peer": None, "ratio": None,
                "target": None})
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
