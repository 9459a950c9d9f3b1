"""Runs: the list of runs (live ones first to the eye), and the monitor of one run with its
progress, ETA, metrics, curves and log tail. Runs are worker processes: closing the TUI leaves
them running, and opening it again finds them in the store and follows their events file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich import box
from rich.console import Group
from rich.table import Table
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.widgets import DataTable, Log, ProgressBar, Static
from textual.worker import get_current_worker

from workbench import runs
from workbench.events import EventTail
from workbench.stages import get_stage
from workbench.store import Run
from workbench.tui.data import ACTIVE, clip, fmt_duration, fmt_num, fmt_time, next_stage, open_store
from workbench.tui.runstate import RunState
from workbench.tui.screens.base import WorkbenchScreen
from workbench.tui.widgets.tables import RunTable

if TYPE_CHECKING:
    from workbench.tui.app import WorkbenchApp

STATUS_STYLE = {"done": "$success", "failed": "$error", "cancelled": "$warning",
                "running": "$accent", "queued": "$foreground-muted"}
#: The run list's columns: key -> (title, width); 80 columns hold them all.
COLUMNS = {"id": ("Run", 17), "stage": ("Stage", 14), "status": ("Status", 9),
           "progress": ("Progress", 12), "started": ("Started", 11), "took": ("Took", 5)}
#: Seconds between checks that a silent worker is still alive.
ALIVE_CHECK_S = 1.0


def status_text(status: str) -> Content:
    return Content.styled(status, STATUS_STYLE.get(status, ""))


def bar_text(fraction: float | None, width: int = 7) -> str:
    if fraction is None:
        return ""
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled) + f" {fraction:4.0%}"


def result_tables(tables: list[dict[str, Any]]) -> Group:
    """A run result's {title, columns, rows} tables, as the CLI prints them."""
    shown = []
    for spec in tables:
        table = Table(title=str(spec.get("title") or ""), title_justify="left", title_style="bold",
                      box=box.SIMPLE_HEAD, expand=False)
        for column in spec.get("columns") or []:
            table.add_column(str(column))
        for row in spec.get("rows") or []:
            table.add_row(*(fmt_num(cell) for cell in row))
        shown.append(table)
    return Group(*shown)


class Tracker:
    """Reads each live run's new events since the last look (a thread worker's state)."""

    def __init__(self) -> None:
        self.tails: dict[str, tuple[EventTail, RunState]] = {}

    def state(self, run: Run) -> RunState:
        if run.id not in self.tails:
            self.tails[run.id] = (EventTail(run.run_dir / "events.jsonl"), RunState())
        tail, state = self.tails[run.id]
        state.extend(tail.poll())
        return state


class RunControlScreen(WorkbenchScreen):
    """Cancel and resume, shared by the run list and the monitor."""

    app: WorkbenchApp

    def confirm_cancel(self, run: Run | str) -> None:
        """Stopping a run loses the work since its last checkpoint, so it asks first."""
        from workbench.tui.screens.confirm import ConfirmScreen

        run_id = run if isinstance(run, str) else run.id
        stage = "" if isinstance(run, str) else f" ({run.stage})"

        def answered(yes: bool | None) -> None:
            if yes:
                self.cancel_run(run_id)

        self.app.push_screen(ConfirmScreen(
            f"Stop run {run_id}{stage}?\nA stage that checkpoints saves one first; r resumes it later.",
            yes="Stop"), answered)

    @work(thread=True, group="run-control", exit_on_error=False)
    def cancel_run(self, run_id: str) -> None:
        with open_store() as store:
            assert store is not None
            run = runs.cancel(run_id, store)
        self.app.call_from_thread(self.notify, f"asked run {run.id} to stop; it saves a checkpoint first")

    @work(thread=True, group="run-control", exit_on_error=False)
    def resume_run(self, run_id: str) -> None:
        with open_store() as store:
            assert store is not None
            run, proc = runs.resume(run_id, store)
        self.app.call_from_thread(self.app.run_resumed, run.id, proc)


