"""How fast the terminal workbench shows its first frame, and that it never loads torch.

Three figures, each the median of a few fresh processes:

- first frame, headless: from starting `python` to the app's first refresh, measured inside
  the app; the peer is `python -c "import torch"`, what the UI would pay if it imported torch.
  The CPU seconds it took are reported too: on a busy machine they say more than wall time.
- the same for a bare Textual app with the first view's widgets (a Select, a DataTable, two
  Statics and a Footer, no stylesheet of its own): the floor Textual itself sets, run in turn
  with ours so that load on a shared machine hits both alike.
- first frame in a terminal: the real `workbench` command in tmux, until its pipeline view is
  on screen (skipped when tmux is absent).
- model libraries in the UI process after every view was opened: must be none.

Run: `python benchmarks/bench_tui_startup.py [--repeat N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_S = 0.5
HEAVY = ("torch", "litgpt", "llama_cpp", "lightning")

FIRST_FRAME = """
import sys, time
from workbench.tui.app import WorkbenchApp

class Timed(WorkbenchApp):
    def on_mount(self) -> None:
        self.call_after_refresh(self.first_frame)

    def first_frame(self) -> None:
        print(time.time(), time.process_time(), flush=True)
        self.exit()

Timed().run(headless=True, size=(80, 24))
"""

BARE_FIRST_FRAME = """
import time
from textual.app import App
from textual.widgets import DataTable, Footer, Select, Static

class Bare(App):
    def compose(self):
        yield Static("workbench   1 Pipeline   2 Runs   3 Models")
        yield Select([], prompt="All models")
        yield DataTable()
        yield Static("")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label in ("Stage", "State", "What it does"):
            table.add_column(label)
        self.call_after_refresh(self.first_frame)

    def first_frame(self) -> None:
        print(time.time(), time.process_time(), flush=True)
        self.exit()

Bare().run(headless=True, size=(80, 24))
"""

EVERY_VIEW = """
import asyncio, json, sys
from workbench.tui.app import WorkbenchApp

async def main():
    app = WorkbenchApp(doctor_command=[sys.executable, "-c", "print('{}')"])
    async with app.run_test(size=(80, 24)) as pilot:
        for key in "12345":
            await pilot.press(key)
            await pilot.pause(0.3)
        while not app.catalog or any(e.info and e.info.status == "not loaded" for e in app.catalog):
            await pilot.pause(0.1)
asyncio.run(main())
print(json.dumps(sorted(m for m in sys.argv[1:] if m in sys.modules)))
"""


def _env(home: Path) -> dict[str, str]:
    # Bytecode is cached as in an installed copy, even where the shell turned that off.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "WORKBENCH_HOME": str(home)}


def first_frame_headless(home: Path, script: str = FIRST_FRAME) -> tuple[float, float]:
    """(wall seconds from launching python, CPU seconds the process used) at the first frame."""
    start = time.time()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=_env(home), timeout=120, check=True)
    wall, cpu = out.stdout.strip().splitlines()[-1].split()
    return float(wall) - start, float(cpu)


def import_torch() -> float:
    start = time.time()
    subprocess.run([sys.executable, "-c", "import torch"], check=True, timeout=300)
    return time.time() - start


def first_frame_tmux(home: Path) -> float | None:
    if shutil.which("tmux") is None:
        return None
    script = Path(sys.executable).parent / "workbench"
    command = f"env WORKBENCH_HOME={home} {script if script.exists() else sys.executable + ' -m workbench.cli'}"
    with tempfile.TemporaryDirectory() as tmp:
        tmux = ["tmux", "-S", str(Path(tmp) / "sock")]
        start = time.time()
        subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "24", command], check=True, timeout=30)
        try:
            while time.time() - start < 60:
                screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True,
                                        timeout=30).stdout
                if "1 Pipeline" in screen and "Stage" in screen:
                    return time.time() - start
                time.sleep(0.01)
            return None
        finally:
            subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=30)


def heavy_modules(home: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-c", EVERY_VIEW, *HEAVY], capture_output=True, text=True,
                         env=_env(home), timeout=300, check=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def rows(repeat: int = 5) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        first_frame_headless(home)  # warm the file cache and the bytecode cache once
        frames, bare = [], []
        for _ in range(repeat):
            frames.append(first_frame_headless(home))
            bare.append(first_frame_headless(home, BARE_FIRST_FRAME))
        headless = statistics.median(f[0] for f in frames)
        cpu = statistics.median(f[1] for f in frames)
        bare_s = statistics.median(f[0] for f in bare)
        bare_cpu = statistics.median(f[1] for f in bare)
        load = os.getloadavg()[0]
        torch_s = statistics.median(import_torch() for _ in range(max(1, repeat // 2)))
        terminal = [t for t in (first_frame_tmux(home) for _ in range(repeat)) if t is not None]
        loaded = heavy_modules(home)
    out = [
        {"figure": "first frame, headless (s)", "ours": round(headless, 3), "peer": round(torch_s, 3),
         "ratio": round(headless / torch_s, 3), "target": TARGET_S},
        {"figure": "CPU time to first frame (s)", "ours": round(cpu, 3), "peer": None, "ratio": None,
         "target": TARGET_S},
        {"figure": "first frame vs a bare Textual app (s)", "ours": round(headless, 3), "peer": round(bare_s, 3),
         "ratio": round(headless / bare_s, 3), "target": None},
        {"figure": "CPU time vs a bare Textual app (s)", "ours": round(cpu, 3), "peer": round(bare_cpu, 3),
         "ratio": round(cpu / bare_cpu, 3), "target": None},
        {"figure": "load average (1 min) after the runs", "ours": round(load, 2), "peer": None, "ratio": None,
         "target": None},
        {"figure": "first frame in tmux, `workbench` (s)",
         "ours": round(statistics.median(terminal), 3) if terminal else None,
         "peer": None, "ratio": None, "target": TARGET_S},
        {"figure": "model libraries in the UI process", "ours": len(loaded), "peer": None, "ratio": None,
         "target": 0},
    ]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per figure (median)")
    args = parser.parse_args()
    table = rows(args.repeat)
    print(f"{'figure':<40} {'ours':>8} {'peer':>8} {'ratio':>7} {'target':>7}")
    for row in table:
        cells = [("-" if row[k] is None else f"{row[k]:g}") for k in ("ours", "peer", "ratio", "target")]
        print(f"{row['figure']:<40} {cells[0]:>8} {cells[1]:>8} {cells[2]:>7} {cells[3]:>7}")
    print("peer: `python -c 'import torch'`, the cost a UI that imported torch would pay before any frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
