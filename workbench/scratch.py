"""Temporary paths inside the workspace, and removing the ones that stopped runs left behind.

A run builds its outputs under temporary names (artifact staging directories, token-cache
entries being written, checkpoints being saved) and renames them into place when complete. A
worker killed with SIGKILL, or stopped by a full disk, cannot tidy up, so every temporary name
carries its owner: the id of the run whose worker made it, or `pid<N>` for work done outside a
run. A path whose owner is no longer alive is a leftover; the next run's worker removes those
when it starts, and so does `workbench doctor --clean`. A live run's paths are never touched: a
worker holds the lock on `runs/<id>/worker.lock` for as long as it lives (see runs.py).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from workbench import locations
from workbench.store import Store

#: Set by the worker to its run's id, so code without a `ctx` (the token cache) can tag its names.
RUN_ENV = "WORKBENCH_RUN_ID"

_OWNER = r"(?P<owner>run-\d{6}-[0-9a-f]{6}|pid\d+)"
_STAGING = re.compile(rf"\.staging-{_OWNER}-")
_TOKENS_TMP = re.compile(rf"\.tmp-[0-9a-f]+-{_OWNER}-")
#: Token-cache builds named before owners were: `.tmp-<key>-<pid>-<thread>`.
_TOKENS_TMP_PID = re.compile(r"\.tmp-[0-9a-f]{32}-(?P<pid>\d+)-\d+$")


def owner() -> str:
    """The tag this process puts into temporary names."""
    return os.environ.get(RUN_ENV) or f"pid{os.getpid()}"


@dataclass(frozen=True)
class Leftover:
    path: Path
    owner: str
    size_bytes: int


def _temporary_paths() -> Iterator[tuple[Path, str]]:
    """(path, owner) of every temporary path in the workspace, alive or not."""
    home = locations.home()
    for kind_dir in sorted({locations.kind_dir(k) for k in locations.KIND_DIRS} | {home / "artifacts"}):
        for path in _listdir(kind_dir):
            if m := _STAGING.match(path.name):
                yield path, m["owner"]
    for path in _listdir(locations.cache_dir() / "tokens"):
        if m := _TOKENS_TMP.match(path.name):
            yield path, m["owner"]
        elif m := _TOKENS_TMP_PID.match(path.name):
            yield path, f"pid{m['pid']}"
    for run_dir in _listdir(locations.runs_dir()):
        # Checkpoints are written as `<name>.tmp` and renamed, and the worker keeps its disk
        # reserve in `disk-reserve.tmp`: the run directory names the owner. (`run.json.tmp` is
        # not one of these: it is written before the run has a row to check.)
        for path in [*_listdir(run_dir / "checkpoints"), run_dir / "disk-reserve.tmp"]:
            if path.name.endswith(".tmp") and path.is_file():
                yield path, run_dir.name


def _listdir(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _owner_alive(tag: str, store: Store) -> bool:
    from workbench import runs
    from workbench.errors import UserError

    if tag.startswith("pid"):
        return runs.pid_alive(int(tag[3:]))
    try:
        run = store.get_run(tag)
    except UserError:
        run = None
    if run is None or run.id != tag:  # a run directory without its row: only its lock can tell
        return runs.lock_held(locations.run_dir(tag))
    return runs.worker_may_write(run)


def leftovers(store: Store, *, owners: Iterable[str] | None = None) -> list[Leftover]:
    """Temporary paths whose owner is no longer alive; with `owners`, those owners' paths only
    (a worker tidying up after its own stage, which has stopped writing)."""
    from workbench.context import dir_size

    chosen = set(owners) if owners is not None else None
    alive: dict[str, bool] = {}
    found = []
    for path, tag in _temporary_paths():
        if chosen is not None:
            if tag not in chosen:
                continue
        elif alive.setdefault(tag, _owner_alive(tag, store)):
            continue
        try:
            size = dir_size(path)
        except OSError:
            size = 0
        found.append(Leftover(path, tag, size))
    return found


def remove(found: Iterable[Leftover]) -> int:
    """Remove leftovers; the bytes freed."""
    freed = 0
    for item in found:
        if item.path.is_dir() and not item.path.is_symlink():
            shutil.rmtree(item.path, ignore_errors=True)  # another worker may be removing it too
        else:
            item.path.unlink(missing_ok=True)
        if not item.path.exists():
            freed += item.size_bytes
    return freed


def clean(store: Store, *, owners: Iterable[str] | None = None) -> tuple[list[Leftover], int]:
    """Find and remove leftovers: (what was removed, bytes freed)."""
    found = leftovers(store, owners=owners)
    return found, remove(found)