class RunsScreen(RunControlScreen):
    VIEW = "runs"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "cancel", "Cancel run", tooltip="Ask the highlighted run to stop (it checkpoints)"),
        Binding("r", "resume", "Resume run", tooltip="Continue the highlighted run from its checkpoint"),
    ]
    app: WorkbenchApp

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Run] = []
        self.tracker = Tracker()

    def compose_body(self) -> ComposeResult:
        yield Static("", id="runs-summary")
        yield RunTable(id="runs", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one(RunTable)
        for key, (label, width) in COLUMNS.items():
            table.add_column(label, key=key, width=width)
        self.set_interval(1.0, self.refresh_runs)
        self.refresh_runs()
        table.focus()

    @work(thread=True, exclusive=True, group="runs-list", exit_on_error=False)
    def refresh_runs(self) -> None:
        with open_store() as store:
            items = runs.list_runs(store, limit=200) if store else []
        progress = {r.id: self.tracker.state(r) for r in items if r.status in ACTIVE}
        self.app.call_from_thread(self._show, items, progress)

    def _show(self, items: list[Run], live: dict[str, RunState]) -> None:
        table = self.query_one(RunTable)
        ids = [r.id for r in items]
        rows = {r.id: self._cells(r, live.get(r.id)) for r in items}
        if ids != [r.id for r in self.runs]:
            selected = self.selected
            known = {r.id for r in self.runs}
            # A run that just started takes the cursor, so Enter opens it, not an older one.
            new = [run_id for run_id in ids if run_id not in known] if self.runs else []
            table.clear()
            for run_id in ids:
                table.add_row(*rows[run_id], key=run_id)
            if new:
                table.move_cursor(row=ids.index(new[0]))
            elif selected is not None and selected.id in ids:
                table.move_cursor(row=ids.index(selected.id))
        else:
            for run_id, cells in rows.items():
                for key, cell in zip(COLUMNS, cells, strict=True):
                    table.update_cell(run_id, key, cell)
        self.runs = items
        active = sum(r.status in ACTIVE for r in items)
        summary = f"{len(items)} runs, {active} running" if items else \
            "no runs yet: choose a stage in the Pipeline view (1) and press Run"
        self.query_one("#runs-summary", Static).update(summary)

    def _cells(self, run: Run, state: RunState | None) -> tuple[str, str, Content, str, str, str]:
        if state is not None:
            progress = bar_text(state.fraction) or clip(state.progress_text(), COLUMNS["progress"][1])
        else:
            progress = bar_text(1.0) if run.status == "done" else ""
        took = fmt_duration((run.ended_at or time.time()) - run.started_at) if run.started_at else "-"
        stage = clip(run.stage, COLUMNS["stage"][1])
        return run.id, stage, status_text(run.status), progress, fmt_time(run.started_at), took

    @property
    def selected(self) -> Run | None:
        table = self.query_one(RunTable)
        if not self.runs or table.cursor_row >= len(self.runs):
            return None
        return self.runs[table.cursor_row]

    @on(DataTable.RowSelected)
    def _open(self) -> None:
        if self.selected is not None:
            self.app.open_run(self.selected.id)

    def action_cancel(self) -> None:
        if self.selected is not None:
            self.confirm_cancel(self.selected)

    def action_resume(self) -> None:
        if self.selected is not None:
            self.resume_run(self.selected.id)


class RunMonitorScreen(RunControlScreen):
    """One run, live: replays its events file from the start, then follows it."""

    VIEW = "runs"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "cancel", "Cancel", tooltip="Ask the run to stop; it saves a checkpoint first"),
        Binding("r", "resume", "Resume", tooltip="Continue from the last checkpoint"),
        Binding("n", "next", "Next stage", tooltip="Open the stage that usually comes next, with what this run made"),
        Binding("escape", "back", "Back"),
    ]
    app: WorkbenchApp

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.run: Run | None = None
        self.state = RunState()
        self.supports_resume = False
        self._logged = 0

    def compose_body(self) -> ComposeResult:
        yield Static(self.run_id, id="run-title")
        with Horizontal(id="run-progress"):
            yield ProgressBar(show_eta=False, id="run-bar")
            yield Static("", id="run-progress-text")
        yield Static("", id="run-metrics")
        from workbench.tui.widgets.plots import CurvePlot  # plotext only when a monitor opens

        yield CurvePlot(id="run-curves")
        with VerticalScroll(id="run-tables"):
            yield Static("", id="run-tables-body")
        yield Log(id="run-log", max_lines=500)

    def on_mount(self) -> None:
        self.follow()

    @work(thread=True, exclusive=True, group="follow", exit_on_error=False)
    def follow(self) -> None:
        """Tail `events.jsonl` and hand new events to the UI; ask the store now and then
        whether a silent worker is still alive (a killed worker ends the run as failed)."""
        worker = get_current_worker()
        with open_store() as store:
            assert store is not None
            run = runs.get(self.run_id, store)
            try:
                resumable = get_stage(run.stage).supports_resume
            except Exception:  # an uninstalled plugin cannot resume; the run is still shown
                resumable = False
            tail = EventTail(Path(run.run_dir) / "events.jsonl")
            checked = 0.0
            while not worker.is_cancelled:
                events = tail.poll()
                now = time.monotonic()
                if events or now - checked > ALIVE_CHECK_S:
                    if now - checked > ALIVE_CHECK_S:
                        run, checked = runs.get(self.run_id, store), now
                    if not self._deliver(events, run, resumable):
                        return
                time.sleep(0.05 if events else 0.2)

    def _deliver(self, events: list[dict[str, object]], run: Run, resumable: bool) -> bool:
        try:
            self.app.call_from_thread(self._apply, events, run, resumable)
        except RuntimeError:  # the app is shutting down
            return False
        return True

    def _apply(self, events: list[dict[str, object]], run: Run, resumable: bool) -> None:
        self.run, self.supports_resume = run, resumable
        self.state.extend(events)
        if run.status not in ACTIVE and self.state.status in ACTIVE and run.attempts >= self.state.attempt:
            # The worker died without a final event; the store knows why. (A store row older than
            # the attempt the events describe is not news: that attempt has just begun.)
            self.state.status, self.state.error = run.status, run.exit_reason
        state = self.state
        title = Content.assemble(Content.styled(run.id, "bold"), f" · {run.stage} · ", status_text(state.status),
                                 f" · attempt {state.attempt}" if state.attempt > 1 else "")
        if state.error:
            title = Content("\n").join([title, Content.styled(state.error, "$text-error")])
        elif state.status == "done" and (following := next_stage(run.stage, state.result)):
            title = Content("\n").join([title, Content.assemble(
                "next: ", Content.styled(following[1], "bold"), " — press n to open it with what this run made")])
        self.query_one("#run-title", Static).update(title)
        bar = self.query_one("#run-bar", ProgressBar)
        bar.display = state.step is not None  # a run that reports no progress gets no bar at all
        if state.total:
            bar.update(total=state.total, progress=state.step or 0)
        elif state.status == "done" and state.step is not None:
            # Counted without a total (or its last phase was empty): finished is full all the same.
            bar.update(total=max(state.step, 1), progress=max(state.step, 1))
        self.query_one("#run-progress-text", Static).update(state.progress_text())
        self.query_one("#run-metrics", Static).update(state.metrics_text() or "no metrics yet")
        curves = state.curves()
        # A chart only where there is a curve: one point (a data or tokenizer run) is a number.
        self.set_class(not any(len(points) > 1 for points in curves.values()), "-no-curve")
        if any(e.get("type") == "metric" for e in events):
            from workbench.tui.widgets.plots import CurvePlot

            self.query_one(CurvePlot).show(curves)
        tables = (state.result or {}).get("tables") if state.status == "done" else None
        if tables and not self.has_class("-tables"):
            # What the CLI prints when the run ends (a dataset card, an export's verification).
            self.query_one("#run-tables-body", Static).update(result_tables(tables))
            self.add_class("-tables")
        self.query_one(Log).write_lines(state.new_logs(self._logged))
        self._logged = state.log_count
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        status = self.state.status
        if action == "cancel":
            return status in ACTIVE
        if action == "resume":
            # Without a checkpoint a resume starts over and meets the same error: start anew instead.
            saved = self.state.checkpoint or (self.run is not None and self.run.checkpoint)
            return status in ("cancelled", "failed") and self.supports_resume and bool(saved)
        if action == "next":
            return status == "done" and self.run is not None and next_stage(self.run.stage, self.state.result) is not None
        return True

    def action_cancel(self) -> None:
        self.confirm_cancel(self.run or self.run_id)

    def action_resume(self) -> None:
        self.resume_run(self.run_id)

    def action_next(self) -> None:
        following = next_stage(self.run.stage, self.state.result) if self.run else None
        if following is None:
            return
        made = str(self.state.artifacts[-1].get("id")) if self.state.artifacts else None
        if following[0] == "chat":
            self.app.open_chat(made)
        else:
            self.app.open_stage(following[0], made)

    def action_back(self) -> None:
        self.dismiss()
