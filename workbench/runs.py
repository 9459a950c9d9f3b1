"""Start, follow, cancel and resume runs. Each run is a directory and a worker process.

`runs/<id>/` holds `run.json` (stage, plugin, version, resolved options), `events.jsonl`,
`stderr.log`, `worker.lock` and `checkpoints/`. The worker holds an exclusive lock on
`worker.lock` while it lives, so a dead worker (even after kill -9, even if its pid was reused)
is detected by taking the lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from workbench import locations
from workbench.errors import UserError
from workbench.events import TERMINAL, follow, read_events
from workbench.options import fields, parse_options, to_dict
from workbench.stages import STAGE_GROUP, discover, get_stage
from workbench.store import Run, Store, new_id

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

ACTIVE = ("queued", "running")


def resolve_options(stage_name: str, values: Mapping[str, Any], store: Store) -> tuple[type, Any]:
    """Validate options and replace artifact references by their ids. Writes nothing."""
    stage_cls = get_stage(stage_name)
    options = parse_options(stage_cls.Options, values, stage=stage_name)
    for f in fields(stage_cls.Options):
        ref = getattr(options, f.name)
        if f.artifact and ref:
            if isinstance(ref, list):
                setattr(options, f.name, [store.find_artifact(r, f.artifact).id for r in ref])
            else:
                setattr(options, f.name, store.find_artifact(ref, f.artifact).id)
    from workbench.context import Context

    stage_cls().validate(options, Context(store))
    return stage_cls, options


def create_run(stage_name: str, values: Mapping[str, Any], store: Store) -> Run:
    """Validate everything first; only then write the run directory and the database row."""
    _, options = resolve_options(stage_name, values, store)
    info = next(i for i in discover(STAGE_GROUP) if i.name == stage_name)
    run_id = new_id("run")
    run_dir = locations.run_dir(run_id)
    run_dir.mkdir(parents=True)
    spec: dict[str, Any] = {
        "id": run_id, "stage": stage_name, "plugin": info.package, "plugin_version": info.version,
        "entry_point": info.value, "options": to_dict(options), "created_at": time.time(),
    }
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(spec, indent=2))
    os.replace(tmp, run_dir / "run.json")
    store.add_run(run_id, stage_name, info.package, info.version, spec["options"], run_dir)
    return store.get_run(run_id)


def spawn(run: Run, store: Store, *, resume: bool = False) -> subprocess.Popen[bytes]:
    """Start the worker in its own session, so a terminal's Ctrl-C reaches it only through us."""
    cmd = [sys.executable, "-m", "workbench.worker", str(run.run_dir)]
    if resume:
        cmd.append("--resume")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WORKBENCH_HOME": str(locations.home())}
    with open(run.run_dir / "stderr.log", "ab") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env, start_new_session=True
        )
    store.update_run(run.id, pid=proc.pid, status="queued")
    return proc


def start(stage_name: str, values: Mapping[str, Any], store: Store) -> tuple[Run, subprocess.Popen[bytes]]:
    run = create_run(stage_name, values, store)
    proc = spawn(run, store)
    return store.get_run(run.id), proc


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child still answers kill(0); reap it if it is ours
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def lock_held(run_dir: Path) -> bool:
    """Whether a worker holds `run_dir/worker.lock` (False when there is no lock file yet)."""
    lock = run_dir / "worker.lock"
    if not lock.exists():
        return False
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True  # someone holds it: the worker lives
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def is_alive(run: Run) -> bool:
    if fcntl is None:  # Windows: only the pid can tell
        return pid_alive(run.pid)
    if lock_held(run.run_dir):
        return True
    if (run.run_dir / "worker.lock").exists() and run.status == "running":
        return False
    # Not locked yet: the worker may still be starting.
    return pid_alive(run.pid)


def worker_may_write(run: Run) -> bool:
    """Whether a worker of this run may still be writing into the workspace: it holds the lock,
    or the run is queued and its worker may not have taken the lock yet."""
    if fcntl is None:
        return pid_alive(run.pid)
    return lock_held(run.run_dir) or (run.status == "queued" and pid_alive(run.pid))


def refresh(run: Run, store: Store) -> Run:
    """Mark a run whose worker died without a word as failed, with the reason."""
    if run.status not in ACTIVE or is_alive(run):
        return run
    run = store.get_run(run.id)  # the worker may have just finished
    if run.status not in ACTIVE:
        return run
    events = read_events(run.run_dir / "events.jsonl")
    last = events[-1]["type"] if events else "none"
    reason = f"worker process {run.pid} exited without finishing (killed or crashed; last event: {last})"
    tail = _stderr_tail(run)
    if tail:
        reason += f"; stderr: {tail}"
    store.update_run(run.id, status="failed", exit_reason=reason, ended_at=time.time())
    return store.get_run(run.id)


def _stderr_tail(run: Run) -> str:
    path = run.run_dir / "stderr.log"
    if not path.exists():
        return ""
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def get(ref: str, store: Store) -> Run:
    return refresh(store.get_run(ref), store)


def list_runs(store: Store, limit: int = 50) -> list[Run]:
    return [refresh(r, store) for r in store.list_runs(limit=limit)]


def cancel(ref: str, store: Store) -> Run:
    run = get(ref, store)
    if run.status not in ACTIVE:
        raise UserError(f"run {run.id} is {run.status}; only queued or running runs can be cancelled")
    if run.pid:
        try:
            os.kill(run.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    return run


def resume(ref: str, store: Store) -> tuple[Run, subprocess.Popen[bytes]]:
    run = get(ref, store)
    if run.status in ACTIVE:
        raise UserError(f"run {run.id} is still {run.status}; attach to it with `workbench runs attach {run.id}`")
    if run.status == "done":
        raise UserError(f"run {run.id} already finished")
    stage_cls = get_stage(run.stage)
    if not stage_cls.supports_resume:
        raise UserError(f"stage '{run.stage}' cannot resume; start a new run instead")
    proc = spawn(run, store, resume=True)
    return store.get_run(run.id), proc


def follow_run(run: Run, store: Store, proc: subprocess.Popen[bytes] | None = None, offset: int = 0) -> Iterator[dict[str, Any]]:
    """Events of the run's current attempt until it ends; a dead worker ends it as failed."""

    def alive() -> bool:
        if proc is not None and proc.poll() is not None:
            return False
        return is_alive(store.get_run(run.id))

    saw_terminal = False
    for event in follow(run.run_dir / "events.jsonl", alive, offset=offset):
        saw_terminal = event["type"] in TERMINAL
        yield event
    if not saw_terminal:
        final = refresh(store.get_run(run.id), store)
        if final.status == "failed":
            yield {"type": "failed", "time": time.time(), "error": final.exit_reason or "worker died", "user_error": False}
    if proc is not None:
        # Reap the worker we started: it exits right after its last event, and an unreaped child
        # stays a zombie and hides its resource usage from the caller.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)


def events_size(run: Run) -> int:
    """Where the next attempt's events will start in `events.jsonl`."""
    path = run.run_dir / "events.jsonl"
    return path.stat().st_size if path.exists() else 0
