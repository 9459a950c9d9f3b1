"""`python -m workbench.worker RUN_DIR [--resume]`: run one stage in this process.

The worker loads only the plugin it needs, reports through events and the store, and always
leaves the run in a final state: done, failed (with the reason) or cancelled. A full disk is
no exception: the run's partial files are removed, a reserve kept for the purpose is given
back, and only then is the final state written, so it has room to be recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench import locations, scratch
from workbench.context import Context, install_cancel_handler
from workbench.errors import Cancelled, UserError, disk_full, is_database_error
from workbench.events import EventWriter
from workbench.options import parse_options
from workbench.stages import get_stage
from workbench.store import Store

#: Held on disk while the stage runs and freed before the final state is written: enough for an
#: event line and SQLite's write-ahead log frames even when the stage filled the disk to the byte.
RESERVE_BYTES = 1 << 20


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
    os.environ[scratch.RUN_ENV] = run_id  # temporary names made by this run carry its id

    store = Store()
    run = store.get_run(run_id)
    events = EventWriter(run_dir / "events.jsonl")
    resume_from = run.checkpoint if resume else None
    attempt = run.attempts + 1
    ctx = Context(store, run_id=run_id, run_dir=run_dir, events=events,
                  resume_from=resume_from, attempt=attempt)
    tidied = _remove_leftovers(store, run_id)
    reserve = _Reserve(run_dir / "disk-reserve.tmp")  # before the run counts as running

    status, reason, result, user_error = "failed", "", None, False
    full: BaseException | None = None
    try:
        store.update_run(run_id, status="running", pid=os.getpid(), started_at=time.time(),
                         attempts=attempt, ended_at=None, exit_reason=None)
        events.emit("started", attempt=attempt, pid=os.getpid(), resume_from=resume_from)
        if resume and not resume_from:
            ctx.log("no checkpoint was saved before the run stopped; starting from the beginning", "warning")
        if tidied:
            ctx.log(*tidied)
        stage_cls = get_stage(spec["stage"])
        install_cancel_handler(ctx, cooperative=stage_cls.supports_cancel)
        options = parse_options(stage_cls.Options, spec["options"], stage=spec["stage"])
        result = stage_cls().run(options, ctx) or {}
        status = "done"
    except Cancelled:
        status, reason = "cancelled", "cancelled by the user"
    except UserError as exc:
        reason, user_error = str(exc), True
    except BaseException as exc:  # the run must end in a final state whatever happened
        full = disk_full(exc)
        if full is None:
            reason = f"{type(exc).__name__}: {exc}".strip()
            traceback.print_exc()

    # This run's own temporary files go first: after a full disk they are what frees room.
    try:
        scratch.clean(store, owners=[run_id])
    except Exception:
        traceback.print_exc()
    reserve.release()
    if full is not None:  # said after the tidying, so the room it reports is the room there is
        reason, user_error = _disk_full_reason(full), True
    if status == "done":
        _record(lambda: events.emit("done", result=result))
    elif status == "cancelled":
        _record(lambda: events.emit("cancelled", checkpoint=store.get_run(run_id).checkpoint))
    else:
        _record(lambda: events.emit("failed", error=reason, user_error=user_error))
    recorded = _record(lambda: store.update_run(
        run_id, status=status, exit_reason=reason or None, ended_at=time.time(),
        result=result if status == "done" else None))
    events.close()
    store.close()
    if not recorded:
        print(f"the final state ({status}: {reason}) could not be recorded", file=sys.stderr)
    return {"done": 0, "cancelled": 130}.get(status, 1)


def _remove_leftovers(store: Store, run_id: str) -> tuple[str, str] | None:
    """Remove temporary files of runs that were killed or crashed (their workers hold no lock),
    and this run's own from an attempt that was killed (this worker has made none yet).
    Returns the log line (message, level) that says so, if there is anything to say."""
    from workbench.hardware import fmt_bytes

    try:
        found, freed = scratch.clean(store)
        own, own_freed = scratch.clean(store, owners=[run_id])
        found, freed = found + own, freed + own_freed
    except Exception as exc:  # tidying up never stops a run
        return f"could not remove leftovers of stopped runs: {exc}", "warning"
    if not found:
        return None
    home = locations.home()
    names = ", ".join(str(f.path.relative_to(home)) for f in found[:3]) + (" …" if len(found) > 3 else "")
    return f"removed {len(found)} leftover(s) of stopped runs ({names}), freed {fmt_bytes(freed)}", "info"


def _disk_full_reason(exc: BaseException) -> str:
    """What was being written, and how much room is left on that disk."""
    home = locations.home()
    filename = getattr(exc, "filename", None)
    if filename:
        what = Path(filename)
    elif is_database_error(exc):
        what = locations.db_path()
    else:
        what = None
    if what == locations.db_path():
        shown: Path | str | None = f"the workspace database {what}"
    else:
        shown = what if what is None or home not in what.parents else what.relative_to(home)
    from workbench.hardware import fmt_bytes

    try:
        usage = shutil.disk_usage(what.parent if what is not None else home)
        room = f" ({fmt_bytes(usage.free)} of {fmt_bytes(usage.total)} free after removing the run's partial files)"
    except OSError:
        room = ""
    where = f"while writing {shown}" if shown is not None else f"in the workspace {home}"
    return f"disk full {where}{room}; free some space and run it again"


def _record(write: Callable[[], Any]) -> bool:
    """A final-state write; on a full disk, retried once after a moment (others may free room)."""
    for attempt in range(2):
        try:
            write()
            return True
        except Exception as exc:
            if disk_full(exc) is None or attempt:
                traceback.print_exc()
                return False
            time.sleep(0.5)
    return False


class _Reserve:
    """A file of RESERVE_BYTES real blocks, removed to make room for the final state."""

    def __init__(self, path: Path):
        self.path = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except (OSError, AttributeError):  # no room even for this, or no fallocate (macOS)
            pass

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
