"""Snapshots of the main screens at 80×24, compared with files under tests/tui/snapshots.

Text snapshots (`.txt`) show layout and content and read well in a diff; the pipeline is also
kept as SVG in both themes, which records colours. The stage catalogue is a fixed set of
stages declared here, so the pictures do not change when a plugin is installed or fixed.
Regenerate after an intended change with `WORKBENCH_UPDATE_SNAPSHOTS=1 pytest tests/tui`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Select

from tests.tui.helpers import (
    FAKE_CHAT,
    SIZE,
    T0,
    add_finished_run,
    lineage_workspace,
    screen_text,
    settled_text,
    wait_for,
)
from workbench import stages
from workbench.options import artifact, option
from workbench.stages import Command, PluginInfo, Stage
from workbench.store import Store
from workbench.tui.app import WorkbenchApp
from workbench.tui.data import LIFECYCLE
from workbench.tui.screens.chat import ChatScreen
from workbench.tui.screens.form import StageFormScreen
from workbench.tui.screens.models import ModelsScreen
from workbench.tui.screens.pipeline import PipelineScreen
from workbench.tui.screens.runs import RunMonitorScreen, RunsScreen

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("WORKBENCH_UPDATE_SNAPSHOTS") == "1"


def assert_snapshot(name: str, actual: str) -> None:
    path = SNAPSHOTS / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"no snapshot {path}; create it with WORKBENCH_UPDATE_SNAPSHOTS=1"
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        seen = Path(tempfile.gettempdir()) / "workbench-snapshots" / name
        seen.parent.mkdir(parents=True, exist_ok=True)
        seen.write_text(actual, encoding="utf-8")
        pytest.fail(f"{name} differs from the snapshot; what the screen showed is in {seen}")


# A fixed catalogue ---------------------------------------------------------------------------


@dataclass
class NoOptions:
    pass


@dataclass
class TrainOptions:
    model: str = artifact(("model", "adapter"), help="Model to start from", positional=True)
    dataset: str = artifact("dataset", help="Instruction dataset")
    steps: int = option(200, help="Optimizer steps", min=1)
    lr: float = option(0.0003, help="Peak learning rate", min=0)
    device: str = option("auto", help="Where to train", choices=["auto", "cpu", "cuda", "mps"])
    compile: bool = option(False, help="Compile the model first")
    tags: list[str] = option(["demo"], help="Labels kept with the run", advanced=True)


SUMMARIES = {
    "download": "Fetch a model from the Hugging Face Hub",
    "data.prepare": "Normalise a dataset into train and validation splits",
    "tokenizer.train": "Train a byte-level BPE tokenizer",
    "pretrain": "Pretrain a model from scratch",
    "finetune.lora": "Finetune with LoRA adapters",
    "finetune.classify": "Train a classification head",
    "dpo": "Align with direct preference optimisation",
    "eval": "Evaluate and compare models",
    "export": "Export to GGUF and quantize",
    "sampler": "Sample text from a model (a third-party plugin)",
}


def fixed_catalog(group: str = stages.STAGE_GROUP) -> list[PluginInfo]:
    if group == stages.COMMAND_GROUP:
        chat = Command("chat", "Chat with a model", configure=lambda p: None, main=lambda a: 0)
        return [PluginInfo("chat", "fixed:chat", group, "workbench", "0.1.0", "ok", obj=chat)]
    infos = []
    for name, summary in SUMMARIES.items():
        options = TrainOptions if name in ("finetune.lora", "dpo") else NoOptions
        cls = type(f"Fixed{name.title().replace('.', '')}", (Stage,), {
            "name": name, "summary": summary, "Options": options, "supports_resume": name != "eval",
            "consumes": ("model", "dataset") if options is TrainOptions else (), "produces": ("model",)})
        package = "workbench-sampler" if name == "sampler" else "workbench"
        infos.append(PluginInfo(name, f"fixed:{name}", group, package, "1.0.0", "ok", obj=cls))
    return infos


@pytest.fixture
def fixed(monkeypatch: pytest.MonkeyPatch, utc: None) -> None:
    monkeypatch.setattr(stages, "discover", fixed_catalog)
    lineage_workspace()


def still_app(**kwargs: Any) -> WorkbenchApp:
    """An app whose tab underlines and scrolls are not caught mid-animation."""
    app = WorkbenchApp(**kwargs)
    app.animation_level = "none"
    return app


async def ready_pipeline(pilot: Any, model_id: str = "model-260101-dddddd") -> PipelineScreen:
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, PipelineScreen) and app.screen.models, what="models")
    screen: PipelineScreen = app.screen
    screen.query_one("#model", Select).value = model_id
    await wait_for(pilot, lambda: screen.states.get("finetune.lora") is not None
                   and screen.states["finetune.lora"].state == "done", what="the states")
    return screen


# Snapshots -----------------------------------------------------------------------------------


async def test_pipeline_snapshot(fixed: None) -> None:
    app = still_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready_pipeline(pilot)
        lines = screen_text(app).splitlines()
        assert [line.split()[0] for line in lines[5:5 + len(LIFECYCLE)]] == [label.split()[0] for _, label in LIFECYCLE]
        assert_snapshot("pipeline.txt", await settled_text(pilot))
        assert_snapshot("pipeline-dark.svg", app.export_screenshot(title="workbench"))
        await pilot.press("ctrl+t")
        await settled_text(pilot)
        assert_snapshot("pipeline-light.svg", app.export_screenshot(title="workbench"))


async def test_stage_form_snapshot(fixed: None) -> None:
    app = still_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready_pipeline(pilot)
        table = screen.query_one("#stages")
        table.move_cursor(row=table.get_row_index("finetune.lora"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, StageFormScreen), what="the form")
        assert_snapshot("form.txt", await settled_text(pilot))


async def test_runs_and_monitor_snapshots(fixed: None) -> None:
    store = Store()
    events: list[dict[str, Any]] = [{"type": "started", "time": T0, "attempt": 1, "pid": 1}]
    for step in range(1, 41):
        values = {"loss": 4.0 * 0.96 ** step, "lr": 3e-4}
        if step % 10 == 0:
            values["val_loss"] = 4.2 * 0.965 ** step
        events.append({"type": "metric", "time": T0 + step, "step": step, "values": values})
    events += [
        {"type": "progress", "time": T0 + 40, "step": 40, "total": 40, "unit": "step", "rate": 3.3,
         "eta_s": 0.0, "elapsed_s": 12.1},
        {"type": "checkpoint", "time": T0 + 40, "step": 40, "path": "/ckpt/step-40"},
        {"type": "artifact", "time": T0 + 41, "id": "model-260101-dddddd", "kind": "model", "name": "tiny-dpo"},
        {"type": "done", "time": T0 + 41, "result": {}},
    ]
    add_finished_run(store, "run-260101-0train", "dpo", "done", events, t=10)
    add_finished_run(store, "run-260101-0cncld", "counter", "cancelled", [], t=20)
    app = still_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and len(app.screen.runs) == 4,
                       what="the runs")
        assert_snapshot("runs.txt", await settled_text(pilot))
        app.open_run("run-260101-0train")
        await wait_for(pilot, lambda: isinstance(app.screen, RunMonitorScreen) and app.screen.state.status == "done",
                       what="the monitor")
        assert_snapshot("monitor.txt", await settled_text(pilot))


async def test_models_snapshots(fixed: None) -> None:
    app = still_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen) and app.screen.selected is not None,
                       what="the tree")
        screen: ModelsScreen = app.screen  # type: ignore[assignment]
        tree = screen.query_one("#lineage")
        tree.cursor_line = next(n for n in range(tree.last_line + 1)
                                if tree.get_node_at_line(n).data == "adapter-260101-cccccc")
        assert_snapshot("models.txt", await settled_text(pilot))
        await pilot.press("v")
        assert_snapshot("models-comparison.txt", await settled_text(pilot))


async def test_chat_snapshot(fixed: None) -> None:
    app = still_app(chat_command=FAKE_CHAT)
    async with app.run_test(size=SIZE) as pilot:
        app.open_chat("gguf-260101-eeeeee")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.ready, what="the chat")
        screen: ChatScreen = app.screen  # type: ignore[assignment]
        await pilot.press(*"what is a tokenizer?", "enter")
        await wait_for(pilot, lambda: screen.reply is None and "turn 1" in screen_text(app), what="the reply")
        assert_snapshot("chat.txt", await settled_text(pilot))
