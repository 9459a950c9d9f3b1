"""The terminal workbench: `workbench` with no command, or `workbench tui`.

Six views, each a Textual mode with its own screen stack: Pipeline (1), Runs (2), Models (3),
Chat (4), Doctor (5) and Arena (6); and the Monitor of `workbench serve` (7, or the command
palette). Views are imported when first opened, so the first frame only pays
for Textual and the pipeline. Every action is in the command palette (Ctrl+P).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.notifications import SeverityLevel
from textual.reactive import reactive
from textual.screen import Screen
from textual.worker import Worker

from workbench import locations
from workbench.tui.data import ACTIVE, Entry, catalog, load_catalog, next_stage, open_store
from workbench.tui.screens.base import report_worker_error
from workbench.tui.widgets.navbar import VIEWS

if TYPE_CHECKING:
    from workbench.store import Artifact, Run

DOCTOR_COMMAND = (sys.executable, "-m", "workbench.cli", "doctor", "--json")
SCREENS = {
    "pipeline": "workbench.tui.screens.pipeline:PipelineScreen",
    "runs": "workbench.tui.screens.runs:RunsScreen",
    "models": "workbench.tui.screens.models:ModelsScreen",
    "chat": "workbench.tui.screens.chat:ChatScreen",
    "doctor": "workbench.tui.screens.doctor:DoctorScreen",
    "arena": "workbench.tui.screens.arena:ArenaScreen",
    "monitor": "workbench.tui.screens.monitor:MonitorScreen",
}


@dataclass
class BackgroundJob:
    """Something running outside the app whose runs it follows (the demo): `running()` says
    whether it still runs, `outcome()` the line that tells how it ended."""

    name: str
    running: Callable[[], bool]
    outcome: Callable[[], str | None]


def _lazy(target: str) -> Callable[[], Screen[None]]:
    def make() -> Screen[None]:
        module, _, name = target.partition(":")
        screen: Screen[None] = getattr(importlib.import_module(module), name)()
        return screen

    return make


class WorkbenchApp(App[None]):
    TITLE = "workbench"
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute, so subclasses elsewhere find it
    ENABLE_COMMAND_PALETTE = True
    MODES: ClassVar[dict[str, str | Callable[[], Screen[None]]]] = {
        mode: _lazy(target) for mode, target in SCREENS.items()
    }
    DEFAULT_MODE = "pipeline"
    BINDINGS: ClassVar[list[BindingType]] = [
        # The navigation bar names these keys; the footer keeps its room for the view's own.
        *(Binding(str(n), f"switch_mode('{mode}')", label, tooltip=f"Open the {label} view", show=False)
          for n, (mode, label) in enumerate(VIEWS, start=1)),
        Binding("7", "switch_mode('monitor')", "Monitor", tooltip="Open the Monitor of `workbench serve`", show=False),
        Binding("ctrl+t", "toggle_theme", "Theme", tooltip="Switch between the light and dark theme"),
        Binding("question_mark,f1", "help", "Help", tooltip="List every key of this view"),
    ]

    #: Live runs in the workspace, shown in the navigation bar.
    active_runs: reactive[int] = reactive(0)
    #: Bumped when the stage catalogue changes (found, then loaded).
    catalog_version: reactive[int] = reactive(0)

    def __init__(
        self,
        *,
        chat_command: Sequence[str] | None = None,
        doctor_command: Sequence[str] = DOCTOR_COMMAND,
        theme: str = "textual-dark",
        follow_runs: bool = False,
        job: BackgroundJob | None = None,
    ) -> None:
        if follow_runs:
            # Textual types DEFAULT_MODE as a ClassVar but App.__init__ reads it from the instance.
            self.DEFAULT_MODE = "runs"  # type: ignore[misc]  # the first frame is the Runs view
        super().__init__()
        #: Open each new run's monitor as it starts (while the Runs view is showing).
        self.follow_runs = follow_runs
        self.job = job
        #: The job's end is announced once, even when it ended before the first poll.
        self._job_pending = job is not None
        #: The chat child's command line; None: `workbench chat` (the chat client is imported with its view).
        self.chat_command = list(chat_command) if chat_command else None
        self.doctor_command = list(doctor_command)
        self.theme = theme
        self.catalog: list[Entry] = []
        #: Worker processes started here, polled so they are reaped; they outlive the app.
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        #: Runs seen live, and all runs seen, at the last poll (read and written only by `poll_runs`).
        self._live: set[str] = set()
        self._seen: set[str] | None = None

    def on_mount(self) -> None:
        # Plugins load after the first frame is drawn, so they never delay it.
        self.call_after_refresh(self.load_stages)
        self.call_after_refresh(self.poll_runs)
        self.set_interval(1.0, self.poll_runs)

    # background -------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="catalog", exit_on_error=False)
    def load_stages(self) -> None:
        """Names first (entry-point metadata, instant), then import each plugin to learn its
        options; a broken plugin is shown as unavailable."""
        entries = catalog()
        self.call_from_thread(self._set_catalog, entries)
        load_catalog(entries)
        self.call_from_thread(self._set_catalog, entries)

    def _set_catalog(self, entries: list[Entry]) -> None:
        self.catalog = entries
        self.catalog_version += 1

    @work(thread=True, exclusive=True, group="poll-runs", exit_on_error=False)
    def poll_runs(self) -> None:
        for run_id, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self.procs.pop(run_id, None)
        with open_store() as store:
            recent = store.list_runs(limit=200) if store else []
        active = {r.id for r in recent if r.status in ACTIVE}
        # Runs new since the last poll, newest first, however short; at the first poll, the live ones.
        started = [r for r in recent if (r.id not in self._seen if self._seen is not None else r.id in active)]
        came_and_went = {r.id for r in started if r.id not in active} if self._seen is not None else set()
        for run in recent:
            # a run ended since the last poll: one that was live then, or one that came and went between
            if run.id not in active and (run.id in self._live or run.id in came_and_went):
                self.call_from_thread(self._announce, run)
        if self.follow_runs and started:
            self.call_from_thread(self._follow, started[0].id)
        self._seen = {r.id for r in recent}
        self._live = active
        self.call_from_thread(setattr, self, "active_runs", len(active))
        if self.job is not None and self._job_pending and not self.job.running():
            self._job_pending = False
            self.call_from_thread(self._job_ended, self.job.name, self.job.outcome())

    def _follow(self, run_id: str) -> None:
        """Show a run that just started, in place of the monitor that was showing."""
        from workbench.tui.screens.runs import RunMonitorScreen

        if self.current_mode != "runs":
            return  # the user went elsewhere: a new run must not pull them away
        if isinstance(self.screen, RunMonitorScreen):
            if self.screen.run_id == run_id:
                return
            self.pop_screen()
        self.push_screen(RunMonitorScreen(run_id))

    def _job_ended(self, name: str, outcome: str | None) -> None:
        failed = outcome is not None and outcome.startswith("error:")
        self.notify(outcome or "it left no report", title=f"{name} {'failed' if failed else 'finished'}",
                    severity="error" if failed else "information", timeout=30)

    def _announce(self, run: Run) -> None:
        """A run that ended while the app was open says so, whichever view is showing."""
        severity: SeverityLevel = (
            "information" if run.status == "done" else "warning" if run.status == "cancelled" else "error")
        detail = f": {run.exit_reason}" if run.status == "failed" and run.exit_reason else ""
        if run.status == "done" and (following := next_stage(run.stage, run.result)):
            detail = f"; next: {following[1]} (n in its monitor)"
        self.notify(f"{run.stage} run {run.id} {run.status}{detail}", severity=severity)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        report_worker_error(self, event.worker)

    # navigation -------------------------------------------------------------------------

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    def action_help(self, over: Screen[object] | None = None) -> None:
        from workbench.tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(over or self.screen))

    def save_to_workspace(self) -> None:
        """A screenshot where the workspace lives (Textual's default folder may not exist)."""
        folder = locations.home() / "screenshots"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = self.save_screenshot(path=str(folder))
        except OSError as exc:
            self.notify(f"could not save it in {folder}: {exc.strerror or exc}", title="Screenshot", severity="error")
            return
        self.notify(path, title="Screenshot saved")

    def open_stage(self, name: str, model_id: str | None = None) -> None:
        """The stage's options form, on top of the pipeline view."""
        self._open_stage(name, model_id)

    @work(thread=True, group="open-stage", exit_on_error=False)
    def _open_stage(self, name: str, model_id: str | None) -> None:
        with open_store() as store:
            artifacts = store.list_artifacts() if store else []
        self.call_from_thread(self._push_form, name, artifacts, model_id)

    def _push_form(self, name: str, artifacts: list[Artifact], model_id: str | None) -> None:
        from workbench.tui.screens.form import StageFormScreen

        entry = next((e for e in self.catalog if e.name == name), None)
        if entry is None or entry.stage_cls is None:
            self.notify(entry.summary if entry else f"no stage '{name}'", title="Cannot open", severity="error")
            return
        self.switch_mode("pipeline")
        self.push_screen(StageFormScreen(entry, artifacts, model_id))

    def run_started(self, run_id: str, proc: subprocess.Popen[bytes], form: Screen[None]) -> None:
        self.procs[run_id] = proc
        if form.is_attached:
            form.dismiss()
        self.open_run(run_id)

    def run_resumed(self, run_id: str, proc: subprocess.Popen[bytes]) -> None:
        self.procs[run_id] = proc
        self.notify(f"resuming run {run_id}")

    def open_run(self, run_id: str) -> None:
        from workbench.tui.screens.runs import RunMonitorScreen

        self.switch_mode("runs")
        while isinstance(self.screen, RunMonitorScreen):  # one monitor at a time: Esc goes back to the list
            self.pop_screen()
        self.push_screen(RunMonitorScreen(run_id))

    def open_chat(self, model_id: str | None = None) -> None:
        from workbench.tui.screens.chat import ChatScreen

        self.switch_mode("chat")
        if model_id and isinstance(self.screen, ChatScreen):
            self.call_after_refresh(self.screen.choose_model, model_id)

    # command palette --------------------------------------------------------------------

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        for n, (mode, label) in enumerate(VIEWS, start=1):
            yield SystemCommand(f"Go to {label}", f"Open the {label} view (key {n})", partial(self.switch_mode, mode))
        yield SystemCommand("Go to Monitor", "What `workbench serve` answers: rate, latency, errors, drift (key 7)",
                            partial(self.switch_mode, "monitor"))
        yield SystemCommand("Help: keys of this view", "Every key of the view you are in (? or F1)",
                            partial(self.action_help, screen))
        yield SystemCommand("Toggle light/dark theme", "Switch between textual-light and textual-dark (Ctrl+T)",
                            self.action_toggle_theme)
        # The screen's own actions, as its footer shows them.
        seen = set()
        for active in screen.active_bindings.values():
            binding, node = active.binding, active.node
            if node is self or not binding.show or not active.enabled or binding.action in seen:
                continue
            seen.add(binding.action)
            yield SystemCommand(binding.description, binding.tooltip or f"{binding.description} (key {binding.key})",
                                partial(self.run_action, binding.action, node))
        for entry in self.catalog:
            if entry.kind == "stage" and entry.loaded:
                yield SystemCommand(f"Run stage: {entry.label}", f"{entry.name}: {entry.summary}",
                                    partial(self.open_stage, entry.name, None))
        # Textual's own key panel ("Keys") is replaced by the help screen, which lists hidden keys too.
        yield SystemCommand("Screenshot", "Save an SVG picture of the screen in the workspace's screenshots folder",
                            lambda: self.set_timer(0.1, self.save_to_workspace))
        yield from (c for c in super().get_system_commands(screen) if c.title not in ("Keys", "Screenshot"))


def main() -> int:
    WorkbenchApp().run()
    return 0
