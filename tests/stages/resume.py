"""Exact resume, checked the same way for every training stage: a run resumed from a checkpoint
another run wrote part-way takes the same steps as that uninterrupted run and ends at its loss."""

from __future__ import annotations

from typing import Any

import pytest

from workbench.testing import InlineRun, run_inline


def step_values(run: InlineRun, name: str) -> dict[int, float]:
    return {e["step"]: e["values"][name] for e in run.events if e["type"] == "metric" and name in e["values"]}


def assert_resumes_exactly(stage: str, options: dict[str, Any], *, loss: str = "loss",
                           final: str | None = "val_loss") -> tuple[InlineRun, InlineRun]:
    """Run `options` through, resume a second run from the first one's earliest kept checkpoint,
    and compare every step after it (and the last evaluation) with the uninterrupted run."""
    whole = run_inline(stage, options)
    checkpoints = [e for e in whole.events if e["type"] == "checkpoint"]
    assert checkpoints, "the uninterrupted run wrote no checkpoint"
    kept = [e for e in checkpoints if (whole.run_dir / "checkpoints" / e["path"].rsplit("/", 1)[-1]).exists()]
    start = kept[0]
    resumed = run_inline(stage, options, resume_from=start["path"])
    assert any(e["type"] == "log" and f"resumed at step {start['step']}" in e["message"] for e in resumed.events)

    whole_steps, resumed_steps = step_values(whole, loss), step_values(resumed, loss)
    assert sorted(resumed_steps) == [s for s in sorted(whole_steps) if s > start["step"]]
    for step, value in resumed_steps.items():
        assert value == pytest.approx(whole_steps[step], abs=1e-5), step
    if final is not None:
        last = max(whole_steps)
        assert step_values(resumed, final)[last] == pytest.approx(step_values(whole, final)[last], abs=1e-5)
    return whole, resumed
