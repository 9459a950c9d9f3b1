"""End to end in a real terminal: the installed `workbench` command runs inside tmux, a person's
keystrokes start a small `counter` run from the command palette, and its progress is read off
the screen. CI needs tmux installed (`apt-get install -y tmux`)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from workbench import runs
from workbench.store import Store

pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (CI: apt-get install -y tmux)"),
    pytest.mark.slow,  # a real terminal, a real worker: about 20 s on two busy cores
]


class Terminal:
    """One tmux server on a private socket, so nothing else's sessions are touched."""

    def __init__(self, socket: Path, width: int = 100, height: int = 30) -> None:
        self.socket, self.width, self.height = socket, width, height

    def tmux(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-S", str(self.socket), *args], capture_output=True, text=True,
                             timeout=30, check=True)
        return out.stdout

    def start(self, command: str) -> None:
        self.tmux("new-session", "-d", "-s", "wb", "-x", str(self.width), "-y", str(self.height), command)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "wb", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "wb", "-l", text)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "wb")

    def wait_for(self, *texts: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if all(t in screen for t in texts):
                return screen
            time.sleep(0.2)
        pytest.fail(f"never saw {texts!r} on the terminal; it shows:\n{screen}")

    def wait_for_field(self, name: str, value: str, timeout: float = 30) -> None:
        """A form row that reads `name  value`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.split()[:2] == [name, value] for line in self.screen().splitlines()):
                return
            time.sleep(0.2)
        pytest.fail(f"the {name} option never read {value!r}; the terminal shows:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmp_path / "tmux.sock")
    yield term
    term.close()


def workbench_command() -> str:
    """The installed console script, as a user would type it, with the test's environment."""
    script = Path(sys.executable).parent / "workbench"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "workbench.cli"]
    env = {k: os.environ[k] for k in ("WORKBENCH_HOME", "PYTHONPATH", "HF_HOME", "HF_HUB_OFFLINE")
           if k in os.environ}
    return "env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(cmd)


def test_a_run_started_in_the_real_terminal_shows_its_progress(with_plugin: Path, terminal: Terminal) -> None:
    terminal.start(workbench_command())
    terminal.wait_for("1 Pipeline", "counter", "ready")

    # Keyboard only: the palette finds the stage, the form takes the options, Ctrl+R runs it.
    terminal.keys("C-p")
    terminal.wait_for("Search for commands")
    terminal.type("Run stage: counter")
    time.sleep(0.5)
    terminal.keys("Enter")
    terminal.wait_for("counter (counter)", "How many steps to count")
    time.sleep(1.0)  # the first option takes focus once the form is drawn
    terminal.keys("End", "C-u")
    terminal.wait_for("steps expects integer, got ''")
    terminal.type("25")
    terminal.wait_for_field("steps", "25")
    terminal.keys("Tab")
    time.sleep(1.0)
    terminal.keys("End", "C-u")
    terminal.wait_for("sleep expects number, got ''")
    terminal.type("0.2")
    terminal.wait_for_field("sleep", "0.2")
    terminal.wait_for_field("steps", "25")
    terminal.keys("C-r")

    during = terminal.wait_for("/25 step", "ETA", "running")
    assert "25/25 step" not in during  # seen while running, not only at the end
    terminal.wait_for("25/25 step", "· done", timeout=90)

    [run] = runs.list_runs(Store())
    assert run.stage == "counter" and run.status == "done" and run.options["steps"] == 25
    terminal.keys("C-q")


def test_demo_in_the_tui_follows_each_step_and_keeps_running_when_closed(terminal: Terminal) -> None:
    from workbench import demo

    terminal.start(workbench_command() + " demo --quick --tui")
    try:
        # The TUI opens on the Runs view and follows the demo's steps as they start.
        screen = terminal.wait_for("· pretrain ·", "step", "ETA", timeout=120)
        assert "2 Runs" in screen
        again = subprocess.run([sys.executable, "-m", "workbench.cli", "demo", "--quick"], capture_output=True,
                               text=True, timeout=60)
        assert again.returncode == 2 and "a demo is already running in this workspace" in again.stderr

        terminal.keys("C-q")
        time.sleep(1.0)
        assert demo.running(), "closing the TUI stopped the demo"
    finally:
        _stop_demo()


def _stop_demo() -> None:
    """End the background demo and the run it is following, as a user would with Ctrl-C and cancel."""
    import signal

    from workbench import demo, locations

    lock = locations.home() / "demo" / "driver.lock"
    if demo.running():
        pid = int(lock.read_text().strip())
        os.killpg(pid, signal.SIGTERM)
    store = Store()
    for run in runs.list_runs(store):
        if run.status in ("running", "queued"):
            runs.cancel(run.id, store)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(r.status in ("running", "queued", "cancelling")
                                              for r in runs.list_runs(store)):
        time.sleep(0.5)
