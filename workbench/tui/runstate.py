"""A run as the monitor shows it, folded from its events (see `workbench.events`).

Replaying `events.jsonl` from the start rebuilds the same state a face saw live, which is how
a run started before the TUI opened reappears with its whole curve.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from workbench.tui.data import fmt_duration, fmt_num

#: Metrics drawn as curves when a run reports them; otherwise its first few metrics are.
CURVES = ("loss", "val_loss")
LOG_LINES = 500


@dataclass
class RunState:
    status: str = "queued"
    attempt: int = 0
    step: int | None = None
    total: int | None = None
    unit: str = "step"
    desc: str | None = None
    rate: float | None = None
    eta_s: float | None = None
    elapsed_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    logs: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    #: Lines logged so far, including those the bounded `logs` has let go.
    log_count: int = 0
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        stamp = time.strftime("%H:%M:%S", time.localtime(event.get("time", 0)))
        if kind == "started":
            self.status, self.attempt, self.error = "running", int(event.get("attempt") or 1), None
            # A resumed attempt measures its own rate; the old ETA means nothing any more.
            self.rate = self.eta_s = None
            how = f", resuming from {event['resume_from']}" if event.get("resume_from") else ""
            self._log(f"{stamp} started (attempt {self.attempt}){how}")
        elif kind == "progress":
            self.step, self.total = event.get("step"), event.get("total")
            self.unit, self.desc = event.get("unit") or "step", event.get("desc")
            self.rate, self.eta_s = event.get("rate"), event.get("eta_s")
            self.elapsed_s = event.get("elapsed_s")
        elif kind == "metric":
            values = event.get("values") or {}
            step = event.get("step")
            for name, value in values.items():
                points = self.series.setdefault(name, [])
                x = float(step) if step is not None else float(len(points))
                # A resumed run repeats steps after its checkpoint: keep the newest value per step.
                while points and points[-1][0] >= x:
                    points.pop()
                points.append((x, float(value)))
            self.metrics.update(values)
        elif kind == "log":
            level = event.get("level", "info")
            mark = "" if level == "info" else f"[{level}] "
            self._log(f"{stamp} {mark}{event.get('message', '')}")
        elif kind == "checkpoint":
            self.checkpoint = event.get("path")
            self._log(f"{stamp} checkpoint at step {event.get('step')}")
        elif kind == "artifact":
            self.artifacts.append(event)
            self._log(f"{stamp} artifact {event.get('id')} ({event.get('kind')}) {event.get('name')}")
        elif kind == "done":
            self.status, self.result, self.eta_s = "done", event.get("result"), None
            if self.total is not None:
                self.step = self.total
            self._log(f"{stamp} done")
        elif kind == "failed":
            self.status, self.error, self.eta_s = "failed", event.get("error"), None
            self._log(f"{stamp} failed: {self.error}")
        elif kind == "cancelled":
            self.status, self.eta_s = "cancelled", None
            self._log(f"{stamp} cancelled")

    def _log(self, line: str) -> None:
        self.logs.append(line)
        self.log_count += 1

    def new_logs(self, seen: int) -> list[str]:
        """Lines logged after the first `seen` ones (as many as are still kept)."""
        fresh = self.log_count - seen
        return list(self.logs)[-fresh:] if fresh > 0 else []

    def extend(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.apply(event)

    @property
    def fraction(self) -> float | None:
        if self.step is None or not self.total:
            return None
        return min(1.0, self.step / self.total)

    def progress_text(self) -> str:
        """`12/200 step · 3.1 step/s · ETA 1m02s · 0m04s elapsed`."""
        if self.step is None:
            return "waiting for the first step…" if self.status in ("queued", "running") else ""
        parts = [f"{self.step:,}/{self.total:,} {self.unit}" if self.total else f"{self.step:,} {self.unit}"]
        if self.rate:
            parts.append(f"{fmt_num(self.rate)} {self.unit}/s")
        if self.eta_s is not None and self.status == "running":
            parts.append(f"ETA {fmt_duration(self.eta_s)}")
        if self.elapsed_s is not None:
            parts.append(f"{fmt_duration(self.elapsed_s)} elapsed")
        return " · ".join(parts)

    def metrics_text(self) -> str:
        return "  ".join(f"{k} {fmt_num(v)}" for k, v in self.metrics.items())

    def curves(self, limit: int = 3) -> dict[str, list[tuple[float, float]]]:
        """loss and val_loss when the run reports them; otherwise its first metrics."""
        chosen = [n for n in CURVES if n in self.series] or list(self.series)[:limit]
        return {n: self.series[n] for n in chosen}
