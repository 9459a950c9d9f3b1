"""Helpers for tests of stages: run a stage in this process against a real workspace.

The full path (a worker subprocess) is exercised through the CLI; this one is for fast,
focused tests of a stage's own logic. Set WORKBENCH_HOME first (the tests' fixtures do).
"""

from __future__ import annotations

import fcntl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workbench.context import Context
from workbench.events import EventWriter, read_events
from workbench.runs import create_run
from workbench.store import Store


class InlineRun:
    def __init__(self, run_id: str, run_dir: Path, result: dict[str, Any], store: Store):
        self.id, self.run_dir, self.result, self.store = run_id, run_dir, result, store

    @property
    def events(self) -> list[dict[str, Any]]:
        return read_events(self.run_dir / "events.jsonl")

    def metrics(self, name: str) -> list[float]:
        return [e["values"][name] for e in self.events if e["type"] == "metric" and name in e["values"]]

    def artifacts(self, kind: str | None = None) -> list[Any]:
        ids = [e["id"] for e in self.events if e["type"] == "artifact"]
        arts = [self.store.find_artifact(i) for i in ids]
        return [a for a in arts if kind is None or a.kind == kind]


def run_inline(stage: str, options: Mapping[str, Any], *, resume_from: str | None = None) -> InlineRun:
    """Validate options exactly as the CLI does, then run the stage here and now."""
    from workbench.options import parse_options
    from workbench.stages import get_stage

    store = Store()
    run = create_run(stage, options, store)
    stage_cls = get_stage(stage)
    opts = parse_options(stage_cls.Options, run.options, stage=stage)
    # Held like a worker holds it, so other runs see this one alive and leave its files alone.
    with open(run.run_dir / "worker.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        events = EventWriter(run.run_dir / "events.jsonl")
        ctx = Context(store, run_id=run.id, run_dir=run.run_dir, events=events, resume_from=resume_from)
        store.update_run(run.id, status="running")
        result = stage_cls().run(opts, ctx) or {}
        events.emit("done", result=result)
        store.update_run(run.id, status="done", result=result)
        events.close()
    return InlineRun(run.id, run.run_dir, result, store)
