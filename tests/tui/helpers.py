"""Helpers for driving the TUI with Textual's Pilot: the screen as text, waiting for a
condition, and a workspace filled with fixed artifacts and runs."""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from textual.app import App
from textual.pilot import Pilot

from workbench import locations
from workbench.store import Artifact, Store

HERE = Path(__file__).resolve().parent
FAKE_CHAT = [sys.executable, str(HERE / "fake_chat.py")]
SIZE = (80, 24)
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC: fixed times make snapshots repeatable


def screen_text(app: App[Any]) -> str:
    """What the terminal shows, as plain text (the SVG screenshot's content without styles)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens, simplify=True))
    return "\n".join(line.rstrip() for line in console.export_text(styles=False).splitlines())


async def wait_for(pilot: Pilot[Any], condition: Callable[[], object], timeout: float = 20.0,
                   what: str = "") -> None:
    """Let the app work until `condition()` holds; fail with the screen when it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause(0.05)
        if condition():
            await pilot.pause()
            return
    pytest.fail(f"timed out waiting for {what or condition}; the screen shows:\n{screen_text(pilot.app)}")


async def settled_text(pilot: Pilot[Any], timeout: float = 10.0) -> str:
    """The screen once it stops changing (footers and plots redraw a moment after data)."""
    deadline = time.monotonic() + timeout
    before = screen_text(pilot.app)
    while time.monotonic() < deadline:
        await pilot.pause(0.25)
        now = screen_text(pilot.app)
        if now == before:
            return now
        before = now
    return before


def shows(app: App[Any], *texts: str) -> bool:
    screen = screen_text(app)
    return all(t in screen for t in texts)


def notified(app: App[Any], *texts: str) -> bool:
    """Whether one notification holds all `texts` (run_test draws no toasts, so read them)."""
    return any(all(t in f"{n.title or ''}: {n.message}" for t in texts) for n in app._notifications)


def add_artifact(store: Store, art_id: str, kind: str, name: str, *, parents: tuple[str, ...] = (),
                 t: float = 0.0, metrics: dict[str, float] | None = None,
                 metadata: dict[str, Any] | None = None, run_id: str | None = None) -> Artifact:
    """An artifact with real files in the workspace, indexed under a fixed id."""
    path = locations.kind_dir(kind) / art_id
    path.mkdir(parents=True)
    (path / "card.json").write_text(json.dumps({"name": name}))
    art = Artifact(id=art_id, kind=kind, name=name, path=path, run_id=run_id, created_at=T0 + t,
                   size_bytes=2048, metadata=metadata or {}, metrics=metrics or {}, parents=list(parents))
    store.add_artifact(art)
    return art


def add_finished_run(store: Store, run_id: str, stage: str, status: str, events: list[dict[str, Any]],
                     options: dict[str, Any] | None = None, t: float = 0.0) -> None:
    """A run row and its events file, as a worker would have left them."""
    run_dir = locations.run_dir(run_id)
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    store.add_run(run_id, stage, "workbench-counter", "1.2.0", options or {}, run_dir)
    store.update_run(run_id, status=status, started_at=T0 + t, ended_at=T0 + t + 12, attempts=1,
                     created_at=T0 + t)


def lineage_workspace() -> Store:
    """base → LoRA → DPO → GGUF Q4_K_M, a dataset, and an evaluation comparing three models."""
    store = Store()
    add_finished_run(store, "run-260101-00data", "data.prepare", "done", [], t=1)
    add_finished_run(store, "run-260101-00lora", "finetune.lora", "done", [], t=3)
    add_artifact(store, "dataset-260101-aaaaaa", "dataset", "alpaca-mini", t=1, run_id="run-260101-00data",
                 metadata={"type": "instruction"})
    add_artifact(store, "model-260101-bbbbbb", "model", "tiny-base", t=2, metrics={"val_loss": 3.41})
    add_artifact(store, "adapter-260101-cccccc", "adapter", "tiny-lora", t=3, run_id="run-260101-00lora",
                 parents=("model-260101-bbbbbb", "dataset-260101-aaaaaa"), metrics={"val_loss": 2.12})
    add_artifact(store, "model-260101-dddddd", "model", "tiny-dpo", t=4,
                 parents=("adapter-260101-cccccc",), metrics={"reward_margin": 0.61})
    add_artifact(store, "gguf-260101-eeeeee", "gguf", "tiny-dpo-q4_k_m", t=5,
                 parents=("model-260101-dddddd",), metadata={"quantization": "Q4_K_M"})
    comparison = {
        "models": ["model-260101-bbbbbb", "adapter-260101-cccccc", "model-260101-dddddd"],
        "metrics": {
            "val_loss": {"model-260101-bbbbbb": 3.41, "adapter-260101-cccccc": 2.12, "model-260101-dddddd": 2.05},
            "accuracy": {"model-260101-bbbbbb": 0.25, "adapter-260101-cccccc": 0.5, "model-260101-dddddd": 0.75},
        },
    }
    add_artifact(store, "eval-report-260101-ffffff", "eval-report", "three-way", t=6,
                 parents=tuple(comparison["models"]), metadata={"comparison": comparison})
    return store
