"""`python -m workbench.worker RUN_DIR [--resume]`: run one stage in this process.

The worker loads only the plugin it needs, reports through events and the store, and always
leaves the run in a final state: done, failed (with the reason) or cancelled.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from workbench.context import Context, install_cancel_handler
from workbench.errors import Cancelled, UserError
from workbench.events import EventWriter
from workbench.options import parse_options
from workbench.stages import get_stage
from workbench.store import Store


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    resume = "--resume" in args
    run_dir = Path(next(a for a in args if not a.startswith("--")))
    spec = json.loads((run_dir / "run.json").read_text())
    run_id = spec["id"]

    lock_fh = open(run_dir / "worker.lock", "a")  # noqa: SIM115 - held until the process ends
    try:
        import fcntl

        fcntl.flock(lock_fh, fcntl.LOCK_EX)
    except ImportError:
        pass

    store = Store()
    run = store.get_run(run_id)
    events = EventWriter(run_dir / "events.jsonl")
    resume_from = run.checkpoint if resume else None
    attempt = run.attempts + 1
    import os

    store.update_run(run_id, status="running", pid=os.getpid(), started_at=time.time(),
                     attempts=attempt, ended_at=None, exit_reason=None)
    ctx = Context(store, run_id=run_id, run_dir=run_dir, events=events,
                  resume_from=resume_from, attempt=attempt)
    events.emit("started", attempt=attempt, pid=os.getpid(), resume_from=resume_from)
    if resume and not resume_from:
        ctx.log("no checkpoint was saved before the run stopped; starting from the beginning", "warning")

    status, reason, result = "failed", "", None
    try:
        stage_cls = get_stage(spec["stage"])
        install_cancel_handler(ctx, cooperative=stage_cls.supports_cancel)
        options = parse_options(stage_cls.Options, spec["options"], stage=spec["stage"])
        result = stage_cls().run(options, ctx) or {}
        status = "done"
        events.emit("done", result=result)
    except Cancelled:
        status, reason = "cancelled", "cancelled by the user"
        events.emit("cancelled", checkpoint=store.get_run(run_id).checkpoint)
    except UserError as exc:
        reason = str(exc)
        events.emit("failed", error=reason, user_error=True)
    except BaseException as exc:  # the run must end in a final state whatever happened
        reason = f"{type(exc).__name__}: {exc}".strip()
        traceback.print_exc()
        events.emit("failed", error=reason, user_error=False)
    store.update_run(run_id, status=status, exit_reason=reason or None, ended_at=time.time(),
                     result=result if status == "done" else None)
    events.close()
    store.close()
    return {"done": 0, "cancelled": 130}.get(status, 1)


if __name__ == "__main__":
    sys.exit(main())
