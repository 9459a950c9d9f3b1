"""What a stage gets to talk to the world: `ctx`.

A stage reports only through its context: progress, metrics, logs, checkpoints and artifacts.
Artifacts are built in a staging directory inside the workspace and renamed into place when
registered, so a killed run never leaves a half-written artifact where one is expected.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from workbench import locations, scratch
from workbench.errors import Cancelled, UserError
from workbench.events import EventWriter
from workbench.store import Artifact, Store, new_id


def dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Context:
    def __init__(
        self,
        store: Store,
        *,
        run_id: str | None = None,
        run_dir: Path | None = None,
        events: EventWriter | None = None,
        resume_from: str | None = None,
        attempt: int = 1,
    ):
        self.store = store
        self.run_id = run_id
        self.run_dir = run_dir
        self.events = events
        #: Path of the last checkpoint this run recorded, when the run is being resumed.
        self.resume_from = resume_from
        self.attempt = attempt
        self.cancel_requested = False
        self._cancel_logged = False
        self._progress_t0: float | None = None
        self._progress_s0 = 0
        self._last_progress = 0.0
        self._rate: float | None = None
        self.last_metrics: dict[str, Any] = {}

    # reporting ----------------------------------------------------------------------------

    def emit(self, type: str, **fields: Any) -> None:
        if self.events is None:
            return
        if self.cancel_requested and not self._cancel_logged:
            # Said here, not in the signal handler: the signal may arrive while this very file
            # is being flushed, and a second write into it from the handler fails the run.
            self._cancel_logged = True
            self.events.emit("log", level="warning", message="cancel requested; stopping at the next safe point")
        self.events.emit(type, **fields)

    def progress(self, step: int, total: int | None = None, *, unit: str = "step", desc: str | None = None) -> None:
        """Report position; ETA comes from the rate since this attempt started. Throttled to 5/s."""
        now = time.monotonic()
        if self._progress_t0 is None or step < self._progress_s0:
            self._progress_t0, self._progress_s0 = now, step
        elapsed = now - self._progress_t0
        done = step - self._progress_s0
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        final = total is not None and step >= total
        if not final and now - self._last_progress < 0.2:
            return
        self._last_progress = now
        eta = (total - step) / rate if rate and total is not None else None
        self.emit(
            "progress", step=step, total=total, unit=unit, desc=desc,
            rate=round(rate, 4) if rate else None,
            eta_s=round(eta, 1) if eta is not None else None, elapsed_s=round(elapsed, 2),
        )

    def metric(self, step: int | None = None, **values: float) -> None:
        clean = {k: float(v) for k, v in values.items() if v is not None}
        self.last_metrics.update(clean)
        self.emit("metric", step=step, values=clean)

    def log(self, message: str, level: str = "info") -> None:
        self.emit("log", level=level, message=message)

    # cancel and checkpoints -----------------------------------------------------------------

    def check_cancelled(self) -> None:
        if self.cancel_requested:
            raise Cancelled()

    @property
    def checkpoints_dir(self) -> Path:
        base = self.run_dir if self.run_dir is not None else locations.cache_dir() / "inline"
        path = base / "checkpoints"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def checkpoint(self, path: Path, step: int) -> None:
        """Record a checkpoint the stage has finished writing (write it atomically first)."""
        self.emit("checkpoint", step=step, path=str(path))
        if self.run_id:
            self.store.update_run(self.run_id, checkpoint=str(path))

    # artifacts ------------------------------------------------------------------------------

    def artifact(self, ref: str, kinds: str | tuple[str, ...] | None = None) -> Artifact:
        if isinstance(kinds, str):
            kinds = (kinds,)
        return self.store.find_artifact(ref, kinds)

    def staging_dir(self, kind: str) -> Path:
        """A fresh directory inside the workspace to build an artifact in before `register`.

        Its name carries the run's id, so a killed run's leftovers are told from a live run's
        work and removed (see scratch.py).
        """
        base = locations.kind_dir(kind)
        base.mkdir(parents=True, exist_ok=True)
        path = base / f".staging-{self.run_id or scratch.owner()}-{new_id(kind)}"
        path.mkdir()
        return path

    def register(
        self,
        kind: str,
        staged: Path,
        *,
        name: str,
        parents: list[str] | tuple[str, ...] = (),
        metadata: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        filename: str | None = None,
    ) -> Artifact:
        """Move a completely written file or directory into place and index it.

        `filename` keeps a single-file artifact's name (`model-q4_k_m.gguf`) inside its own
        directory. The rename is atomic on one filesystem; the database row is added after it.
        """
        if not staged.exists():
            raise FileNotFoundError(staged)
        art_id = new_id(kind)
        base = locations.kind_dir(kind)
        base.mkdir(parents=True, exist_ok=True)
        final = base / art_id
        if staged.is_file():
            final.mkdir()
            target = final / (filename or staged.name)
            os.replace(staged, target)
        else:
            os.replace(staged, final)
            target = final
        art = Artifact(
            id=art_id, kind=kind, name=name, path=target, run_id=self.run_id,
            created_at=time.time(), size_bytes=dir_size(target),
            metadata=metadata or {}, metrics=metrics or {}, parents=list(parents),
        )
        try:
            self.store.add_artifact(art)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        self.emit("artifact", id=art.id, kind=kind, name=name, path=str(target))
        return art


def install_cancel_handler(ctx: Context, cooperative: bool) -> None:
    """SIGINT/SIGTERM ask the stage to stop; a second signal, or a stage that cannot stop
    cleanly, interrupts at once."""

    def handler(signum: int, frame: Any) -> None:
        if ctx.cancel_requested or not cooperative:
            raise Cancelled()
        ctx.cancel_requested = True  # the next event written says so (see Context.emit)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def require_kind(art: Artifact, *kinds: str) -> None:
    if art.kind not in kinds:
        raise UserError(f"{art.id} is a {art.kind}, but this needs a {' or '.join(kinds)}")
